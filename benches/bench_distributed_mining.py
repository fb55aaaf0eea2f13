"""Wall time of sharded mining (``qure.sharded.sharded_mine``) on 1 and 2 processes.

    python benches/bench_distributed_mining.py
    python benches/bench_distributed_mining.py --queries 4000 --gallery 8000 --tokens 32 \\
        --dim 128 --threads 1 --world 1 2 --repeat 2
    python benches/bench_distributed_mining.py --dtype float16 --max-rank 1000

Every rank builds the same random unit features, keeps its shard of the queries and of the
gallery (``qure.distributed.shard``) and times ``sharded_mine`` between barriers: the gallery
all-gather, scoring and mining of its query shard against the whole gallery in the Rust core,
and the gather of the bands (best of ``--repeat``); the gallery all-gather and the mining of the
query shard are also timed alone. Each process runs ``--threads`` qure
threads, so N processes use N times the cores of one. Processes are started by
``qure.distributed.launch`` (gloo on 127.0.0.1). With one process ``sharded_mine`` is plain
``mine_from_features``; the script checks that every world size gives the identical bands.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def features(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    gallery = rng.standard_normal((args.gallery, args.tokens, args.dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=-1, keepdims=True)
    targets = rng.integers(0, args.gallery, size=args.queries)
    return queries, gallery.astype(args.dtype, copy=False), targets


def worker(args: argparse.Namespace, out: str) -> None:
    import torch

    import qure
    from qure import distributed as qdist
    from qure.sharded import sharded_mine

    torch.set_num_threads(1)
    qure.set_num_threads(args.threads)
    queries, gallery, targets = features(args)
    rows, cols = qdist.shard(len(queries)), qdist.shard(len(gallery))
    q_local, t_local = queries[rows.start : rows.stop], targets[rows.start : rows.stop]
    g_local = np.ascontiguousarray(gallery[cols.start : cols.stop])
    del gallery

    def timed(fn, *fn_args, **fn_kwargs):  # best wall time of all ranks (barriers around it)
        best, result = float("inf"), None
        for _ in range(args.repeat):
            qdist.barrier()
            started = time.perf_counter()
            result = fn(*fn_args, **fn_kwargs)
            qdist.barrier()
            best = min(best, time.perf_counter() - started)
        return best, result

    world = qdist.world_size()
    for strategy in strategies(args):
        total, mined = timed(
            sharded_mine, q_local, g_local, t_local, max_rank=args.max_rank, strategy=strategy
        )
        times = {"total": total}
        if strategy == "gather":
            times["gather"], full = timed(qdist.all_gather_array, g_local)
            times["mine"], _ = timed(
                qure.mine_from_features, q_local, full, t_local, max_rank=args.max_rank
            )
            del full
        if qdist.rank() == 0:
            mined.save(Path(out) / f"bands_{strategy}_{world}.npz")
            (Path(out) / f"time_{strategy}_{world}.json").write_text(json.dumps(times))


def strategies(args: argparse.Namespace) -> list[str]:
    return ["gather"] if args.max_rank is None else ["gather", "candidates"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--gallery", type=int, default=8000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="qure threads per process")
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="gallery dtype (float16 shards are gathered and scored as half precision)",
    )
    parser.add_argument(
        "--max-rank",
        type=int,
        default=None,
        help="mine with max_rank (then both strategies, 'gather' and 'candidates', are timed)",
    )
    args = parser.parse_args()

    from qure import HardNegatives
    from qure import distributed as qdist

    print(
        f"sharded mining: Q={args.queries} queries, N={args.gallery} gallery images x "
        f"T={args.tokens} tokens, d={args.dim}, {args.dtype}, max_rank={args.max_rank}; "
        f"{args.threads} qure thread(s) per process"
    )
    with tempfile.TemporaryDirectory() as out:
        results = {}
        for world in args.world:
            started = time.perf_counter()
            qdist.launch(worker, world, (args, out))
            total = time.perf_counter() - started
            for strategy in strategies(args):
                key = f"{strategy}_{world}"
                t = json.loads((Path(out) / f"time_{key}.json").read_text())
                results[key] = HardNegatives.load(Path(out) / f"bands_{key}.npz")
                detail = ""
                if "gather" in t and world > 1:
                    detail = (
                        f" (gallery all-gather {t['gather']:5.3f} s, mining the query shard "
                        f"{t['mine']:6.3f} s, then the band gather)"
                    )
                print(f"  {world} process(es), {strategy:10s}: {t['total']:6.3f} s{detail}")
            print(f"  ({world} process(es): whole launch incl. start-up and data {total:5.1f} s)")
        reference = next(iter(results.values()))
        same = all(r == reference for r in results.values())
        print(
            f"  bands identical across {sorted(results)}: {same} "
            f"({len(reference)} queries, mean band {reference.sizes.mean():.1f}, "
            f"{int(reference.empty.sum())} empty)"
        )
        if not same:
            raise SystemExit("sharded mining differs between runs")


if __name__ == "__main__":
    main()
