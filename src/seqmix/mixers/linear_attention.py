"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", ICML 2020).

Multi-head attention whose softmax kernel is replaced by ``phi(q)^T phi(k)`` with
``phi(x) = elu(x) + 1``, so that causal attention becomes a recurrence on a fixed-size state
``(S [B, H, K, V], z [B, H, K])``. The math is in ``seqmix.ops.linear_attention``.

The four projections have no bias (the authors' library keeps ``nn.Linear``'s default bias); with a
pre-norm block around the mixer a bias adds little, and bias-free projections match the other mixers.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.ops.linear_attention import (
    elu_feature_map,
    linear_attention_chunk,
    linear_attention_parallel,
    linear_attention_recurrent,
    linear_attention_step,
)

__all__ = ["LinearAttention", "LinearAttentionState"]


class LinearAttentionState(NamedTuple):
    """Sum of ``phi(k) v^T`` and of ``phi(k)`` over every token seen so far."""

    S: torch.Tensor  # [B, H, K, V]
    z: torch.Tensor  # [B, H, K]


class LinearAttention(Mixer):
    """Causal multi-head linear attention.

    Args:
        d_model: model width.
        n_heads: number of heads; must divide ``d_model``. Default: heads of about 64 channels.
        chunk_size: chunk length of the ``"chunk"`` mode.
        normalize: divide by ``phi(q)^T z + eps`` as in the paper; ``False`` drops the normaliser.
        eps: added to the normaliser (must be >= 0).
    """

    modes = ("chunk", "parallel", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        chunk_size: int = 64,
        normalize: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(d_model)
        n_heads, head_dim = options.heads(d_model, n_heads)
        chunk_size = options.positive_int("chunk_size", chunk_size)
        normalize = options.boolean("normalize", normalize)
        eps = options.number("eps", eps, minimum=0)

        self.n_heads = n_heads
        self.head_dim = head_dim
        self.chunk_size = chunk_size
        self.normalize = normalize
        self.eps = float(eps)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The paper keeps the usual transformer layer and its initialisation; Glorot-uniform weights.
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.xavier_uniform_(proj.weight)

    # ------------------------------------------------------------------ helpers
    def _heads(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: [B, T, D]`` -> feature-mapped ``q, k`` and ``v``, each ``[B, H, T, head_dim]`` in the
        state's ``dtype`` (the normaliser grows like t and would overflow float16)."""
        B, T, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(B, T, self.n_heads, self.head_dim).transpose(1, 2).to(dtype)  # [B, H, T, K]

        q = elu_feature_map(split(self.q_proj(x)))
        k = elu_feature_map(split(self.k_proj(x)))
        return q, k, split(self.v_proj(x))

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        """``o: [B, H, T, V]`` -> output projection of ``[B, T, D]``."""
        B, _, T, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.d_model))

    # ------------------------------------------------------------------ contract
    def _forward(
        self, x: torch.Tensor, state: LinearAttentionState, mode: str
    ) -> tuple[torch.Tensor, LinearAttentionState]:
        q, k, v = self._heads(x, state.S.dtype)  # [B, H, T, K] each
        opts = {"normalize": self.normalize, "eps": self.eps}
        with full_precision(x):
            if mode == "chunk":
                o, (S, z) = linear_attention_chunk(q, k, v, tuple(state), chunk_size=self.chunk_size, **opts)
            elif mode == "parallel":
                o, (S, z) = linear_attention_parallel(q, k, v, tuple(state), **opts)
            else:
                o, (S, z) = linear_attention_recurrent(q, k, v, tuple(state), **opts)
        return self._merge(o.to(x.dtype)), LinearAttentionState(S, z)

    def _step(self, x_t: torch.Tensor, state: LinearAttentionState) -> tuple[torch.Tensor, LinearAttentionState]:
        q, k, v = self._heads(x_t.unsqueeze(1), state.S.dtype)  # [B, H, 1, K] each
        with full_precision(x_t):
            o_t, (S, z) = linear_attention_step(
                q[:, :, 0], k[:, :, 0], v[:, :, 0], tuple(state), normalize=self.normalize, eps=self.eps
            )
        return self._merge(o_t.unsqueeze(2).to(x_t.dtype))[:, 0], LinearAttentionState(S, z)

    def init_state(
        self,
        batch_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> LinearAttentionState:
        f = self._state_factory(device, dtype)
        S = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, **f)  # [B, H, K, V]
        z = torch.zeros(batch_size, self.n_heads, self.head_dim, **f)  # [B, H, K]
        return LinearAttentionState(S, z)

    def state_size(self, context_len: int) -> int:
        """``H * K * (V + 1)`` whatever the context length."""
        return self.n_heads * self.head_dim * (self.head_dim + 1)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, chunk_size={self.chunk_size}, "
            f"normalize={self.normalize}, eps={self.eps}, modes={self.modes}"
        )
