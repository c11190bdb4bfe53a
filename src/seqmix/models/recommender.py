"""Sequential recommenders over item-id sequences, any mixer: SASRec-style causal, BERT4Rec-style cloze.

    h_0 = Dropout(E[items])                E: [N + 1 (+1), D]; row 0 is padding, row N + 1 the [mask]
    h_l = Block_l(h_{l-1})                 blocks of any registered mixers (cycled pattern, as in LanguageModel)
    z   = RMSNorm(h_L)                     [B, T, D]
    score(z_t, item) = <z_t, E[item]>      the item embedding doubles as the output layer, as in SASRec

``objective="causal"`` (Kang & McAuley 2018, SASRec, arXiv:1808.09781): every mixer must be causal, so
z_t depends on items 1..t only and scores the item at t + 1. ``objective="cloze"`` (Sun et al. 2019,
BERT4Rec, arXiv:1904.06690): some items are replaced by [mask] and z_t at a masked position scores the
hidden item from both sides; every causal mixer is wrapped in ``Bidirectional`` (a second mixer reads
each sequence backwards within its own length) and a mixer already built non-causal (attention with
``causal: false``) is used as it is.

Batches are right-padded with item 0 and ``lengths: [B]`` says how many items are real. A causal mixer
never lets padding reach a real position and ``Bidirectional`` reverses each sequence within its
length, so padding changes nothing; a mixer built non-causal would attend over it and refuses padded
batches. There is no learned position embedding: attention carries rotary (relative) positions by
default and recurrent mixers are order-aware by construction.

Initialisation follows ``LanguageModel`` (GPT-2 style, N(0, 0.02) embedding); the padding row is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.errors import UserError
from seqmix.mixers.base import full_precision
from seqmix.mixers.registry import build_mixer
from seqmix.models.bidirectional import Bidirectional
from seqmix.models.config import StackConfig
from seqmix.models.language_model import build_blocks, init_backbone_
from seqmix.models.pretrained import PretrainedMixin
from seqmix.modules.norm import RMSNorm

__all__ = ["Recommender", "RecommenderConfig", "OBJECTIVES"]

OBJECTIVES = ("causal", "cloze")


@dataclass
class RecommenderConfig(StackConfig):
    """Configuration of a ``Recommender`` (the block fields of ``StackConfig`` plus the catalogue)."""

    n_items: int = 0  # catalogue size N: item ids 1..N, 0 is padding (required: a positive int)
    objective: str = "causal"  # "causal" (SASRec: the next item at every position) or "cloze" (BERT4Rec: masked items, bidirectional)

    def __post_init__(self) -> None:
        try:
            options.positive_int("n_items", self.n_items)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {self.objective!r}")
        super().__post_init__()


class Recommender(PretrainedMixin, nn.Module):
    """Item sequences ``[B, T]`` -> representations ``[B, T, D]`` -> scores of items; see the module docstring."""

    config_class = RecommenderConfig
    format_name = "seqmix.Recommender"

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__()
        if not isinstance(config, RecommenderConfig):
            raise TypeError(f"Recommender takes a RecommenderConfig, got {type(config).__name__}")
        self.config = config
        self.n_items = config.n_items
        self.cloze = config.objective == "cloze"
        self.mask_id = config.n_items + 1 if self.cloze else None  # the [mask] token of the cloze model
        self.embed = nn.Embedding(config.n_items + 1 + int(self.cloze), config.d_model, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = build_blocks(config, self._make_mixer if self.cloze else None)
        if not self.cloze:
            non_causal = sorted({n for n, b in zip(config.layer_mixers(), self.blocks) if not getattr(b.mixer, "causal", True)})
            if non_causal:
                raise UserError(f"objective 'causal' predicts the next item, so its mixers must be causal; "
                                f"mixer_options make {', '.join(non_causal)} non-causal (remove causal: false)")
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        init_backbone_(self.embed, self.blocks)
        with torch.no_grad():
            self.embed.weight[0].zero_()  # padding contributes nothing (its gradient is zero too)

    @staticmethod
    def _make_mixer(name: str, d_model: int, opts: dict[str, Any]) -> nn.Module:
        mixer = build_mixer(name, d_model, **opts)
        if not getattr(mixer, "causal", True):
            return mixer  # already sees the whole sequence
        return Bidirectional(mixer, build_mixer(name, d_model, **opts))

    @property
    def vocab_size(self) -> int:
        """Ids the embedding accepts: padding, the N items and (cloze) the [mask]."""
        return self.embed.num_embeddings

    # ------------------------------------------------------------------ forward
    def forward(self, items: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``items: [B, T]`` right-padded with 0, ``lengths: [B]`` -> ``z: [B, T, D]`` (float32, normed).

        Positions at or after ``lengths[b]`` hold padding outputs; read only the real ones.
        """
        self._check(items, lengths)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=items.device)
        h = self.dropout(self.embed(items))  # [B, T, D]
        for block in self.blocks:
            kwargs = {"lengths": lengths} if isinstance(block.mixer, Bidirectional) else {}
            h, _ = block(h, **kwargs)
        with full_precision(h):  # float32 scores: the softmax over the catalogue is where low precision shows
            return self.norm(h.to(torch.promote_types(h.dtype, torch.float32)))

    def item_embeddings(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[N, D]``: the embeddings of items 1..N (row k - 1 is item k), used as the output layer."""
        return self.embed.weight[1: self.n_items + 1].to(dtype)

    def score(self, z: torch.Tensor, candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores ``<z, E[item]>``: ``z: [..., D]`` and ``candidates: [..., C]`` -> ``[..., C]``;
        without candidates, every item 1..N -> ``[..., N]`` (column k - 1 is item k)."""
        with full_precision(z):
            if candidates is None:
                return z @ self.item_embeddings(z.dtype).T
            return (self.embed(candidates).to(z.dtype) * z.unsqueeze(-2)).sum(-1)

    # ------------------------------------------------------------------ checks
    def _check(self, items: Any, lengths: Any) -> None:
        if not isinstance(items, torch.Tensor) or items.is_floating_point() or items.dtype == torch.bool or items.ndim != 2:
            got = f"{items.dtype} of shape {tuple(items.shape)}" if isinstance(items, torch.Tensor) else type(items).__name__
            raise TypeError(f"items must be an integer tensor of shape [batch, time], got {got}")
        B, T = items.shape
        if T == 0:
            raise ValueError("items must hold at least one position, got T = 0")
        if items.device.type != "meta" and not torch.compiler.is_compiling():
            if bool(((items < 0) | (items >= self.vocab_size)).any()):
                raise ValueError(f"item ids must lie in [0, {self.vocab_size}) (0 = padding"
                                 f"{', ' + str(self.mask_id) + ' = [mask]' if self.cloze else ''}), got ids from "
                                 f"{int(items.min())} to {int(items.max())}")
        if lengths is None:
            return
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (B,) or lengths.is_floating_point() or bool(((lengths < 1) | (lengths > T)).any()):
            raise ValueError(f"lengths must hold one integer in [1, {T}] per sequence (shape ({B},)), got {lengths.tolist()}")
        if bool((lengths < T).any()) and any(
            not getattr(b.mixer, "causal", True) and not isinstance(b.mixer, Bidirectional) for b in self.blocks
        ):
            raise ValueError("a mixer built non-causal (attention with causal: false) would attend to the padding of "
                             "a right-padded batch; drop causal: false (the cloze model wraps causal mixers in "
                             "Bidirectional) or use equal-length batches")
