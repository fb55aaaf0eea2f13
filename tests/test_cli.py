"""Tests of the ``qure mine`` command line and of environment-variable warnings."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import qure.cli
from qure.mining import HardNegatives


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qure", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_synthetic_scores_look_trained(capsys):
    assert qure.cli.main(["mine", "--queries", "300", "--gallery", "3000"]) == 0
    out = capsys.readouterr().out
    median = float(out.split("target rank: median ")[1].split(",")[0])
    assert 1 <= median <= 30  # near the top, not always first
    assert "band location" in out and "at the bottom" in out


def test_degenerate_bands_warn_and_a_window_does_not(capsys):
    assert qure.cli.main(["mine", "--queries", "300", "--gallery", "3000"]) == 0
    assert "warning:" in capsys.readouterr().out
    assert qure.cli.main(["mine", "--queries", "300", "--gallery", "3000", "--max-rank", "50"]) == 0
    assert "warning:" not in capsys.readouterr().out


def test_out_reports_the_file_size(tmp_path, capsys):
    path = tmp_path / "bands.npz"
    assert qure.cli.main(["mine", "--queries", "50", "--gallery", "500", "--out", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"saved to {path} (" in out and "MB" in out
    assert len(HardNegatives.load(path)) == 50


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--queries", "0"], "--queries must be at least 1"),
        (["--gallery", "1"], "--gallery must be at least 2"),
        (["--dim", "0"], "--dim must be at least 1"),
        (["--noise", "-1"], "--noise must be non-negative"),
        (["--targets", "t.npy"], "--scores and --targets go together"),
        (["--scores", "s.npy"], "--scores and --targets go together"),
    ],
)
def test_bad_mine_arguments(argv, message, capsys):
    assert qure.cli.main(["mine", *argv]) == 2
    assert message in capsys.readouterr().err


def test_scores_from_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "s.npy", rng.random((20, 100), dtype=np.float32))
    np.save(tmp_path / "t.npy", rng.integers(0, 100, 20))
    argv = ["mine", "--scores", str(tmp_path / "s.npy"), "--targets", str(tmp_path / "t.npy")]
    assert qure.cli.main(argv) == 0
    assert "(20 x 100)" in capsys.readouterr().out


def test_help_shows_defaults():
    text = qure.cli.build_parser()._subparsers._group_actions[0].choices["mine"].format_help()
    assert "(default: 10000)" in text and "(default: 0.3)" in text


CHATTY = (
    "import sys, qure.cli\n"
    "def chatty(args):\n"
    "    for _ in range(200_000):\n"
    "        print('band ' * 20)\n"
    "    return 0\n"
    "qure.cli._cmd_mine = chatty\n"
    "sys.exit(qure.cli.main(['mine']))\n"
)


def test_closed_pipe_exits_quietly():
    # Far more output than a pipe holds, and a reader that leaves after one line (`| head -1`).
    proc = subprocess.Popen(
        [sys.executable, "-c", CHATTY], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"band")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err


def test_bad_simd_value_warns():
    proc = subprocess.run(
        [sys.executable, "-c", "import qure"],
        capture_output=True,
        text=True,
        env={**os.environ, "QURE_SIMD": "bogus"},
        timeout=60,
    )
    assert proc.returncode == 0
    assert "QURE_SIMD='bogus'" in proc.stderr and "RuntimeWarning" in proc.stderr
