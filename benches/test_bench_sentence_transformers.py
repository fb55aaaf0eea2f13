"""qure vs sentence-transformers' ``mine_hard_negatives`` (TopK-PercPos, 4 negatives), each run
in its own process on the same cached embeddings (see ``compare_sentence_transformers.py``;
the closing figures come from ``python -m benches.compare_sentence_transformers`` at 100,000 x
10,000)."""

from __future__ import annotations

import statistics

import pytest

from .compare_sentence_transformers import compare
from .conftest import SMALL, THREADS, record

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")


def test_against_sentence_transformers(tmp_path_factory):
    corpus, queries = (2000, 200) if SMALL else (20_000, 2_000)
    folder = tmp_path_factory.mktemp("st")
    summary = compare(corpus, queries, repeats=1 if SMALL else 3, threads=THREADS, folder=folder)
    # Where the two rules coincide the negatives are the same, and so are the rows.
    assert summary["same_negatives_there"] == summary["queries_st_found_4"]
    assert summary["qure_rows"] == summary["st_rows"]
    group = f"mining {queries:,} queries x {corpus:,} (TopK-PercPos, 4 negatives)"
    record(group, "qure", statistics.median(summary["qure_seconds"]), "s")
    record(group, "sentence-transformers", statistics.median(summary["st_seconds"]), "s")
