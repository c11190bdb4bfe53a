"""S4D (Gu, Gupta, Goel & Re 2022, "On the Parameterization and Initialization of Diagonal State Space
Models", NeurIPS 2022, arXiv:2206.11893), the diagonal S4 layer as a token mixer, per channel ``h`` of
``H = d_model`` independent SSMs with ``N / 2`` complex modes (``N = d_state``, conjugate pairs folded
into ``2 Re``):

    A      = -exp(log_A_real) + i A_imag                     [H, N/2], Re A < 0: stable
    dt     = exp(log_dt)                                     [H], one step size per channel
    z      = exp(dt A),  B_bar = (z - 1) / A * B             zero-order hold, B = 1 (folded into C)
    x_t    = z * x_{t-1} + B_bar * u_t                       x: [B, H, N/2] complex
    y_t    = 2 Re(C x_t) + D * u_t
    out_t  = GLU(W GELU(y_t) + b)                            the S4 block's output map, W: [2H, H]

As in the paper's reference S4D code (``s4d.py``), ``B`` is fixed to 1: the kernel ``K_l = 2 Re C B_bar
z^l`` depends on ``C B`` only, so a trainable ``B`` would be redundant. Initialisation: ``A_real = -1/2``;
``A_imag = pi n`` (S4D-Lin, default) or ``(N / pi) (N / (2n + 1) - 1)`` (S4D-Inv), ``n = 0..N/2-1``;
``C ~ CN(0, 1)``; ``D ~ N(0, 1)``; ``dt`` log-uniform in ``[dt_min, dt_max] = [1e-3, 0.1]``. The SSM
parameters carry ``_no_weight_decay`` (the paper trains them with a smaller learning rate and no weight
decay; a trainer may read the flag).

Forms: ``"conv"`` (default), the FFT long convolution with the materialised kernel plus the carried
state's free response (``ops/ssm_conv.py``); ``"recurrent"``, the loop. State: ``x`` as real pairs
``[B, H, N/2, 2]``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.ops.ssm_conv import ssm_diag_conv, ssm_diag_recurrent, ssm_diag_step

__all__ = ["S4D"]

_INITS = ("lin", "inv")


class S4D(Mixer):
    """S4D mixer; modes ``"conv"`` (FFT convolution) and ``"recurrent"`` (the reference loop).

    State: ``x: [B, d_model, d_state // 2, 2]``, the complex SSM state as (real, imaginary) pairs.
    """

    modes = ("conv", "recurrent")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model)
        d_state = options.positive_int("d_state", d_state, "real state size N per channel, N/2 complex modes")
        if d_state % 2:
            raise ValueError(f"d_state must be even (N/2 complex modes in conjugate pairs), got {d_state}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, _INITS))} (S4D-Lin, S4D-Inv), got {init!r}")
        dt_min = options.number("dt_min", dt_min, minimum=0, strict=True)
        dt_max = options.number("dt_max", dt_max, minimum=dt_min, hint="the step-size init range is [dt_min, dt_max]")
        self.chunk_size = options.positive_int("chunk_size", chunk_size, "block length of the Vandermonde products")
        self.d_state, self.init = d_state, init
        H, N2 = d_model, d_state // 2
        self.log_dt = nn.Parameter(torch.empty(H))  # [H]
        self.log_A_real = nn.Parameter(torch.empty(H, N2))  # [H, N/2]
        self.A_imag = nn.Parameter(torch.empty(H, N2))  # [H, N/2]
        self.C = nn.Parameter(torch.empty(H, N2, 2))  # [H, N/2, (re, im)]
        self.D = nn.Parameter(torch.empty(H))  # [H]
        for p in (self.log_dt, self.log_A_real, self.A_imag):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(H, 2 * H)  # then GLU: [.., 2H] -> [.., H]
        self._init_parameters(dt_min, dt_max)

    @torch.no_grad()
    def _init_parameters(self, dt_min: float, dt_max: float) -> None:
        H, N, N2 = self.d_model, self.d_state, self.d_state // 2
        u = torch.rand(H, dtype=torch.float64)
        self.log_dt.copy_(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real.fill_(math.log(0.5))
        n = torch.arange(N2, dtype=torch.float64)
        imag = math.pi * n if self.init == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)
        self.A_imag.copy_(imag.expand(H, N2))
        self.C.copy_(torch.view_as_real(torch.randn(H, N2, dtype=torch.complex128)))  # CN(0, 1)
        nn.init.normal_(self.D)

    # ------------------------------------------------------------------ shared pieces
    def discretize(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_z = dt A, B_bar, C)``, each complex ``[H, N/2]`` with ``dtype``'s precision (ZOH, B = 1)."""
        A = torch.complex(-torch.exp(self.log_A_real.to(dtype)), self.A_imag.to(dtype))  # [H, N/2]
        log_z = A * torch.exp(self.log_dt.to(dtype)).unsqueeze(-1)  # [H, N/2]
        b = torch.expm1(log_z) / A  # [H, N/2]
        return log_z, b, torch.view_as_complex(self.C.to(dtype))

    def _output(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``GLU(W GELU(y + D u) + b)`` in ``u``'s dtype."""
        y = F.gelu(y.to(u.dtype) + self.D.to(u.dtype) * u)
        return F.glu(self.out_proj(y), dim=-1)

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        with full_precision(x):
            log_z, b, c = self.discretize(state.dtype)
            u = x.to(state.dtype)
            x0 = torch.view_as_complex(state.contiguous())  # [B, H, N/2]
            if mode == "conv":
                y, xT = ssm_diag_conv(u, log_z, b, c, x0, self.chunk_size)
            else:
                y, xT = ssm_diag_recurrent(u, log_z, b, c, x0)
        return self._output(y, x), torch.view_as_real(xT)

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with full_precision(x_t):
            log_z, b, c = self.discretize(state.dtype)
            y, xs = ssm_diag_step(x_t.to(state.dtype), log_z, b, c, torch.view_as_complex(state.contiguous()))
        return self._output(y, x_t), torch.view_as_real(xs)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_model, self.d_state // 2, 2, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.d_model * self.d_state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, init={self.init!r}, chunk_size={self.chunk_size}"
