"""GateLoop: linear recurrence with fully data-controlled (optionally complex) state transitions.

Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
arXiv:2311.01927, Section 3. Per head, with queries, keys, values and state transitions all computed
from the input::

    q_t, k_t, v_t = x_t W_q, x_t W_k, x_t W_v
    a_t = sigmoid(x_t W_m + b_m) * exp(i (x_t W_p + b_p))      # per key channel; magnitude in (0, 1)
    S_t = diag(a_t) S_{t-1} + k_t^T v_t                         # [K, V], complex if a_t is
    o_t = Re(q_t S_t)

The paper's activations: sigmoid for the magnitude, identity for the phase. ``complex=False`` (the
default) drops the phase: real transitions in (0, 1), the same recurrence as GLA with a full-rank
gate. ``complex=True`` keeps it; the state is then held as real numbers, ``[B, H, 2K, V]`` (rows
``:K`` the real part, ``K:`` the imaginary part). With ``a_t = gamma e^{i theta}`` fixed this is
RetNet's decayed rotation; data-controlled, it is the paper's "data-controlled relative positions".

Around the recurrence (our choice, stated because the paper leaves the block to its experiments):
``y_t = (concat_h(RMSNorm(o_t)) * silu(x_t W_g)) W_o``, the per-head norm and swish output gate of GLA
and RetNet, which keep the output scale independent of how much the state has accumulated.
Initialisation (ours): Xavier-uniform with gain ``2^-2.5`` for every projection; magnitude biases
that spread ``|a|`` over ``1 - 2^-3 ... 1 - 2^-9`` across each head's key channels (memories of
about 8 to 500 tokens, RetNet's range); zero phase bias.

``negative_eigenvalues=True`` (real transitions only) maps the magnitude to ``2 |a| - 1`` in (-1, 1]
(Grazzi et al. 2024, arXiv:2411.12537); complex transitions already reach every sign.
The math lives in ``seqmix.ops.gla``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.mixers.gla import run_gla, transition
from seqmix.ops.gla import gla_step

__all__ = ["GateLoop"]


class GateLoop(Mixer):
    """GateLoop token mixer.

    Args:
        d_model: model width.
        n_heads: heads; key and value width ``d_model / n_heads`` each. None: heads of about 64 channels.
        complex: complex transitions (magnitude and phase) instead of real ones (magnitude only).
        chunk_size: chunk length of the ``"chunk"`` form.
        norm_eps: epsilon of the per-head RMSNorm.
        negative_eigenvalues: real transitions ``2 |a| - 1`` in (-1, 1]; not with ``complex``.

    State: ``S: [B, n_heads, K, K]`` (``[B, n_heads, 2K, K]`` with ``complex``), constant in length.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        complex: bool = False,  # noqa: A002 (the paper's word for the option)
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.n_heads, self.head_dim = options.heads(d_model, n_heads, default_head_dim=64)
        self.complex = options.boolean("complex", complex)
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        if self.complex and self.negative_eigenvalues:
            raise ValueError(
                "negative_eigenvalues=True needs complex=False: complex transitions already reach every sign"
            )

        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.a_proj = nn.Linear(d_model, (2 if self.complex else 1) * d_model, bias=True)  # magnitude (, phase)
        self.g_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for proj in (self.qkv_proj, self.a_proj, self.g_proj, self.o_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        # |a| = 1 - 2^-e with e from 3 to 9 across each head's key channels; bias = logit(|a|)
        e = torch.linspace(3.0, 9.0, self.head_dim, dtype=torch.float64).repeat(self.n_heads)
        magnitude = 1 - 2.0**-e
        self.a_proj.bias.zero_()
        self.a_proj.bias[: self.d_model] = torch.log(magnitude) - torch.log1p(-magnitude)
        self.norm.reset_parameters()

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        K = self.head_dim
        rows = 2 * K if self.complex else K
        return torch.zeros(batch_size, self.n_heads, rows, K, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.n_heads * self.head_dim**2 * (2 if self.complex else 1)

    # ------------------------------------------------------------------ forms
    def _inputs(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Projections of ``x: [..., D]`` as ``[..., H, K]`` in the state's ``dtype``: q, k, v, a logits."""
        lead = x.shape[:-1]
        split = (t.view(*lead, self.n_heads, self.head_dim).to(dtype) for t in self.qkv_proj(x).chunk(3, dim=-1))
        q, k, v = split
        return q, k, v, self.a_proj(x).to(dtype)

    def _transition(self, a: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """log|a| (and sign or phase) from the transition logits ``a: [..., D or 2D]``, as ``[..., H, K]``."""
        shape = (*a.shape[:-1], self.n_heads, self.head_dim)
        if self.complex:
            magnitude, phase = a.chunk(2, dim=-1)
            return {"log_alpha": F.logsigmoid(magnitude).reshape(shape), "phase": phase.reshape(shape)}
        log_alpha, sign = transition(F.logsigmoid(a).reshape(shape), self.negative_eigenvalues)
        return {"log_alpha": log_alpha, "sign": sign}

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = self.norm(o.to(x.dtype)).flatten(-2)  # [..., D]
        return self.o_proj(o * F.silu(self.g_proj(x)))

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, a = self._inputs(x, state.dtype)
        with full_precision(x):
            z = self._transition(a)
            o, state = run_gla(mode, self.chunk_size, q, k, v, z.pop("log_alpha"), state, **z)
        return self._output(x, o), state

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, a = self._inputs(x_t, state.dtype)
        with full_precision(x_t):
            z = self._transition(a)
            o, state = gla_step(q, k, v, z.pop("log_alpha"), state, **z)
        return self._output(x_t, o), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, complex={self.complex}, "
            f"chunk_size={self.chunk_size}, negative_eigenvalues={self.negative_eigenvalues}"
        )
