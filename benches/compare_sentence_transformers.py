"""qure against ``sentence_transformers.util.mine_hard_negatives`` on the same corpus, settings
and embeddings: top-k with ``relative_margin=0.05`` (NV-Retriever's TopK-PercPos), 4 negatives.

A tiny SentenceTransformer (one BERT layer with random weights, a word-level tokenizer built with
``tokenizers``; nothing from a hub) is saved to a local folder. A first, untimed run fills
sentence-transformers' ``cache_folder`` with the embeddings; the timed runs then load them, so
they time search and filtering (and building the output ``Dataset``) only. qure mines the same
cached embeddings with ``qure.mine_from_features(strategy="topk", relative_margin=0.05,
num_negatives=4)`` and exports the same triplets (``to_records("triplet", as_dataset=True)``).

Each timed run is its own process, so its peak resident memory (``ru_maxrss``) is its own; the
runs alternate between the two tools. Where both rules coincide (a query for which
sentence-transformers found all 4 negatives among its top-``range_max`` candidates), the
negatives must be the same.

    python -m benches.compare_sentence_transformers            # 100,000 x 256-d, 10,000 queries
    python -m benches.compare_sentence_transformers --corpus 2000 --queries 200   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = 2000
DIM = 256
RANGE = 43
"""sentence-transformers' candidates with these settings: ``range_max`` (10 x 4 negatives + 1
positive) plus 2 more it retrieves to make room for masked items; qure looks at as many."""


def build(folder: Path, corpus: int, queries: int, seed: int = 0) -> None:
    """Writes the model, the corpus and the (query, positive) pairs under ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(WORDS)])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=DIM,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=2 * DIM,
        max_position_embeddings=64,
        initializer_range=1.0,  # spread-out random embeddings (the default 0.02 makes all alike)
    )
    base = folder / "bert"
    BertModel(config).save_pretrained(base)
    fast.save_pretrained(base)
    transformer = models.Transformer(str(base), max_seq_length=32)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder / "model"))
    rng = np.random.default_rng(seed)

    def texts(n: int) -> list[str]:
        words = rng.integers(0, WORDS, size=(n, 8))
        return [" ".join(f"w{w}" for w in row) for row in words]

    docs = list(dict.fromkeys(texts(corpus)))
    targets = rng.choice(len(docs), size=queries, replace=False)
    # A query shares 5 of its positive's 8 words: the positive ranks near the top.
    questions = [" ".join(docs[t].split()[:5] + texts(1)[0].split()[:3]) for t in targets]
    questions = [f"{q} q{i}" for i, q in enumerate(questions)]  # distinct queries
    (folder / "data.json").write_text(
        json.dumps({"corpus": docs, "queries": questions, "targets": targets.tolist()})
    )


def _load(folder: Path) -> tuple[list[str], list[str], np.ndarray]:
    data = json.loads((folder / "data.json").read_text())
    return data["corpus"], data["queries"], np.array(data["targets"], dtype=np.int64)


def _mine_st(folder: Path, cache: Path, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    torch.set_num_threads(threads)
    corpus, queries, targets = _load(folder)
    model = SentenceTransformer(str(folder / "model"), device="cpu")
    dataset = Dataset.from_dict({"anchor": queries, "positive": [corpus[t] for t in targets]})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus,
        relative_margin=0.05,
        num_negatives=4,
        sampling_strategy="top",
        output_format="triplet",
        batch_size=256,
        cache_folder=str(cache),
        use_faiss=False,
        verbose=False,
    )
    seconds = time.perf_counter() - started
    index = {text: i for i, text in enumerate(corpus)}
    negatives: dict[str, list[int]] = {}
    for anchor, negative in zip(mined["anchor"], mined["negative"]):
        negatives.setdefault(anchor, []).append(index[negative])
    return {
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_mb": before / 1024,
        "negatives": [negatives.get(q, []) for q in queries],
        "rows": len(mined),
    }


def _mine_qure(folder: Path, cache: Path, threads: int) -> dict:
    import datasets  # noqa: F401  (imported before the clock starts, as for sentence-transformers)

    import qure

    qure.set_num_threads(threads)
    corpus, queries, targets = _load(folder)
    query_file = next(cache.glob("query_embeddings_*.npy"))
    corpus_file = next(cache.glob("corpus_embeddings_*.npy"))
    q = np.load(query_file)
    c = np.load(corpus_file)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    mined = qure.mine_from_features(
        q, c, targets, strategy="topk", rank_range=(0, RANGE), relative_margin=0.05, num_negatives=4
    )
    mining = time.perf_counter() - started
    records = mined.to_records(
        "triplet", targets, anchors=queries, documents=corpus, as_dataset=True
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "mining_seconds": mining,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_mb": before / 1024,
        "negatives": [mined[i].tolist() for i in range(len(mined))],
        "rows": len(records),
    }


def _child(tool: str, folder: Path, cache: Path, threads: int, out: Path) -> None:
    result = (_mine_st if tool == "st" else _mine_qure)(folder, cache, threads)
    out.write_text(json.dumps(result))


def _run(tool: str, folder: Path, cache: Path, threads: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [
        sys.executable,
        "-m",
        "benches.compare_sentence_transformers",
        "--child",
        tool,
        "--folder",
        str(folder),
        "--cache",
        str(cache),
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    root = Path(__file__).resolve().parents[1]
    subprocess.run(command, check=True, cwd=root, env=env)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def compare(corpus: int, queries: int, repeats: int, threads: int, folder: Path) -> dict:
    """Builds the problem in ``folder`` (once), warms the cache, then alternates timed runs."""
    cache = folder / "cache"
    if not (folder / "data.json").exists():
        build(folder, corpus, queries)
    if not any(cache.glob("corpus_embeddings_*.npy")):
        started = time.perf_counter()
        _run("st", folder, cache, threads)  # encodes and caches the embeddings
        print(f"embeddings cached in {time.perf_counter() - started:.1f} s", flush=True)
    runs: dict[str, list[dict]] = {"st": [], "qure": []}
    for _ in range(repeats):
        for tool in ("st", "qure"):
            runs[tool].append(_run(tool, folder, cache, threads))
    st_neg, qure_neg = runs["st"][-1]["negatives"], runs["qure"][-1]["negatives"]
    full = [i for i, row in enumerate(st_neg) if len(row) == 4]
    same = sum(st_neg[i] == qure_neg[i] for i in full)
    more = sum(len(qure_neg[i]) > len(st_neg[i]) for i in range(len(st_neg)))
    summary = {
        "corpus": corpus,
        "queries": queries,
        "threads": threads,
        "repeats": repeats,
        "st_seconds": [r["seconds"] for r in runs["st"]],
        "qure_seconds": [r["seconds"] for r in runs["qure"]],
        "qure_mining_seconds": [r["mining_seconds"] for r in runs["qure"]],
        "st_peak_mb": max(r["peak_mb"] for r in runs["st"]),
        "qure_peak_mb": max(r["peak_mb"] for r in runs["qure"]),
        "st_mining_mb": max(r["peak_mb"] - r["before_mb"] for r in runs["st"]),
        "qure_mining_mb": max(r["peak_mb"] - r["before_mb"] for r in runs["qure"]),
        "st_rows": runs["st"][-1]["rows"],
        "qure_rows": runs["qure"][-1]["rows"],
        "queries_st_found_4": len(full),
        "same_negatives_there": same,
        "queries_qure_found_more": more,
    }
    summary["speedup_median"] = statistics.median(summary["st_seconds"]) / statistics.median(
        summary["qure_seconds"]
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("QURE_BENCH_THREADS", 2)))
    parser.add_argument("--folder", type=Path, default=None, help="problem and cache folder")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("st", "qure"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.folder, args.cache, args.threads, args.out)
        return
    folder = args.folder or Path(
        tempfile.gettempdir(), f"qure-st-bench-{args.corpus}-{args.queries}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    summary = compare(args.corpus, args.queries, args.repeats, args.threads, folder)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
