"""``qure inspect``: the command line of :func:`qure.inspect.write_page` (arrays from files)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qure inspect``."""
    given = parser.add_argument_group("the ranking (scores, or features)")
    given.add_argument("--scores", help="(Q, N) scores, .npy (read block by block)")
    given.add_argument("--queries", help="(Q, d) query features, .npy (with --gallery)")
    given.add_argument("--gallery", help="(N, d) or (N, T, d) gallery features, .npy")
    given.add_argument("--targets", help="(Q,) target gallery index per query, .npy (-1: none)")
    bands = parser.add_argument_group("the bands")
    bands.add_argument("--bands", help="HardNegatives .npz (qure mine --out, or .save())")
    bands.add_argument(
        "--mine", action="store_true", help="mine the bands here (with --max-rank and the rest)"
    )
    bands.add_argument("--max-rank", type=int, default=None, help="--mine's window (None: tail)")
    bands.add_argument("--threshold", type=int, default=1, help="--mine's consecutive_threshold")
    bands.add_argument("--pairing", choices=["consecutive", "anchored"], default="consecutive")
    about = parser.add_argument_group("what to show")
    about.add_argument(
        "--images",
        help="image pool: an (M, H, W[, C]) .npy array, or a text file of M image paths, one a "
        "line (relative paths are read from the list's folder); the first N are the gallery",
    )
    about.add_argument("--reference", help="(Q,) index into the images of each reference, .npy")
    about.add_argument("--texts", help="query texts: a .json list or a text file, one a line")
    about.add_argument("--relevance", help="(Q, N) graded relevance, .npy")
    about.add_argument("--query-ids", help="query ids: a .json list or a text file, one a line")
    about.add_argument("--image-names", help="image names: a .json list or a text file")
    about.add_argument(
        "--exclude-reference",
        action="store_true",
        help="take each query's reference image out of the ranking (as CIRR evaluates)",
    )
    about.add_argument("--top", type=int, default=50, help="ranked images shown per query")
    about.add_argument("--curve", type=int, default=300, help="ranks on the score curve")
    about.add_argument(
        "--fn-grade",
        type=float,
        default=0.5,
        help="non-target images graded at least this are false negatives",
    )
    about.add_argument("--page-size", type=int, default=100, help="queries per data file")
    about.add_argument("--title", default="qure inspect")
    parser.add_argument("--out", default="qure-inspect", help="output folder")


def _array(path: str, name: str, mmap: bool = False) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name} file not found: {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read {name} from {path}: {err}") from None


def _strings(path: str, name: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name} file not found: {path}")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        values = json.loads(text)
        if not isinstance(values, list):
            raise ValueError(f"{path}: expected a JSON list of {name}")
        return [str(v) for v in values]
    return text.splitlines()


def _images(path: str) -> Any:
    if path.endswith(".npy"):
        return _array(path, "images", mmap=True)
    base = Path(path).resolve().parent
    return [p if Path(p).is_absolute() else str(base / p) for p in _strings(path, "image paths")]


def _exclude(reference: Any, ranking: dict[str, Any]) -> list[list[int]]:
    """Each query's reference, where it lies in the gallery (extra references are not ranked)."""
    n = ranking["scores"].shape[1] if "scores" in ranking else ranking["gallery"].shape[0]
    return [[int(r)] if 0 <= r < n else [] for r in np.asarray(reference).reshape(-1)]


def run(args: argparse.Namespace) -> int:
    from .. import mine_from_features, mine_negatives
    from . import write_page

    def fail(message: str) -> int:
        print(f"qure inspect: {message}", file=sys.stderr)
        return 2

    features = args.queries is not None or args.gallery is not None
    if args.scores is None and not features:
        return fail("give --scores, or --queries and --gallery (see qure inspect --help)")
    if args.scores is not None and features:
        return fail("give --scores or --queries/--gallery, not both")
    if features and (args.queries is None or args.gallery is None):
        return fail("--queries and --gallery go together")
    if args.bands is not None and args.mine:
        return fail("give --bands or --mine, not both")
    if (args.bands is not None or args.mine) and args.targets is None:
        return fail("bands need --targets")
    if args.exclude_reference and args.reference is None:
        return fail("--exclude-reference needs --reference")

    ranking: dict[str, Any] = {}
    if args.scores is not None:
        ranking["scores"] = _array(args.scores, "scores", mmap=True)
    else:
        ranking["queries"] = _array(args.queries, "queries")
        ranking["gallery"] = _array(args.gallery, "gallery", mmap=True)
    targets = None if args.targets is None else _array(args.targets, "targets")
    negatives: Any = args.bands
    if args.mine:
        settings = dict(
            max_rank=args.max_rank, consecutive_threshold=args.threshold, pairing=args.pairing
        )
        if "scores" in ranking:
            negatives = mine_negatives(ranking["scores"], targets, **settings)
        else:
            negatives = mine_from_features(
                ranking["queries"], ranking["gallery"], targets, **settings
            )
    reference = None if args.reference is None else _array(args.reference, "reference")
    notes = {"scores": args.scores} if args.scores else {"features": f"{args.queries}"}
    if args.bands:
        notes["bands"] = args.bands
    elif args.mine:
        notes["bands"] = f"mined here, max_rank={args.max_rank}"
    page = write_page(
        args.out,
        **ranking,
        targets=targets,
        negatives=negatives,
        images=None if args.images is None else _images(args.images),
        reference=reference,
        texts=None if args.texts is None else _strings(args.texts, "texts"),
        relevance=None if args.relevance is None else _array(args.relevance, "relevance", True),
        query_ids=None if args.query_ids is None else _strings(args.query_ids, "query ids"),
        image_names=None if args.image_names is None else _strings(args.image_names, "names"),
        exclude=_exclude(reference, ranking) if args.exclude_reference else None,
        top=args.top,
        curve=args.curve,
        false_negative_grade=args.fn_grade,
        page_size=args.page_size,
        title=args.title,
        notes=notes,
    )
    print(
        f"wrote {page.queries:,} queries ({page.pages} data files, {page.thumbnails:,} "
        f"thumbnails) in {page.seconds:.1f} s; open {page.index.resolve().as_uri()}"
    )
    return 0
