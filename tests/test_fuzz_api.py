"""The fuzz driver (tests/fuzz_api.py) counts aborts, hangs and unexpected errors, and a short
campaign over the public API finds none. CI runs a longer campaign (.ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_api  # noqa: E402

DRIVER = Path(__file__).with_name("fuzz_api.py")


def test_the_driver_counts_aborts_hangs_and_unexpected_errors():
    worker = fuzz_api.Worker(memory=4 * fuzz_api.GiB, timeout=5.0)
    try:
        assert worker.call(fuzz_api.Call("self_test", {"mode": "fine"})) == ("ok", "fine")
        status, detail = worker.call(fuzz_api.Call("self_test", {"mode": "abort"}))
        assert (status, detail) == ("crash", "the worker died (signal SIGABRT)")
        status, _ = worker.call(fuzz_api.Call("self_test", {"mode": "hang"}))
        assert status == "hang"
        status, detail = worker.call(fuzz_api.Call("self_test", {"mode": "panic"}))
        assert status == "unexpected" and "SystemError" in detail
        # The worker came back after each death.
        assert worker.call(fuzz_api.Call("self_test", {"mode": "fine"}))[0] == "ok"
        assert worker.starts == 3
    finally:
        worker.stop()


def test_a_short_campaign_finds_no_failure(tmp_path):
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, str(DRIVER), "--seconds", "8", "--chunk", "4", "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    figures = json.loads(report.read_text())
    assert out.returncode == 0, figures["failures"]
    assert figures["crashes"] == figures["hangs"] == 0
    assert figures["calls"] > 0 and set(figures["by_target"]) >= {"mine_negatives", "load_bands"}
