"""The ``qure`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__, set_num_threads
from .mining import HardNegatives, mine_negatives


def _synthetic_scores(
    n_queries: int, n_gallery: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of noisy queries against random unit gallery embeddings, and each query's target."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    targets = rng.integers(0, n_gallery, n_queries)
    queries = gallery[targets] + noise * rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries @ gallery.T, targets


def _cmd_mine(args: argparse.Namespace) -> int:
    if args.threads is not None:
        set_num_threads(args.threads)
    if (args.scores is None) != (args.targets is None):
        print("qure mine: --scores and --targets go together", file=sys.stderr)
        return 2
    for name, value, low in (
        ("--queries", args.queries, 1),
        ("--gallery", args.gallery, 2),
        ("--dim", args.dim, 1),
    ):
        if value < low:
            print(f"qure mine: {name} must be at least {low}, got {value}", file=sys.stderr)
            return 2
    if not args.noise >= 0:
        print(f"qure mine: --noise must be non-negative, got {args.noise}", file=sys.stderr)
        return 2
    if args.scores is not None:
        scores = np.load(args.scores, mmap_mode="r")
        targets = np.load(args.targets)
        source = f"{args.scores} ({scores.shape[0]} x {scores.shape[1]})"
    else:
        scores, targets = _synthetic_scores(
            args.queries, args.gallery, args.dim, args.noise, args.seed
        )
        source = (
            f"synthetic: {args.queries} queries x {args.gallery} gallery, d={args.dim}, "
            f"noise={args.noise}, seed={args.seed}"
        )
    start = time.perf_counter()
    try:
        negatives = mine_negatives(
            scores,
            targets,
            consecutive_threshold=args.threshold,
            pairing=args.pairing,
            max_rank=args.max_rank,
            strategy=args.strategy,
            margin=args.margin,
            relative_margin=args.relative_margin,
            num_negatives=args.num_negatives,
            sampling=args.sampling,
        )
    except (ValueError, TypeError) as exc:
        print(f"qure mine: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    _print_summary(source, negatives, elapsed)
    print(negatives.format_stats())
    if args.out:
        negatives.save(args.out)
        size = Path(args.out if str(args.out).endswith(".npz") else f"{args.out}.npz").stat()
        print(
            f"saved to {args.out} ({size.st_size / 1e6:.1f} MB: {negatives.indices.size:,} band "
            "items; --max-rank keeps bands short)"
        )
    return 0


def _print_summary(source: str, negatives: HardNegatives, elapsed: float) -> None:
    sizes = negatives.sizes
    n = len(negatives)
    print(f"scores: {source}")
    print(f"mined:  {negatives!r}")
    if n:
        ranks = negatives.target_rank
        print(
            f"target rank: median {np.median(ranks):g}, "
            f"R@1 {np.mean(ranks < 1):.3f}, R@10 {np.mean(ranks < 10):.3f}"
        )
        print(f"band size: min {sizes.min()}, max {sizes.max()}, std {sizes.std():.1f}")
        if negatives.tail_length is not None:
            d = negatives.diagnostics()
            print(
                f"band location (share of the tail after the target; median tail "
                f"{d['tail_median']:g} items): start q10/50/90 {d['start_q10']:.2f}/"
                f"{d['start_q50']:.2f}/{d['start_q90']:.2f}, end q10/50/90 {d['end_q10']:.2f}/"
                f"{d['end_q50']:.2f}/{d['end_q90']:.2f}; at the bottom "
                f"{100 * d['at_bottom']:.0f}%, spanning half {100 * d['spanning']:.0f}%"
            )
            warning = negatives.degenerate_warning()
            if warning:
                print(f"warning: {warning}")
        first = negatives[0][:10].tolist()
        more = " ..." if sizes[0] > 10 else ""
        print(
            f"query 0: target rank {ranks[0]}, drops {negatives.drops[0].tolist()}, "
            f"band {first}{more}"
        )
    print(f"time:   {elapsed * 1e3:.1f} ms ({elapsed / max(n, 1) * 1e6:.1f} us per query)")


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .demo import DemoSettings, run_demo
    except ImportError as err:  # torch, tqdm or matplotlib missing
        print(f"qure demo needs the demo extra: pip install 'qure[demo]' ({err})", file=sys.stderr)
        return 2
    settings = DemoSettings.experiment(args.experiment, quick=args.quick)
    if args.seeds is not None:
        if args.seeds < 1:
            print("qure demo: --seeds must be at least 1", file=sys.stderr)
            return 2
        settings.seeds = tuple(range(args.seeds))
    if args.arms is not None:
        settings.arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if args.split is not None:
        settings.split = args.split
    if args.threads is not None:
        set_num_threads(args.threads)
    page = {"inspect": False} if args.no_inspect else {}  # default: write <out>/inspect/
    run_demo(args.out, settings, progress=not args.no_progress, workers=args.workers, **page)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .experiments import train_from_config

    overrides = {}
    if args.max_rank is not None:
        overrides["max_rank"] = (
            None if args.max_rank.lower() == "none" else _positive(args.max_rank)
        )
    train_from_config(
        args.config,
        resume=args.resume,
        progress=not args.no_progress,
        output=args.output,
        train_overrides=overrides,
    )
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer or 'none', got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a positive integer or 'none', got {text!r}")
    return value


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .experiments import evaluate_from_config

    evaluate_from_config(
        args.config,
        args.checkpoint,
        split=args.split,
        progress=not args.no_progress,
        device=args.device,
        output=args.output,
        inspect=args.inspect,
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect._cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qure", description="QuRe hard-negative mining for composed image retrieval."
    )
    parser.add_argument("--version", action="version", version=f"qure {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    mine = sub.add_parser(
        "mine",
        formatter_class=defaults,
        help="mine two-steep-drop hard negatives from a score matrix",
        description="Mine hard-negative bands from saved scores (.npy) or a synthetic matrix.",
    )
    mine.add_argument("--scores", help="(Q, N) score matrix, .npy (None: a synthetic one)")
    mine.add_argument("--targets", help="(Q,) target gallery index per query, .npy")
    mine.add_argument("--queries", type=int, default=2000, help="synthetic queries")
    mine.add_argument("--gallery", type=int, default=10000, help="synthetic gallery size")
    mine.add_argument("--dim", type=int, default=64, help="synthetic embedding size")
    mine.add_argument(
        "--noise",
        type=float,
        default=0.3,
        help="synthetic query noise (0.3 puts targets near the top, as a trained model does: "
        "median rank about 7)",
    )
    mine.add_argument("--seed", type=int, default=0, help="synthetic seed")
    mine.add_argument("--threshold", type=int, default=1, help="consecutive_threshold")
    mine.add_argument(
        "--pairing", choices=["consecutive", "anchored"], default="consecutive", help="drop pairing"
    )
    mine.add_argument(
        "--max-rank",
        type=int,
        default=None,
        help="look for the two drops among the first N items after the target (None: the whole "
        "tail, the released rule)",
    )
    mine.add_argument(
        "--strategy",
        choices=["band", "topk", "window"],
        default="band",
        help="candidates: QuRe's band, the top of the ranking, or a window after the target",
    )
    mine.add_argument("--margin", type=float, default=None, help="remove s + m > target score")
    mine.add_argument(
        "--relative-margin",
        type=float,
        default=None,
        help="remove s > r - |r| * m (0.05: NV-Retriever's TopK-PercPos)",
    )
    mine.add_argument(
        "--num-negatives", type=int, default=None, help="keep this many per query (None: all)"
    )
    mine.add_argument(
        "--sampling", choices=["top", "random", "simans"], default="top", help="which ones to keep"
    )
    mine.add_argument("--threads", type=int, default=None, help="qure's threads (None: all cores)")
    mine.add_argument("--out", help="write the bands to this .npz file")
    mine.set_defaults(func=_cmd_mine)

    demo = sub.add_parser(
        "demo",
        formatter_class=defaults,
        help="QuRe vs contrastive, top-k and random negatives on the built-in shapes benchmark",
        description="Builds the open-edit shapes CIR benchmark (docs/benchmark.md), trains a "
        "shared start contrastively, fine-tunes it with each arm and seed, evaluates, compares "
        "the first arm with the others seed by seed, and writes report.json, report.md and plots.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="3 seeds on a smaller benchmark (see README for times)"
    )
    demo.add_argument("--out", default="qure-demo", help="output folder")
    demo.add_argument("--seeds", type=int, default=None, help="seeds (None: 5; 3 with --quick)")
    demo.add_argument(
        "--experiment",
        default="demo",
        choices=["demo", "oracle", "sweep"],
        help="demo (test split); oracle: top-k with and without false negatives; sweep: QuRe's "
        "max_rank window (both on the val split, 3 seeds)",
    )
    demo.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms, the first compared with the others: qure, qure-tail, "
        "qure-w<M>, contrastive, topk, percpos, topk-oracle, random",
    )
    demo.add_argument(
        "--split",
        default=None,
        choices=["val", "test"],
        help="evaluation split (None: the experiment's)",
    )
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        help="fine-tuning runs in parallel processes (None: one per core, at most 4); each "
        "run uses one torch thread, so results do not depend on it",
    )
    demo.add_argument("--threads", type=int, default=None, help="qure's own (mining) threads")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument(
        "--no-inspect",
        action="store_true",
        help="do not write <out>/inspect/, the page to browse the mined bands query by query",
    )
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser(
        "train",
        formatter_class=defaults,
        help="train on FashionIQ, CIRR or CIRCO data from a JSON config",
        description="Train a BLIP-2 or CLIP CIR model with QuRe (or a baseline method) as the "
        "config says; writes last.pt, train.jsonl and config.json into its output folder.",
    )
    train.add_argument("--config", required=True, help="e.g. configs/fashioniq.json")
    train.add_argument("--resume", action="store_true", help="continue from output/last.pt")
    train.add_argument("--output", default=None, help="override the config's output folder")
    train.add_argument(
        "--max-rank",
        default=None,
        help="override the config's max_rank: look for QuRe's two drops among the first N items "
        "after the target, or 'none' for the whole tail (the released rule)",
    )
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser(
        "evaluate",
        formatter_class=defaults,
        help="evaluate a checkpoint as the benchmark defines (and write submission files)",
        description="Print the benchmark's metrics for a checkpoint and write them as JSON; on "
        "CIRR/CIRCO test splits, write the evaluation servers' submission files.",
    )
    evaluate.add_argument("--config", required=True)
    evaluate.add_argument("--checkpoint", default=None, help="last.pt from qure train")
    evaluate.add_argument("--split", default="val", choices=["val", "test"])
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--output", default=None, help="override the config's output folder")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument(
        "--inspect",
        action="store_true",
        help="also write <output>/inspect/<split>/: a page to browse each query's top 50 next to "
        "its reference, text and target (qure inspect)",
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    from .inspect._cli import add_arguments as add_inspect_arguments

    inspect = sub.add_parser(
        "inspect",
        formatter_class=defaults,
        help="write a static page to browse rankings, bands and grades query by query",
        description="Writes a self-contained folder (index.html, data files, thumbnails) that "
        "shows per query the reference and text, the top ranked images with scores and grades, "
        "the target's rank, the band and the two drops on the score curve. Open index.html in "
        "any browser; nothing is fetched from the network.",
    )
    add_inspect_arguments(inspect)
    inspect.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`qure mine | head -1`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, OSError) as err:
        print(f"qure {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
