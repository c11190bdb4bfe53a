"""The Forgetting Transformer's attention (Lin, Nikishin, He & Courville 2025, "Forgetting Transformer:
Softmax Attention with a Forget Gate", arXiv:2503.02130) as a token mixer:

    q, k, v = W_q x, W_k x, W_v x                          H heads of K channels
    f_t     = sigmoid(w_f . x_t + b_f)                     one scalar forget gate per head and token
    o_i     = softmax_j(q_i . k_j / sqrt(K) + sum_{l=j+1}^{i} log f_l) v_j,   j <= i
    y       = W_o o

No positional encoding by default, as in the paper's FoX (``rotary=True`` adds RoPE at absolute
positions, as the paper's "FoX (RoPE)" ablation). The paper's "Pro" block extras (output gate, output
norm, QK-norm, data-dependent key/value shift) are not included.

Initialisation: Glorot-uniform projections (as ``seqmix``'s ``attention``, so that the two compare on
equal terms; the paper's code draws N(0, 0.02)) and a zero forget-gate bias, the paper's default for its
data-dependent gate (so ``f`` starts near sigmoid(0) = 1/2 modulated by the input).

Modes: ``"parallel"`` (SDPA with the gate folded into an extra key channel; see ``seqmix.ops.fox``) and
``"recurrent"`` (the reference loop). State: ``FoXCache(k, v, log_g)``, the keys (rotated when
``rotary``), values and each key's log-decay to the latest token. The attention runs in at least float32
(the folded gate needs it): keys and values are cached in the compute dtype, ``log_g`` in >= float32.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.qkv import QKVProjection
from seqmix.modules.rotary import apply_rotary, rotary_inv_freq
from seqmix.ops.fox import fox_parallel, fox_recurrent, fox_step

__all__ = ["ForgettingAttention", "FoXCache"]


class FoXCache(NamedTuple):
    k: torch.Tensor  # [B, H, t, K] keys of every token so far
    v: torch.Tensor  # [B, H, t, K] values
    log_g: torch.Tensor  # [B, H, t] sum of log f from each key's successor to the latest token (<= 0)


class ForgettingAttention(Mixer):
    """Forgetting Attention mixer (FoX), causal.

    Args:
        d_model: model width.
        n_heads: heads; must divide ``d_model``. Default: heads of about 64 channels.
        rotary: add rotary positions (the paper's FoX uses none).
        rotary_base: rotary base when ``rotary``.
        bias: biases on the q/k/v/o projections (the forget gate always has one).
    """

    modes = ("parallel", "recurrent")
    min_state_dtype = None  # keys and values are stored, not accumulated; log_g is kept >= float32

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        bias: bool = False,
    ) -> None:
        super().__init__(d_model)
        rotary, bias = options.boolean("rotary", rotary), options.boolean("bias", bias)
        n_heads, head_dim = options.heads(d_model, n_heads, rotary=rotary)
        self.rotary_base = options.number("rotary_base", rotary_base, minimum=1, strict=True)
        self.n_heads, self.head_dim, self.rotary = n_heads, head_dim, rotary
        self.qkv = QKVProjection(d_model, n_heads, head_dim, bias=bias)
        self.fgate_proj = nn.Linear(d_model, n_heads, bias=True)
        nn.init.xavier_uniform_(self.fgate_proj.weight)
        nn.init.zeros_(self.fgate_proj.bias)

    # ------------------------------------------------------------------ helpers
    def _inputs(self, x: torch.Tensor, start: int, dtype: torch.dtype):
        """``q, k, v: [B, H, T, K]`` (rotated from position ``start``) and ``log_f: [B, H, T]``, in ``dtype``."""
        q, k, v = self.qkv.split(x, dtype)
        log_f = F.logsigmoid(self.fgate_proj(x).to(dtype)).transpose(1, 2)  # [B, H, T]
        if self.rotary:
            inv_freq = rotary_inv_freq(self.head_dim, self.rotary_base, device=q.device, dtype=dtype)
            positions = torch.arange(start, start + q.shape[2], device=q.device)  # [T]
            q, k = apply_rotary(q, positions, inv_freq), apply_rotary(k, positions, inv_freq)
        return q, k, v, log_f

    @staticmethod
    def _compute_dtype(state: FoXCache) -> torch.dtype:
        return state.log_g.dtype  # >= float32, see init_state

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: FoXCache, mode: str) -> tuple[torch.Tensor, FoXCache]:
        dtype = self._compute_dtype(state)
        q, k, v, log_f = self._inputs(x, state.k.shape[2], dtype)
        cache = (state.k.to(dtype), state.v.to(dtype), state.log_g)
        op = fox_parallel if mode == "parallel" else fox_recurrent
        with full_precision(x):
            o, (k_all, v_all, g_all) = op(q, k, v, log_f, cache)  # o: [B, H, T, K]
        return self.qkv.merge(o, x.dtype), FoXCache(k_all.to(state.k.dtype), v_all.to(state.v.dtype), g_all)

    def _step(self, x_t: torch.Tensor, state: FoXCache) -> tuple[torch.Tensor, FoXCache]:
        dtype = self._compute_dtype(state)
        q, k, v, log_f = self._inputs(x_t.unsqueeze(1), state.k.shape[2], dtype)
        cache = (state.k.to(dtype), state.v.to(dtype), state.log_g)
        with full_precision(x_t):
            o_t, (k_all, v_all, g_all) = fox_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_f[:, :, 0], cache)
        y = self.qkv.merge(o_t.unsqueeze(2), x_t.dtype)[:, 0]
        return y, FoXCache(k_all.to(state.k.dtype), v_all.to(state.v.dtype), g_all)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> FoXCache:
        """An empty cache; ``log_g`` in at least float32 whatever the cache dtype."""
        f = self._state_factory(device, dtype)
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, **f)  # [B, H, 0, K]
        log_g = torch.zeros(
            batch_size, self.n_heads, 0, device=f["device"], dtype=torch.promote_types(f["dtype"], torch.float32)
        )  # [B, H, 0]
        return FoXCache(empty, empty.clone(), log_g)

    def state_size(self, context_len: int) -> int:
        """Keys, values and one log-decay per head for each of ``context_len`` tokens."""
        return context_len * self.n_heads * (2 * self.head_dim + 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, rotary={self.rotary}"
