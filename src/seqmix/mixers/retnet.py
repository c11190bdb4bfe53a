"""Multi-scale retention, the token mixer of RetNet.

Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
arXiv:2307.08621, Section 2.2 (gated multi-scale retention)::

    Q = X W_Q,  K = X W_K / sqrt(head_dim),  V = X W_V        (rotated xPos-style inside the op)
    head_h = Retention(Q_h, K_h, V_h; gamma_h),   gamma_h = 1 - 2^(-5 - h)
    Y = GroupNorm_h(concat_h head_h)                          (per token and head: no time mixing)
    MSR(X) = (swish(X W_G) * Y) W_O

The math of retention (and of the position-free rotating-frame state) lives in
``seqmix.ops.retention``; this module only projects, gates, normalises and picks a form.

Keys and queries have ``head_dim = d_model / n_heads`` features per head; values and the gate have
``value_factor * head_dim`` (the paper uses 2, our default, so MSR holds 8 d_model^2 weights against
attention's 4; lower it for parameter-matched comparisons).

Rotation layout: frequencies ``10000^(-2i/head_dim)`` on half-split pairs ``(x[i], x[i + K/2])``, the
rotary convention used across seqmix. The authors' torchscale code uses other frequencies and
interleaved pairs: the same family of functions, but its checkpoints need converting.
"""

from __future__ import annotations

import functools

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.rotary import rotary_inv_freq
from seqmix.ops.retention import retention_chunk, retention_parallel, retention_recurrent, retention_step

__all__ = ["RetNet"]


class RetNet(Mixer):
    """Gated multi-scale retention with per-head fixed decays and rotary (xPos-like) positions.

    Args:
        d_model: model width.
        n_heads: retention heads; default: key heads of about 256 channels, the head size of the
            authors' reference configurations (768 wide with 3 heads up to 8192 with 32). Narrower heads
            mean more heads, and gamma_h = 1 - 2^(-5-h) then runs towards 1 (no decay) for late heads.
        chunk_size: chunk length of the ``"chunk"`` form.
        rotary: rotate queries/keys by position (the paper's Theta); needs an even head_dim.
        value_factor: value/gate width per head as a multiple of head_dim (paper: 2).
        norm_eps: epsilon of the per-head GroupNorm.

    State: ``S: [B, n_heads, head_dim, value_factor * head_dim]``, the decayed sum of key-value outer
    products in the frame of the last token (see ``seqmix.ops.retention``); constant in context length.
    """

    modes = ("chunk", "parallel", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        chunk_size: int = 64,
        rotary: bool = True,
        value_factor: float = 2,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(d_model)
        rotary = options.boolean("rotary", rotary)
        n_heads, head_dim = options.heads(d_model, n_heads, rotary=rotary, default_head_dim=256)
        chunk_size = options.positive_int("chunk_size", chunk_size)
        value_dim = value_factor * head_dim if isinstance(value_factor, (int, float)) else None
        if isinstance(value_factor, bool) or value_dim is None or value_dim < 1 or value_dim != int(value_dim):
            raise ValueError(
                f"value_factor must be a positive number with value_factor * head_dim a whole number, "
                f"got value_factor={value_factor!r} with head_dim={head_dim}"
            )
        norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)

        self.n_heads = n_heads
        self.head_dim = head_dim
        self.value_dim = int(value_dim)  # per head
        self.chunk_size = chunk_size
        self.rotary = rotary
        self.value_factor = value_factor
        inner = n_heads * self.value_dim

        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.g_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        # GroupNorm with one group per head: statistics over a head's values at one token.
        self.norm = nn.GroupNorm(n_heads, inner, eps=norm_eps)

        # The fixed per-head decays gamma_h = 1 - 2^(-5-h) and the rotation frequencies are computed in
        # float64 on each call (see _constants) rather than stored as buffers, so that a float64 module
        # gets float64-exact constants and a low-precision one gets them rounded once.
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As in the authors' released implementation (torchscale): Xavier-uniform with gain 2^-2.5 for
        # the input projections and gain 1 for the output projection; GroupNorm affine at identity.
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.o_proj.weight)
        self.norm.reset_parameters()

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.head_dim, self.value_dim, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.n_heads * self.head_dim * self.value_dim

    # ------------------------------------------------------------------ forms
    def _qkv(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections for ``x: [..., D]`` -> q, k ``[..., H, K]``, v ``[..., H, V]`` in the state's ``dtype``."""
        lead = x.shape[:-1]
        q = self.q_proj(x).view(*lead, self.n_heads, self.head_dim)
        # The paper's 1/sqrt(d) score scaling, applied to the keys; folded into the [D, D] weight rather
        # than a pass over the [B, T, D] keys (exact for head_dim a power of 4, a rounding apart otherwise).
        k = F.linear(x, self.k_proj.weight * self.head_dim**-0.5).view(*lead, self.n_heads, self.head_dim)
        v = self.v_proj(x).view(*lead, self.n_heads, self.value_dim)
        return q.to(dtype), k.to(dtype), v.to(dtype)

    def _constants(self, state: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Decays and rotation frequencies in the state's dtype (at least float32 by default: positions
        times frequencies and gamma^n lose their meaning in bfloat16)."""
        return _retention_constants(self.n_heads, self.head_dim, self.rotary, state.device, state.dtype)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Gate, normalise and project the retention output ``o: [..., H, V]`` of input ``x: [..., D]``."""
        lead = x.shape[:-1]
        # The GroupNorm (one group per head: statistics over a head's values at one token) as a layer norm
        # over each head's values, then its per-channel affine: the same function, several times faster
        # on a CPU than group_norm on a [tokens, channels] input, backward included.
        norm = self.norm
        if self.n_heads == 1:
            o = F.layer_norm(o, (self.value_dim,), norm.weight, norm.bias, norm.eps).view(*lead, -1)
        else:
            o = F.layer_norm(o, (self.value_dim,), eps=norm.eps).reshape(*lead, -1)  # [..., H * V]
            o = torch.addcmul(norm.bias, o, norm.weight)
        return self.o_proj(F.silu(self.g_proj(x)) * o)

    def _piece_width(self) -> int:
        # twice the value/gate width: pieces of 1024 tokens at B=4, d=256 measured fastest, if only just
        # ahead of 512 and 2048 (Mixer._piece_len)
        return 2 * self.n_heads * self.value_dim

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x, state.dtype))  # [B, H, T, K|V]
        log_gamma, theta = self._constants(state)
        with full_precision(x):
            if mode == "chunk":
                o, state = retention_chunk(q, k, v, log_gamma, theta, state, self.chunk_size)
            elif mode == "parallel":
                o, state = retention_parallel(q, k, v, log_gamma, theta, state)
            else:  # "recurrent": the reference loop
                o, state = retention_recurrent(q, k, v, log_gamma, theta, state)
        return self._output(x, o.transpose(1, 2).to(x.dtype)), state  # o: [B, T, H, V]

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self._qkv(x_t, state.dtype)  # [B, H, K|V]
        log_gamma, theta = self._constants(state)
        with full_precision(x_t):
            o, state = retention_step(q, k, v, log_gamma, theta, state)
        return self._output(x_t, o.to(x_t.dtype)), state

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"value_dim={self.value_dim}, chunk_size={self.chunk_size}, rotary={self.rotary}, modes={self.modes}"
        )


@functools.lru_cache(maxsize=64)
def _retention_constants(
    n_heads: int, head_dim: int, rotary: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``log_gamma: [H]`` (via log1p, so gammas near 1 keep their precision) and ``theta: [K/2]``.

    Cached: a decoding step should not rebuild constants. Built outside inference mode so that a cache
    filled during ``torch.inference_mode()`` decoding still serves training afterwards.
    """
    with torch.inference_mode(False), torch.no_grad():
        log_gamma = torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64))))
        theta = rotary_inv_freq(head_dim, dtype=dtype, device=device) if rotary else None
        return log_gamma.to(device=device, dtype=dtype), theta
