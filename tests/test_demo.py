"""End-to-end test of ``qure demo`` on a tiny benchmark, and of its command line."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import qure.cli  # noqa: E402
import qure.demo  # noqa: E402
from qure.demo import METRICS, DemoSettings, run_demo  # noqa: E402
from qure.train import METHODS  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE_HEADER = "| method | " + " | ".join(METRICS) + " |"
SETTINGS = DemoSettings(n_queries=(60, 20, 20), seeds=(0,), pretrain_epochs=2, finetune_epochs=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Runs the tiny demo once: (output folder, returned report, printed text, seconds)."""
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to other load
    printed = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(printed):
            report = run_demo(out, SETTINGS, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, report, printed.getvalue(), time.perf_counter() - started


def load_report(out):
    return json.loads((out / "report.json").read_text())


def is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_demo_finishes_quickly(demo):
    _, _, _, seconds = demo
    assert seconds < 60


def test_report_json(demo):
    out, returned, _, _ = demo
    report = load_report(out)
    assert report["settings"]["n_queries"] == [60, 20, 20]
    assert report["settings"]["seeds"] == [0]
    bench = report["benchmark"]
    assert bench["train_queries"] == 60 and bench["test_queries"] == 20
    assert bench["train_images"] > 0 and bench["test_images"] > 0
    assert report["seconds"] == returned["seconds"]

    runs = report["runs"]
    assert runs[0]["method"] == "start (pretrained)"
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        assert [r["seed"] for r in mine] == [0], method
        run = mine[0]
        for name in METRICS:
            assert name in run, (method, name)
        recalls = [run[f"R@{k}"] for k in (1, 5, 10, 50)]
        assert all(0 <= r <= 100 for r in recalls)
        assert recalls == sorted(recalls)
        assert 0 <= run["nDCG@10"] <= 1
        assert is_missing(run["preference_rate"]) or 0 <= run["preference_rate"] <= 100
        assert 0 <= run["fn_rate"] <= 100
        if method == "qure":
            assert math.isfinite(run["band_size"]) and run["band_size"] >= 0
        else:
            assert is_missing(run["band_size"])

    summary = report["summary"]
    assert set(summary) == set(METHODS)
    for method in METHODS:
        assert set(summary[method]) == set(METRICS)
        for name in METRICS:
            assert set(summary[method][name]) == {"mean", "std"}
        run = next(r for r in runs if r["method"] == method)
        assert summary[method]["R@10"]["mean"] == pytest.approx(run["R@10"])

    verdict = report["verdict"]
    assert isinstance(verdict, list) and len(verdict) >= 3
    assert all(isinstance(line, str) and line for line in verdict)
    assert verdict == returned["verdict"]


def test_report_markdown(demo):
    out, report, _, _ = demo
    text = (out / "report.md").read_text()
    assert TABLE_HEADER in text
    assert "Verdict" in text
    for line in report["verdict"]:
        assert line in text
    for method in METHODS:
        assert f"| {method} |" in text
    assert "score_curve.png" in text and "retrieval_grid.png" in text


def test_plots_are_png(demo):
    out, _, _, _ = demo
    for name in ("score_curve.png", "retrieval_grid.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 1000, name


def test_training_logs(demo):
    out, _, _, _ = demo
    for method in METHODS:
        lines = (out / f"train-{method}-seed0.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["epoch"] for r in records] == [0, 1], method
        assert all(r["method"] == method and math.isfinite(r["loss"]) for r in records)


def test_printed_table_and_verdict(demo):
    _, report, printed, _ = demo
    assert TABLE_HEADER in printed
    for line in report["verdict"]:
        assert line in printed


def test_report_json_is_strict_json(demo):
    # NaN metrics (e.g. band_size of non-QuRe runs) must be written as null, not bare NaN.
    out, _, _, _ = demo

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads((out / "report.json").read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------------------------
# command line


def test_cli_parser_accepts_demo_quick():
    args = qure.cli.build_parser().parse_args(["demo", "--quick", "--out", "X"])
    assert args.command == "demo"
    assert args.quick is True
    assert args.out == "X"
    assert args.seeds is None and args.threads is None and args.no_progress is False
    assert args.func is qure.cli._cmd_demo
    defaults = qure.cli.build_parser().parse_args(["demo"])
    assert defaults.quick is False and defaults.out == "qure-demo"


def test_cli_demo_passes_settings(monkeypatch, tmp_path):
    calls = []

    def fake_run_demo(out_dir, settings=None, *, progress=True):
        calls.append((out_dir, settings, progress))
        return {}

    monkeypatch.setattr(qure.demo, "run_demo", fake_run_demo)
    out = str(tmp_path / "d")
    assert qure.cli.main(["demo", "--quick", "--out", out, "--seeds", "2", "--no-progress"]) == 0
    ((out_dir, settings, progress),) = calls
    assert out_dir == out and progress is False
    quick = DemoSettings.quick()
    assert settings.n_queries == quick.n_queries
    assert settings.seeds == (0, 1)
    assert qure.cli.main(["demo", "--out", out]) == 0
    assert calls[-1][1].n_queries == DemoSettings().n_queries
    assert calls[-1][1].seeds == DemoSettings().seeds
    assert calls[-1][2] is True


def test_quick_settings_are_smaller():
    quick, full = DemoSettings.quick(), DemoSettings()
    assert len(quick.seeds) == 1
    assert sum(quick.n_queries) < sum(full.n_queries)
