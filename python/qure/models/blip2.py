"""BLIP-2 as QuRe uses it, on ``transformers.Blip2ForImageTextRetrieval``.

Image side (gallery): the frozen ViT encodes the image; the Q-Former's learned query tokens
cross-attend to its patch features; each query token's output goes through ``vision_projection``
and is L2-normalised: ``(N, num_query_tokens, image_text_hidden_size)`` (32 x 256 for the
released checkpoints). A gallery image is scored against a query as the max over its tokens.

Query side (reference image + text): the Q-Former runs over ``[query tokens ; text tokens]``
(the multimodal path BLIP-2 uses for image-text matching) with the query tokens cross-attending
to the reference image's ViT features; the query tokens' outputs go through ``text_projection``,
are averaged over the tokens and L2-normalised: ``(B, image_text_hidden_size)``.

The temperature is BLIP-2's learned ``temp`` (initialised to 0.07, used clamped to
[0.001, 0.5]); ``Blip2ForImageTextRetrieval`` checkpoints do not carry it, so it always starts
at 0.07.

``transformers`` is imported when a model is built, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .hf import HFCIRModel, check_pixels
from .preprocess import BLIP2_MEAN, BLIP2_STD

__all__ = ["BLIP2_SPECIALS", "Blip2QuRe", "tiny_blip2_config"]

BLIP2_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Tiny random configurations (tests, smoke runs): every size has a small default.
_TINY_DEFAULTS: dict[str, Any] = {
    "image_size": 32,
    "patch_size": 8,
    "vision_hidden": 32,
    "vision_layers": 1,
    "vision_heads": 2,
    "qformer_hidden": 32,
    "qformer_layers": 1,
    "qformer_heads": 2,
    "cross_attention_frequency": 1,
    "num_query_tokens": 4,
    "embed_dim": 16,
    "max_positions": 128,
}


def tiny_blip2_config(config: dict[str, Any]) -> Any:
    """A small random ``Blip2Config`` from qure's tiny schema.

    Keys (all optional except the vocabulary): ``vocab`` (list of words; the tokenizer's
    vocabulary is ``[PAD] [UNK] [CLS] [SEP] [MASK]`` then these words) or ``vocab_size``,
    ``image_size`` (32), ``patch_size`` (8), ``vision_hidden`` (32), ``vision_layers`` (1),
    ``vision_heads`` (2), ``qformer_hidden`` (32), ``qformer_layers`` (1), ``qformer_heads`` (2),
    ``cross_attention_frequency`` (1), ``num_query_tokens`` (4; 32 in the paper),
    ``embed_dim`` (16; ``image_text_hidden_size``, 256 in the paper), ``max_positions`` (128).
    """
    from transformers import Blip2Config

    unknown = set(config) - set(_TINY_DEFAULTS) - {"vocab", "vocab_size", "tokenizer"}
    if unknown:
        raise ValueError(f"unknown BLIP-2 config keys: {sorted(unknown)}")
    c = {**_TINY_DEFAULTS, **config}
    if "vocab" in c:
        vocab_size = len(BLIP2_SPECIALS) + len(_clean_vocab(c["vocab"], BLIP2_SPECIALS))
    elif "vocab_size" in c:
        vocab_size = int(c["vocab_size"])
    else:
        raise ValueError("a tiny BLIP-2 config needs 'vocab' (a list of words) or 'vocab_size'")
    vh, qh = int(c["vision_hidden"]), int(c["qformer_hidden"])
    return Blip2Config(
        vision_config={
            "hidden_size": vh,
            "intermediate_size": 4 * vh,
            "num_hidden_layers": int(c["vision_layers"]),
            "num_attention_heads": int(c["vision_heads"]),
            "image_size": int(c["image_size"]),
            "patch_size": int(c["patch_size"]),
            # The released default (1e-10) leaves a random ViT's embeddings almost zero.
            "initializer_range": 0.02,
        },
        qformer_config={
            "vocab_size": vocab_size,
            "hidden_size": qh,
            "num_hidden_layers": int(c["qformer_layers"]),
            "num_attention_heads": int(c["qformer_heads"]),
            "intermediate_size": 4 * qh,
            "cross_attention_frequency": int(c["cross_attention_frequency"]),
            "max_position_embeddings": int(c["max_positions"]),
            "encoder_hidden_size": vh,
            "pad_token_id": 0,
            # The text feed-forward blocks the multimodal (query + text) path needs.
            "use_qformer_text_input": True,
        },
        num_query_tokens=int(c["num_query_tokens"]),
        image_text_hidden_size=int(c["embed_dim"]),
    )


def _clean_vocab(vocab: Sequence[str], specials: Sequence[str]) -> list[str]:
    if isinstance(vocab, str):
        raise TypeError("vocab must be a list of words, not a string")
    seen = set(specials)
    words = []
    for w in vocab:
        w = str(w).strip().lower()
        if not w or any(ch.isspace() for ch in w):
            raise ValueError(f"vocabulary entries must be single non-empty words, got {w!r}")
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def bert_tokenizer_from_vocab(vocab: Sequence[str]) -> Any:
    """A lower-casing BERT (WordPiece) tokenizer over ``[PAD] [UNK] [CLS] [SEP] [MASK]`` + vocab.

    Built by writing ``vocab.txt`` to a temporary folder and loading it with
    ``BertTokenizerFast.from_pretrained`` (in transformers 5 the ``vocab_file=`` constructor
    argument is silently ignored, so the folder route is the one that works in 4.x and 5.x).
    """
    try:
        from transformers import BertTokenizerFast as Bert  # type: ignore[attr-defined]
    except ImportError:  # a future transformers without the 4.x alias
        from transformers import BertTokenizer as Bert

    words = _clean_vocab(vocab, BLIP2_SPECIALS)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.txt").write_text("\n".join([*BLIP2_SPECIALS, *words]) + "\n")
        return Bert.from_pretrained(folder, do_lower_case=True)


def _ones(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.ones(tuple(shape), dtype=torch.long, device=device)


class Blip2QuRe(HFCIRModel):
    """BLIP-2 (``Blip2ForImageTextRetrieval``) as a qure CIR model.

    ``pretrained``: a local folder or hub id for ``Blip2ForImageTextRetrieval.from_pretrained``
    (e.g. ``Salesforce/blip2-itm-vit-g``; its tokenizer is loaded from the same place).
    ``config`` instead builds a randomly initialised model: either qure's tiny schema (see
    :func:`tiny_blip2_config`; ``vocab`` gives the tokenizer) or ``{"hf_config": <a
    Blip2Config dict>, "tokenizer": <folder>}`` (what :func:`qure.models.save_model` writes).

    ``freeze_vision``: the ViT gets no gradients and stays in eval mode (the paper trains only
    the Q-Former, the query tokens, the projections and the temperature). ``vision_fp16``: the
    frozen ViT is kept in float16 (meant for CUDA; the Q-Former stays float32).
    """

    backbone = "blip2"
    hf_attribute = "blip"

    def __init__(
        self,
        pretrained: str | os.PathLike[str] | None = None,
        *,
        config: dict[str, Any] | None = None,
        freeze_vision: bool = True,
        vision_fp16: bool = False,
    ) -> None:
        super().__init__()
        from transformers import Blip2Config, Blip2ForImageTextRetrieval

        if vision_fp16 and not freeze_vision:
            raise ValueError("vision_fp16 needs freeze_vision=True (no float16 training)")
        self.freeze_vision = bool(freeze_vision)
        self.vision_fp16 = bool(vision_fp16)
        self.blip, hf_config = self.build(
            Blip2ForImageTextRetrieval, Blip2Config, pretrained, config, tiny_blip2_config
        )
        if hf_config is not None:
            # transformers zero-initialises the query tokens (they come from checkpoints);
            # LAVIS draws them from N(0, 0.02), which a random model needs to tell them apart.
            with torch.no_grad():
                std = float(hf_config.qformer_config.initializer_range)
                self.blip.query_tokens.normal_(0.0, std)
        tokenizer = self.build_tokenizer(pretrained, config, from_vocab=bert_tokenizer_from_vocab)
        cfg: Any = self.blip.config
        if not getattr(cfg.qformer_config, "use_qformer_text_input", True):
            raise ValueError(
                "this BLIP-2 checkpoint's Q-Former has no text feed-forward blocks "
                "(qformer_config.use_qformer_text_input=False); use an image-text retrieval "
                "checkpoint such as Salesforce/blip2-itm-vit-g"
            )
        self.init_text(
            tokenizer,
            max_text_len=cfg.qformer_config.max_position_embeddings,
            vocab_size=cfg.qformer_config.vocab_size,
        )
        self.n_tokens = int(cfg.num_query_tokens)
        self.dim = int(cfg.image_text_hidden_size)
        self.init_image(cfg.vision_config.image_size, BLIP2_MEAN, BLIP2_STD)
        self.temp = nn.Parameter(torch.tensor(0.07))
        if self.freeze_vision:
            self.blip.vision_model.requires_grad_(False)
            self.blip.vision_model.eval()
        if self.vision_fp16:
            self.blip.vision_model.half()
        # Unused by qure's scoring; frozen so that optimisers and DDP do not wait for them.
        self.blip.itm_head.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.blip.vision_model] if self.freeze_vision else []

    def spec_options(self) -> dict[str, Any]:
        return {"freeze_vision": self.freeze_vision, "vision_fp16": self.vision_fp16}

    @property
    def temperature(self) -> torch.Tensor:
        """The learned loss temperature, clamped to [0.001, 0.5] as in BLIP-2."""
        return self.temp.clamp(0.001, 0.5)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """ViT patch features ``(N, P, hidden)`` in the Q-Former's dtype."""
        check_pixels(pixels, type(self).__name__)
        vision = self.blip.vision_model
        weight = vision.embeddings.patch_embedding.weight
        pixels = pixels.to(device=weight.device, dtype=weight.dtype)
        grad = contextlib.nullcontext() if not self.freeze_vision else torch.no_grad()
        with grad:
            feats = vision(pixel_values=pixels)[0]
        return feats.to(self.blip.query_tokens.dtype)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, num_query_tokens, dim)`` L2-normalised query-token embeddings of images."""
        feats = self._image_features(pixels)
        n = feats.shape[0]
        query = self.blip.query_tokens.expand(n, -1, -1)
        out = self.blip.qformer(
            query_embeds=query,
            encoder_hidden_states=feats,
            encoder_attention_mask=_ones(feats.shape[:-1], feats.device),
        )[0]
        proj = self.blip.vision_projection
        return F.normalize(proj(out[:, : self.n_tokens].to(proj.weight.dtype)), dim=-1)

    def encode_queries(self, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, dim)`` L2-normalised embeddings of (reference image, text) queries.

        ``text`` is ``(B, L)`` token ids with -1 at padding positions (see :meth:`tokenize`).
        """
        feats = self._image_features(reference)
        b = feats.shape[0]
        ids, mask = self.text_inputs(text, b, feats.device)
        query = self.blip.query_tokens.expand(b, -1, -1)
        embeds = self.blip.embeddings(input_ids=ids, query_embeds=query)
        attention = torch.cat([_ones((b, self.n_tokens), ids.device), mask], dim=1)
        out = self.blip.qformer(
            query_embeds=embeds,
            query_length=self.n_tokens,
            attention_mask=attention,
            encoder_hidden_states=feats,
            encoder_attention_mask=_ones(feats.shape[:-1], feats.device),
        )[0]
        proj = self.blip.text_projection
        tokens = proj(out[:, : self.n_tokens].to(proj.weight.dtype))
        return F.normalize(tokens.mean(dim=1), dim=-1)
