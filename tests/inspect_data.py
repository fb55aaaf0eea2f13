"""Reading back what ``qure.inspect.write_page`` wrote (shared by the unit and browser tests)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np


def read_js(path: Path) -> tuple[str, Any]:
    """(callback name, payload) of a data file ``name(...);`` (a page's number is dropped)."""
    text = path.read_text(encoding="utf-8")
    name, _, rest = text.partition("(")
    body = rest.rstrip()
    assert body.endswith(");"), path
    body = body[:-2]
    if name == "qureInspectPage":
        body = body.partition(",")[2]
    return name, json.loads(body)


def pages(out: Path) -> tuple[dict, list[dict]]:
    """The summary and every query record, with ``curve`` and ``grades`` decoded into it."""
    _, summary = read_js(out / "data" / "summary.js")
    records = []
    for k in range(summary["pages"]):
        _, page = read_js(out / "data" / f"p{k:05d}.js")
        n = len(page["queries"])
        curve = np.frombuffer(base64.b64decode(page["curve"]), "<f4").reshape(n, -1)
        grades = None
        if "grades" in page:
            grades = np.frombuffer(base64.b64decode(page["grades"]), "<f4").reshape(n, -1)
        for i, record in enumerate(page["queries"]):
            record["curve"] = curve[i]
            record["grades"] = None if grades is None else grades[i]
            records.append(record)
    return summary, records
