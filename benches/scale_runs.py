"""Scale runs: top-k and mining from features over galleries that only fit in half precision.

    python benches/scale_runs.py --gallery million --op topk     # 1,000,000 x 256, float16
    python benches/scale_runs.py --gallery million --op mine --max-rank 1000
    python benches/scale_runs.py --gallery circo --op topk       # 123,403 x 32 x 256, float16
    python benches/scale_runs.py --gallery circo --op mine --max-rank 1000
    python benches/scale_runs.py --gallery million --op topk --small   # a quick smoke run

Each run is one fresh process: it builds random unit features (queries near a random target
token, as a trained model's would be), then resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``) and times one call. It prints wall time, the resident memory of the
inputs before the call, the output's size and the peak resident memory during the call, and
checks the peak against inputs + output + 10%. 10,000 queries, ``--threads`` qure threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

SHAPES = {"million": (1_000_000, 1, 256), "circo": (123_403, 32, 256)}


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def build(n: int, t: int, d: int, q: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gallery = np.empty((n, t, d), dtype=np.float16)
    step = max(1, (1 << 22) // (t * d))  # 16 MiB of float32 at a time
    for start in range(0, n, step):
        part = rng.standard_normal((min(step, n - start), t, d), dtype=np.float32)
        part /= np.linalg.norm(part, axis=-1, keepdims=True)
        gallery[start : start + len(part)] = part
    targets = rng.integers(0, n, q)
    queries = gallery[targets, rng.integers(0, t, q)].astype(np.float32)
    queries += 0.5 * rng.standard_normal((q, d), dtype=np.float32) / d**0.5
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    return queries, (gallery[:, 0] if t == 1 else gallery), targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", choices=sorted(SHAPES), required=True)
    parser.add_argument("--op", choices=["topk", "mine"], required=True)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--max-rank", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="1/100 of the gallery and queries")
    args = parser.parse_args()

    import qure

    qure.set_num_threads(args.threads)
    n, t, d = SHAPES[args.gallery]
    q = args.queries
    if args.small:
        n, q = n // 100, max(1, q // 100)
    queries, gallery, targets = build(n, t, d, q)
    inputs_mb = (queries.nbytes + gallery.nbytes + targets.nbytes) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak-RSS mark (VmHWM) restarts from the current RSS
    before_mb = status_mb("VmRSS")
    started = time.perf_counter()
    if args.op == "topk":
        values, indices = qure.topk(queries, gallery, args.k)
        output_mb = (values.nbytes + indices.nbytes) / 2**20
        extra = {"k": args.k}
    else:
        mined = qure.mine_from_features(queries, gallery, targets, max_rank=args.max_rank)
        output_mb = (
            sum(a.nbytes for a in (mined.indptr, mined.indices, mined.target_rank, mined.drops))
            / 2**20
        )
        extra = {"max_rank": args.max_rank, "band_mean": float(mined.sizes.mean())}
    seconds = time.perf_counter() - started
    peak_mb = status_mb("VmHWM")
    report = {
        "gallery": args.gallery,
        "shape": [n, t, d],
        "dtype": "float16",
        "queries": q,
        "op": args.op,
        "threads": args.threads,
        "seconds": round(seconds, 2),
        "gflops": round(2 * q * n * t * d / seconds / 1e9, 1),
        "inputs_mb": round(inputs_mb, 1),
        "rss_before_call_mb": round(before_mb, 1),
        "output_mb": round(output_mb, 1),
        "peak_rss_during_call_mb": round(peak_mb, 1),
        "peak_over_rss_before_plus_output": round(peak_mb / (before_mb + output_mb), 3),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }
    print(json.dumps(report))
    if peak_mb > 1.10 * (before_mb + output_mb):
        raise SystemExit("peak memory above inputs + output + 10%")


if __name__ == "__main__":
    main()
