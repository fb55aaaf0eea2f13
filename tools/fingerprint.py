"""Fingerprint of qure's results on the shapes benchmark: trained weights, bands and rankings.

Used to show that a refactoring changed nothing: run it before and after and compare the JSON
(``python tools/fingerprint.py > before.json``; ``diff before.json after.json``). It trains the
tiny model with every method on a small open-edit shapes benchmark (mining and re-mining
included, with groups, positives and gallery ids on), mines from features and from scores, and
hashes every array bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

import qure

try:  # the layout after the reshape, then the one before it
    from qure.datasets.shapes import build_open_shapes_benchmark
except ImportError:  # pragma: no cover
    from qure.data.shapes import build_open_shapes_benchmark
from qure.models import TinyCIRModel
from qure.train import CIRTrainData, TrainConfig, encode_split, train


def digest(*arrays: object) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def bands_digest(negatives: qure.HardNegatives) -> str:
    n = negatives
    return digest(n.indptr, n.indices, n.target_rank, n.drops)


def main() -> None:
    torch.set_num_threads(1)
    bench = build_open_shapes_benchmark(seed=3, n_queries=(160, 40, 40))
    split = bench.train
    q = len(split.target)
    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    for method in ("qure", "topk", "random", "contrastive"):
        for grouped in (False, True):
            torch.manual_seed(0)
            model = TinyCIRModel(len(bench.vocab), dim=16, tokens=2, width=8)
            kwargs: dict[str, object] = {}
            if grouped:
                n_gallery = len(split.images)
                kwargs = {
                    "query_groups": split.target % 2,
                    "gallery_groups": np.arange(n_gallery) % 2,
                    "positives": [
                        np.array([t ^ 2], dtype=np.int64) if t ^ 2 < n_gallery else []
                        for t in split.target
                    ],
                    "gallery_ids": np.arange(n_gallery) // 2 * 2 + np.arange(n_gallery) % 2,
                }
            data = CIRTrainData(
                images=split.images,
                reference=split.reference,
                text=bench.tokenize(split.texts),
                target=split.target,
                **kwargs,
            )
            config = TrainConfig(
                method=method,
                epochs=4,
                n_def=2,
                batch_size=16,
                progress=False,
                device="cpu",
                max_rank=30,
            )
            result = train(model, data, config)
            key = f"{method}{'-grouped' if grouped else ''}"
            out[key] = {
                "weights": digest(*[v for _, v in sorted(model.state_dict().items())]),
                "losses": [r["loss"] for r in result.history],
                "bands": None if result.negatives is None else bands_digest(result.negatives),
                "drawn": digest(*result.drawn) if result.drawn else None,
            }
            if method == "qure" and not grouped:
                queries, tokens = encode_split(model, data.images, data.reference, data.text)
                scores = qure.score(queries, tokens)
                targets = data.target
                positives = [rng.integers(0, tokens.shape[0], 2) for _ in range(q)]
                ids = rng.integers(0, tokens.shape[0] // 2, tokens.shape[0])
                for mr in (None, 25):
                    for pos, gid in ((None, None), (positives, ids)):
                        tag = f"mr={mr},extra={pos is not None}"
                        a = qure.mine_negatives(
                            scores, targets, max_rank=mr, positives=pos, gallery_ids=gid
                        )
                        b = qure.mine_from_features(
                            queries, tokens, targets, max_rank=mr, positives=pos, gallery_ids=gid
                        )
                        out[f"mine {tag}"] = [bands_digest(a), bands_digest(b)]
                values, indices = qure.topk(queries, tokens, 20, exclude=data.reference)
                out["topk"] = digest(values, indices)
                out["target_rank"] = digest(qure.target_rank(queries, tokens, targets))
                out["scores"] = digest(scores)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
