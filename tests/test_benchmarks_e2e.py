"""The official-layout fixtures run end to end through ``qure train`` and ``qure evaluate``.

FashionIQ and CIRR train a tiny randomly initialised BLIP-2 (and CIRR a tiny CLIP + combiner)
with QuRe mining on CPU; CIRCO is evaluated zero-shot from the CIRR model, as in the paper.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("PIL")

from qure.cli import main  # noqa: E402

CONFIGS = Path(__file__).parent / "fixtures" / "configs"


def _run(*args: str) -> None:
    assert main([*args, "--no-progress"]) == 0


@pytest.fixture(scope="module")
def cirr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cirr")
    _run("train", "--config", str(CONFIGS / "cirr.json"), "--output", str(out))
    return out


def test_fashioniq_train_and_evaluate(tmp_path):
    _run("train", "--config", str(CONFIGS / "fashioniq.json"), "--output", str(tmp_path))
    log = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert any(r.get("mined") for r in log)  # re-mined with the Rust core during training
    assert all("band_mean" in r for r in log if r.get("mined"))
    _run(
        "evaluate",
        "--config",
        str(CONFIGS / "fashioniq.json"),
        "--checkpoint",
        str(tmp_path / "last.pt"),
        "--output",
        str(tmp_path),
    )
    metrics = json.loads((tmp_path / "metrics_fashioniq_val.json").read_text())
    for category in ("dress", "shirt", "toptee"):
        assert 0 <= metrics[f"{category}_R@10"] <= metrics[f"{category}_R@50"] <= 100
    assert metrics["average"] == pytest.approx(
        (metrics["average_R@10"] + metrics["average_R@50"]) / 2
    )
    # Gallery features were cached for the checkpoint; a second run reads them back.
    cached = list((tmp_path / "features").rglob("*.gallery.npy"))
    assert len(cached) == 3
    _run(
        "evaluate",
        "--config",
        str(CONFIGS / "fashioniq.json"),
        "--checkpoint",
        str(tmp_path / "last.pt"),
        "--output",
        str(tmp_path),
    )
    assert json.loads((tmp_path / "metrics_fashioniq_val.json").read_text()) == metrics


def test_cirr_val_metrics_and_test_submission(cirr_run):
    config, ckpt = str(CONFIGS / "cirr.json"), str(cirr_run / "last.pt")
    _run("evaluate", "--config", config, "--checkpoint", ckpt, "--output", str(cirr_run))
    metrics = json.loads((cirr_run / "metrics_cirr_val.json").read_text())
    for key in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"):
        assert 0 <= metrics[key] <= 100
    assert metrics["(R@5+Rsubset@1)/2"] == pytest.approx(
        (metrics["R@5"] + metrics["Rsubset@1"]) / 2
    )
    _run(
        "evaluate", "--config", config, "--checkpoint", ckpt, "--output", str(cirr_run),
        "--split", "test",
    )  # fmt: skip
    recall = json.loads((cirr_run / "cirr_test1_recall_submission.json").read_text())
    subset = json.loads((cirr_run / "cirr_test1_recall_subset_submission.json").read_text())
    assert recall["version"] == subset["version"] == "rc2"
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    captions = json.loads((CONFIGS.parent / "cirr/captions/cap.rc2.test1.json").read_text())
    for entry in captions:
        pairid = str(entry["pairid"])
        ranked, top3 = recall[pairid], subset[pairid]
        assert entry["reference"] not in ranked  # the reference is removed, as CIRR requires
        assert len(ranked) == len(set(ranked)) and len(ranked) <= 50
        members = set(entry["img_set"]["members"]) - {entry["reference"]}
        assert len(top3) == 3 and set(top3) <= members


def test_evaluate_inspect_pages(cirr_run, tmp_path):
    """``qure evaluate --inspect``: a page per split, ranked as the benchmark ranks."""
    import numpy as np
    from inspect_data import pages

    ckpt = str(cirr_run / "last.pt")
    for name in ("cirr", "circo"):
        config = str(CONFIGS / f"{name}.json")
        _run("evaluate", "--config", config, "--checkpoint", ckpt, "--output", str(tmp_path),
             "--inspect")  # fmt: skip
        metrics = json.loads((tmp_path / f"metrics_{name}_val.json").read_text())
        index = tmp_path / "inspect" / f"{name}-val" / "index.html"
        assert str(index) in metrics["files"] and index.is_file()
        summary, records = pages(index.parent)
        assert summary["queries"] == len(records) > 0 and summary["images"] == "jpg"
        for rec in records:
            assert rec["ref"] not in rec["top"]  # CIRR and CIRCO rank without the reference
            shown = {g for g in rec["top"] if g >= 0} | {rec["ref"], rec["target"]}
            assert all((index.parent / "img" / "0" / f"{g}.jpg").is_file() for g in shown)
            assert set(rec["names"]) >= {str(g) for g in shown}
        ranks = np.array(summary["columns"]["rank"])
        if name == "cirr":
            for k in (1, 5, 10, 50):  # the page's target ranks are the metrics' ranks
                assert metrics[f"R@{k}"] == pytest.approx(100 * np.mean(ranks < k))
        else:  # CIRCO's ground truths are its graded items
            assert summary["relevance"] and all("fn" in rec for rec in records)


def test_circo_zero_shot_from_the_cirr_model(cirr_run, tmp_path):
    config, ckpt = str(CONFIGS / "circo.json"), str(cirr_run / "last.pt")
    _run("evaluate", "--config", config, "--checkpoint", ckpt, "--output", str(tmp_path))
    metrics = json.loads((tmp_path / "metrics_circo_val.json").read_text())
    for k in (5, 10, 25, 50):
        assert 0 <= metrics[f"mAP@{k}"] <= 100
    _run(
        "evaluate", "--config", config, "--checkpoint", ckpt, "--output", str(tmp_path),
        "--split", "test",
    )  # fmt: skip
    submission = json.loads((tmp_path / "circo_test_submission.json").read_text())
    queries = json.loads((CONFIGS.parent / "circo/annotations/test.json").read_text())
    assert set(submission) == {str(q["id"]) for q in queries}
    for q in queries:
        ids = submission[str(q["id"])]
        assert all(isinstance(i, int) for i in ids) and q["reference_img_id"] not in ids
        assert len(ids) == len(set(ids)) <= 50


def test_clip_backbone_trains_with_topk_mining(tmp_path):
    config = str(CONFIGS / "cirr_clip.json")
    _run("train", "--config", config, "--output", str(tmp_path))
    _run(
        "evaluate", "--config", config, "--checkpoint", str(tmp_path / "last.pt"),
        "--output", str(tmp_path),
    )  # fmt: skip
    assert (tmp_path / "metrics_cirr_val.json").is_file()


def test_bad_configs_are_refused(tmp_path):
    from qure.experiments import load_config

    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": {"name": "imagenet", "root": "."}, "model": {}}))
    with pytest.raises(ValueError, match="output"):
        load_config(bad)
    bad.write_text(
        json.dumps({"dataset": {"name": "imagenet", "root": "."}, "model": {}, "output": "x"})
    )
    with pytest.raises(ValueError, match="dataset.name"):
        load_config(bad)
    bad.write_text(
        json.dumps(
            {
                "dataset": {"name": "cirr", "root": "."},
                "model": {},
                "output": "x",
                "train": {"epoch": 3},
            }
        )
    )
    with pytest.raises(ValueError, match="unknown train settings"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        from qure.experiments import evaluate_from_config

        evaluate_from_config(CONFIGS / "cirr.json", tmp_path / "nope.pt", output=tmp_path)
