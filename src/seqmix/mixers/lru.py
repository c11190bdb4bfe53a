"""The Linear Recurrent Unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023, "Resurrecting
Recurrent Neural Networks for Long Sequences", ICML 2023, arXiv:2303.06349, Section 3 and Appendix A):

    lambda_j = exp(-exp(nu_log_j) + i exp(theta_log_j))                  complex diagonal, |lambda| < 1
    h_t      = lambda * h_{t-1} + exp(gamma_log) * (B u_t)              B = B_re + i B_im: [N, H], h: [N] complex
    y_t      = Re(C h_t) + D * u_t                                      C = C_re + i C_im: [H, N], D: [H]

with ``H = d_model`` and ``N = d_state`` complex modes. The recurrence is time-invariant; it runs through
the complex chunked scan of ``ops/scan.py`` (``linear_scan_chunked``), the paper's parallel scan.

Initialisation (the paper's Appendix A code): eigenvalues uniform on the ring ``r_min <= |lambda| <= r_max``
(``nu_log = log(-log(U (r_max^2 - r_min^2) + r_min^2) / 2)``) with phase ``U * max_phase``;
``gamma_log = log sqrt(1 - |lambda|^2)``, a trainable normalisation that keeps the state's variance
independent of ``|lambda|`` at initialisation; ``B ~ N(0, 1/(2H))`` (real and imaginary parts),
``C ~ N(0, 1/N)``, ``D ~ N(0, 1)``. Defaults ``r_min, r_max = 0.9, 0.999`` follow the paper's long-range
setting; ``max_phase`` defaults to the code's ``2 pi`` (the paper uses ``pi / 10`` on PathX); ``d_state =
256`` is our default.

State: the complex ``h`` stored as real pairs ``[B, N, 2]`` (``torch.view_as_real``), so that dtype
casts, ``state_size`` and the harness treat it like any other state.

``negative_eigenvalues=True``. Grazzi et al. 2024 ("Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues", arXiv:2411.12537) map a decay ``a`` in [0, 1] to ``2 a - 1``. The LRU's eigenvalues
are complex already, and any phase (``pi`` included, i.e. a negative real eigenvalue) is reachable, so
the option does not enlarge the set of eigenvalues. What it changes is the parameterisation: we apply
the recipe to the modulus, ``lambda = (2 exp(-exp(nu_log)) - 1) exp(i exp(theta_log))``, so that the
eigenvalue moves along the line through 0 in the direction of its phase and reaches ``-exp(i theta)`` by
growing ``nu_log`` (as a real decay reaches -1), instead of only by rotating ``theta`` by pi. The
initialisation draws the same ring, ``|2 exp(-exp(nu_log)) - 1| = |lambda|``, and ``gamma_log`` uses
that modulus, so at initialisation both parameterisations give the same layer.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.ops.scan import check_chunk_size, linear_scan_chunked, linear_scan_recurrent, linear_scan_step

__all__ = ["LRU"]


class LRU(Mixer):
    """LRU mixer; modes ``"scan"`` (complex chunked scan) and ``"recurrent"`` (the reference loop).

    State: ``h: [B, d_state, 2]``, the complex state as (real, imaginary) pairs.
    """

    modes = ("scan", "recurrent")

    def __init__(
        self,
        d_model: int,
        d_state: int = 256,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.d_state = options.positive_int("d_state", d_state, "the number of complex modes N")
        ring = "eigenvalue moduli are initialised in [r_min, r_max]"
        r_min = options.number("r_min", r_min, minimum=0, hint=ring)
        r_max = options.number("r_max", r_max, minimum=r_min, hint=ring)
        if r_max >= 1:
            raise ValueError(f"r_max must be < 1 (a stable recurrence), got {r_max}")
        max_phase = options.number("max_phase", max_phase, minimum=0, strict=True, hint="phases in (0, max_phase]")
        self.chunk_size = check_chunk_size(chunk_size)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        N, H = self.d_state, d_model
        self.nu_log = nn.Parameter(torch.empty(N))  # [N]
        self.theta_log = nn.Parameter(torch.empty(N))  # [N]
        self.gamma_log = nn.Parameter(torch.empty(N))  # [N]
        self.B_re = nn.Parameter(torch.empty(N, H))  # [N, H]
        self.B_im = nn.Parameter(torch.empty(N, H))  # [N, H]
        self.C_re = nn.Parameter(torch.empty(H, N))  # [H, N]
        self.C_im = nn.Parameter(torch.empty(H, N))  # [H, N]
        self.D = nn.Parameter(torch.empty(H))  # [H]
        for p in (self.nu_log, self.theta_log, self.gamma_log):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self._init_parameters(r_min, r_max, max_phase)

    @torch.no_grad()
    def _init_parameters(self, r_min: float, r_max: float, max_phase: float) -> None:
        N, H = self.d_state, self.d_model
        u1 = torch.rand(N, dtype=torch.float64)
        u2 = 1.0 - torch.rand(N, dtype=torch.float64)  # (0, 1]: a phase of exactly 0 has no log
        modulus = torch.sqrt(u1 * (r_max**2 - r_min**2) + r_min**2)  # uniform on the ring's area
        r = (modulus + 1.0) / 2.0 if self.negative_eigenvalues else modulus  # exp(-exp(nu_log))
        self.nu_log.copy_(torch.log(-torch.log(r)))
        self.theta_log.copy_(torch.log(max_phase * u2))
        self.gamma_log.copy_(0.5 * torch.log1p(-modulus.square()))
        nn.init.normal_(self.B_re, std=(2 * H) ** -0.5)
        nn.init.normal_(self.B_im, std=(2 * H) ** -0.5)
        nn.init.normal_(self.C_re, std=N**-0.5)
        nn.init.normal_(self.C_im, std=N**-0.5)
        nn.init.normal_(self.D)

    # ------------------------------------------------------------------ shared pieces
    def eigenvalues(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The diagonal ``lambda: [d_state]``, complex (of ``dtype``'s precision, float32 if None)."""
        dtype = dtype or torch.float32
        r = torch.exp(-torch.exp(self.nu_log.to(dtype)))  # [N]
        if self.negative_eigenvalues:
            r = 2.0 * r - 1.0
        theta = torch.exp(self.theta_log.to(dtype))  # [N]
        return torch.complex(r * torch.cos(theta), r * torch.sin(theta))

    def _inputs(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``exp(gamma_log) * (B x)``: complex ``[..., d_state]`` from ``x: [..., d_model]``."""
        bu_re = (x @ self.B_re.t().to(x.dtype)).to(dtype)  # [..., N]
        bu_im = (x @ self.B_im.t().to(x.dtype)).to(dtype)  # [..., N]
        scale = torch.exp(self.gamma_log.to(dtype))  # [N]
        return torch.complex(bu_re * scale, bu_im * scale)

    def _outputs(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``Re(C h) + D x`` for complex ``h: [..., N]``, in ``x``'s dtype."""
        hr = torch.view_as_real(h).to(x.dtype)  # [..., N, 2]
        y = hr[..., 0] @ self.C_re.t().to(x.dtype) - hr[..., 1] @ self.C_im.t().to(x.dtype)  # [..., H]
        return y + self.D.to(x.dtype) * x

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        bu = self._inputs(x, state.dtype)  # [B, T, N] complex
        with full_precision(x):
            lam = self.eigenvalues(state.dtype).expand(B, T, self.d_state)  # [B, T, N], a broadcast view
            h0 = torch.view_as_complex(state.contiguous())  # [B, N]
            if mode == "scan":
                h, h_last = linear_scan_chunked(lam, bu, h0, self.chunk_size)
            else:
                h, h_last = linear_scan_recurrent(lam, bu, h0)
        return self._outputs(h, x), torch.view_as_real(h_last)

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bu = self._inputs(x_t, state.dtype)  # [B, N] complex
        with full_precision(x_t):
            h = linear_scan_step(self.eigenvalues(state.dtype), bu, torch.view_as_complex(state.contiguous()))
        return self._outputs(h, x_t), torch.view_as_real(h)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_state, 2, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return 2 * self.d_state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
