"""Cross-attention from decoder positions to the encoder output, with the source side computed once.

Two scores over the source positions ``j`` (padding masked out), for a decoder query ``q``:

* ``"dot"`` -- multi-head scaled dot-product (Vaswani et al. 2017, "Attention Is All You Need"):
  ``softmax_j(q W_q . k_j W_k / sqrt(d_head)) (v_j W_v)``, heads concatenated, then ``W_o``;
* ``"additive"`` -- Bahdanau et al. 2015 ("Neural Machine Translation by Jointly Learning to Align and
  Translate", arXiv:1409.0473): ``e_j = v^T tanh(W q + U h_j)``, ``alpha = softmax_j(e)``, output
  ``W_o sum_j alpha_j h_j``. The paper's ``v`` starts at zero (uniform attention at first), as here.

Everything that depends only on the encoder output -- the keys and values of every source position --
is a ``CrossMemory``, built once per sentence by ``memory(h, valid)``; ``forward`` (all target
positions at once) and ``step`` (one position) only project the queries. ``W_o`` is linear, so the
additive form caches ``W_o h_j`` and sums those (the same result, one projection per sentence rather
than one per step). Both forms compute the same function of one query whatever the number of
queries, so decoding step by step equals the teacher-forced pass.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options

__all__ = ["CrossMemory", "DotCrossAttention", "AdditiveCrossAttention", "build_cross_attention"]


class CrossMemory(NamedTuple):
    """The source side of one cross-attention layer, batch first (so beams can be index-selected)."""

    k: torch.Tensor  # dot: [B, H, S, head_dim]; additive: [B, S, A] (U h_j + b)
    v: torch.Tensor  # dot: [B, H, S, head_dim]; additive: [B, S, D] (W_o h_j)
    valid: torch.Tensor  # [B, S] bool, True at real (non-padding) source positions


def _valid_or_all(h: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    if valid is None:
        return torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)  # [B, S]
    return valid.to(device=h.device, dtype=torch.bool)


class DotCrossAttention(nn.Module):
    """Multi-head scaled dot-product attention from ``d_model`` queries to ``d_memory`` source vectors."""

    def __init__(self, d_model: int, d_memory: int, n_heads: Optional[int] = None, bias: bool = False) -> None:
        super().__init__()
        self.d_model = options.positive_int("d_model", d_model)
        self.d_memory = options.positive_int("d_memory", d_memory)
        self.n_heads, self.head_dim = options.heads(d_model, n_heads)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_memory, d_model, bias=bias)
        self.v_proj = nn.Linear(d_memory, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):  # Glorot, as the Attention mixer
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def _split(self, y: torch.Tensor) -> torch.Tensor:
        B, T, _ = y.shape
        return y.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, head_dim]

    def memory(self, h: torch.Tensor, valid: Optional[torch.Tensor] = None) -> CrossMemory:
        """Keys and values of the encoder output ``h: [B, S, d_memory]``; ``valid: [B, S]`` marks real tokens."""
        return CrossMemory(self._split(self.k_proj(h)), self._split(self.v_proj(h)), _valid_or_all(h, valid))

    def forward(self, x: torch.Tensor, memory: CrossMemory) -> torch.Tensor:
        """Queries ``x: [B, T, d_model]`` -> ``[B, T, d_model]``."""
        q = self._split(self.q_proj(x))  # [B, H, T, head_dim]
        k, v = memory.k, memory.v
        if q.dtype != k.dtype:  # a cache built under another autocast setting than this call
            k, v = k.to(q.dtype), v.to(q.dtype)
        mask = memory.valid[:, None, None, :]  # [B, 1, 1, S]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, head_dim]
        B, _, T, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.d_model))

    def step(self, x_t: torch.Tensor, memory: CrossMemory) -> torch.Tensor:
        """One query per sequence ``x_t: [B, d_model]`` -> ``[B, d_model]``."""
        return self.forward(x_t.unsqueeze(1), memory)[:, 0]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_memory={self.d_memory}, n_heads={self.n_heads}"


class AdditiveCrossAttention(nn.Module):
    """Bahdanau attention: one head, score ``v^T tanh(W q + U h_j + b)``, output ``W_o sum_j alpha_j h_j``."""

    def __init__(self, d_model: int, d_memory: int, attention_dim: Optional[int] = None) -> None:
        super().__init__()
        self.d_model = options.positive_int("d_model", d_model)
        self.d_memory = options.positive_int("d_memory", d_memory)
        self.attention_dim = options.positive_int("attention_dim", attention_dim or d_model)
        self.w_query = nn.Linear(d_model, self.attention_dim, bias=False)
        self.w_key = nn.Linear(d_memory, self.attention_dim, bias=True)  # the one bias, cached with the keys
        self.score = nn.Linear(self.attention_dim, 1, bias=False)  # v
        self.o_proj = nn.Linear(d_memory, d_model, bias=False)
        for proj in (self.w_query, self.w_key, self.o_proj):
            nn.init.xavier_uniform_(proj.weight)
        nn.init.zeros_(self.w_key.bias)
        nn.init.zeros_(self.score.weight)  # uniform attention at the start, as in the paper

    def memory(self, h: torch.Tensor, valid: Optional[torch.Tensor] = None) -> CrossMemory:
        """``U h_j + b`` and ``W_o h_j`` of the encoder output ``h: [B, S, d_memory]``."""
        return CrossMemory(self.w_key(h), self.o_proj(h), _valid_or_all(h, valid))  # [B, S, A], [B, S, D]

    def forward(self, x: torch.Tensor, memory: CrossMemory) -> torch.Tensor:
        """Queries ``x: [B, T, d_model]`` -> ``[B, T, d_model]``."""
        k, v = memory.k, memory.v
        q = self.w_query(x)  # [B, T, A]
        if q.dtype != k.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        hidden = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1))  # [B, T, S, A]
        scores = self.score(hidden).squeeze(-1)  # [B, T, S]
        scores = scores.masked_fill(~memory.valid[:, None, :], float("-inf"))
        # the softmax in at least float32 (a bfloat16 exp over many positions loses the small weights)
        alpha = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(v.dtype)  # [B, T, S]
        return torch.bmm(alpha, v)  # [B, T, D]

    def step(self, x_t: torch.Tensor, memory: CrossMemory) -> torch.Tensor:
        """One query per sequence ``x_t: [B, d_model]`` -> ``[B, d_model]``."""
        return self.forward(x_t.unsqueeze(1), memory)[:, 0]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_memory={self.d_memory}, attention_dim={self.attention_dim}"


def build_cross_attention(kind: str, d_model: int, d_memory: int, *, n_heads: Optional[int] = None,
                          attention_dim: Optional[int] = None) -> nn.Module:
    """A ``"dot"`` or ``"additive"`` cross-attention layer."""
    if kind == "dot":
        return DotCrossAttention(d_model, d_memory, n_heads)
    if kind == "additive":
        return AdditiveCrossAttention(d_model, d_memory, attention_dim)
    raise ValueError(f"cross-attention kind must be 'dot' or 'additive', got {kind!r}")
