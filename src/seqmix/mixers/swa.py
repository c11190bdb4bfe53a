"""Sliding-window attention (Beltagy et al. 2020, "Longformer", arXiv:2004.05150; the local attention of
Griffin, De et al. 2024, arXiv:2402.19427) as a token mixer: multi-head causal softmax attention in which
token ``i`` sees only the ``window`` most recent tokens ``i - window < j <= i``, with rotary positions.

    q, k, v = W_q x, W_k x, W_v x;   o_i = softmax_{i-W < j <= i}(q_i . k_j / sqrt(K)) v_j;   y = W_o o

Modes: ``"chunk"`` (blockwise, O(T (C + W)) memory and work), ``"parallel"`` (one banded-mask SDPA call,
O(T^2) memory) and ``"recurrent"`` (the reference loop); see ``seqmix.ops.sliding_window``.

State: ``SWACache(k, v)``, the last ``min(window - 1, t)`` keys (unrotated) and values: a bounded ring
of the tokens the next query can still see. Rotary angles are taken in a local frame (the cache's first
token at position 0), so no absolute position counter is stored and the state is constant once full.

Initialisation as ``seqmix``'s ``attention``: Glorot-uniform projections, zero biases.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.modules.qkv import QKVProjection
from seqmix.modules.rotary import rotary_inv_freq
from seqmix.ops.sliding_window import swa_chunk, swa_parallel, swa_recurrent, swa_step

__all__ = ["SlidingWindowAttention", "SWACache"]


class SWACache(NamedTuple):
    k: torch.Tensor  # [B, H, n, K] the last n = min(window - 1, t) keys, unrotated
    v: torch.Tensor  # [B, H, n, K] their values


class SlidingWindowAttention(Mixer):
    """Causal sliding-window attention.

    Args:
        d_model: model width.
        window: tokens each query sees, itself included (Griffin uses 2048, Mistral 4096).
        n_heads: heads; must divide ``d_model``. Default: heads of about 64 channels.
        rotary: rotary positions on queries and keys (needs an even head dimension).
        rotary_base: the rotary base.
        chunk_size: query block of the ``"chunk"`` form; work per query is ``chunk_size + window - 1``
            keys, memory ``T (chunk_size + window)``. 256 was fastest of 64..1024 at window 1024,
            T = 4096 on a 2-core CPU (smaller blocks copy more overlapping keys, larger ones waste more
            of the band).
        bias: biases on the four projections.
    """

    modes = ("chunk", "parallel", "recurrent")
    min_state_dtype = None  # the ring stores keys and values; it accumulates nothing

    def __init__(
        self,
        d_model: int,
        window: int = 1024,
        n_heads: Optional[int] = None,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        chunk_size: int = 256,
        bias: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.window = options.positive_int("window", window, "tokens each query sees, itself included")
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        rotary, bias = options.boolean("rotary", rotary), options.boolean("bias", bias)
        n_heads, head_dim = options.heads(d_model, n_heads, rotary=rotary)
        self.rotary_base = options.number("rotary_base", rotary_base, minimum=1, strict=True)
        self.n_heads, self.head_dim, self.rotary = n_heads, head_dim, rotary
        self.qkv = QKVProjection(d_model, n_heads, head_dim, bias=bias)

    def _inv_freq(self, like: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.rotary:
            return None
        # frequencies in at least float32 (apply_rotary forms the angles in that precision)
        dtype = torch.promote_types(like.dtype, torch.float32)
        return rotary_inv_freq(self.head_dim, self.rotary_base, device=like.device, dtype=dtype)

    def _forward(self, x: torch.Tensor, state: SWACache, mode: str) -> tuple[torch.Tensor, SWACache]:
        q, k, v = self.qkv.split(x, state.k.dtype)  # [B, H, T, K] each
        inv_freq = self._inv_freq(q)
        if mode == "chunk":
            o, (k_tail, v_tail) = swa_chunk(q, k, v, tuple(state), self.window, self.chunk_size, inv_freq)
        elif mode == "parallel":
            o, (k_tail, v_tail) = swa_parallel(q, k, v, tuple(state), self.window, inv_freq)
        else:
            o, (k_tail, v_tail) = swa_recurrent(q, k, v, tuple(state), self.window, inv_freq)
        return self.qkv.merge(o, x.dtype), SWACache(k_tail, v_tail)

    def _step(self, x_t: torch.Tensor, state: SWACache) -> tuple[torch.Tensor, SWACache]:
        q, k, v = self.qkv.split(x_t.unsqueeze(1), state.k.dtype)  # [B, H, 1, K] each
        inv_freq = self._inv_freq(q)
        o_t, (k_tail, v_tail) = swa_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], tuple(state), self.window, inv_freq)
        return self.qkv.merge(o_t.unsqueeze(2), x_t.dtype)[:, 0], SWACache(k_tail, v_tail)

    def check_state(self, state, batch_size: int) -> SWACache:
        state = super().check_state(state, batch_size)
        if state.k.shape[2] != state.v.shape[2] or state.k.shape[2] > self.window - 1:
            raise ValueError(
                f"{type(self).__name__} expects a state of at most window - 1 = {self.window - 1} tokens of keys "
                f"and values, got {state.k.shape[2]} keys and {state.v.shape[2]} values"
            )
        return state

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> SWACache:
        """An empty ring (no token seen yet)."""
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, **self._state_factory(device, dtype))
        return SWACache(empty, empty.clone())

    def state_size(self, context_len: int) -> int:
        """Keys and values of the last ``min(window - 1, context_len)`` tokens: constant once full."""
        return 2 * min(self.window - 1, context_len) * self.n_heads * self.head_dim

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, window={self.window}, n_heads={self.n_heads}, rotary={self.rotary}, "
            f"chunk_size={self.chunk_size}"
        )
