"""Sequence classification over any mixer: blocks, a pooled representation, a linear head.

    h = Blocks(Dropout(E[tokens]))                    [B, T, D]
    pooled = RMSNorm(h)[b, lengths[b] - 1]            pooling="last"  (the summary a causal model builds)
           | mean_{t < lengths[b]} RMSNorm(h)[b, t]   pooling="mean"
    logits = W pooled + c                             [B, n_classes], float32 (autocast off, as in LanguageModel)

Sequences in a batch may be right-padded; ``lengths: [B]`` says how many tokens are real (default: all).
A causal mixer never lets padding reach real positions, so both poolings are exact. With
``bidirectional=True`` every causal mixer is wrapped in ``Bidirectional`` (a second mixer reads each
sequence backwards within its own length), so position t depends on the tokens after it too; a mixer
built non-causal by its own options (``attention`` with ``causal: false``) is used as it is -- it
would attend over the padding, so it refuses padded batches (use causal mixers with ``bidirectional``).
Initialisation follows ``LanguageModel`` (GPT-2 style; the head is N(0, 0.02) with a zero bias).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from seqmix.models.bidirectional import Bidirectional
from seqmix.models.config import ClassifierConfig
from seqmix.models.language_model import INIT_STD, build_blocks, check_tokens, init_backbone_
from seqmix.models.pretrained import PretrainedMixin
from seqmix.mixers.base import full_precision
from seqmix.mixers.registry import build_mixer
from seqmix.modules.norm import RMSNorm

__all__ = ["SequenceClassifier"]


class SequenceClassifier(PretrainedMixin, nn.Module):
    """Token sequences ``[B, T]`` -> class logits ``[B, n_classes]``."""

    config_class = ClassifierConfig
    format_name = "seqmix.SequenceClassifier"

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"SequenceClassifier takes a ClassifierConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = build_blocks(config, self._make_mixer if config.bidirectional else None)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.n_classes)
        init_backbone_(self.embed, self.blocks)
        nn.init.normal_(self.head.weight, std=INIT_STD)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _make_mixer(name: str, d_model: int, options: dict[str, Any]) -> nn.Module:
        mixer = build_mixer(name, d_model, **options)
        if not getattr(mixer, "causal", True):
            return mixer  # already sees the whole sequence
        return Bidirectional(mixer, build_mixer(name, d_model, **options))

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens: [B, T]`` (right-padded), ``lengths: [B]`` real tokens per sequence -> ``[B, n_classes]``."""
        check_tokens(tokens, self.config.vocab_size, 2, "[batch, time]")
        B, T = tokens.shape
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=tokens.device)
            if lengths.shape != (B,) or lengths.is_floating_point() or bool(((lengths < 1) | (lengths > T)).any()):
                raise ValueError(f"lengths must hold one integer in [1, {T}] per sequence (shape ({B},)), got {lengths.tolist()}")
            if bool((lengths < T).any()) and any(
                not getattr(b.mixer, "causal", True) and not isinstance(b.mixer, Bidirectional) for b in self.blocks
            ):
                raise ValueError(
                    "a mixer built non-causal (e.g. attention with causal: false) would attend to the padding; "
                    "use causal mixers with bidirectional: true for padded batches"
                )
        h = self.dropout(self.embed(tokens))  # [B, T, D]
        for block in self.blocks:
            kwargs = {"lengths": lengths} if isinstance(block.mixer, Bidirectional) else {}
            h, _ = block(h, **kwargs)
        with full_precision(h):  # float32 logits, as in LanguageModel
            h = h.to(torch.promote_types(self.head.weight.dtype, torch.float32))
            return nn.functional.linear(
                self._pool(self.norm(h), lengths), self.head.weight.to(h.dtype), self.head.bias.to(h.dtype)
            )

    def _pool(self, h: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, D = h.shape
        if self.config.pooling == "last":
            if lengths is None:
                return h[:, -1]  # [B, D]
            index = (lengths - 1).view(B, 1, 1).expand(B, 1, D)
            return h.gather(1, index)[:, 0]  # [B, D]
        if lengths is None:
            return h.mean(dim=1)
        mask = (torch.arange(T, device=h.device) < lengths.view(B, 1)).to(h.dtype)  # [B, T]
        return (h * mask.unsqueeze(-1)).sum(dim=1) / lengths.view(B, 1).to(h.dtype)
