"""A procedural composed-image-retrieval (CIR) benchmark of coloured shapes, in pure NumPy.

Every image is a *scene*: 2 or 3 objects on a 3 x 3 grid of cells, one object per cell, drawn
into a small RGB image (``image_size`` x ``image_size``, uint8) over a dark gray background with
mild per-pixel noise. An object is a shape (circle, square, triangle, cross, diamond), a colour
(red, green, blue, yellow, purple, orange) and a size (small: radius ~ cell/4, big: ~ cell/2.3;
small objects jitter by a few pixels inside their cell (2 at 32 x 32), big ones sit at the cell
centre).

* A *design* is the set of objects of a scene, a *layout* is where they sit. Within a design no
  two objects share both shape and colour, so "the red circle" always names one object. Design
  ids index a fixed, seed-independent enumeration of all such designs, so the same objects have
  the same id in every split and every build.
* A query is a reference image plus a modification text; its target is the reference's design
  with one edit applied (change colour, add an object, remove an object, make an object bigger
  or smaller), rendered with the untouched objects where they were in the reference (an edited
  object keeps its cell; an added one takes a random free cell). Texts come from paraphrased
  templates and name an object by its shape alone when the shape is unique in the reference,
  otherwise by colour and shape (sometimes with colour and/or size added even when not needed).
  The exact edit of every query is kept in ``ShapesSplit.edits``.
* Each split's gallery holds the reference images, the target images, further renderings of
  every target design (at least ``layouts_per_design`` renderings per target design in all: real
  false negatives for contrastive training) and random distractor scenes. References are often
  earlier queries' gallery images (targets included), so an image can be both. No (design,
  layout) pair appears twice in a gallery, and the gallery order is shuffled.
* Graded relevance of gallery image ``g`` to query ``q``: 1.0 for the annotated target,
  ``SAME_DESIGN`` (0.8) for any other rendering of the target's design, otherwise
  ``0.5 * |A & B| / |A | B|`` (Jaccard overlap of the two object sets, always < 0.5). The
  reference image is graded like any other image (e.g. 0.25 after recolouring one of three
  objects); excluding it, as CIRR does, is left to the evaluation.
* Splits use disjoint design sets (each design is assigned to train/val/test with probability
  0.6/0.2/0.2 from the seed), so their galleries share no image, and val/test queries only
  involve object combinations never seen in training (every single object is seen, though).

Open edits (``open_edits > 0``; the preset of :func:`build_open_shapes_benchmark`, designed in
``docs/benchmark.md``): a share of the queries get a text that leaves part of the edit open, as
FashionIQ's relative captions do ("is darker and has short sleeves"):

* colour: "change the colour of the circle" (any new colour),
* add: "add a square" / "add a small square" / "add a green square" (the unnamed colour and/or
  size are open; for every add, closed or open, so is the cell),
* remove: "remove one of the shapes" (any object),
* resize: "make one of the shapes bigger" (any object of the other size).

Every edit the text allows (a *completion*), with the untouched objects where they were, is an
equally valid answer; only the annotated target's design must belong to the split (the other
answers' designs may come from any split, so val/test answers may be combinations seen in
training, though never as a target of a training query). ``open_answers`` further valid
answers per query (where the text allows that many) are rendered into the gallery, so several
gallery images answer a query exactly as well as its annotated target: real, indistinguishable
false negatives. Relevance then is 1.0 for every valid answer, ``SAME_DESIGN`` for a valid
answer's objects in another layout, otherwise ``0.5 * Jaccard`` with the annotated target.
With ``open_edits = 0`` and ``open_answers = 0`` (the defaults) the build is the one above,
bit for bit.

Everything is deterministic given the seed.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .._arrays import check_int

__all__ = [
    "OPEN_PRESET",
    "build_open_shapes_benchmark",
    "COLOURS",
    "SAME_DESIGN",
    "SHAPES",
    "SIZES",
    "Edit",
    "Obj",
    "ShapesBenchmark",
    "ShapesSplit",
    "build_shapes_benchmark",
]

SAME_DESIGN: float = 0.8
"""Relevance of a rendering of the target's design other than the annotated target image."""

PARTIAL_SCALE: float = 0.5
"""Other images get ``PARTIAL_SCALE * Jaccard(objects, target objects)`` (< ``SAME_DESIGN``)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "big")
KINDS: tuple[str, ...] = ("colour", "add", "remove", "resize")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: tuple[float, ...] = (0.6, 0.2, 0.2)
GRID: int = 3

# All channel values lie in [NOISE, 255 - NOISE], so adding the noise never clips.
_PALETTE = np.array(
    [
        (230, 40, 40),  # red
        (40, 200, 60),  # green
        (50, 90, 245),  # blue
        (240, 225, 40),  # yellow
        (165, 60, 215),  # purple
        (249, 140, 20),  # orange
    ],
    dtype=np.uint8,
)
_BACKGROUND = (28, 28, 28)
NOISE: int = 6
_RADIUS = {0: 0.25, 1: 1 / 2.3}  # radius as a fraction of the cell side, by size index
_REUSE_REFERENCE = 0.5  # chance that a query's reference is an image already in the gallery
_MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE = 24, 256
_MAX_LAYOUTS = 24

_NS, _NC = len(SHAPES), len(COLOURS)
_N_OBJECTS = _NS * _NC * 2

_COLOUR_TEMPLATES = (
    "make the {ref} {new}",
    "turn the {ref} {new}",
    "change the {ref} to {new}",
    "the {ref} should be {new}",
    "paint the {ref} {new}",
)
_ADD_TEMPLATES = ("add a {new}", "put a {new} in", "include a {new}", "insert a {new}")
_REMOVE_TEMPLATES = (
    "remove the {ref}",
    "take away the {ref}",
    "delete the {ref}",
    "get rid of the {ref}",
)
_BIGGER_TEMPLATES = (
    "make the {ref} bigger",
    "enlarge the {ref}",
    "the {ref} should be bigger",
    "make the {ref} larger",
)
_SMALLER_TEMPLATES = (
    "make the {ref} smaller",
    "shrink the {ref}",
    "the {ref} should be smaller",
    "make the {ref} tiny",
)
# Open edits: the text leaves part of the edit to the answerer.
_OPEN_COLOUR_TEMPLATES = (
    "change the colour of the {ref}",
    "make the {ref} a different colour",
    "give the {ref} another colour",
    "recolour the {ref}",
)
_OPEN_REMOVE_TEMPLATES = (
    "remove one of the shapes",
    "take away one of the objects",
    "delete one shape",
    "get rid of one of the objects",
)
_OPEN_BIGGER_TEMPLATES = (
    "make one of the shapes bigger",
    "enlarge one of the objects",
    "make one shape larger",
)
_OPEN_SMALLER_TEMPLATES = (
    "make one of the shapes smaller",
    "shrink one of the objects",
    "make one shape tiny",
)

OPEN_PRESET: dict[str, float] = {"open_edits": 0.75, "open_answers": 4, "distractors": 0.5}
"""The open-edit benchmark of ``docs/benchmark.md`` (``build_open_shapes_benchmark``)."""


@dataclass(frozen=True)
class Obj:
    """One object of a scene. Canonical order: by shape, colour, size as listed in
    ``SHAPES``, ``COLOURS``, ``SIZES``."""

    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Edit:
    """The modification of a query: the target's objects are the reference's minus ``old``
    plus ``new`` (``old`` is None for "add", ``new`` is None for "remove")."""

    kind: str
    old: Optional[Obj]
    new: Optional[Obj]


_OBJS: tuple[Obj, ...] = tuple(
    Obj(SHAPES[s], COLOURS[c], SIZES[z]) for s in range(_NS) for c in range(_NC) for z in range(2)
)


def _split_obj(o: int) -> tuple[int, int, int]:
    """Object index -> (shape, colour, size) indices."""
    return o // (2 * _NC), (o // 2) % _NC, o % 2


@dataclass(eq=False, repr=False)
class ShapesSplit:
    """One split: its gallery, its queries and the graded relevance of every pair.

    ``edits[q]`` is query ``q``'s exact modification (the annotated one, for open texts) and
    ``cells[g]`` the grid cell (row-major, ``0 .. 8``) of each object of gallery image ``g``,
    aligned with ``objects[g]``. ``open[q]`` says whether query ``q``'s text leaves part of the
    edit open.
    """

    name: str
    images: np.ndarray
    designs: np.ndarray
    objects: list[tuple[Obj, ...]]
    reference: np.ndarray
    texts: list[str]
    target: np.ndarray
    relevance: np.ndarray
    edits: list[Edit] = field(default_factory=list)
    cells: list[tuple[int, ...]] = field(default_factory=list)
    open: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        """Number of queries."""
        return len(self.texts)

    @property
    def n_gallery(self) -> int:
        """Number of gallery images."""
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ShapesSplit({self.name!r}, queries={len(self)}, gallery={self.n_gallery}, "
            f"image_size={self.images.shape[1]})"
        )


@dataclass(eq=False, repr=False)
class ShapesBenchmark:
    """The three splits, the word vocabulary of all texts and the image side in pixels."""

    train: ShapesSplit
    val: ShapesSplit
    test: ShapesSplit
    vocab: list[str]
    image_size: int

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def tokenize(self, texts: Sequence[str], max_len: Optional[int] = None) -> np.ndarray:
        """Lower-cased word ids, ``(len(texts), L)`` int64, 0-padded; unknown words are 1.

        ``L`` is ``max_len`` (longer texts are truncated) or else the longest text's length.
        """
        if isinstance(texts, str):
            raise TypeError("tokenize takes a sequence of texts, not a single string")
        if max_len is not None:
            max_len = _check_int("max_len", max_len, 1, None)
        words = [_words(str(t)) for t in texts]
        length = max_len if max_len is not None else max((len(w) for w in words), default=0)
        out = np.zeros((len(words), length), dtype=np.int64)
        for i, ws in enumerate(words):
            ids = [self._index.get(w, 1) for w in ws[:length]]
            out[i, : len(ids)] = ids
        return out

    def __repr__(self) -> str:
        return (
            f"ShapesBenchmark(train={self.train!r}, val={self.val!r}, test={self.test!r}, "
            f"vocab={len(self.vocab)} words)"
        )


def _words(text: str) -> list[str]:
    """Lower-cased words (runs of letters, digits and apostrophes)."""
    return re.findall(r"[a-z0-9']+", text.lower())


# --------------------------------------------------------------------------------------------
# design enumeration and edits


@functools.cache
def _universe() -> tuple[list[tuple[int, ...]], dict[tuple[int, ...], int]]:
    """All designs (sorted object-index tuples, 2 or 3 objects with distinct (shape, colour))."""
    designs: list[tuple[int, ...]] = []
    for k in (2, 3):
        for pairs in itertools.combinations(range(_NS * _NC), k):
            for sizes in itertools.product((0, 1), repeat=k):
                designs.append(tuple(p * 2 + z for p, z in zip(pairs, sizes)))
    return designs, {d: i for i, d in enumerate(designs)}


def _edit_options(design: tuple[int, ...], kind: str) -> list[tuple[int, int]]:
    """All (old, new) object pairs of one kind of edit of a design (-1 = none)."""
    pairs = {o // 2 for o in design}
    out: list[tuple[int, int]] = []
    if kind == "colour":
        for o in design:
            s, c, z = _split_obj(o)
            for c2 in range(_NC):
                if c2 != c and s * _NC + c2 not in pairs:
                    out.append((o, (s * _NC + c2) * 2 + z))
    elif kind == "add":
        for p in range(_NS * _NC):
            if p not in pairs:
                out.extend(((-1, p * 2), (-1, p * 2 + 1)))
    elif kind == "remove":
        out.extend((o, -1) for o in design)
    else:  # resize
        out.extend((o, o ^ 1) for o in design)
    return out


def _apply(design: tuple[int, ...], old: int, new: int) -> tuple[int, ...]:
    objs = [o for o in design if o != old]
    if new >= 0:
        objs.append(new)
    return tuple(sorted(objs))


def _referring(design: tuple[int, ...], o: int, rng: np.random.Generator) -> str:
    """A noun phrase naming object ``o`` unambiguously within ``design``."""
    s, c, z = _split_obj(o)
    shape_unique = sum(1 for x in design if _split_obj(x)[0] == s) == 1
    words = []
    if rng.random() < 0.25:
        words.append(SIZES[z])
    if not shape_unique or rng.random() < 0.5:
        words.append(COLOURS[c])
    words.append(SHAPES[s])
    return " ".join(words)


def _completions(
    design: tuple[int, ...], kind: str, old: int, new: int, named: str
) -> list[tuple[int, int]]:
    """Every (old, new) edit of ``design`` that a text naming ``named`` of the edit allows.

    ``named``: "all" (a closed text), or for open texts "object" (colour: the object, not the
    colour), "none" (remove/resize: the object is open), or for add what is named besides the
    shape: "size", "colour" or "shape" (neither).
    """
    if named == "all":
        return [(old, new)]
    if kind == "colour":
        return [(o, n) for o, n in _edit_options(design, "colour") if o == old]
    if kind == "remove":
        return [(o, -1) for o in design]
    if kind == "resize":
        return [(o, o ^ 1) for o in design if o % 2 == old % 2]
    s, c, z = _split_obj(new)
    out = []
    for _, n in _edit_options(design, "add"):
        s2, c2, z2 = _split_obj(n)
        if s2 == s and (named != "size" or z2 == z) and (named != "colour" or c2 == c):
            out.append((-1, n))
    return out


def _open_text(
    design: tuple[int, ...], kind: str, old: int, new: int, rng: np.random.Generator
) -> tuple[str, str]:
    """An open text for the edit, and what it names (see :func:`_completions`)."""

    def pick(templates: tuple[str, ...]) -> str:
        return templates[int(rng.integers(len(templates)))]

    if kind == "colour":
        return pick(_OPEN_COLOUR_TEMPLATES).format(ref=_referring(design, old, rng)), "object"
    if kind == "remove":
        return pick(_OPEN_REMOVE_TEMPLATES), "none"
    if kind == "resize":
        grows = new % 2 == 1
        return pick(_OPEN_BIGGER_TEMPLATES if grows else _OPEN_SMALLER_TEMPLATES), "none"
    s, c, z = _split_obj(new)
    named = ("size", "colour", "shape")[int(rng.integers(3))]
    words = {"size": f"{SIZES[z]} {SHAPES[s]}", "colour": f"{COLOURS[c]} {SHAPES[s]}"}
    return pick(_ADD_TEMPLATES).format(new=words.get(named, SHAPES[s])), named


def _text(design: tuple[int, ...], kind: str, old: int, new: int, rng: np.random.Generator) -> str:
    def pick(templates: tuple[str, ...]) -> str:
        return templates[int(rng.integers(len(templates)))]

    if kind == "add":
        s, c, z = _split_obj(new)
        return pick(_ADD_TEMPLATES).format(new=f"{SIZES[z]} {COLOURS[c]} {SHAPES[s]}")
    ref = _referring(design, old, rng)
    if kind == "colour":
        return pick(_COLOUR_TEMPLATES).format(ref=ref, new=COLOURS[_split_obj(new)[1]])
    if kind == "remove":
        return pick(_REMOVE_TEMPLATES).format(ref=ref)
    grows = new % 2 == 1
    return pick(_BIGGER_TEMPLATES if grows else _SMALLER_TEMPLATES).format(ref=ref)


# --------------------------------------------------------------------------------------------
# rendering


@functools.cache
def _geometry(image_size: int) -> tuple[np.ndarray, tuple[int, int], list[list[np.ndarray]]]:
    """Cell centre pixels (GRID,), max jitter per size, sprite pixel offsets [shape][size]."""
    cell = image_size / GRID
    lo = [math.ceil(j * cell) for j in range(GRID)]
    # Keep a 1-pixel gap between neighbouring cells.
    hi = [math.ceil((j + 1) * cell) - 2 for j in range(GRID - 1)] + [image_size - 1]
    centres = np.array([(a + b) // 2 for a, b in zip(lo, hi)], dtype=np.int64)
    room = min(min(int(c) - a, b - int(c)) for a, b, c in zip(lo, hi, centres))
    jitter: list[int] = []
    sprites: list[list[np.ndarray]] = [[] for _ in range(_NS)]
    for z in (0, 1):
        r = _RADIUS[z] * cell
        if math.floor(r) > room:
            r = room + 0.5
        half = math.floor(r)
        jitter.append(max(0, room - half) if z == 0 else 0)
        v, u = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
        w = max(0.3 * r, 0.5)
        masks = (
            u * u + v * v <= r * r,  # circle
            np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r,  # square
            (v >= -r) & (v <= 0.9 * r) & (np.abs(u) <= (v + r) / 1.9),  # triangle
            ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r)),  # cross
            np.abs(u) + np.abs(v) <= r,  # diamond
        )
        for s, m in enumerate(masks):
            dy, dx = np.nonzero(m)
            sprites[s].append(np.stack([dy - half, dx - half]).astype(np.int64))
    return centres, (jitter[0], jitter[1]), sprites


def _render(
    n: int,
    image_of: np.ndarray,
    obj: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draws objects ``obj`` centred at pixel ``(cy, cx)`` into images ``image_of``."""
    _, _, sprites = _geometry(image_size)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    images[...] = _BACKGROUND
    shape, colour, size = obj // (2 * _NC), (obj // 2) % _NC, obj % 2
    for s in range(_NS):
        for z in (0, 1):
            sel = np.flatnonzero((shape == s) & (size == z))
            if sel.size == 0:
                continue
            dy, dx = sprites[s][z]
            ys = cy[sel, None] + dy[None, :]
            xs = cx[sel, None] + dx[None, :]
            ii = np.broadcast_to(image_of[sel, None], ys.shape)
            images[ii, ys, xs] = _PALETTE[colour[sel]][:, None, :]
    # Gray noise in [-NOISE, NOISE]: added modulo 256, which is exact as nothing can clip.
    noise = rng.integers(-NOISE, NOISE + 1, size=(n, image_size, image_size, 1), dtype=np.int8)
    images += noise.view(np.uint8)
    return images


# --------------------------------------------------------------------------------------------
# building


class _Gallery:
    """Growing gallery of one split: (design, cells, jitters) per image, deduplicated."""

    def __init__(self, image_size: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.max_jitter = _geometry(image_size)[1]
        self.design: list[int] = []
        self.cells: list[tuple[int, ...]] = []
        self.jitter: list[tuple[tuple[int, int], ...]] = []
        self.key: dict[tuple[int, tuple[int, ...]], int] = {}
        self.by_count: dict[int, list[int]] = {2: [], 3: []}
        self.by_design: dict[int, list[int]] = {}

    def random_jitter(self, o: int) -> tuple[int, int]:
        j = self.max_jitter[o % 2]
        if j == 0:
            return (0, 0)
        dy, dx = self.rng.integers(-j, j + 1, size=2)
        return (int(dy), int(dx))

    def random_layout(
        self, design: tuple[int, ...]
    ) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
        cells = tuple(int(c) for c in self.rng.choice(GRID * GRID, size=len(design), replace=False))
        return cells, tuple(self.random_jitter(o) for o in design)

    def add(
        self, design_id: int, k: int, cells: tuple[int, ...], jitter: tuple[tuple[int, int], ...]
    ) -> int:
        key = (design_id, cells)
        idx = self.key.get(key)
        if idx is None:
            idx = len(self.design)
            self.key[key] = idx
            self.design.append(design_id)
            self.cells.append(cells)
            self.jitter.append(jitter)
            self.by_count[k].append(idx)
            self.by_design.setdefault(design_id, []).append(idx)
        return idx

    def __len__(self) -> int:
        return len(self.design)


def _build_split(
    name: str,
    split_id: int,
    n_queries: int,
    split_of: np.ndarray,
    layouts_per_design: int,
    distractors: float,
    image_size: int,
    rng: np.random.Generator,
    open_edits: float = 0.0,
    open_answers: int = 0,
) -> ShapesSplit:
    designs, design_index = _universe()
    pool = {
        k: np.flatnonzero((split_of == split_id) & (_design_sizes() == k)).astype(np.int64)
        for k in (2, 3)
    }
    gal = _Gallery(image_size, rng)
    refs: list[int] = []
    tgts: list[int] = []
    texts: list[str] = []
    edits: list[tuple[str, int, int]] = []
    is_open: list[bool] = []
    # Per query, its valid answers: (design id, ((object, cell), ...) fixed by the reference).
    answers: list[list[tuple[int, tuple[tuple[int, int], ...]]]] = []
    seen: set[tuple[int, int, int]] = set()

    kinds = rng.permutation(np.arange(n_queries) % len(KINDS))
    for kind_id in kinds:
        kind = KINDS[int(kind_id)]
        for _ in range(10_000):
            k = 2 if kind == "add" else 3 if kind == "remove" else int(rng.integers(2, 4))
            ref: Optional[int] = None
            if gal.by_count[k] and rng.random() < _REUSE_REFERENCE:
                ref = gal.by_count[k][int(rng.integers(len(gal.by_count[k])))]
                ref_design = gal.design[ref]
                cells, jitter = gal.cells[ref], gal.jitter[ref]
            else:
                ref_design = int(pool[k][int(rng.integers(len(pool[k])))])
                cells, jitter = gal.random_layout(designs[ref_design])
            d = designs[ref_design]
            options = _edit_options(d, kind)
            choice = None
            for i in rng.permutation(len(options)):
                old, new = options[int(i)]
                tgt_design = design_index[_apply(d, old, new)]
                if split_of[tgt_design] == split_id:
                    choice = (old, new, tgt_design)
                    break
            if choice is None:
                continue
            old, new, tgt_design = choice
            if ref is not None and (ref, old, new) in seen:
                continue
            break
        else:  # pragma: no cover - the design pools are far larger than needed
            raise RuntimeError(f"could not sample a {kind!r} query for split {name!r}")
        if ref is None:
            ref = gal.add(ref_design, k, cells, jitter)
        seen.add((ref, old, new))
        # The target keeps every untouched object where it was; an edited object keeps its cell.
        where = {o: (c, j) for o, c, j in zip(d, cells, jitter)}
        if old >= 0:
            cell, jit = where.pop(old)
            if new >= 0:
                lim = gal.max_jitter[new % 2]
                where[new] = (cell, (max(-lim, min(lim, jit[0])), max(-lim, min(lim, jit[1]))))
        else:
            used = {c for c, _ in where.values()}
            free = [c for c in range(GRID * GRID) if c not in used]
            where[new] = (free[int(rng.integers(len(free)))], gal.random_jitter(new))
        td = designs[tgt_design]
        tgt = gal.add(
            tgt_design,
            len(td),
            tuple(where[o][0] for o in td),
            tuple(where[o][1] for o in td),
        )
        refs.append(ref)
        tgts.append(tgt)
        opened = open_edits > 0 and bool(rng.random() < open_edits)
        if opened:
            text, named = _open_text(d, kind, old, new, rng)
        else:
            text, named = _text(d, kind, old, new, rng), "all"
        texts.append(text)
        edits.append((kind, old, new))
        is_open.append(opened)
        if open_edits > 0 or open_answers > 0:
            ref_where = {o: (c, j) for o, c, j in zip(d, cells, jitter)}
            valid, layouts = _valid_answers(d, kind, old, new, named, ref_where)
            answers.append(valid)
            # Render up to open_answers further valid answers (other completions and cells).
            own = (tgt_design, gal.cells[tgt])
            layouts = [lay for lay in layouts if (lay[0], lay[1]) != own]
            for i in rng.permutation(len(layouts))[:open_answers]:
                dd, cc, placed_new = layouts[int(i)]
                td2 = designs[dd]
                jit = tuple(
                    gal.random_jitter(o) if o == placed_new else _clamped(ref_where, o, td2, d, gal)
                    for o in td2
                )
                gal.add(dd, len(td2), cc, jit)

    # Further renderings of every target design: real false negatives.
    for t in dict.fromkeys(gal.design[t] for t in tgts):
        td = designs[t]
        while len(gal.by_design[t]) < layouts_per_design:
            cells, jitter = gal.random_layout(td)
            gal.add(t, len(td), cells, jitter)

    # Distractors: random scenes of the split's designs (repeats of a key are skipped).
    n_distractors = int(round(distractors * len(gal)))
    goal = len(gal) + n_distractors
    all_pool = np.concatenate([pool[2], pool[3]])
    while len(gal) < goal:
        dd = int(all_pool[int(rng.integers(len(all_pool)))])
        cells, jitter = gal.random_layout(designs[dd])
        gal.add(dd, len(designs[dd]), cells, jitter)

    # Shuffle the gallery so that indices carry no information about the queries.
    g = len(gal)
    perm = rng.permutation(g)
    inv = np.empty(g, dtype=np.int64)
    inv[perm] = np.arange(g)
    gallery_design = np.asarray(gal.design, dtype=np.int64)[perm]
    cells_out = [gal.cells[int(p)] for p in perm]
    objects_out = [tuple(_OBJS[o] for o in designs[int(dd)]) for dd in gallery_design]

    centres, _, _ = _geometry(image_size)
    image_of, obj, cy, cx = [], [], [], []
    for new_idx, p in enumerate(perm):
        p = int(p)
        for o, c, (jy, jx) in zip(designs[gal.design[p]], gal.cells[p], gal.jitter[p]):
            image_of.append(new_idx)
            obj.append(o)
            cy.append(int(centres[c // GRID]) + jy)
            cx.append(int(centres[c % GRID]) + jx)
    images = _render(
        g,
        np.asarray(image_of, dtype=np.int64),
        np.asarray(obj, dtype=np.int64),
        np.asarray(cy, dtype=np.int64),
        np.asarray(cx, dtype=np.int64),
        image_size,
        rng,
    )

    reference = inv[np.asarray(refs, dtype=np.int64)]
    target = inv[np.asarray(tgts, dtype=np.int64)]
    relevance = _relevance(gallery_design, target)
    if answers:
        _grade_answers(relevance, answers, gallery_design, cells_out, target)
    edit_objs = [
        Edit(kind, _OBJS[old] if old >= 0 else None, _OBJS[new] if new >= 0 else None)
        for kind, old, new in edits
    ]
    return ShapesSplit(
        name=name,
        images=images,
        designs=gallery_design,
        objects=objects_out,
        reference=reference,
        texts=texts,
        target=target,
        relevance=relevance,
        edits=edit_objs,
        cells=cells_out,
        open=np.asarray(is_open, dtype=bool),
    )


def _clamped(
    ref_where: dict[int, tuple[int, tuple[int, int]]],
    o: int,
    design: tuple[int, ...],
    ref_design: tuple[int, ...],
    gal: _Gallery,
) -> tuple[int, int]:
    """Jitter of object ``o`` of an answer: the reference's (of ``o``, or of the object it
    replaced), clamped to ``o``'s size."""
    if o in ref_where:
        jit = ref_where[o][1]
    else:  # recoloured or resized: the replaced object is the one of ref_design not in design
        gone = [x for x in ref_design if x not in design]
        jit = ref_where[gone[0]][1] if gone else (0, 0)
    lim = gal.max_jitter[o % 2]
    return (max(-lim, min(lim, jit[0])), max(-lim, min(lim, jit[1])))


def _valid_answers(
    d: tuple[int, ...],
    kind: str,
    old: int,
    new: int,
    named: str,
    ref_where: dict[int, tuple[int, tuple[int, int]]],
) -> tuple[list[tuple[int, tuple[tuple[int, int], ...]]], list[tuple[int, tuple[int, ...], int]]]:
    """A query's valid answers: per completion in the split, its design and the cells the
    reference fixes (every object but an added one); and every concrete layout of them
    (design, cells aligned with the design's objects, the added object or -1)."""
    designs, design_index = _universe()
    valid = []
    layouts = []
    for o_old, o_new in _completions(d, kind, old, new, named):
        dd = design_index[_apply(d, o_old, o_new)]
        # Only the annotated target's design must belong to the split (it does): the other
        # answers' designs may come from any split, or open texts in val/test would have
        # hardly any second answer (a design is in a split with probability 0.2).
        fixed = {o: c for o, (c, _) in ref_where.items() if o != o_old}
        if o_old >= 0 and o_new >= 0:  # recoloured / resized in place
            fixed[o_new] = ref_where[o_old][0]
        valid.append((dd, tuple(sorted(fixed.items()))))
        td = designs[dd]
        if o_old >= 0:
            layouts.append((dd, tuple(fixed[o] for o in td), -1))
        else:
            used = set(fixed.values())
            for cell in range(GRID * GRID):
                if cell not in used:
                    placed = {**fixed, o_new: cell}
                    layouts.append((dd, tuple(placed[o] for o in td), o_new))
    return valid, layouts


def _grade_answers(
    relevance: np.ndarray,
    answers: list[list[tuple[int, tuple[tuple[int, int], ...]]]],
    gallery_design: np.ndarray,
    cells: list[tuple[int, ...]],
    target: np.ndarray,
) -> None:
    """Raises grades in place: ``SAME_DESIGN`` for a valid answer's design in any layout, 1.0
    where the layout is the one the reference fixes."""
    designs = _universe()[0]
    by_design: dict[int, list[int]] = {}
    for g, dd in enumerate(gallery_design.tolist()):
        by_design.setdefault(dd, []).append(g)
    for q, valid in enumerate(answers):
        for dd, fixed in valid:
            order = designs[dd]
            for g in by_design.get(dd, ()):
                where = dict(zip(order, cells[g]))
                ok = all(where[o] == c for o, c in fixed)
                relevance[q, g] = max(relevance[q, g], 1.0 if ok else SAME_DESIGN)
        relevance[q, target[q]] = 1.0


@functools.cache
def _design_sizes() -> np.ndarray:
    sizes = np.array([len(d) for d in _universe()[0]], dtype=np.int64)
    sizes.setflags(write=False)
    return sizes


def _relevance(gallery_design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(Q, G) float32: 1 at the target, SAME_DESIGN for its design, else 0.5 * Jaccard."""
    designs = _universe()[0]
    uniq, g_inv = np.unique(gallery_design, return_inverse=True)
    g_inv = g_inv.reshape(-1)
    member = np.zeros((uniq.size, _N_OBJECTS), dtype=np.float32)
    for i, dd in enumerate(uniq):
        member[i, list(designs[int(dd)])] = 1.0
    t_pos, t_inv = np.unique(g_inv[target], return_inverse=True)
    t_inv = t_inv.reshape(-1)
    inter = member[t_pos] @ member.T
    count = member.sum(axis=1)
    jaccard = inter / (count[t_pos, None] + count[None, :] - inter)
    grade = (PARTIAL_SCALE * jaccard).astype(np.float32)
    grade[np.arange(t_pos.size), t_pos] = SAME_DESIGN
    relevance = grade[t_inv[:, None], g_inv[None, :]]
    relevance[np.arange(target.size), target] = 1.0
    return relevance


def _check_int(name: str, value: object, low: int, high: int | None) -> int:
    """:func:`qure._arrays.check_int`, except that a value of the wrong kind (a float, a bool)
    is a ``ValueError`` too: every bad argument of this module is one."""
    try:
        return check_int(value, name, low, high)
    except TypeError as error:
        raise ValueError(str(error)) from None


def build_shapes_benchmark(
    seed: int = 0,
    *,
    n_queries: tuple[int, int, int] = (2000, 400, 400),
    layouts_per_design: int = 3,
    distractors: float = 0.5,
    image_size: int = 32,
    open_edits: float = 0.0,
    open_answers: int = 0,
) -> ShapesBenchmark:
    """Builds the train/val/test splits of the shapes CIR benchmark, deterministically.

    ``n_queries``: queries per split (train, val, test), each at least 1. Every target design
    gets at least ``layouts_per_design`` renderings in its split's gallery (the annotated target
    among them), so each query has at least ``layouts_per_design - 1`` same-design false
    negatives. ``distractors``: random extra scenes, as a fraction of the gallery built for the
    queries (0.5 adds half as many again). ``image_size``: side of the square images in pixels.
    ``open_edits``: share of queries whose text leaves part of the edit open; ``open_answers``:
    further valid answers rendered per query where its text allows them (module docstring).
    """
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if not isinstance(n_queries, (tuple, list)) or len(n_queries) != 3:
        raise ValueError(f"n_queries must be a (train, val, test) triple, got {n_queries!r}")
    counts = tuple(
        _check_int(f"n_queries[{i}] ({s})", n, 1, 100_000)
        for i, (s, n) in enumerate(zip(SPLITS, n_queries))
    )
    layouts_per_design = _check_int("layouts_per_design", layouts_per_design, 1, _MAX_LAYOUTS)
    if (
        isinstance(distractors, bool)
        or not isinstance(distractors, (int, float, np.integer, np.floating))
        or not 0.0 <= float(distractors) <= 10.0
    ):
        raise ValueError(f"distractors must be a number in [0, 10], got {distractors!r}")
    image_size = _check_int("image_size", image_size, _MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE)
    if (
        isinstance(open_edits, bool)
        or not isinstance(open_edits, (int, float, np.integer, np.floating))
        or not 0.0 <= float(open_edits) <= 1.0
    ):
        raise ValueError(f"open_edits must be a number in [0, 1], got {open_edits!r}")
    open_answers = _check_int("open_answers", open_answers, 0, _MAX_LAYOUTS)

    designs, _ = _universe()
    root = np.random.SeedSequence(seed)
    split_seed, *query_seeds = root.spawn(1 + len(SPLITS))
    split_of = np.random.default_rng(split_seed).choice(
        len(SPLITS), size=len(designs), p=SPLIT_FRACTIONS
    )
    splits = [
        _build_split(
            name,
            i,
            counts[i],
            split_of,
            layouts_per_design,
            float(distractors),
            image_size,
            np.random.default_rng(query_seeds[i]),
            float(open_edits),
            open_answers,
        )
        for i, name in enumerate(SPLITS)
    ]
    words = sorted({w for s in splits for t in s.texts for w in _words(t)})
    return ShapesBenchmark(
        train=splits[0],
        val=splits[1],
        test=splits[2],
        vocab=["<pad>", "<unk>", *words],
        image_size=image_size,
    )


def build_open_shapes_benchmark(
    seed: int = 0, *, n_queries: tuple[int, int, int] = (2000, 400, 400)
) -> ShapesBenchmark:
    """The open-edit shapes benchmark of ``docs/benchmark.md``: ``OPEN_PRESET`` on top of the
    default build (3 of 4 texts leave part of the edit open; up to 4 further valid answers per
    query in the gallery)."""
    return build_shapes_benchmark(
        seed,
        n_queries=n_queries,
        open_edits=OPEN_PRESET["open_edits"],
        open_answers=int(OPEN_PRESET["open_answers"]),
        distractors=OPEN_PRESET["distractors"],
    )
