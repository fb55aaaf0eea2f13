"""End-to-end test of ``qure demo`` on a tiny benchmark, and of its command line."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import qure.cli  # noqa: E402
import qure.demo  # noqa: E402
from qure.datasets.shapes import SAME_DESIGN  # noqa: E402
from qure.demo import (  # noqa: E402
    DEMO_ARMS,
    EXPERIMENTS,
    HEADERS,
    METRICS,
    DemoSettings,
    paired,
    parse_arm,
    run_demo,
    used_false_negative_rate,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE_HEADER = "| arm | " + " | ".join(HEADERS.get(m, m) for m in METRICS) + " |"
SETTINGS = DemoSettings(
    n_queries=(60, 20, 20), seeds=(0, 1), pretrain_epochs=2, finetune_epochs=2, arms=DEMO_ARMS
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Runs the tiny demo once, in this process: (output folder, returned report, printed)."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = run_demo(out, SETTINGS, progress=False, workers=1)
    return out, report, printed.getvalue()


def load_report(out):
    return json.loads((out / "report.json").read_text())


def is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_report_json(demo):
    out, returned, _ = demo
    report = load_report(out)
    assert report["settings"]["n_queries"] == [60, 20, 20]
    assert report["settings"]["seeds"] == [0, 1]
    bench = report["benchmark"]
    assert bench["train_queries"] == 60 and bench["eval_queries"] == 20
    assert bench["eval_split"] == "test"
    assert bench["train_images"] > 0 and bench["eval_images"] > 0
    assert 0 < bench["open_share"] <= 1 and bench["valid_answers_per_query"] >= 1
    assert report["seconds"] == returned["seconds"]

    runs = report["runs"]
    assert runs[0]["arm"] == "start (pretrained)"
    for arm in DEMO_ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        assert [r["seed"] for r in mine] == [0, 1], arm
        for run in mine:
            for name in METRICS:
                assert name in run, (arm, name)
            recalls = [run[f"R@{k}"] for k in (1, 5, 10, 50)]
            assert all(0 <= r <= 100 for r in recalls)
            assert recalls == sorted(recalls)
            assert 0 <= run["nDCG@10"] <= 1
            assert is_missing(run["preference_rate"]) or 0 <= run["preference_rate"] <= 100
            assert 0 <= run["fn_rate"] <= 100
            if arm.startswith("qure"):
                assert run["band_size"] >= 0 and 0 <= run["band_start"] <= 100
                assert [m["epoch"] for m in run["mining"]] == [1]  # every re-mining
                assert 0 <= run["mining"][0]["degenerate"] <= 1
            else:
                assert is_missing(run["band_size"]) and run["mining"] == [] or arm == "topk"

    summary = report["summary"]
    assert list(summary) == list(DEMO_ARMS)
    for arm in DEMO_ARMS:
        assert set(summary[arm]) == set(METRICS)
        values = [r["R@10"] for r in runs if r["arm"] == arm]
        assert summary[arm]["R@10"]["mean"] == pytest.approx(sum(values) / 2)

    comparisons = report["comparisons"]
    assert list(comparisons) == list(DEMO_ARMS[1:])
    for other, by_metric in comparisons.items():
        first = [r["nDCG@10"] for r in runs if r["arm"] == DEMO_ARMS[0]]
        second = [r["nDCG@10"] for r in runs if r["arm"] == other]
        diffs = by_metric["nDCG@10"]["diffs"]
        assert diffs == pytest.approx([a - b for a, b in zip(first, second)])
        assert by_metric["nDCG@10"]["call"] in ("wins", "loses", "no clear difference")

    assert set(report["curves"]) == set(DEMO_ARMS)
    for curves in report["curves"].values():
        assert len(curves) == 2 and [p["epoch"] for p in curves[0]] == [0, 1]
    verdict = report["verdict"]
    assert isinstance(verdict, list) and len(verdict) >= len(DEMO_ARMS) - 1
    assert verdict == returned["verdict"]


def test_report_markdown(demo):
    out, report, _ = demo
    text = (out / "report.md").read_text()
    assert TABLE_HEADER in text
    assert "Verdict" in text and "Paired comparison" in text and "Band location" in text
    for line in report["verdict"]:
        assert line in text
    for arm in DEMO_ARMS:
        assert f"| {arm} |" in text
    for name in ("score_curve.png", "curves.png", "retrieval_grid.png"):
        assert name in text
    start = next(line for line in text.splitlines() if line.startswith("| start (pretrained) |"))
    assert "±" not in start  # one run: no spread to show
    row = next(line for line in text.splitlines() if line.startswith("| qure |"))
    assert "±" in row


def test_plots_are_png(demo):
    out, _, _ = demo
    for name in ("score_curve.png", "curves.png", "retrieval_grid.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 1000, name


def test_training_logs(demo):
    out, _, _ = demo
    for arm in DEMO_ARMS:
        lines = (out / f"train-{arm}-seed0.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["epoch"] for r in records] == [0, 1], arm
        assert all(math.isfinite(r["loss"]) for r in records)


def test_printed_table_progress_and_verdict(demo):
    _, report, printed = demo
    assert TABLE_HEADER in printed
    runs = 2 * len(DEMO_ARMS)  # two seeds
    assert f"run 1/{runs}" in printed and f"run {runs}/{runs}" in printed and "s left" in printed
    for line in report["verdict"]:
        assert line in printed


def test_report_json_is_strict_json(demo):
    # NaN metrics (e.g. band_size of non-QuRe runs) must be written as null, not bare NaN.
    out, _, _ = demo

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads((out / "report.json").read_text(), parse_constant=refuse)


def test_parallel_workers_give_identical_results(demo, tmp_path):
    out, _, _ = demo
    settings = DemoSettings(
        n_queries=(60, 20, 20),
        seeds=(0, 1),
        pretrain_epochs=2,
        finetune_epochs=2,
        arms=("qure", "topk-oracle"),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        one = run_demo(tmp_path / "one", settings, progress=False, workers=1)
        two = run_demo(tmp_path / "two", settings, progress=False, workers=2)
    a = json.loads((tmp_path / "one" / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    assert a["runs"] == b["runs"] and a["curves"] == b["curves"]
    assert one["verdict"] == two["verdict"]
    # The shared arm also equals the full demo's run with the same seed.
    full = load_report(out)
    same = [r for r in full["runs"] if r["arm"] == "qure"]
    assert same == [r for r in a["runs"] if r["arm"] == "qure"]


def test_the_demo_writes_an_inspect_page(demo):
    out, report, printed = demo
    assert report["inspect"] == "inspect/index.html" and (out / "inspect" / "index.html").is_file()
    assert "inspect page: " in printed and "(inspect/index.html)" in (out / "report.md").read_text()
    summary = (out / "inspect" / "data" / "summary.js").read_text()
    payload = json.loads(summary[len("qureInspectSummary(") : summary.rindex(")")])
    assert payload["queries"] == 20 and payload["bands"] and payload["relevance"]
    assert payload["fn_grade"] == SAME_DESIGN and payload["images"] == "png"
    assert payload["notes"]["model"] == "qure, seed 0 (fine-tuned)"
    assert payload["notes"]["bands"].startswith(f"max_rank={qure.demo.DEFAULT_MAX_RANK},")
    assert payload["columns"]["id"][:2] == ["test-0", "test-1"]


# --------------------------------------------------------------------------------------------
# pieces


def test_parse_arm():
    assert parse_arm("qure").max_rank == qure.demo.DEFAULT_MAX_RANK
    assert parse_arm("qure-tail").max_rank is None
    assert parse_arm("qure-w75").max_rank == 75
    assert parse_arm("topk-oracle").oracle and parse_arm("topk-oracle").method == "topk"
    for bad in ("qure-w0", "qure-w", "oracle", "QURE", ""):
        with pytest.raises(ValueError, match="unknown arm"):
            parse_arm(bad)


def test_paired_rule():
    results = {"a": {"m": [0.5, 0.6, 0.7]}, "b": {"m": [0.4, 0.5, 0.8]}}
    c = paired(results, "a", "b", "m")
    assert c["diffs"] == pytest.approx([0.1, 0.1, -0.1])
    assert c["call"] == "no clear difference"  # 2 of 3 positive: below 80%
    results["b"]["m"] = [0.4, 0.5, 0.6]
    assert paired(results, "a", "b", "m")["call"] == "wins"
    assert paired(results, "b", "a", "m")["call"] == "loses"
    five = {"a": {"m": [1, 1, 1, 1, 0]}, "b": {"m": [0, 0, 0, 0, 0.5]}}
    assert paired(five, "a", "b", "m")["call"] == "wins"  # 4 of 5


def test_used_false_negative_rate_by_hand():
    relevance = np.array(
        [[1.0, SAME_DESIGN, 0.1, 0.2], [0.0, 1.0, 0.9, 0.3], [0.1, 0.1, 1.0, 0.0]],
        dtype=np.float32,
    )
    target = np.array([0, 1, 2])
    drawn = [np.array([1, 3, 0]), np.array([2, 2, 1])]
    # epoch 0: q0 draws 1 (0.8, false), q1 draws 3 (0.3), q2 draws 0 (0.1);
    # epoch 1: q0 draws 2 (0.1), q1 draws 2 (0.9, false), q2 draws 1 (0.1).
    rate = used_false_negative_rate("topk", drawn, [], target, relevance, 32)
    assert rate == pytest.approx(100 * 2 / 6)
    # contrastive, one batch of all three: pairs (q, other targets) = 6, false: (0,1), (1,2).
    orders = [np.array([2, 0, 1])]
    rate = used_false_negative_rate("contrastive", [], orders, target, relevance, 32)
    assert rate == pytest.approx(100 * 2 / 6)
    # batches of 2: [2, 0] and [1]: pairs (2,0), (0,2) -> none false.
    rate = used_false_negative_rate("contrastive", [], orders, target, relevance, 2)
    assert rate == 0.0


def test_experiments_use_the_validation_split():
    for name, arms in EXPERIMENTS.items():
        settings = DemoSettings.experiment(name)
        assert settings.arms == arms
        assert settings.split == ("test" if name == "demo" else "val")
    assert DemoSettings.experiment("sweep", quick=True).n_queries == DemoSettings.quick().n_queries
    with pytest.raises(ValueError):
        DemoSettings.experiment("nope")


@pytest.mark.parametrize(
    "changes", [{"split": "train"}, {"seeds": ()}, {"arms": ()}, {"arms": ("qure", "qure")}]
)
def test_bad_settings(changes, tmp_path):
    settings = DemoSettings(**changes)
    with pytest.raises(ValueError):
        run_demo(tmp_path, settings, progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_demo(tmp_path, DemoSettings(), workers=0)


# --------------------------------------------------------------------------------------------
# command line


def test_cli_parser_accepts_demo_quick():
    args = qure.cli.build_parser().parse_args(["demo", "--quick", "--out", "X"])
    assert args.command == "demo"
    assert args.quick is True
    assert args.out == "X"
    assert args.seeds is None and args.threads is None and args.no_progress is False
    assert args.no_inspect is False
    assert args.func is qure.cli._cmd_demo
    defaults = qure.cli.build_parser().parse_args(["demo"])
    assert defaults.quick is False and defaults.out == "qure-demo"


def test_cli_demo_passes_settings(monkeypatch, tmp_path):
    calls = []

    def fake_run_demo(out_dir, settings=None, *, progress=True, workers=None):
        calls.append((out_dir, settings, progress, workers))
        return {}

    monkeypatch.setattr(qure.demo, "run_demo", fake_run_demo)
    out = str(tmp_path / "d")
    assert qure.cli.main(["demo", "--quick", "--out", out, "--seeds", "2", "--no-progress"]) == 0
    ((out_dir, settings, progress, workers),) = calls
    assert out_dir == out and progress is False and workers is None
    quick = DemoSettings.quick()
    assert settings.n_queries == quick.n_queries
    assert settings.seeds == (0, 1)
    assert qure.cli.main(["demo", "--out", out]) == 0
    assert calls[-1][1].n_queries == DemoSettings().n_queries
    assert calls[-1][1].seeds == DemoSettings().seeds
    assert calls[-1][2] is True
    argv = ["demo", "--experiment", "sweep", "--arms", "qure-w10, topk", "--workers", "3"]
    assert qure.cli.main([*argv, "--split", "test", "--out", out]) == 0
    _, settings, _, workers = calls[-1]
    assert settings.arms == ("qure-w10", "topk") and settings.split == "test" and workers == 3
    assert qure.cli.main(["demo", "--experiment", "oracle", "--out", out]) == 0
    assert calls[-1][1].arms == EXPERIMENTS["oracle"] and calls[-1][1].split == "val"
    assert qure.cli.main(["demo", "--seeds", "0", "--out", out]) == 2

    def fake_without_page(out_dir, settings=None, *, progress=True, workers=None, inspect=True):
        calls.append(inspect)
        return {}

    monkeypatch.setattr(qure.demo, "run_demo", fake_without_page)
    assert qure.cli.main(["demo", "--no-inspect", "--out", out]) == 0
    assert qure.cli.main(["demo", "--out", out]) == 0
    assert calls[-2:] == [False, True]


def test_quick_settings_are_smaller():
    quick, full = DemoSettings.quick(), DemoSettings()
    assert len(quick.seeds) == 3 and len(full.seeds) == 5
    assert sum(quick.n_queries) < sum(full.n_queries)
