"""Aaren, "Attention as a Recurrent Neural Network" (Feng, Tung, Hajimirsadeghi, Ahmed, Bengio & Mori 2024,
"Attention as an RNN", arXiv:2405.13956, Sec. 3.3), as a token mixer:

    k_t, v_t = W_k x_t, W_v x_t                      per head h, K channels
    s_t      = q_h . k_t / sqrt(K)                   q_h: a LEARNED query, one per head, shared by all t
    o_t      = sum_{j <= t} softmax_j(s_j) v_j       softmax attention of q_h over the prefix 0..t
    y_t      = W_o [o_t over heads]

The query does not depend on the input, so ``o_t`` is a prefix scan of ``(s_j, v_j)`` under the paper's
associative operator (``seqmix.ops.aaren``): O(1) state per head, (m, u, w) = (running max, denominator,
numerator). Stacked Aarens (the paper's Figure 4) mix information across tokens through the keys and
values of later layers, which see the earlier layers' outputs.

Deviations / assumptions: the paper specifies the module, not the surrounding projections; we give it
multi-head keys/values and an output projection as in the Transformer attention it replaces, with the
same Glorot-uniform init, and draw each head's query from N(0, 1) so that initial scores are O(1) (a
zero query would make every score 0 and leave the key projection without gradient).

Modes: ``"scan"`` (chunkwise parallel prefix scan) and ``"recurrent"`` (the reference loop).
State: ``AarenState(m [B, H], u [B, H], w [B, H, K])``; ``u = 0`` marks the empty prefix.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.qkv import QKVProjection
from seqmix.ops.aaren import aaren_recurrent, aaren_scan, aaren_step

__all__ = ["Aaren", "AarenState"]


class AarenState(NamedTuple):
    m: torch.Tensor  # [B, H] running max of the scores
    u: torch.Tensor  # [B, H] sum of exp(s_j - m); 0 for the empty prefix
    w: torch.Tensor  # [B, H, K] sum of exp(s_j - m) v_j


class Aaren(Mixer):
    """Aaren mixer.

    Args:
        d_model: model width.
        n_heads: heads, each with its own learned query; must divide ``d_model``. Default: heads of about
            64 channels.
        chunk_size: block size of the chunkwise scan.
        bias: biases on the key, value and output projections.
    """

    modes = ("scan", "recurrent")

    def __init__(self, d_model: int, n_heads: Optional[int] = None, chunk_size: int = 64, bias: bool = False) -> None:
        super().__init__(d_model)
        n_heads, head_dim = options.heads(d_model, n_heads)
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        bias = options.boolean("bias", bias)
        self.n_heads, self.head_dim = n_heads, head_dim
        self.kv = QKVProjection(d_model, n_heads, head_dim, bias=bias, query=False)
        self.query = nn.Parameter(torch.randn(n_heads, head_dim))  # [H, K], N(0, 1)

    def _scores(self, k: torch.Tensor) -> torch.Tensor:
        """``s = q . k / sqrt(K)``: ``[B, H, T]`` for keys ``k: [B, H, T, K]``."""
        return torch.einsum("bhtk,hk->bht", k, self.query.to(k.dtype)) / math.sqrt(self.head_dim)

    def _forward(self, x: torch.Tensor, state: AarenState, mode: str) -> tuple[torch.Tensor, AarenState]:
        _, k, v = self.kv.split(x, state.w.dtype)  # [B, H, T, K] each; projections may run under autocast
        with full_precision(x):  # the scan accumulates in the state's dtype
            if mode == "scan":
                o, (m, u, w) = aaren_scan(self._scores(k), v, tuple(state), self.chunk_size)
            else:
                o, (m, u, w) = aaren_recurrent(self._scores(k), v, tuple(state))
        return self.kv.merge(o, x.dtype), AarenState(m, u, w)

    def _step(self, x_t: torch.Tensor, state: AarenState) -> tuple[torch.Tensor, AarenState]:
        _, k, v = self.kv.split(x_t.unsqueeze(1), state.w.dtype)  # [B, H, 1, K] each
        with full_precision(x_t):
            o_t, (m, u, w) = aaren_step(self._scores(k)[:, :, 0], v[:, :, 0], tuple(state))
        return self.kv.merge(o_t.unsqueeze(2), x_t.dtype)[:, 0], AarenState(m, u, w)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> AarenState:
        kw = self._state_factory(device, dtype)
        zeros = torch.zeros(batch_size, self.n_heads, **kw)  # [B, H]
        return AarenState(zeros, zeros.clone(), torch.zeros(batch_size, self.n_heads, self.head_dim, **kw))

    def state_size(self, context_len: int) -> int:
        return self.n_heads * (2 + self.head_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, chunk_size={self.chunk_size}"
