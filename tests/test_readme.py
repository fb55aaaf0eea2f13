"""The README's Python examples run as written, in order, in one namespace (as a reader would
paste them into one session)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4
    assert any("train(model, data, config)" in b for b in blocks)


def test_readme_examples_run(tmp_path):
    pytest.importorskip("torch")
    script = "\n\n".join(python_blocks())
    (tmp_path / "readme_examples.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "readme_examples.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "bands.npz").exists()
