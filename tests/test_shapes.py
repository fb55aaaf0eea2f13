"""Tests of the procedural shapes CIR benchmark (``qure.datasets.shapes``)."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from qure.datasets import shapes as sh
from qure.datasets.shapes import SAME_DESIGN, ShapesBenchmark, ShapesSplit, build_shapes_benchmark

QUICK = (400, 100, 100)
BIGGER_WORDS = {"bigger", "enlarge", "larger"}
SMALLER_WORDS = {"smaller", "shrink", "tiny"}


@pytest.fixture(scope="module")
def bench() -> ShapesBenchmark:
    return build_shapes_benchmark(0, n_queries=QUICK)


def _splits(b: ShapesBenchmark) -> list[ShapesSplit]:
    return [b.train, b.val, b.test]


def _hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in images]


# --------------------------------------------------------------------------------------------
# structure and determinism


def test_same_seed_same_benchmark_other_seed_differs(bench):
    again = build_shapes_benchmark(0, n_queries=QUICK)
    assert again.vocab == bench.vocab
    for a, b in zip(_splits(again), _splits(bench)):
        for name in ("images", "designs", "reference", "target", "relevance"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.texts == b.texts and a.objects == b.objects
        assert a.edits == b.edits and a.cells == b.cells
    other = build_shapes_benchmark(1, n_queries=QUICK)
    assert other.train.texts != bench.train.texts
    assert not np.array_equal(other.train.designs, bench.train.designs)


def test_shapes_and_dtypes(bench):
    assert bench.image_size == 32
    for split, n in zip(_splits(bench), QUICK):
        g = split.n_gallery
        assert len(split) == n == len(split.texts) == len(split.edits)
        assert split.images.shape == (g, 32, 32, 3) and split.images.dtype == np.uint8
        assert split.designs.shape == (g,) and split.designs.dtype == np.int64
        assert len(split.objects) == len(split.cells) == g
        for arr in (split.reference, split.target):
            assert arr.shape == (n,) and arr.dtype == np.int64
            assert arr.min() >= 0 and arr.max() < g
        assert split.relevance.shape == (n, g) and split.relevance.dtype == np.float32
        assert all(isinstance(t, str) and t for t in split.texts)
        for objs, cells in zip(split.objects, split.cells):
            assert 2 <= len(objs) <= 3 and len(cells) == len(objs) == len(set(cells))
            assert list(objs) == sorted(objs, key=sh._OBJS.index)
            assert len({(o.shape, o.colour) for o in objs}) == len(objs)
    assert "ShapesSplit('train'" in repr(bench)


def test_design_ids_identify_object_sets_across_splits(bench):
    seen: dict[int, tuple[sh.Obj, ...]] = {}
    for split in _splits(bench):
        for d, objs in zip(split.designs.tolist(), split.objects):
            assert seen.setdefault(d, objs) == objs
    assert len(set(seen.values())) == len(seen)


def test_splits_are_disjoint_and_galleries_have_no_duplicates(bench):
    hashes = [set(_hashes(s.images)) for s in _splits(bench)]
    for s, h in zip(_splits(bench), hashes):
        assert len(h) == s.n_gallery
    assert not hashes[0] & hashes[1] and not hashes[0] & hashes[2] and not hashes[1] & hashes[2]
    designs = [set(s.designs.tolist()) for s in _splits(bench)]
    assert not designs[0] & designs[1] and not designs[0] & designs[2]
    assert not designs[1] & designs[2]


# --------------------------------------------------------------------------------------------
# relevance


def _jaccard(a: tuple[sh.Obj, ...], b: tuple[sh.Obj, ...]) -> float:
    ca, cb = Counter(a), Counter(b)
    return sum((ca & cb).values()) / sum((ca | cb).values())


def test_relevance_grades(bench):
    for split in _splits(bench):
        rel = split.relevance
        q = np.arange(len(split))
        assert np.all(rel[q, split.target] == 1.0)
        same = split.designs[None, :] == split.designs[split.target][:, None]
        same[q, split.target] = False
        assert np.all(rel[same] == np.float32(SAME_DESIGN))
        other = ~same
        other[q, split.target] = False
        assert np.all(rel[other] < SAME_DESIGN)
        assert rel[other].min() >= 0.0 and rel[other].max() < 0.5
        assert np.count_nonzero(rel == 1.0) == len(split)
        # The reference image keeps its partial grade (it never shares the target's design).
        ref_grade = rel[q, split.reference]
        assert np.all(ref_grade > 0) and np.all(ref_grade < 0.5)


def test_partial_grade_is_half_the_object_jaccard(bench):
    split = bench.val
    rng = np.random.default_rng(0)
    for qi in rng.choice(len(split), size=20, replace=False):
        t_objs = split.objects[split.target[qi]]
        for g in rng.choice(split.n_gallery, size=50, replace=False):
            if split.designs[g] == split.designs[split.target[qi]]:
                continue
            want = 0.5 * _jaccard(split.objects[g], t_objs)
            assert split.relevance[qi, g] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("layouts", [1, 3, 5])
def test_each_query_has_same_design_false_negatives(layouts):
    b = build_shapes_benchmark(3, n_queries=(150, 40, 40), layouts_per_design=layouts)
    for split in _splits(b):
        same = split.designs[None, :] == split.designs[split.target][:, None]
        counts = same.sum(axis=1) - 1
        assert counts.min() >= layouts - 1
        assert np.all((split.relevance == np.float32(SAME_DESIGN)).sum(axis=1) == counts)


def test_distractor_fraction_grows_the_gallery():
    n = (200, 50, 50)
    plain = build_shapes_benchmark(5, n_queries=n, distractors=0.0)
    extra = build_shapes_benchmark(5, n_queries=n, distractors=1.0)
    for a, b in zip(_splits(plain), _splits(extra)):
        assert b.n_gallery > 1.8 * a.n_gallery


# --------------------------------------------------------------------------------------------
# queries: edits, texts, layouts


def _ref_words(text: str, edit: sh.Edit) -> list[str]:
    """The words of the phrase naming the edited object (without the new colour)."""
    words = text.split()
    if edit.kind == "colour":
        assert words[-1] == edit.new.colour
        words = words[:-1]
    return words


def test_target_is_reference_with_the_edit_applied(bench):
    kinds = Counter()
    for split in _splits(bench):
        for qi, edit in enumerate(split.edits):
            kinds[edit.kind] += 1
            ref = split.objects[split.reference[qi]]
            tgt = split.objects[split.target[qi]]
            assert split.reference[qi] != split.target[qi]
            assert split.designs[split.reference[qi]] != split.designs[split.target[qi]]
            expected = Counter(ref)
            if edit.old is not None:
                assert expected[edit.old] == 1
                expected[edit.old] -= 1
            if edit.new is not None:
                expected[edit.new] += 1
            assert Counter(tgt) == +expected
            old, new = edit.old, edit.new
            if edit.kind == "colour":
                assert (old.shape, old.size) == (new.shape, new.size) and old.colour != new.colour
            elif edit.kind == "resize":
                assert (old.shape, old.colour) == (new.shape, new.colour) and old.size != new.size
            elif edit.kind == "add":
                assert old is None and len(ref) == 2 and len(tgt) == 3
            else:
                assert edit.kind == "remove" and new is None and len(ref) == 3 and len(tgt) == 2
    assert set(kinds) == set(sh.KINDS)
    assert min(kinds.values()) >= 0.2 * sum(kinds.values())


def test_texts_name_the_edit_unambiguously(bench):
    colours, shapes, sizes = set(sh.COLOURS), set(sh.SHAPES), set(sh.SIZES)
    for split in _splits(bench):
        for qi, (text, edit) in enumerate(zip(split.texts, split.edits)):
            words = text.split()
            ref = split.objects[split.reference[qi]]
            if edit.kind == "add":
                new = edit.new
                assert f"a {new.size} {new.colour} {new.shape}" in text
                continue
            if edit.kind == "resize":
                grow = BIGGER_WORDS & set(words)
                shrink = SMALLER_WORDS & set(words)
                assert bool(grow) == (edit.new.size == "big") and bool(shrink) != bool(grow)
            if edit.kind == "colour":
                assert edit.new.colour in words
            phrase = _ref_words(text, edit)
            said_shape = [w for w in phrase if w in shapes]
            said_colour = [w for w in phrase if w in colours]
            said_size = [w for w in phrase if w in sizes]
            assert said_shape == [edit.old.shape]
            assert said_colour in ([], [edit.old.colour])
            assert said_size in ([], [edit.old.size])
            matches = [
                o
                for o in ref
                if o.shape == edit.old.shape
                and (not said_colour or o.colour == said_colour[0])
                and (not said_size or o.size == said_size[0])
            ]
            assert matches == [edit.old], text


def test_texts_use_several_paraphrases(bench):
    firsts = Counter(t.split()[0] for t in bench.train.texts)
    assert {"make", "turn", "change", "add", "remove", "enlarge", "shrink"} <= set(firsts)


def test_target_keeps_untouched_objects_in_place(bench):
    for split in _splits(bench):
        moved = 0  # cells are part of a gallery image's identity, so shared targets agree too
        for qi, edit in enumerate(split.edits):
            r, t = split.reference[qi], split.target[qi]
            where_r = dict(zip(split.objects[r], split.cells[r]))
            where_t = dict(zip(split.objects[t], split.cells[t]))
            kept = [o for o in where_r if o != edit.old]
            moved += any(where_r[o] != where_t[o] for o in kept)
            if edit.old is not None and edit.new is not None:
                moved += where_r[edit.old] != where_t[edit.new]
        assert moved == 0


# --------------------------------------------------------------------------------------------
# tokenizer


def test_vocab_and_tokenize_round_trip(bench):
    vocab = bench.vocab
    assert vocab[:2] == ["<pad>", "<unk>"] and vocab[2:] == sorted(set(vocab[2:]))
    texts = bench.train.texts + bench.val.texts + bench.test.texts
    assert set(vocab[2:]) == {w for t in texts for w in t.split()}
    tokens = bench.tokenize(bench.test.texts)
    assert tokens.dtype == np.int64
    assert tokens.shape == (len(bench.test), max(len(t.split()) for t in bench.test.texts))
    for row, text in zip(tokens, bench.test.texts):
        n = len(text.split())
        assert [vocab[i] for i in row[:n]] == text.split()
        assert np.all(row[n:] == 0) and np.all(row[:n] >= 2)


def test_tokenize_padding_truncation_and_unknown_words(bench):
    tokens = bench.tokenize(["Make the RED circle Zebra", "", "add"], max_len=6)
    idx = {w: i for i, w in enumerate(bench.vocab)}
    assert tokens.shape == (3, 6)
    assert tokens[0].tolist() == [idx["make"], idx["the"], idx["red"], idx["circle"], 1, 0]
    assert tokens[1].tolist() == [0] * 6 and tokens[2].tolist() == [idx["add"]] + [0] * 5
    assert bench.tokenize(["make the red circle blue"], max_len=2).tolist() == [
        [idx["make"], idx["the"]]
    ]
    assert bench.tokenize([]).shape == (0, 0)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            bench.tokenize(["add"], max_len=bad)


# --------------------------------------------------------------------------------------------
# rendering


def _colour_mask(images: np.ndarray, colour: str) -> np.ndarray:
    rgb = sh._PALETTE[sh.COLOURS.index(colour)].astype(np.int16)
    diff = np.abs(images.astype(np.int16) - rgb)
    return np.all(diff <= sh.NOISE, axis=-1)


def test_palette_colours_are_distinct_and_unclipped():
    pal = sh._PALETTE.astype(np.int16)
    gap = np.abs(pal[:, None, :] - pal[None, :, :]).max(axis=-1)
    assert np.all(gap[~np.eye(len(pal), dtype=bool)] > 4 * sh.NOISE)
    assert pal.min() >= sh.NOISE and pal.max() <= 255 - sh.NOISE
    assert np.all(np.abs(pal - np.array(sh._BACKGROUND)).max(axis=-1) > 4 * sh.NOISE)


def test_images_show_their_objects_with_fixed_areas(bench):
    split = bench.train
    areas: dict[tuple[str, str], set[int]] = {}
    for g in range(0, split.n_gallery, 3):
        img = split.images[g]
        bg = np.abs(img.astype(np.int16) - np.array(sh._BACKGROUND)).max(axis=-1) > sh.NOISE
        assert bg.sum() > 0
        colour_counts = Counter(o.colour for o in split.objects[g])
        painted = 0
        for o in split.objects[g]:
            area = int(_colour_mask(img, o.colour).sum())
            painted += area if colour_counts[o.colour] == 1 else 0
            if colour_counts[o.colour] == 1:
                areas.setdefault((o.shape, o.size), set()).add(area)
        if all(c == 1 for c in colour_counts.values()):
            assert painted == bg.sum()  # every non-background pixel belongs to an object
    for shape in sh.SHAPES:
        small, big = areas[(shape, "small")], areas[(shape, "big")]
        assert len(small) == 1 and len(big) == 1  # a sprite is drawn whole, never clipped
        assert min(big) > 1.5 * max(small) > 0


def test_different_colours_give_different_pixels(bench):
    split = bench.train
    for g in range(0, split.n_gallery, 7):
        img = split.images[g]
        for colour in sh.COLOURS:
            present = any(o.colour == colour for o in split.objects[g])
            assert bool(_colour_mask(img, colour).any()) == present


@pytest.mark.parametrize("size", [24, 28, 29, 32, 40, 64, 97, 128])
def test_geometry_keeps_objects_inside_their_cells(size):
    centres, jitter, sprites = sh._geometry(size)
    cell = size / sh.GRID
    for z in (0, 1):
        for s in range(len(sh.SHAPES)):
            dy, dx = sprites[s][z]
            ext = max(np.abs(dy).max(), np.abs(dx).max()) + jitter[z]
            for j, c in enumerate(centres):
                lo, hi = int(c) - ext, int(c) + ext
                assert lo >= int(np.ceil(j * cell - 1e-9)) and hi < size
                if j + 1 < sh.GRID:
                    assert hi < int(np.ceil((j + 1) * cell - 1e-9)) - 1  # a 1-pixel gap
            if z == 1:
                assert dy.size > sprites[s][0][0].size


def test_image_size_is_configurable():
    b = build_shapes_benchmark(2, n_queries=(40, 10, 10), image_size=48, distractors=0)
    assert b.image_size == 48 and b.test.images.shape[1:] == (48, 48, 3)


# --------------------------------------------------------------------------------------------
# arguments and speed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"seed": True},
        {"n_queries": (10, 10)},
        {"n_queries": (10, 0, 10)},
        {"n_queries": (10, 10, 2.5)},
        {"n_queries": 100},
        {"layouts_per_design": 0},
        {"layouts_per_design": 1000},
        {"distractors": -0.1},
        {"distractors": float("nan")},
        {"distractors": "0.5"},
        {"image_size": 8},
        {"image_size": 4096},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        build_shapes_benchmark(**kwargs)


def test_default_build_is_moderate():
    # Sizes only: a wall-time bound fails on a busy machine for reasons unrelated to correctness.
    b = build_shapes_benchmark()
    assert [len(s) for s in _splits(b)] == [2000, 400, 400]
    assert 3000 <= b.train.n_gallery <= 12000
    for split in (b.val, b.test):
        assert 800 <= split.n_gallery <= 3000
