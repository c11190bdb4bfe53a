"""The Hawk recurrent block with the RG-LRU (De et al. 2024, "Griffin: Mixing Gated Linear Recurrences
with Local Attention for Efficient Language Models", arXiv:2402.19427, Sections 2.3-2.4, Figure 2c):

    y_branch = GeLU(Linear_y(x))                           [B, T, d_rnn]
    u        = CausalConv1d(Linear_x(x))                   temporal filter width 4, with bias
    r_t      = sigmoid(W_a u_t + b_a)                      recurrence gate
    i_t      = sigmoid(W_x u_t + b_x)                      input gate
    log a_t  = c r_t log sigmoid(Lambda) = -c r_t softplus(-Lambda)      a_t = sigma(Lambda)^(c r_t), c = 8
    h_t      = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)
    out      = Linear_out(y_branch * h)

The recurrence runs through the chunked scan of ``ops/scan.py`` with ``log a_t`` (computed in log
space, as the paper's Appendix A recommends). ``sqrt(1 - a_t^2) = sqrt(-expm1(2 log a_t))`` has an
unbounded derivative as ``a_t -> 1``; like the official implementation we clip that derivative at 1000
(a deviation from the exact gradient only where ``1 - a_t^2 < 2.5e-7``).

Initialisation (Section 2.4): ``W_a, W_x`` LeCun normal, biases zero; ``Lambda`` such that ``a^c`` is
uniform in ``[0.9, 0.999]`` (the paper's text; the official RecurrentGemma code instead puts ``a``
itself on that ring, with ``a^2`` uniform in ``[0.81, 0.998]``). ``Linear_x``, ``Linear_y`` and
``Linear_out`` are LeCun normal with zero bias, the conv keeps ``nn.Conv1d``'s default.

Choices where the paper leaves freedom (state them, do not hide them):
- ``d_rnn`` defaults to ``round(4 * d_model / 3)``: the RNN width of Griffin's reported models is
  wider than the model (RecurrentGemma-2B uses ``d_rnn = d_model``; pass ``d_rnn`` to match it).
- ``n_heads``: the gate weights ``W_a, W_x`` are block-diagonal with ``n_heads`` blocks, as in the
  official code (RecurrentGemma-2B: 10 blocks); the default 1 is the dense gates of the paper's equations.
- GeLU is the tanh approximation, as in the official code.

``negative_eigenvalues=True`` (Grazzi et al. 2024, arXiv:2411.12537: map a decay in [0, 1] to
``2 a - 1``) uses the transition ``a'_t = 2 a_t - 1`` in (-1, 1) and normalises the input by
``sqrt(1 - a'_t^2)``, which keeps the RG-LRU's defining property (a stationary state variance for
i.i.d. inputs) for the new transition.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.conv import CausalConv1d
from seqmix.ops.scan import (
    check_chunk_size,
    linear_scan_chunked,
    linear_scan_recurrent,
    linear_scan_step,
    scan_chunked,
    scan_recurrent,
    scan_step,
)

__all__ = ["RGLRU", "RGLRUState", "sqrt_bounded_derivative"]

_MAX_SQRT_GRADIENT = 1000.0


class _SqrtBoundedDerivative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # d sqrt(x)/dx = 1 / (2 sqrt(x)), clipped at _MAX_SQRT_GRADIENT
        return grad / torch.sqrt(torch.clamp(4.0 * x, min=_MAX_SQRT_GRADIENT**-2))


def sqrt_bounded_derivative(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` whose derivative is clipped at 1000 (finite at ``x = 0``)."""
    return _SqrtBoundedDerivative.apply(x)


class RGLRUState(NamedTuple):
    """Streaming state of one Hawk recurrent block."""

    conv: torch.Tensor  # [B, d_rnn, d_conv - 1], the last d_conv - 1 conv inputs
    h: torch.Tensor  # [B, d_rnn], the RG-LRU state


class RGLRU(Mixer):
    """Hawk recurrent block (RG-LRU); modes ``"scan"`` (chunked scan) and ``"recurrent"`` (the loop).

    State: ``RGLRUState(conv [B, d_rnn, d_conv-1], h [B, d_rnn])``, constant in length.
    """

    modes = ("scan", "recurrent")

    def __init__(
        self,
        d_model: int,
        d_rnn: Optional[int] = None,
        n_heads: int = 1,
        d_conv: int = 4,
        c: float = 8.0,
        a_min: float = 0.9,
        a_max: float = 0.999,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        if d_rnn is None:
            d_rnn = max(1, round(4 * d_model / 3))
        self.d_rnn = options.positive_int("d_rnn", d_rnn, "the RNN width; None means round(4 * d_model / 3)")
        self.n_heads = options.positive_int("n_heads", n_heads, "blocks of the block-diagonal gate weights")
        if self.d_rnn % self.n_heads:
            raise ValueError(f"n_heads must divide d_rnn, got d_rnn={self.d_rnn}, n_heads={self.n_heads}")
        self.d_conv = options.positive_int("d_conv", d_conv, "the temporal conv width (4 in the paper)")
        self.c = options.number("c", c, minimum=0, strict=True, hint="a_t = sigmoid(Lambda)^(c r_t); 8 in the paper")
        a_min = options.number("a_min", a_min, minimum=0, strict=True, hint="a^c is initialised in [a_min, a_max]")
        a_max = options.number("a_max", a_max, minimum=a_min, hint="a^c is initialised in [a_min, a_max]")
        if a_max >= 1:
            raise ValueError(f"a_max must be < 1 (a = sigmoid(Lambda) < 1), got {a_max}")
        self.chunk_size = check_chunk_size(chunk_size)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        H, bw = self.n_heads, self.d_rnn // self.n_heads

        self.in_proj = nn.Linear(d_model, 2 * self.d_rnn)  # [.., 2 d_rnn]: the RG-LRU branch, then the GeLU branch
        self.conv = CausalConv1d(self.d_rnn, self.d_conv, bias=True)
        # block-diagonal gates, recurrence gate then input gate along the last dim: [H, bw, 2 bw]
        self.gate_weight = nn.Parameter(torch.empty(H, bw, 2 * bw))
        self.gate_bias = nn.Parameter(torch.empty(H, 2 * bw))
        self.Lambda = nn.Parameter(torch.empty(self.d_rnn))  # [d_rnn], a = sigmoid(Lambda)
        self.Lambda._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(self.d_rnn, d_model)
        self._init_parameters(a_min, a_max)

    @torch.no_grad()
    def _init_parameters(self, a_min: float, a_max: float) -> None:
        for lin in (self.in_proj, self.out_proj):  # LeCun normal, zero bias
            nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.gate_weight, std=self.gate_weight.shape[1] ** -0.5)
        nn.init.zeros_(self.gate_bias)
        # a^c ~ U[a_min, a_max]  =>  log a = log(U) / c,  Lambda = logit(a) = log a - log(1 - a)
        u = torch.empty(self.d_rnn, dtype=torch.float64).uniform_(a_min, a_max)
        log_a = u.log() / self.c
        self.Lambda.copy_(log_a - torch.log(-torch.expm1(log_a)))

    # ------------------------------------------------------------------ shared pieces
    def _recurrence_inputs(self, u: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """From the conv output ``u: [..., d_rnn]``: the transition (``log a_t``, or ``2 a_t - 1`` with
        negative eigenvalues) and the normalised input ``sqrt(1 - a_t^2) i_t u_t``, in ``dtype``."""
        H, bw = self.n_heads, self.d_rnn // self.n_heads
        lead = u.shape[:-1]
        gates = torch.einsum("...hi,hij->...hj", u.reshape(*lead, H, bw), self.gate_weight) + self.gate_bias
        r, i = (torch.sigmoid(g).reshape(*lead, self.d_rnn).to(dtype) for g in gates.chunk(2, dim=-1))
        u = u.to(dtype)
        with full_precision(u):
            log_a = -self.c * r * F.softplus(-self.Lambda.to(dtype))  # [..., d_rnn]
            if self.negative_eigenvalues:
                a = 2.0 * torch.exp(log_a) - 1.0
                norm = sqrt_bounded_derivative(1.0 - a * a)
                return a, norm * i * u
            norm = sqrt_bounded_derivative(-torch.expm1(2.0 * log_a))  # sqrt(1 - a_t^2)
            return log_a, norm * i * u

    def _branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, y = self.in_proj(x).chunk(2, dim=-1)
        return u, F.gelu(y, approximate="tanh")

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: RGLRUState, mode: str) -> tuple[torch.Tensor, RGLRUState]:
        u, y = self._branches(x)  # [B, T, d_rnn] each
        u, conv_state = self.conv(u, state.conv)
        decay, b = self._recurrence_inputs(u, state.h.dtype)  # [B, T, d_rnn] each
        neg = self.negative_eigenvalues
        with full_precision(x):
            if mode == "scan":
                h, h_last = (linear_scan_chunked if neg else scan_chunked)(decay, b, state.h, self.chunk_size)
            else:
                h, h_last = (linear_scan_recurrent if neg else scan_recurrent)(decay, b, state.h)
        return self.out_proj(y * h.to(y.dtype)), RGLRUState(conv_state, h_last)

    def _step(self, x_t: torch.Tensor, state: RGLRUState) -> tuple[torch.Tensor, RGLRUState]:
        u, y = self._branches(x_t)  # [B, d_rnn] each
        u, conv_state = self.conv.step(u, state.conv)
        decay, b = self._recurrence_inputs(u, state.h.dtype)
        with full_precision(x_t):
            h = (linear_scan_step if self.negative_eigenvalues else scan_step)(decay, b, state.h)
        return self.out_proj(y * h.to(y.dtype)), RGLRUState(conv_state, h)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> RGLRUState:
        kw = self._state_factory(device, dtype)
        return RGLRUState(
            conv=torch.zeros(batch_size, self.d_rnn, self.d_conv - 1, **kw),
            h=torch.zeros(batch_size, self.d_rnn, **kw),
        )

    def state_size(self, context_len: int) -> int:
        return self.d_rnn * (self.d_conv - 1) + self.d_rnn

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_rnn={self.d_rnn}, n_heads={self.n_heads}, d_conv={self.d_conv}, c={self.c:g}, "
            f"chunk_size={self.chunk_size}, negative_eigenvalues={self.negative_eigenvalues}"
        )
