"""``qure train`` / ``qure evaluate`` on the paper's benchmarks (FashionIQ, CIRR, CIRCO) from a
JSON config: the paper's experiments (``benches/`` holds qure's speed benchmarks instead).

The benchmarks are plug-ins (:data:`qure.datasets.BENCHMARKS`): each loads its splits, computes
its metrics and writes its evaluation server's files; this module builds the model, trains,
encodes (caching gallery features) and dispatches by the config's ``dataset.name``.

A config names the dataset (official layout under ``root``), the model (``backbone`` blip2 or
clip, ``pretrained`` a local folder or hub id, or a tiny random ``config``), the training
settings (:class:`qure.train.TrainConfig` fields) and an output folder. Relative paths are read
relative to the config file. See ``configs/fashioniq.json`` and ``configs/cirr.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as qdist
from .checkpoint import load_model_state
from .datasets import BENCHMARKS, CIRSplit
from .models.preprocess import TargetPad
from .models.registry import build_model
from .train import CIRTrainData, TrainConfig, encode_split, train

__all__ = [
    "ImagePool",
    "evaluate_from_config",
    "feature_cache_key",
    "load_config",
    "train_from_config",
]

DATASETS = tuple(BENCHMARKS)


class ImagePool:
    """Image files loaded and preprocessed on demand: ``pool[indices]`` is a batch tensor."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: np.ndarray) -> torch.Tensor:
        from PIL import Image

        batch = []
        for i in np.atleast_1d(idx):
            path = self.paths[int(i)]
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            with Image.open(path) as image:
                batch.append(self.transform(image.convert("RGB")))
        return torch.stack(batch)


def load_config(path: str | Path) -> dict[str, Any]:
    """Reads and checks a benchmark config; paths become absolute (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    config = json.loads(path.read_text())
    for key in ("dataset", "model", "output"):
        if key not in config:
            raise ValueError(f"{path}: config needs a '{key}' entry")
    dataset = config["dataset"]
    if dataset.get("name") not in DATASETS:
        raise ValueError(f"{path}: dataset.name must be one of {DATASETS}")
    base = path.resolve().parent

    def absolute(value: str) -> str:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else base / p)

    dataset["root"] = absolute(dataset["root"])
    config["output"] = absolute(config["output"])
    pretrained = config["model"].get("pretrained")
    if pretrained and (base / pretrained).exists():
        config["model"]["pretrained"] = absolute(pretrained)
    train_fields = {f.name for f in fields(TrainConfig)}
    unknown = set(config.get("train", {})) - train_fields
    if unknown:
        raise ValueError(f"{path}: unknown train settings {sorted(unknown)}")
    return config


def _splits(config: dict[str, Any], split: str) -> Mapping[str, CIRSplit]:
    """The dataset's split(s) by name (FashionIQ: one per category), from its plug-in."""
    dataset = config["dataset"]
    return BENCHMARKS[dataset["name"]].load(dataset["root"], split, dataset)


def _limit(split: CIRSplit, max_queries: int | None) -> CIRSplit:
    if max_queries is None or len(split) <= max_queries:
        return split
    return split.subset(np.arange(max_queries))


def _training_data(splits: Mapping[str, CIRSplit], model: torch.nn.Module) -> CIRTrainData:
    """One pool for all splits: every split's gallery first, then their extra references.

    Each split is its own mining group (FashionIQ mines within a category)."""
    gallery_paths: list[Path] = []
    extra_paths: list[Path] = []
    offsets, extra_offsets = [], []
    for split in splits.values():
        offsets.append(len(gallery_paths))
        gallery_paths += split.images[: split.n_gallery]
    for split in splits.values():
        extra_offsets.append(len(gallery_paths) + len(extra_paths))
        extra_paths += split.images[split.n_gallery :]

    def remap(split: CIRSplit, idx: np.ndarray, g0: int, e0: int) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return np.where(idx < split.n_gallery, idx + g0, idx - split.n_gallery + e0)

    reference, target, texts, qgroups, ggroups, ids = [], [], [], [], [], []
    id_offset = 0
    for group, (split, g0, e0) in enumerate(zip(splits.values(), offsets, extra_offsets)):
        reference.append(remap(split, split.reference, g0, e0))
        target.append(remap(split, split.target, g0, e0))
        texts += split.texts
        qgroups.append(np.full(len(split), group))
        ggroups.append(np.full(split.n_gallery, group))
        gid = split.gallery_ids if split.gallery_ids is not None else np.arange(split.n_gallery)
        ids.append(np.asarray(gid, dtype=np.int64) + id_offset)
        id_offset += int(np.max(gid, initial=-1)) + 1
    if any((t < 0).any() for t in target):
        raise ValueError("training queries need annotated targets")
    pool = ImagePool(gallery_paths + extra_paths, model.preprocess)
    return CIRTrainData(
        images=pool,
        reference=np.concatenate(reference),
        text=model.tokenize(texts),
        target=np.concatenate(target),
        gallery_ids=np.concatenate(ids),
        n_gallery=len(gallery_paths),
        query_groups=np.concatenate(qgroups),
        gallery_groups=np.concatenate(ggroups),
    )


def train_from_config(
    path: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    output: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains as the config says; writes ``last.pt``, ``train.jsonl`` and ``config.json``.

    ``output`` overrides the config's output folder and ``train_overrides`` its ``train``
    settings (e.g. ``{"max_rank": 100}``). Under ``torchrun`` (``WORLD_SIZE`` > 1) it
    starts the process group (NCCL on GPUs, gloo on CPU or with ``"device": "cpu"``) and trains
    data-parallel; rank 0 writes the files."""
    config = load_config(path)
    if output is not None:
        config["output"] = str(output)
    if train_overrides:
        unknown = set(train_overrides) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise ValueError(f"unknown train settings {sorted(unknown)}")
        config["train"] = {**config.get("train", {}), **train_overrides}
    device = str(config.get("train", {}).get("device", "auto"))
    started = qdist.init_from_env("gloo" if device == "cpu" else None)
    try:
        return _train_from_config(config, resume=resume, progress=progress)
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _train_from_config(config: dict[str, Any], *, resume: bool, progress: bool) -> dict[str, Any]:
    lead = qdist.rank() == 0
    out = Path(config["output"])
    out.mkdir(parents=True, exist_ok=True)
    seed = int(config.get("train", {}).get("seed", 0))
    torch.manual_seed(seed)
    model = build_model(config["model"])
    splits = {
        name: _limit(split, config.get("max_queries"))
        for name, split in _splits(config, config["dataset"].get("train_split", "train")).items()
    }
    data = _training_data(splits, model)
    settings = TrainConfig(
        **{
            **config.get("train", {}),
            "checkpoint_dir": str(out),
            "log_path": str(out / "train.jsonl"),
            "resume": resume,
            "progress": progress,
        }
    )
    if lead:
        (out / "config.json").write_text(json.dumps(config, indent=2))
        ranks = f" on {qdist.world_size()} ranks" if qdist.is_distributed() else ""
        print(
            f"training {config['model'].get('backbone')} with {settings.method} on "
            f"{config['dataset']['name']}: {len(data)} queries, {data.n_gallery} gallery images, "
            f"{settings.epochs} epochs{ranks} -> {out}"
        )
    result = train(model, data, settings)
    last = result.history[-1] if result.history else {}
    return {"output": str(out), "epochs": len(result.history), "last": last}


def _preprocessing(model: torch.nn.Module) -> Any:
    """What turns an image file into the model's input, as JSON-able data."""
    transform = getattr(model, "preprocess", None)
    if isinstance(transform, TargetPad):
        return {
            "transform": "TargetPad",
            "ratio": transform.ratio,
            "size": transform.size,
            "mean": transform.mean.flatten().tolist(),
            "std": transform.std.flatten().tolist(),
        }
    return None if transform is None else repr(transform)


def feature_cache_key(
    checkpoint: Path, model_spec: dict[str, Any], model: torch.nn.Module, split: CIRSplit
) -> str:
    """What cached gallery features depend on, hashed: the checkpoint (path, size, mtime), the
    model spec, the model class, the preprocessing and the split's name and gallery image list.
    Change any of them and the features are encoded afresh."""
    stat = checkpoint.stat()
    identity = {
        "checkpoint": [str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns],
        "model": model_spec,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "preprocess": _preprocessing(model),
        "split": split.name,
        "gallery": [os.fspath(p) for p in split.images[: split.n_gallery]],
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _FeatureCache:
    """Gallery features of one checkpoint, one file per (split, key) in ``folder``."""

    folder: Path
    checkpoint: Path
    model_spec: dict[str, Any]

    def path(self, model: torch.nn.Module, split: CIRSplit) -> Path:
        key = feature_cache_key(self.checkpoint, self.model_spec, model, split)
        return self.folder / f"{split.name.replace('/', '-')}-{key}.gallery.npy"


def _read_cached(path: Path, n_gallery: int) -> np.ndarray | None:
    """Cached features, or None when absent, unreadable or not ``(n_gallery, T, d)`` float32."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if features.ndim != 3 or features.shape[0] != n_gallery or features.dtype != np.float32:
        return None
    return features


def _write_cached(path: Path, features: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, features, allow_pickle=False)
    os.replace(tmp, path)


def _encode(
    model: torch.nn.Module,
    split: CIRSplit,
    cache: _FeatureCache | None,
    device: torch.device,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery features; gallery features are cached (see :func:`feature_cache_key`)."""
    pool = ImagePool(split.images, model.preprocess)
    text = model.tokenize(split.texts)
    cached = None if cache is None else cache.path(model, split)
    gallery = None if cached is None else _read_cached(cached, split.n_gallery)
    if gallery is not None:
        queries, _ = encode_split(
            model, pool, split.reference, text, device=device, n_gallery=1, progress=progress
        )
        return queries, gallery
    queries, gallery = encode_split(
        model,
        pool,
        split.reference,
        text,
        device=device,
        n_gallery=split.n_gallery,
        progress=progress,
    )
    if cached is not None:
        _write_cached(cached, gallery)
    return queries, gallery


def evaluate_from_config(
    path: str | Path,
    checkpoint: str | Path | None = None,
    *,
    split: str = "val",
    progress: bool = True,
    device: str = "auto",
    output: str | Path | None = None,
    inspect: bool = False,
) -> dict[str, Any]:
    """Evaluates a trained model as the benchmark defines; writes metrics (and, for test splits,
    the evaluation servers' submission files) into the output folder (or ``output``).

    With ``inspect``, also writes ``inspect/<split name>/`` there per evaluated split: a page to
    browse each query's top 50 next to its target (see :func:`_write_inspect`)."""
    config = load_config(path)
    if output is not None:
        config["output"] = str(output)
    out = Path(config["output"])
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(config["model"])
    cache = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        model.load_state_dict(load_model_state(checkpoint, map_location="cpu"))
        cache = _FeatureCache(out / "features", checkpoint, config["model"])
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    model.to(dev)
    name = config["dataset"]["name"]
    splits = _splits(config, split)
    metrics: dict[str, Any] = {"dataset": name, "split": split}
    files: list[str] = []

    def encode(s: CIRSplit) -> tuple[np.ndarray, np.ndarray]:
        queries, gallery = _encode(model, s, cache, dev, progress)
        if inspect:  # ranked as the benchmark ranks (CIRR and CIRCO without the reference)
            grades = getattr(s, "ground_truth", None)  # CIRCO's ground truths, graded 1.0
            files.append(
                _write_inspect(
                    out,
                    s,
                    queries,
                    gallery,
                    checkpoint,
                    no_reference=name != "fashioniq",
                    grades=grades,
                )
            )
        return queries, gallery

    benchmark = BENCHMARKS[name]
    if split == "test":
        files += benchmark.write_submission(splits, encode, out)
    else:
        metrics.update(benchmark.evaluate(splits, encode))
    metrics["files"] = files
    result_path = out / f"metrics_{name}_{split}.json"
    result_path.write_text(
        json.dumps(
            {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in metrics.items()
            },
            indent=2,
        )
    )
    _print_metrics(metrics)
    print(f"written: {result_path}" + "".join(f", {f}" for f in files))
    return metrics


def _print_metrics(metrics: dict[str, Any]) -> None:
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "files"]
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    print(f"{metrics['dataset']} {metrics['split']}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value:8.2f}")


def _write_inspect(
    out: Path,
    split: CIRSplit,
    queries: np.ndarray,
    gallery: np.ndarray,
    checkpoint: Path | None,
    *,
    no_reference: bool = False,
    grades: Any = None,
) -> str:
    """``qure evaluate --inspect``: writes ``out/inspect/<split>/``, each query's top 50 with its
    reference, text and target (ranked as the benchmark ranks: ``no_reference`` takes the
    reference image out, as CIRR and CIRCO do); ``grades``: per query, the gallery indices of
    its ground truths (CIRCO). Returns the page's ``index.html``."""
    from .inspect import write_page

    exclude = None
    if no_reference:
        exclude = [[int(r)] if r < split.n_gallery else [] for r in split.reference]
    folder = out / "inspect" / split.name.replace("/", "-")
    page = write_page(
        folder,
        queries=queries,
        gallery=gallery,
        targets=split.target,
        images=split.images,
        reference=split.reference,
        texts=split.texts,
        relevance=grades,
        query_ids=split.query_ids,
        image_names=split.image_names,
        exclude=exclude,
        title=f"qure evaluate: {split.name}",
        notes={
            "checkpoint": str(checkpoint) if checkpoint is not None else "none (initial model)",
            "split": split.name,
            "ranking": "reference image removed" if no_reference else "whole gallery",
        },
    )
    print(f"inspect page: {page.index} ({page.queries} queries, {page.seconds:.1f} s)")
    return str(page.index)
