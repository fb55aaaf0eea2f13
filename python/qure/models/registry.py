"""Building models from a JSON-able spec, and saving/loading trained ones without the hub.

A spec is ``{"backbone": "blip2" | "clip" | "tiny", "pretrained": str | None, "config": {...},
**backbone keyword arguments}``:

- ``blip2``: :class:`~qure.models.blip2.Blip2QuRe` (``freeze_vision``, ``vision_fp16``);
- ``clip``: :class:`~qure.models.clip.ClipCombiner` (``freeze_backbone``, ``freeze_text``,
  ``combiner_dim``, ``hidden_dim``, ``dropout``);
- ``tiny``: :class:`~qure.models.tiny.TinyCIRModel`; ``config`` (and any extra keys) are its
  arguments (``vocab_size`` required; ``dim``, ``tokens``, ``width``, ``temperature``).

The data pipeline must match the backbone: ``blip2`` and ``clip`` take preprocessed float
pixels ``(N, 3, H, W)`` (``model.preprocess`` maps a PIL image to one) and ids from
``model.tokenize`` (-1 padded); ``tiny`` takes ``(N, H, W, 3)`` uint8 images and 0-padded word
ids (the shapes benchmark's ``tokenize``) and has neither ``preprocess`` nor ``tokenize``.

``save_model(model, folder)`` writes ``spec.json`` (the architecture, with the transformers
config inlined and the tokenizer saved under ``folder/tokenizer``) and ``model.safetensors``
(``model.pt``, a torch state dict, where safetensors is not installed); ``load_model(folder)``
rebuilds the model from them with no network access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tiny import TinyCIRModel

__all__ = ["BACKBONES", "build_model", "load_model", "save_model"]

BACKBONES = ("blip2", "clip", "tiny")
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
TORCH_WEIGHTS_FILE = "model.pt"
_FORMAT = "qure-model"


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A model from ``spec`` (see the module docstring); randomly initialised unless
    ``pretrained`` names a folder or hub id. Every model built here is a ``torch.nn.Module``
    that satisfies :class:`qure.models.CIRModel` (with ``preprocess`` and ``tokenize``)."""
    if not isinstance(spec, dict):
        raise TypeError(f"a model spec is a dict, got {type(spec).__name__}")
    kwargs = {k: v for k, v in spec.items() if k not in ("backbone", "pretrained", "config")}
    kwargs.pop("format", None)
    kwargs.pop("version", None)
    backbone = spec.get("backbone")
    pretrained = spec.get("pretrained")
    config = spec.get("config")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"spec['config'] must be a dict, got {type(config).__name__}")
    if backbone == "tiny":
        if pretrained:
            raise ValueError("the tiny backbone has no pretrained weights")
        args = {**(config or {}), **kwargs}
        if "vocab_size" not in args:
            raise ValueError("the tiny backbone needs config['vocab_size']")
        return TinyCIRModel(**args)
    if backbone == "blip2":
        from .blip2 import Blip2QuRe

        return Blip2QuRe(pretrained, config=config, **kwargs)
    if backbone == "clip":
        from .clip import ClipCombiner

        return ClipCombiner(pretrained, config=config, **kwargs)
    raise ValueError(f"spec['backbone'] must be one of {BACKBONES}, got {backbone!r}")


def _spec_of(model: nn.Module, folder: Path) -> dict[str, Any]:
    if isinstance(model, TinyCIRModel):
        return {
            "backbone": "tiny",
            "pretrained": None,
            "config": {
                "vocab_size": int(model.word.num_embeddings),
                "dim": int(model.dim),
                "tokens": int(model.n_tokens),
                "width": int(model.token_queries.shape[1]),
            },
        }
    export = getattr(model, "export_spec", None)
    if export is None:
        raise TypeError(f"cannot save a {type(model).__name__}: not a qure backbone")
    return dict(export(folder))


def save_model(model: nn.Module, folder: str | os.PathLike[str]) -> Path:
    """Writes ``spec.json`` and the weights of ``model`` into ``folder`` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"format": _FORMAT, "version": 1, **_spec_of(model, folder)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        torch.save(state, folder / TORCH_WEIGHTS_FILE)
        spec["weights"] = TORCH_WEIGHTS_FILE
    else:
        # Distinct storages: safetensors refuses tensors that share memory.
        save_file(_unshared(state), str(folder / WEIGHTS_FILE))
        spec["weights"] = WEIGHTS_FILE
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return folder


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        if ptr != -1:
            seen.add(ptr)
    return out


def load_model(
    folder: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The model :func:`save_model` wrote into ``folder``, in eval mode (no network needed)."""
    folder = Path(folder)
    path = folder / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SPEC_FILE} in {folder}")
    spec = json.loads(path.read_text())
    if spec.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a qure model spec")
    weights = folder / spec.pop("weights", WEIGHTS_FILE)
    config = spec.get("config")
    if isinstance(config, dict) and "tokenizer" in config:
        tok = Path(config["tokenizer"])
        spec["config"] = {**config, "tokenizer": str(tok if tok.is_absolute() else folder / tok)}
    model = build_model(spec)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights), device="cpu")
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
