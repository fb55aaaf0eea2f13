"""What the Hugging Face backbones (:mod:`~qure.models.blip2`, :mod:`~qure.models.clip`) share.

* :class:`HFCIRModel`: the wrapper around a ``transformers`` model: built from a checkpoint or a
  config (:meth:`HFCIRModel.build`), its tokenizer, ``tokenize``, the text-input checks,
  ``preprocess``, frozen parts kept in eval mode, and ``export_spec`` for
  :func:`qure.models.save_model`. A subclass adds its encoders and temperature.
* :func:`hf_tokenize`, :func:`load_tokenizer`, :func:`ids_and_mask`, :func:`check_pixels`: the
  tokenizer and input helpers behind it.

``transformers`` is imported when a model or tokenizer is built, not when this module is
imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .._arrays import check_int
from .preprocess import build_transform

__all__ = ["HFCIRModel", "check_pixels", "hf_tokenize", "ids_and_mask", "load_tokenizer"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")

M = TypeVar("M", bound="HFCIRModel")


def check_pixels(pixels: torch.Tensor, who: str) -> None:
    """Raises unless ``pixels`` is a float ``(N, 3, H, W)`` batch."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"{who} takes a torch tensor of pixels, got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
        raise ValueError(
            f"{who} takes preprocessed float pixels (N, 3, H, W) (see model.preprocess), got "
            f"{pixels.dtype} {tuple(pixels.shape)}"
        )


def ids_and_mask(
    text: torch.Tensor | np.ndarray,
    pad_id: int,
    device: torch.device,
    *,
    batch: int,
    max_len: int,
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with padding (-1) replaced by ``pad_id``, and the ``text >= 0`` mask (long);
    checks the shape against ``batch`` reference images, the length and the id range."""
    if not isinstance(text, torch.Tensor):
        text = torch.as_tensor(np.asarray(text))
    if text.ndim != 2 or text.is_floating_point() or text.dtype == torch.bool:
        raise ValueError(f"text must be (B, L) integer ids, got {text.dtype} {tuple(text.shape)}")
    if text.shape[0] != batch:
        raise ValueError(f"{batch} reference images but {text.shape[0]} texts")
    if text.shape[1] > max_len:
        raise ValueError(f"texts of {text.shape[1]} tokens exceed the model's {max_len}")
    text = text.to(device=device, dtype=torch.long)
    if text.numel() and int(text.max()) >= vocab_size:
        raise ValueError(f"token id {int(text.max())} outside the vocabulary of {vocab_size}")
    mask = text >= 0
    return text.masked_fill(~mask, pad_id), mask.long()


def hf_tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> np.ndarray:
    """``(Q, L)`` int64 ids from a transformers tokenizer, padding positions -1.

    ``L`` is the longest tokenised text (special tokens included), at most ``max_len``
    (an integer ``>= 2``).
    """
    if isinstance(texts, str):
        raise TypeError("tokenize takes a sequence of texts, not a single string")
    max_len = check_int(max_len, "max_len", 2)
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 0), dtype=np.int64)
    enc = tokenizer(
        texts, padding="longest", truncation=True, max_length=max_len, return_attention_mask=True
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=bool)
    ids[~mask] = -1
    return ids


def load_tokenizer(source: str | os.PathLike[str]) -> Any:
    """``AutoTokenizer.from_pretrained(source)`` (a folder or hub id).

    A local folder must hold tokenizer files: transformers 5 otherwise quietly builds an empty
    tokenizer (special tokens only) that maps every word to the unknown token.
    """
    from transformers import AutoTokenizer

    path = Path(source)
    if path.is_dir() and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path}; save the tokenizer "
            "there with tokenizer.save_pretrained(folder)"
        )
    return AutoTokenizer.from_pretrained(str(source))


class HFCIRModel(nn.Module):
    """The parts of a qure CIR model on a ``transformers`` backbone that do not depend on it.

    A subclass sets ``backbone`` (the spec name), builds its ``transformers`` model with
    :meth:`build` and stores it in the attribute ``hf_attribute`` names (its state-dict prefix,
    e.g. ``self.blip``), calls :meth:`init_text` and :meth:`init_image`, and
    lists in :meth:`frozen_modules` the parts that stay in eval mode and in :meth:`spec_options`
    its constructor options. It then has ``tokenize``, :meth:`text_inputs`, ``preprocess``,
    ``train`` and ``export_spec``.
    """

    backbone: str = ""
    hf_attribute: str = ""
    """The attribute holding the ``transformers`` model (its state-dict prefix)."""

    tokenizer: Any
    pad_id: int
    max_text_len: int
    vocab_size: int
    image_size: int
    preprocess: Callable[[Any], torch.Tensor]

    @staticmethod
    def build(
        model_class: Any,
        config_class: Any,
        pretrained: str | os.PathLike[str] | None,
        config: dict[str, Any] | None,
        tiny_config: Callable[[dict[str, Any]], Any],
    ) -> tuple[Any, Any]:
        """``(model, hf_config)``: ``model_class.from_pretrained(pretrained)`` in float32 (and
        ``hf_config`` None), or a randomly initialised ``model_class`` from ``config``:
        ``{"hf_config": <a config dict>, ...}`` (what :func:`qure.models.save_model` writes)
        or qure's tiny schema (``tiny_config(config)``)."""
        if (pretrained is None) == (config is None):
            raise ValueError("give exactly one of pretrained (a folder or hub id) and config")
        if pretrained is not None:
            model = model_class.from_pretrained(str(pretrained))
            # transformers 5 loads in the checkpoint's dtype by default; train in float32.
            model.float()
            return model, None
        assert config is not None
        if "hf_config" in config:
            hf_config = config_class.from_dict(dict(config["hf_config"]))
        else:
            hf_config = tiny_config(config)
        return model_class(hf_config), hf_config

    @staticmethod
    def build_tokenizer(
        pretrained: str | os.PathLike[str] | None,
        config: dict[str, Any] | None,
        *,
        load: Callable[[str | os.PathLike[str]], Any] = load_tokenizer,
        from_vocab: Callable[[Sequence[str]], Any],
    ) -> Any:
        """The tokenizer of ``pretrained`` or of ``config["tokenizer"]`` (a folder; both read
        with ``load``), else one over ``config["vocab"]`` (``from_vocab``)."""
        if pretrained is not None:
            return load(pretrained)
        assert config is not None
        if "tokenizer" in config:
            return load(config["tokenizer"])
        if "vocab" in config:
            return from_vocab(config["vocab"])
        raise ValueError("config needs 'vocab' (a list of words) or 'tokenizer' (a folder)")

    def init_text(self, tokenizer: Any, max_text_len: int, vocab_size: int) -> None:
        """Sets the tokenizer, its padding id (0 when it has none), the longest text the text
        encoder takes and its vocabulary size."""
        self.tokenizer = tokenizer
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)
        self.max_text_len = int(max_text_len)
        self.vocab_size = int(vocab_size)

    def init_image(self, image_size: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        """Sets ``image_size`` (an int, or the first of a pair) and ``preprocess``, the 1.25
        target-pad transform with the backbone's normalisation."""
        self.image_size = int(image_size if isinstance(image_size, int) else image_size[0])
        self.preprocess = build_transform(self.image_size, mean, std, target_pad=1.25)

    @property
    def hf_model(self) -> Any:
        """The wrapped ``transformers`` model (the attribute :attr:`hf_attribute` names)."""
        return getattr(self, self.hf_attribute)

    def frozen_modules(self) -> list[nn.Module]:
        """The parts kept in eval mode (and without gradients) whatever the mode."""
        return []

    def spec_options(self) -> dict[str, Any]:
        """The constructor options that :meth:`export_spec` records."""
        return {}

    def train(self: M, mode: bool = True) -> M:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def tokenize(self, texts: Sequence[str], max_len: int = 64) -> np.ndarray:
        """``(Q, L)`` int64 token ids of the backbone's tokenizer, padding positions -1 (``L``
        at most ``max_len`` and the text encoder's positions)."""
        return hf_tokenize(self.tokenizer, texts, min(max_len, self.max_text_len))

    def text_inputs(
        self, text: torch.Tensor | np.ndarray, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, attention mask)`` on ``device`` from ``(B, L)`` ids with -1 at padding
        positions (see :meth:`tokenize`), checked against ``batch`` reference images."""
        return ids_and_mask(
            text,
            self.pad_id,
            device,
            batch=batch,
            max_len=self.max_text_len,
            vocab_size=self.vocab_size,
        )

    def export_spec(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Writes the tokenizer to ``folder/tokenizer`` and returns the spec that rebuilds this
        architecture offline (``build_model(spec)``; the weights come separately)."""
        self.tokenizer.save_pretrained(str(Path(folder) / "tokenizer"))
        return {
            "backbone": self.backbone,
            "pretrained": None,
            "config": {"hf_config": self.hf_model.config.to_dict(), "tokenizer": "tokenizer"},
            **self.spec_options(),
        }
