"""Sequence classification over any mixer: blocks, a pooled representation, a linear head.

    h = Blocks(Dropout(E[tokens]))                    [B, T, D]
    pooled = RMSNorm(h)[b, lengths[b] - 1]            pooling="last"  (the summary a causal model builds)
           | mean_{t < lengths[b]} RMSNorm(h)[b, t]   pooling="mean"
    logits = W pooled + c                             [B, n_classes], float32 (autocast off, as in LanguageModel)

With ``dense=True`` the layers are densely connected (Ding et al. 2018, "Densely Connected
Bidirectional LSTM with Applications to Sentence Classification", arXiv:1802.00889): layer l reads the
concatenation of the embeddings and the outputs of all earlier layers, ``[e; h_1; ...; h_{l-1}]``
(width ``l * D``), mapped back to ``D`` by a linear layer (the same map an LSTM's input weights apply
to its input, factored out so that any mixer can read it); pooling reads the last layer. With
``pattern: [lstm]``, ``bidirectional: true``, ``mlp: none`` and ``pooling: mean`` this is their
DC-Bi-LSTM, except that the two directions are summed (``Bidirectional``) rather than concatenated.

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
        # dense[l - 1] maps the l * D wide concatenation to layer l's input (layer 0 reads the embeddings)
        self.dense = nn.ModuleList(
            nn.Linear((l + 1) * config.d_model, config.d_model, bias=False) for l in range(1, config.n_layers)
        ) if config.dense else None
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.n_classes)
        init_backbone_(self.embed, self.blocks)
        nn.init.normal_(self.head.weight, std=INIT_STD)
        nn.init.zeros_(self.head.bias)
        for proj in self.dense or ():  # variance-preserving: the next block's RMSNorm sees the usual scale
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)

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
        features = [h]  # dense: every earlier layer's output, the embeddings first
        for i, block in enumerate(self.blocks):
            kwargs = {"lengths": lengths} if isinstance(block.mixer, Bidirectional) else {}
            if self.dense is not None and i > 0:
                h = self.dense[i - 1](torch.cat(features, dim=-1))  # [B, T, (i + 1) D] -> [B, T, D]
            h, _ = block(h, **kwargs)
            if self.dense is not None:
                features.append(h)
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
