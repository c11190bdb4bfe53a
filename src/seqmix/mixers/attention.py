"""Multi-head softmax attention (Vaswani et al. 2017, "Attention Is All You Need") with optional
rotary positions (Su et al. 2021, RoFormer) and a growing key/value cache as its state.

Modes: ``"parallel"`` (``scaled_dot_product_attention``) and ``"recurrent"`` (the reference loop in
``seqmix.ops.attention``). The state is ``KVCache(k, v)``, each ``[B, H, t, head_dim]``, keys stored
already rotated; the position of the next token is the cache length ``t``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.modules.rotary import apply_rotary, rotary_inv_freq
from seqmix.ops.attention import attention_parallel, attention_recurrent, attention_step

__all__ = ["Attention", "KVCache"]


class KVCache(NamedTuple):
    """Keys (already rotated) and values of every token seen so far."""

    k: torch.Tensor  # [B, H, t, head_dim]
    v: torch.Tensor  # [B, H, t, head_dim]


class Attention(Mixer):
    """Multi-head scaled dot-product attention, causal by default.

    Args:
        d_model: model width.
        n_heads: number of heads; must divide ``d_model``. Default: heads of about 64 channels.
        rotary: rotate queries and keys by their absolute position (needs an even head dimension).
        rotary_base: the rotary base ``b`` of the frequencies ``b^(-2i/head_dim)``.
        causal: ``False`` builds a bidirectional encoder mixer (no ``step``, no cache prefix).
        bias: add biases to the four projections.
    """

    modes = ("parallel", "recurrent")
    min_state_dtype = None  # the cache stores keys and values; it accumulates nothing

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        causal: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__(d_model)
        for name, value in (("rotary", rotary), ("causal", causal), ("bias", bias)):
            options.boolean(name, value)
        n_heads, head_dim = options.heads(d_model, n_heads, rotary=rotary)
        rotary_base = options.number("rotary_base", rotary_base, minimum=1, strict=True)

        self.n_heads = n_heads
        self.head_dim = head_dim
        self.rotary = rotary
        self.rotary_base = float(rotary_base)
        self.causal = causal
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The paper leaves initialisation open; Glorot-uniform weights (as in its reference code,
        # tensor2tensor) and zero biases keep the attention logits O(1) at the start.
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    # ------------------------------------------------------------------ helpers
    def _heads(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x: [B, T, D]`` to ``q, k, v: [B, H, T, head_dim]`` in the cache's ``dtype``.

        Under autocast the projections come out in low precision; casting to the cache's dtype keeps
        the state's dtype stable across modes and steps.
        """
        B, T, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(B, T, self.n_heads, self.head_dim).transpose(1, 2).to(dtype)  # [B, H, T, K]

        return split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

    def _rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q, k: [B, H, T, K]`` for absolute positions ``start .. start+T-1``."""
        if not self.rotary:
            return q, k
        # frequencies in at least float32 (apply_rotary forms the angles in that precision)
        freq_dtype = torch.promote_types(q.dtype, torch.float32)
        inv_freq = rotary_inv_freq(self.head_dim, self.rotary_base, device=q.device, dtype=freq_dtype)
        positions = torch.arange(start, start + q.shape[2], device=q.device)  # [T]
        return apply_rotary(q, positions, inv_freq), apply_rotary(k, positions, inv_freq)

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        """``o: [B, H, T, K]`` -> output projection of ``[B, T, D]``."""
        B, _, T, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.d_model))

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: KVCache, mode: str) -> tuple[torch.Tensor, KVCache]:
        T0 = state.k.shape[2]
        if not self.causal and T0 > 0:
            raise ValueError(
                f"a non-causal Attention (causal=False) attends over the whole sequence and cannot "
                f"continue from a cache; got a state holding {T0} tokens. Pass state=None, or build the "
                "mixer with causal=True for streaming."
            )
        q, k, v = self._heads(x, state.k.dtype)  # [B, H, T, K] each
        q, k = self._rotate(q, k, T0)
        op = attention_parallel if mode == "parallel" else attention_recurrent
        o, (k_all, v_all) = op(q, k, v, (state.k, state.v), causal=self.causal)
        return self._merge(o), KVCache(k_all, v_all)

    def _step(self, x_t: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        q, k, v = self._heads(x_t.unsqueeze(1), state.k.dtype)  # [B, H, 1, K] each
        q, k = self._rotate(q, k, state.k.shape[2])
        o_t, (k_all, v_all) = attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], (state.k, state.v))
        return self._merge(o_t.unsqueeze(2))[:, 0], KVCache(k_all, v_all)

    def init_state(
        self,
        batch_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> KVCache:
        """An empty cache (``t = 0``)."""
        f = self._state_factory(device, dtype)
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, **f)  # [B, H, 0, K]
        return KVCache(empty, empty.clone())

    def state_size(self, context_len: int) -> int:
        """Keys and values of ``context_len`` tokens: ``2 * context_len * d_model``."""
        return 2 * context_len * self.n_heads * self.head_dim

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, rotary={self.rotary}, "
            f"causal={self.causal}, modes={self.modes}"
        )
