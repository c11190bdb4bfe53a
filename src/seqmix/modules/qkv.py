"""Multi-head query/key/value and output projections, shared by the attention-like mixers.

``split`` maps ``x: [B, T, D]`` to per-head tensors ``[B, H, T, K]`` in a requested dtype (a cache or
state keeps its own dtype under autocast); ``merge`` maps ``o: [B, H, T, V]`` back through the output
projection. Initialisation as in ``seqmix.mixers.attention``: Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["QKVProjection"]


class QKVProjection(nn.Module):
    """Projections ``q_proj`` (optional), ``k_proj``, ``v_proj`` and ``o_proj`` of width ``n_heads * head_dim``.

    Args:
        d_model: input and output width.
        n_heads, head_dim: heads H of K channels each.
        bias: biases on the four projections.
        query: build ``q_proj`` (False for mixers whose query is not a projection of the input).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, bias: bool = False, query: bool = True) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.q_proj: Optional[nn.Linear] = nn.Linear(d_model, inner, bias=bias) if query else None
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d_model, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            if proj is not None:
                nn.init.xavier_uniform_(proj.weight)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)

    def heads(self, y: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``y: [..., T, H*K]`` -> ``[..., H, T, K]`` (in ``dtype`` if given)."""
        y = y.unflatten(-1, (self.n_heads, self.head_dim)).transpose(-2, -3)  # [..., H, T, K]
        return y if dtype is None else y.to(dtype)

    def split(self, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> tuple[Optional[torch.Tensor], ...]:
        """``x: [B, T, D]`` -> ``(q, k, v)``, each ``[B, H, T, K]`` (``q`` is None without ``q_proj``)."""
        q = self.heads(self.q_proj(x), dtype) if self.q_proj is not None else None
        return q, self.heads(self.k_proj(x), dtype), self.heads(self.v_proj(x), dtype)

    def merge(self, o: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``o: [B, H, T, K]`` -> ``o_proj`` of ``[B, T, H*K]`` (``o`` cast to ``dtype`` first if given)."""
        o = o.transpose(1, 2).flatten(2)  # [B, T, H*K]
        return self.o_proj(o if dtype is None else o.to(dtype))
