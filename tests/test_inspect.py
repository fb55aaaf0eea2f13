"""``qure.inspect.write_page`` and ``qure inspect``: the data the page is built from.

Every per-query field is checked against a brute-force ranking (a full sort of each row, ties by
index, as the miner ranks). The browser test (``test_inspect_browser.py``) checks what the page
shows of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inspect_data import pages

import qure
import qure.cli
from qure.inspect import MARKER, write_page

TOP, WINDOW, BAND_ITEMS, GRADE = 12, 40, 6, 0.8


def data(seed: int = 0, q: int = 23, n: int = 150) -> dict:
    """Scores with many ties (2 decimals), targets near the top, graded relevance and images."""
    rng = np.random.default_rng(seed)
    relevance = np.zeros((q, n), dtype=np.float32)
    targets = rng.integers(0, n, q)
    for i in range(q):
        relevance[i, rng.choice(n, 4, replace=False)] = 0.8
        relevance[i, rng.choice(n, 2, replace=False)] = 1.0
        relevance[i, rng.choice(n, 10, replace=False)] = 0.3
        relevance[i, targets[i]] = 1.0
    scores = np.round(relevance + 0.4 * rng.standard_normal((q, n)), 2).astype(np.float32)
    images = rng.integers(0, 256, (n + 5, 8, 8, 3), dtype=np.uint8)  # 5 extra references
    return {
        "scores": scores,
        "targets": targets,
        "relevance": relevance,
        "images": images,
        "reference": rng.integers(0, n + 5, q),
        "texts": [f"query text {i} <b>&amp;</b>" for i in range(q)],
    }


def brute_force(row: np.ndarray, exclude: list[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(ranking, rank of every item) of one row: score descending, ties by ascending index."""
    keep = np.setdiff1d(np.arange(len(row)), exclude)
    order = keep[np.lexsort((keep, -row[keep]))]
    rank_of = np.full(len(row), -1)
    rank_of[order] = np.arange(len(order))
    return order, rank_of


def check_against_brute_force(out: Path, d: dict, negatives, exclude=None) -> None:
    summary, records = pages(out)
    scores, targets, relevance = d["scores"], d["targets"], d.get("relevance")
    q, n = scores.shape
    assert summary["queries"] == q == len(records)
    for i, rec in enumerate(records):
        assert rec["q"] == i
        order, rank_of = brute_force(scores[i], [] if exclude is None else exclude[i])
        t = int(targets[i])
        assert rec["target"] == t and rec["rank"] == rank_of[t] == summary["columns"]["rank"][i]
        assert rec["top"] == order[:TOP].tolist()
        np.testing.assert_array_equal(rec["curve"], scores[i][order[:WINDOW]])
        if relevance is not None:
            np.testing.assert_array_equal(rec["grades"], relevance[i][order[:TOP]])
        band = None
        if negatives is not None:
            band_row = negatives[i]
            a, b = negatives.drops[i]
            band = rec["band"]
            assert band["size"] == len(band_row) == summary["columns"]["band_size"][i]
            assert band["drops"] == [a, b]
            if a >= 0:
                p = rank_of[t]
                assert (band["start"], band["end"]) == (p + a + 2, p + b + 1)
                assert summary["columns"]["band_start"][i] == p + a + 2
                # the drops are the score falls at those ranks
                ranked = scores[i][order]
                assert band["dropsize"][0] == pytest.approx(
                    ranked[p + a + 1] - ranked[p + a + 2], abs=1e-6
                )
            else:
                assert "start" not in band
            listed = band_row[:BAND_ITEMS]
            assert [x[0] for x in band["items"]] == listed.tolist()
            assert [x[1] for x in band["items"]] == rank_of[listed].tolist()
            assert [x[2] for x in band["items"]] == pytest.approx(scores[i][listed].tolist())
            expected = [j for j, g in enumerate(order[:TOP]) if g in set(band_row.tolist())]
            assert band["intop"] == expected
        if relevance is not None:
            fn = [g for g in np.nonzero(relevance[i] >= GRADE)[0] if g != t and rank_of[g] >= 0]
            fn = sorted(fn, key=lambda g: rank_of[g])
            info = rec["fn"]
            assert [x[0] for x in info["items"]] == fn
            assert [x[1] for x in info["items"]] == rank_of[fn].tolist()
            assert info["count"] == len(fn) == summary["columns"]["fn_total"][i]
            assert info["top"] == sum(rank_of[g] < TOP for g in fn)
            if band is not None:
                in_band = [g in set(negatives[i].tolist()) for g in fn]
                assert [x[4] for x in info["items"]] == [int(v) for v in in_band]
                assert info["band"] == sum(in_band) == summary["columns"]["fn_band"][i]
                if "start" in band:
                    above = sum(rank_of[t] < rank_of[g] < band["start"] for g in fn)
                    assert info["above"] == above == summary["columns"]["fn_above"][i]


def write(out: Path, d: dict, **kw):
    args = dict(
        scores=d["scores"],
        targets=d["targets"],
        images=d["images"],
        reference=d["reference"],
        texts=d["texts"],
        relevance=d["relevance"],
        top=TOP,
        curve=WINDOW,
        band_items=BAND_ITEMS,
        false_negative_grade=GRADE,
        page_size=5,
    )
    args.update(kw)
    return write_page(out, **args)


@pytest.mark.parametrize("positives", [False, True])
def test_every_field_matches_a_brute_force_ranking(tmp_path, positives):
    d = data()
    # Known positives are removed from the bands: the band is then not all of its ranks.
    known = [np.nonzero(r >= 1.0)[0] for r in d["relevance"]] if positives else None
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30, positives=known)
    if positives:
        assert any(len(negatives[i]) < np.diff(negatives.drops[i])[0] for i in range(23))
    page = write(tmp_path / "site", d, negatives=negatives)
    assert page.queries == 23 and page.pages == 5  # 5 per data file
    check_against_brute_force(tmp_path / "site", d, negatives)


def test_ties_at_the_edge_of_the_window(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (9, 80)).astype(np.float32)  # 20 items per value: all ties
    d = {"scores": scores, "targets": rng.integers(0, 80, 9)}
    negatives = qure.mine_negatives(scores, d["targets"], max_rank=50)
    write_page(
        tmp_path / "site",
        scores=scores,
        targets=d["targets"],
        negatives=negatives,
        top=TOP,
        curve=WINDOW,
        band_items=BAND_ITEMS,
    )
    check_against_brute_force(tmp_path / "site", d, negatives)


def test_features_give_the_page_of_their_scores(tmp_path):
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((17, 16), dtype=np.float32)
    gallery = rng.standard_normal((90, 3, 16), dtype=np.float32)  # 3 tokens per image
    targets = rng.integers(0, 90, 17)
    negatives = qure.mine_from_features(queries, gallery, targets, max_rank=40)
    write_page(
        tmp_path / "f", queries=queries, gallery=gallery, targets=targets, negatives=negatives
    )
    scores = qure.score(queries, gallery)
    write_page(tmp_path / "s", scores=scores, targets=targets, negatives=negatives)
    for name in ["summary.js", "p00000.js"]:
        assert (tmp_path / "f" / "data" / name).read_text() == (
            tmp_path / "s" / "data" / name
        ).read_text()


def test_sparse_relevance_is_the_dense_one(tmp_path):
    d = data(3)
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30)
    write(tmp_path / "dense", d, negatives=negatives)
    sparse = [{int(g): float(r[g]) for g in np.nonzero(r)[0]} for r in d["relevance"]]
    write(tmp_path / "sparse", d, negatives=negatives, relevance=sparse)
    for k in range(5):
        name = f"p{k:05d}.js"
        assert (tmp_path / "dense" / "data" / name).read_text() == (
            tmp_path / "sparse" / "data" / name
        ).read_text()


def test_index_lists_are_relevance_one(tmp_path):
    d = data(4)
    lists = [np.nonzero(r >= 1.0)[0] for r in d["relevance"]]
    write(tmp_path / "site", d, relevance=lists)
    _, records = pages(tmp_path / "site")
    for rec, r in zip(records, lists):
        assert {x[0] for x in rec["fn"]["items"]} == set(r.tolist()) - {rec["target"]}
        assert all(x[2] == 1.0 for x in rec["fn"]["items"])


def test_excluded_items_leave_the_ranking(tmp_path):
    d = data(5)
    n = d["scores"].shape[1]
    reference = np.random.default_rng(5).integers(0, n, 23)
    reference = np.where(reference == d["targets"], (reference + 1) % n, reference)
    write(tmp_path / "site", d, exclude=reference)
    check_against_brute_force(tmp_path / "site", d, None, exclude=[[r] for r in reference])
    with pytest.raises(ValueError, match="excludes its own target"):
        write(tmp_path / "again", d, exclude=d["targets"])


def test_a_tiny_gallery_with_exclusions_pads_the_ranking(tmp_path):
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]], dtype=np.float32)
    write_page(tmp_path / "site", scores=scores, targets=[1, 1], exclude=[[2], [0, 2]])
    _, records = pages(tmp_path / "site")
    assert records[0]["top"] == [1, 0, -1] and records[0]["rank"] == 0
    assert records[1]["top"] == [1, -1, -1] and records[1]["rank"] == 0
    assert np.isnan(records[1]["curve"][1:]).all()


def test_thumbnails_once_per_image_shown(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    d = data(6)
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30)
    page = write(tmp_path / "site", d, negatives=negatives, thumbnail_size=8)
    summary, records = pages(tmp_path / "site")
    shown = set()
    for rec in records:
        shown |= {g for g in rec["top"] if g >= 0} | {rec["target"], rec["ref"]}
        shown |= {x[0] for x in rec["band"]["items"]} | {x[0] for x in rec["fn"]["items"]}
    files = sorted((tmp_path / "site" / "img").rglob("*.png"))
    assert page.thumbnails == len(files) == len(shown)
    assert {int(f.stem) for f in files} == shown
    assert summary["images"] == "png" and summary["image_size"] == 8
    some = max(shown)  # an extra reference beyond the gallery, or the last gallery image
    with pil.open(tmp_path / "site" / "img" / str(some // 1000) / f"{some}.png") as image:
        np.testing.assert_array_equal(np.asarray(image), d["images"][some])


def test_image_files_become_small_jpegs(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(7)
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i in range(6):
        path = folder / f"{i}.png"
        pil.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    scores = rng.standard_normal((3, 6)).astype(np.float32)
    page = write_page(
        tmp_path / "site",
        scores=scores,
        targets=[0, 1, 2],
        images=paths,
        reference=[3, 4, 5],
        thumbnail_size=64,
    )
    assert page.thumbnails == 6
    with pil.open(tmp_path / "site" / "img" / "0" / "5.jpg") as image:
        assert image.format == "JPEG" and max(image.size) == 64
    paths[2] = str(folder / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_page(tmp_path / "site", scores=scores, targets=[0, 1, 2], images=paths)


def test_summary_columns_and_the_viewer(tmp_path):
    d = data(8)
    d["texts"][3] = "</script><script>alert(1)</script>"
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30)
    ids = [f"id-{i}" for i in range(23)]
    write(
        tmp_path / "site",
        d,
        negatives=negatives,
        query_ids=ids,
        title="A <title>",
        notes={"model": "m"},
    )
    summary, _ = pages(tmp_path / "site")
    columns = summary["columns"]
    assert set(columns) == {
        "rank",
        "id",
        "text",
        "band_size",
        "band_start",
        "fn_total",
        "fn_top",
        "fn_band",
        "fn_above",
    }
    assert columns["id"] == ids and columns["text"] == d["texts"]
    assert all(len(v) == 23 for v in columns.values())
    assert summary["notes"] == {"model": "m"} and summary["title"] == "A <title>"
    assert summary["top"] == TOP and summary["window"] == WINDOW and summary["fn_grade"] == GRADE
    raw = (tmp_path / "site" / "data" / "summary.js").read_text()
    assert "</script>" not in raw  # a text cannot end the <script> element that loads it
    html = (tmp_path / "site" / "index.html").read_text()
    assert MARKER in html and "<title>A &lt;title&gt;</title>" in html
    # Self-contained: nothing is loaded from elsewhere (the SVG namespace is a name, no fetch).
    assert "<link" not in html and "@import" not in html
    assert "https://" not in html
    assert html.replace("http://www.w3.org/2000/svg", "").count("http://") == 0
    assert 'src="data/summary.js"' in html


def test_image_names_go_with_the_images_they_name(tmp_path):
    d = data(15)
    names = [f"img-{i}.jpg" for i in range(155)]
    write(tmp_path / "site", d, image_names=names)
    _, records = pages(tmp_path / "site")
    for rec in records:
        shown = {g for g in rec["top"]} | {rec["target"], rec["ref"]}
        assert {int(k) for k in rec["names"]} >= shown
        assert all(v == f"img-{k}.jpg" for k, v in rec["names"].items())
    with pytest.raises(ValueError, match="154 entries for 155"):
        write(tmp_path / "site", d, image_names=names[:-1])
    with pytest.raises(ValueError, match="100 image names for a gallery of 150"):
        write(tmp_path / "site", d, images=None, reference=None, image_names=names[:100])


def test_only_scores(tmp_path):
    scores = np.random.default_rng(9).standard_normal((4, 30)).astype(np.float32)
    page = write_page(tmp_path / "site", scores=scores)
    summary, records = pages(tmp_path / "site")
    assert page.thumbnails == 0 and summary["images"] is None
    assert set(summary["columns"]) == {"rank"} and summary["columns"]["rank"] == [-1] * 4
    assert all("band" not in r and "fn" not in r and r["target"] == -1 for r in records)
    assert summary["top"] == 30 and summary["window"] == 30  # capped at the gallery


def test_rewriting_replaces_an_earlier_page_only(tmp_path):
    d = data(10)
    out = tmp_path / "site"
    write(out, d)
    stale = out / "data" / "p00099.js"
    stale.write_text("stale")
    write(out, d, page_size=100)
    assert not stale.exists() and len(list((out / "data").iterdir())) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write(other, d)
    assert (other / "notes.txt").read_text() == "mine"


def test_bands_mined_on_other_scores_are_refused(tmp_path):
    d = data(11)
    negatives = qure.mine_negatives(d["scores"][::-1].copy(), d["targets"], max_rank=30)
    with pytest.raises(ValueError, match="not mined on these scores"):
        write(tmp_path / "site", d, negatives=negatives)


def test_bands_from_a_file(tmp_path):
    d = data(12)
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30)
    negatives.save(tmp_path / "bands.npz")
    write(tmp_path / "site", d, negatives=tmp_path / "bands.npz")
    check_against_brute_force(tmp_path / "site", d, negatives)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"scores": None}, ValueError, "needs scores"),
        ({"queries": np.zeros((23, 4))}, ValueError, "not both"),
        ({"scores": np.zeros(5)}, ValueError, "2-D"),
        ({"scores": np.full((23, 150), "a")}, TypeError, "real numbers"),
        ({"targets": np.zeros(22, dtype=int)}, ValueError, r"shape \(23,\)"),
        ({"targets": np.full(23, 150)}, ValueError, "outside"),
        ({"targets": np.zeros(23)}, TypeError, "integers"),
        ({"images": np.zeros((10, 4, 4, 3), np.uint8)}, ValueError, "10 images for a gallery"),
        ({"images": np.zeros((200, 3, 8, 8), np.uint8)}, ValueError, "channels last"),
        ({"images": "folder"}, TypeError, "sequence of image file paths"),
        ({"reference": np.full(23, 999)}, ValueError, "outside"),
        ({"texts": ["a"] * 3}, ValueError, "3 entries"),
        ({"texts": "abc"}, TypeError, "sequence"),
        ({"relevance": np.zeros((23, 3))}, ValueError, r"\(Q, N\)"),
        ({"relevance": [{999: 1.0}] * 23}, ValueError, "outside the gallery"),
        ({"relevance": 3}, TypeError, "relevance"),
        ({"top": 0}, ValueError, "top must be at least 1"),
        ({"top": 2.5}, TypeError, "top must be an integer"),
        ({"page_size": 0}, ValueError, "page_size"),
        ({"false_negative_grade": float("nan")}, ValueError, "finite"),
        ({"negatives": 3}, TypeError, "HardNegatives"),
        ({"negatives": "missing.npz"}, FileNotFoundError, "missing.npz"),
    ],
)
def test_bad_inputs_are_named(tmp_path, change, error, match):
    d = data()
    with pytest.raises(error, match=match):
        write(tmp_path / "site", d, **change)


def test_nan_scores_name_the_query(tmp_path):
    d = data()
    d["scores"][7, 3] = np.nan
    with pytest.raises(ValueError, match="query 7"):
        write(tmp_path / "site", d)


def test_negatives_need_their_targets_and_no_exclusions(tmp_path):
    d = data()
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30)
    with pytest.raises(ValueError, match="targets"):
        write(tmp_path / "a", d, negatives=negatives, targets=None)
    with pytest.raises(ValueError, match="exclude"):
        write(tmp_path / "b", d, negatives=negatives, exclude=d["targets"])


def test_command_line(tmp_path, capsys):
    d = data(13)
    files = {}
    for name in ("scores", "targets", "relevance", "images", "reference"):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], d[name])
    (tmp_path / "texts.json").write_text(json.dumps(d["texts"]))
    (tmp_path / "ids.txt").write_text("\n".join(f"q{i}" for i in range(23)))
    out = tmp_path / "site"
    argv = ["inspect", "--out", str(out), "--top", str(TOP), "--curve", str(WINDOW)]
    argv += ["--scores", str(files["scores"]), "--targets", str(files["targets"])]
    argv += ["--images", str(files["images"]), "--reference", str(files["reference"])]
    argv += ["--relevance", str(files["relevance"]), "--fn-grade", str(GRADE)]
    argv += ["--texts", str(tmp_path / "texts.json"), "--query-ids", str(tmp_path / "ids.txt")]
    assert qure.cli.main([*argv, "--mine", "--max-rank", "30"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 23 queries" in printed and (out / "index.html").as_uri() in printed
    negatives = qure.mine_negatives(d["scores"], d["targets"], max_rank=30)
    summary, records = pages(out)
    assert summary["columns"]["id"][5] == "q5" and summary["columns"]["text"] == d["texts"]
    assert [r["band"]["size"] for r in records] == negatives.sizes.tolist()
    assert summary["notes"]["bands"] == "mined here, max_rank=30"

    negatives.save(tmp_path / "bands.npz")
    assert qure.cli.main([*argv, "--bands", str(tmp_path / "bands.npz")]) == 0
    capsys.readouterr()
    assert qure.cli.main(["inspect", "--out", str(out)]) == 2
    assert "give --scores" in capsys.readouterr().err
    assert qure.cli.main([*argv, "--bands", "x.npz", "--mine"]) == 2
    assert qure.cli.main(["inspect", "--scores", str(tmp_path / "nope.npy")]) == 1
    assert "not found" in capsys.readouterr().err


def test_command_line_features_and_excluded_references(tmp_path, capsys):
    rng = np.random.default_rng(14)
    queries = rng.standard_normal((6, 8), dtype=np.float32)
    gallery = rng.standard_normal((30, 8), dtype=np.float32)
    np.save(tmp_path / "q.npy", queries)
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "t.npy", np.arange(6))
    np.save(tmp_path / "r.npy", np.array([6, 7, 8, 9, 10, 40]))  # the last is no gallery image
    out = tmp_path / "site"
    argv = ["inspect", "--out", str(out), "--queries", str(tmp_path / "q.npy")]
    argv += ["--gallery", str(tmp_path / "g.npy"), "--targets", str(tmp_path / "t.npy")]
    argv += ["--reference", str(tmp_path / "r.npy"), "--exclude-reference"]
    assert qure.cli.main(argv) == 0
    _, records = pages(out)
    scores = qure.score(queries, gallery)
    for i, rec in enumerate(records):
        order, rank_of = brute_force(scores[i], [6 + i] if i < 5 else [])
        assert rec["top"][:10] == order[:10].tolist() and rec["rank"] == rank_of[i]
