"""Shared set-up for qure's benchmarks: thread counts, sizes and a ratio summary.

Run with ``pytest benches/``. ``QURE_BENCH_SCALE=small`` shrinks every problem (a smoke run);
``QURE_BENCH_THREADS`` (default 2) sets the threads of qure, torch and FAISS alike.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

# The plain-Python references the tests check qure against (the released code's loop among them)
# are the anchors some benchmarks time: one implementation for both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SMALL = os.environ.get("QURE_BENCH_SCALE", "full") == "small"
THREADS = int(os.environ.get("QURE_BENCH_THREADS", "2"))

# Anchors for top-k: qure is compared with the better of the two.
ANCHORS = ("FAISS IndexFlatIP", "torch matmul+topk")
# The physical floor for mining: one read of the score matrix.
STREAMING_PASS = "one streaming pass alone (torch.amax)"

# group -> name -> (seconds per unit of work, unit)
RESULTS: dict[str, dict[str, tuple[float, str]]] = defaultdict(dict)


def record(group: str, name: str, value: float | None, unit: str) -> None:
    """Keeps a result for the end-of-run table (nothing when timing is off)."""
    if value is not None:
        RESULTS[group][name] = (value, unit)


def best_seconds(benchmark) -> float | None:
    """Best (minimum) time of a finished benchmark; None under --benchmark-disable."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.min)


def per_unit(benchmark, units: int) -> float | None:
    """Best time divided by the units of work it did."""
    best = best_seconds(benchmark)
    return None if best is None else best / units


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import qure

    qure.set_num_threads(THREADS)
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(THREADS)
    except ImportError:
        pass


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"qure ratios ({THREADS} threads{', small scale' if SMALL else ''})")
    for group, rows in RESULTS.items():
        base = rows.get("qure")
        tr.write_line(f"[{group}]")
        for name, (value, unit) in rows.items():
            ratio = ""
            if base and name != "qure" and unit == base[1] and "alone" not in name:
                if unit == "GFLOP/s":
                    ratio = f"  (qure is {base[0] / value:.2f}x)"
                elif unit == "MB":
                    ratio = f"  ({value / base[0]:.1f}x qure's)"
                else:
                    ratio = f"  (qure is {value / base[0]:.1f}x faster)"
            tr.write_line(f"  {name:<36} {value:12.4f} {unit}{ratio}")
        anchors = [v for n, (v, u) in rows.items() if base and u == base[1] and n in ANCHORS]
        if base and anchors and base[1] == "GFLOP/s":
            for name, (value, _) in rows.items():
                if name.startswith("qure"):
                    tr.write_line(
                        f"  -> {name} / better of FAISS and torch: {value / max(anchors):.2f}x"
                    )
        floor = rows.get(STREAMING_PASS)
        if base and floor and base[1] == floor[1]:
            tr.write_line(f"  -> qure / one streaming pass: {base[0] / floor[0]:.1f}x")
