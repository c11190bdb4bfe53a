"""Gated Linear Attention (GLA) as a token mixer.

Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training",
arXiv:2312.06635, Section 4.4 (the GLA layer). Per head h, with key width ``K = expand_k * d_model /
n_heads`` and value width ``V = expand_v * d_model / n_heads``::

    q_t, k_t, v_t = x_t W_Q, x_t W_K, x_t W_V
    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a) ** (1 / tau)        # W_a1: [d, 16], W_a2: [16, n_heads*K]
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t                   # [K, V] per head
    o_t = (q_t / sqrt(K)) S_t
    r_t = swish(x_t W_r)
    y_t = (concat_h RMSNorm(o_t^h) * r_t) W_O                  # RMSNorm per head, one gain for all heads

Defaults follow the paper: ``expand_k = 0.5``, ``expand_v = 1``, 4 heads, gate rank 16, ``tau = 16``
(so ``log alpha = logsigmoid(.) / 16`` and decays start near 1). The ``1/sqrt(K)`` query scaling is
the authors' released kernels' default (``fla``); with the per-head norm behind it, it only changes how
much the norm's epsilon matters. Initialisation as in the authors' code: Xavier-uniform with gain
``2^-2.5`` for every projection, zero gate bias.

``negative_eigenvalues=True`` maps the decay to ``2 alpha - 1`` in (-1, 1] (Grazzi et al. 2024,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues", arXiv:2411.12537), which
lets the state flip sign and track parity-like quantities. The math lives in ``seqmix.ops.gla``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.ops.gla import gla_chunk, gla_recurrent, gla_step, signed_decay

__all__ = ["GLA", "head_width", "transition", "run_gla"]


def head_width(name: str, d_model: int, expand: float, n_heads: int) -> int:
    """Per-head width ``expand * d_model / n_heads``, which must be a whole number."""
    ok = isinstance(expand, (int, float)) and not isinstance(expand, bool) and expand > 0
    total = expand * d_model if ok else None
    if total is None or total != int(total) or int(total) % n_heads:
        raise ValueError(
            f"{name} must be a positive number with {name} * d_model divisible by n_heads, got "
            f"{name}={expand!r} with d_model={d_model}, n_heads={n_heads}"
        )
    return int(total) // n_heads


def transition(log_alpha: torch.Tensor, negative_eigenvalues: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(log|a|, sign or None)`` of the transition: the decay itself, or ``2 alpha - 1`` (Grazzi et al.)."""
    return signed_decay(log_alpha) if negative_eigenvalues else (log_alpha, None)


def run_gla(mode: str, chunk_size: int, q, k, v, log_alpha, state, **extra) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch ``[B, T, H, *]`` inputs to a form of ``seqmix.ops.gla``; returns ``(o: [B, T, H, V], state)``."""
    q, k, v, log_alpha = (t.transpose(1, 2) for t in (q, k, v, log_alpha))  # [B, H, T, *]
    extra = {n: t.transpose(1, 2) if t is not None and n in ("sign", "phase") else t for n, t in extra.items()}
    if mode == "chunk":
        o, state = gla_chunk(q, k, v, log_alpha, state, chunk_size, **extra)
    else:  # "recurrent": the reference loop
        o, state = gla_recurrent(q, k, v, log_alpha, state, **extra)
    return o.transpose(1, 2), state


class GLA(Mixer):
    """Gated linear attention with a low-rank, data-dependent, key-wise forget gate.

    Args:
        d_model: model width.
        n_heads: heads (paper: 4).
        expand_k: total key width over d_model (paper: 0.5).
        expand_v: total value width over d_model (paper: 1).
        gate_rank: rank of the forget-gate projection (paper: 16).
        gate_normalizer: tau; ``log alpha = logsigmoid(.) / tau`` (paper: 16).
        chunk_size: chunk length of the ``"chunk"`` form.
        norm_eps: epsilon of the per-head RMSNorm.
        negative_eigenvalues: transitions ``2 alpha - 1`` in (-1, 1] instead of ``alpha`` in (0, 1].

    State: ``S: [B, n_heads, K, V]``, constant in the context length.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_rank: int = 16,
        gate_normalizer: float = 16.0,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.n_heads = options.positive_int("n_heads", n_heads)
        self.key_dim = head_width("expand_k", d_model, expand_k, n_heads)
        self.value_dim = head_width("expand_v", d_model, expand_v, n_heads)
        self.gate_rank = options.positive_int("gate_rank", gate_rank, "the rank of the forget-gate projection")
        self.gate_normalizer = options.number("gate_normalizer", gate_normalizer, minimum=0, strict=True, hint="tau")
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        keys, values = self.n_heads * self.key_dim, self.n_heads * self.value_dim

        self.q_proj = nn.Linear(d_model, keys, bias=False)
        self.k_proj = nn.Linear(d_model, keys, bias=False)
        self.v_proj = nn.Linear(d_model, values, bias=False)
        self.g_proj = nn.Linear(d_model, values, bias=False)  # the swish output gate r
        self.gk_down = nn.Linear(d_model, self.gate_rank, bias=False)  # W_a1
        self.gk_up = nn.Linear(self.gate_rank, keys, bias=True)  # W_a2, b_a
        self.norm = nn.RMSNorm(self.value_dim, eps=norm_eps)
        self.o_proj = nn.Linear(values, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.gk_down, self.gk_up, self.o_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.zeros_(self.gk_up.bias)
        self.norm.reset_parameters()

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.key_dim, self.value_dim, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.n_heads * self.key_dim * self.value_dim

    # ------------------------------------------------------------------ forms
    def _inputs(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Projections of ``x: [..., D]`` (in autocast's precision), shaped ``[..., H, K|V]`` and cast to the
        state's ``dtype``: ``(q, k, v, gate logits)``."""
        lead = x.shape[:-1]
        q = self.q_proj(x) * self.key_dim**-0.5
        gate = self.gk_up(self.gk_down(x))
        q, k, gate = (t.view(*lead, self.n_heads, self.key_dim).to(dtype) for t in (q, self.k_proj(x), gate))
        return q, k, self.v_proj(x).view(*lead, self.n_heads, self.value_dim).to(dtype), gate

    def _transition(self, gate: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return transition(F.logsigmoid(gate) / self.gate_normalizer, self.negative_eigenvalues)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm of ``o: [..., H, V]``, swish gate, output projection."""
        o = self.norm(o.to(x.dtype)).flatten(-2)  # [..., H * V]
        return self.o_proj(o * F.silu(self.g_proj(x)))

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, gate = self._inputs(x, state.dtype)
        with full_precision(x):
            log_alpha, sign = self._transition(gate)
            o, state = run_gla(mode, self.chunk_size, q, k, v, log_alpha, state, sign=sign)
        return self._output(x, o), state

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, gate = self._inputs(x_t, state.dtype)
        with full_precision(x_t):
            log_alpha, sign = self._transition(gate)
            o, state = gla_step(q, k, v, log_alpha, state, sign=sign)
        return self._output(x_t, o), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"chunk_size={self.chunk_size}, negative_eigenvalues={self.negative_eigenvalues}"
        )

