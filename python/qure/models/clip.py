"""CLIP with a CLIP4Cir-style combiner (Baldrati et al., 2022), on ``transformers.CLIPModel``.

Image side (gallery): CLIP's projected image embedding, L2-normalised, as one token:
``(N, 1, d)`` (``d`` = CLIP's ``projection_dim``), so the max-over-tokens score is the plain
cosine similarity.

Query side: the combiner of CLIP4Cir over the L2-normalised CLIP embeddings ``i`` (reference
image) and ``t`` (text)::

    pi, pt = dropout(relu(W_i i)), dropout(relu(W_t t))          # projections
    h      = dropout(relu(W_c [pt ; pi]))                        # combined features
    g      = sigmoid(MLP([pt ; pi]))                             # learned mixing weight
    q      = normalise(W_o h + g * t + (1 - g) * i)

(dropout p = 0.5, active in training mode only). The temperature is a learned
``log_temperature`` initialised from CLIP's ``logit_scale`` (tau = 1 / exp(logit_scale)),
clamped to [0.001, 0.5].

Tokenizer: ``CLIPTokenizer`` (via ``AutoTokenizer``) from the pretrained folder; tiny random
configurations use :class:`WordTokenizer` over ``config["vocab"]`` (lower-cased ``[a-z0-9]+``
words, ``<bos> words <eos>``, unknown words -> ``<unk>``), since a byte-level BPE tokenizer
needs merges files that a test cannot invent meaningfully.

``transformers`` is imported when a model is built, not when this module is imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .hf import HFCIRModel, check_pixels, load_tokenizer
from .preprocess import CLIP_MEAN, CLIP_STD

__all__ = ["ClipCombiner", "Combiner", "WordTokenizer", "tiny_clip_config"]

_TINY_DEFAULTS: dict[str, Any] = {
    "image_size": 32,
    "patch_size": 8,
    "vision_hidden": 32,
    "vision_layers": 1,
    "vision_heads": 2,
    "text_hidden": 32,
    "text_layers": 1,
    "text_heads": 2,
    "embed_dim": 16,
    "max_positions": 32,
}

_WORD = re.compile(r"[a-z0-9]+")
_VOCAB_FILE = "qure_word_vocab.json"


class WordTokenizer:
    """A whitespace/punctuation word tokenizer for tiny random CLIP models.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then the vocabulary's words in
    order. A text becomes ``<bos> w1 ... wk <eos>`` (truncated to ``max_length`` tokens, keeping
    ``<eos>``, whose position CLIP pools). ``eos`` is not id 2, so transformers' CLIP text model
    pools at the first ``<eos>`` rather than at the largest id (its legacy rule for
    ``eos_token_id == 2``).
    """

    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
    pad_token_id, unk_token_id, bos_token_id, eos_token_id = 0, 1, 2, 3

    def __init__(self, vocab: Sequence[str]) -> None:
        if isinstance(vocab, str):
            raise TypeError("vocab must be a list of words, not a string")
        words: list[str] = []
        seen = set(self.SPECIALS)
        for w in vocab:
            w = str(w).strip().lower()
            if not _WORD.fullmatch(w):
                raise ValueError(f"vocabulary entries must match [a-z0-9]+, got {w!r}")
            if w not in seen:
                seen.add(w)
                words.append(w)
        self.words = words
        self._index = {w: i + len(self.SPECIALS) for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.SPECIALS) + len(self.words)

    def __call__(
        self, texts: Sequence[str], max_length: int = 64, **_: Any
    ) -> dict[str, list[list[int]]]:
        """``{"input_ids", "attention_mask"}``, truncated to ``max_length`` and padded to the
        longest text with ``<pad>`` (other transformers-style keywords are accepted, ignored)."""
        rows = []
        for text in texts:
            ids = [self._index.get(w, self.unk_token_id) for w in _WORD.findall(str(text).lower())]
            rows.append([self.bos_token_id, *ids[: max(max_length - 2, 0)], self.eos_token_id])
        width = max((len(r) for r in rows), default=0)
        return {
            "input_ids": [r + [self.pad_token_id] * (width - len(r)) for r in rows],
            "attention_mask": [[1] * len(r) + [0] * (width - len(r)) for r in rows],
        }

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, _VOCAB_FILE).write_text(json.dumps({"words": self.words}))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> WordTokenizer:
        return cls(json.loads(Path(folder, _VOCAB_FILE).read_text())["words"])


def _load_tokenizer(source: str | os.PathLike[str]) -> Any:
    """A :class:`WordTokenizer` saved in ``source``, else ``AutoTokenizer`` (CLIPTokenizer)."""
    if (Path(source) / _VOCAB_FILE).is_file():
        return WordTokenizer.from_folder(source)
    return load_tokenizer(source)


def tiny_clip_config(config: dict[str, Any]) -> Any:
    """A small random ``CLIPConfig`` from qure's tiny schema.

    Keys (all optional except the vocabulary): ``vocab`` (list of words, see
    :class:`WordTokenizer`) or ``vocab_size``, ``image_size`` (32), ``patch_size`` (8),
    ``vision_hidden`` (32), ``vision_layers`` (1), ``vision_heads`` (2), ``text_hidden`` (32),
    ``text_layers`` (1), ``text_heads`` (2), ``embed_dim`` (16; CLIP's ``projection_dim``),
    ``max_positions`` (32).
    """
    from transformers import CLIPConfig

    unknown = set(config) - set(_TINY_DEFAULTS) - {"vocab", "vocab_size", "tokenizer"}
    if unknown:
        raise ValueError(f"unknown CLIP config keys: {sorted(unknown)}")
    c = {**_TINY_DEFAULTS, **config}
    if "vocab" in c:
        vocab_size = len(WordTokenizer(c["vocab"]))
    elif "vocab_size" in c:
        vocab_size = int(c["vocab_size"])
    else:
        raise ValueError("a tiny CLIP config needs 'vocab' (a list of words) or 'vocab_size'")
    vh, th = int(c["vision_hidden"]), int(c["text_hidden"])
    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": th,
            "intermediate_size": 4 * th,
            "num_hidden_layers": int(c["text_layers"]),
            "num_attention_heads": int(c["text_heads"]),
            "max_position_embeddings": int(c["max_positions"]),
            "pad_token_id": WordTokenizer.pad_token_id,
            "bos_token_id": WordTokenizer.bos_token_id,
            "eos_token_id": WordTokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": vh,
            "intermediate_size": 4 * vh,
            "num_hidden_layers": int(c["vision_layers"]),
            "num_attention_heads": int(c["vision_heads"]),
            "image_size": int(c["image_size"]),
            "patch_size": int(c["patch_size"]),
        },
        projection_dim=int(c["embed_dim"]),
    )


class Combiner(nn.Module):
    """CLIP4Cir's combiner network over ``(image, text)`` features of size ``dim``."""

    def __init__(
        self, dim: int, projection_dim: int, hidden_dim: int, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.text_projection = nn.Linear(dim, projection_dim)
        self.image_projection = nn.Linear(dim, projection_dim)
        self.combiner = nn.Linear(2 * projection_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, dim)
        self.gate = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
            nn.Sigmoid(),
        )
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        pt = self.dropout1(F.relu(self.text_projection(text)))
        pi = self.dropout2(F.relu(self.image_projection(image)))
        raw = torch.cat([pt, pi], dim=-1)
        combined = self.dropout3(F.relu(self.combiner(raw)))
        g = self.gate(raw)
        return F.normalize(self.output(combined) + g * text + (1 - g) * image, dim=-1)


class ClipCombiner(HFCIRModel):
    """CLIP (``transformers.CLIPModel``) with a CLIP4Cir combiner as a qure CIR model.

    ``pretrained``: a local folder or hub id for ``CLIPModel.from_pretrained`` (tokenizer from
    the same place). ``config`` instead builds a random model: qure's tiny schema (see
    :func:`tiny_clip_config`) or ``{"hf_config": <a CLIPConfig dict>, "tokenizer": <folder>}``.
    ``config`` may also hold ``combiner_dim`` / ``hidden_dim`` (defaults 4 d and 8 d, CLIP4Cir's
    ratios).

    ``freeze_backbone`` (default): CLIP's image encoder and projection get no gradients and stay
    in eval mode. ``freeze_text``: likewise for the text encoder (CLIP4Cir's second stage, where
    only the combiner trains).
    """

    backbone = "clip"
    hf_attribute = "clip"

    def __init__(
        self,
        pretrained: str | os.PathLike[str] | None = None,
        *,
        config: dict[str, Any] | None = None,
        freeze_backbone: bool = True,
        freeze_text: bool = False,
        combiner_dim: int | None = None,
        hidden_dim: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        from transformers import CLIPConfig, CLIPModel

        self.freeze_backbone, self.freeze_text = bool(freeze_backbone), bool(freeze_text)
        if config is not None:
            config = dict(config)
            combiner_dim = config.pop("combiner_dim", combiner_dim)
            hidden_dim = config.pop("hidden_dim", hidden_dim)
        self.clip, _ = self.build(CLIPModel, CLIPConfig, pretrained, config, tiny_clip_config)
        tokenizer = self.build_tokenizer(
            pretrained, config, load=_load_tokenizer, from_vocab=WordTokenizer
        )
        cfg: Any = self.clip.config
        self.dim = int(cfg.projection_dim)
        self.n_tokens = 1
        self.combiner_dim = int(combiner_dim or 4 * self.dim)
        self.hidden_dim = int(hidden_dim or 8 * self.dim)
        self.dropout = float(dropout)
        self.combiner = Combiner(self.dim, self.combiner_dim, self.hidden_dim, self.dropout)
        self.init_text(
            tokenizer,
            max_text_len=cfg.text_config.max_position_embeddings,
            vocab_size=cfg.text_config.vocab_size,
        )
        self.init_image(cfg.vision_config.image_size, CLIP_MEAN, CLIP_STD)
        scale = float(self.clip.logit_scale.detach())
        self.log_temperature = nn.Parameter(torch.tensor(-scale))
        self.clip.logit_scale.requires_grad_(False)
        if self.freeze_backbone:
            self.clip.vision_model.requires_grad_(False)
            self.clip.visual_projection.requires_grad_(False)
            self.clip.vision_model.eval()
        if self.freeze_text:
            self.clip.text_model.requires_grad_(False)
            self.clip.text_projection.requires_grad_(False)
            self.clip.text_model.eval()

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [self.clip.vision_model] if self.freeze_backbone else []
        return frozen + ([self.clip.text_model] if self.freeze_text else [])

    def spec_options(self) -> dict[str, Any]:
        return {
            "freeze_backbone": self.freeze_backbone,
            "freeze_text": self.freeze_text,
            "combiner_dim": self.combiner_dim,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
        }

    @property
    def temperature(self) -> torch.Tensor:
        """The learned loss temperature, clamped to [0.001, 0.5]."""
        return self.log_temperature.exp().clamp(0.001, 0.5)

    def _image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels, type(self).__name__)
        weight = self.clip.visual_projection.weight
        pixels = pixels.to(device=weight.device, dtype=weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
            return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 1, d)`` L2-normalised CLIP image embeddings."""
        return self._image_embedding(pixels).unsqueeze(1)

    def encode_queries(self, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` L2-normalised combiner outputs for (reference image, text) queries.

        ``text`` is ``(B, L)`` token ids with -1 at padding positions (see :meth:`tokenize`).
        """
        image = self._image_embedding(reference)
        ids, mask = self.text_inputs(text, image.shape[0], image.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text):
            pooled = self.clip.text_model(input_ids=ids, attention_mask=mask).pooler_output
            words = F.normalize(self.clip.text_projection(pooled), dim=-1)
        return self.combiner(image, words)
