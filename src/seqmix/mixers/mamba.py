"""The Mamba block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv:2312.00752, Section 3.4 and Figure 3) as a token mixer:

    x, z   = in_proj(u)                       two branches of width d_inner = expand * d_model
    x      = SiLU(causal depthwise conv(x))   kernel d_conv
    dt, B, C = x_proj(x)                      ranks dt_rank, d_state, d_state (input-dependent: "selective")
    delta  = softplus(dt_proj(dt))            [B, T, d_inner], one step size per channel
    y      = SSM(A, delta, B, C)(x) + D * x   A = -exp(A_log): [d_inner, d_state]
    out    = out_proj(y * SiLU(z))

Initialisation as in the paper (Section 3.6 and Appendix): S4D-real ``A[d, n] = -(n + 1)``; ``D = 1``;
``dt_proj.weight ~ U(-dt_rank^-0.5, dt_rank^-0.5)``; ``dt_proj.bias = softplus^-1(dt)`` with ``dt``
log-uniform in ``[dt_min, dt_max] = [1e-3, 0.1]`` (floored at 1e-4), so that the initial step sizes
span that range; projections without bias; the conv with the nn.Conv1d default and a bias.

``negative_eigenvalues=True`` (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues", arXiv:2411.12537, their recipe for Mamba) uses the transition
``2 exp(delta A) - 1`` in (-1, 1) instead of ``exp(delta A)`` in (0, 1), so that the state can flip
sign (parity, modular counting); the input term ``delta B u`` and the initialisation are unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.modules.conv import CausalConv1d
from seqmix.ops.mamba import selective_scan_chunked, selective_scan_recurrent, selective_scan_step
from seqmix.ops.scan import check_chunk_size

__all__ = ["Mamba", "MambaState"]


class MambaState(NamedTuple):
    """Streaming state of one Mamba block."""

    conv: torch.Tensor  # [B, d_inner, d_conv - 1], the last d_conv - 1 conv inputs
    ssm: torch.Tensor  # [B, d_inner, d_state], the SSM state h


class Mamba(Mixer):
    """Mamba-1 mixer; modes ``"scan"`` (chunked selective scan) and ``"recurrent"`` (the reference loop).

    State: ``MambaState(conv [B, d_inner, d_conv-1], ssm [B, d_inner, d_state])``, constant in length.
    """

    modes = ("scan", "recurrent")

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.d_state = options.positive_int("d_state", d_state, "the SSM state size N per channel")
        self.d_conv = options.positive_int("d_conv", d_conv, "the short conv kernel size; 1 disables mixing")
        self.expand = options.positive_int("expand", expand, "d_inner = expand * d_model")
        if dt_rank is None:
            dt_rank = math.ceil(d_model / 16)
        self.dt_rank = options.positive_int("dt_rank", dt_rank, "None means ceil(d_model / 16)")
        self.chunk_size = check_chunk_size(chunk_size)
        dt_min = options.number("dt_min", dt_min, minimum=0, strict=True)
        dt_max = options.number("dt_max", dt_max, minimum=dt_min, hint="the step-size init range is [dt_min, dt_max]")
        dt_init_floor = options.number("dt_init_floor", dt_init_floor, minimum=0, strict=True)
        conv_bias, bias = options.boolean("conv_bias", conv_bias), options.boolean("bias", bias)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        self.d_inner = d_inner = self.expand * d_model

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv = CausalConv1d(d_inner, self.d_conv, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, self.d_state))  # [d_inner, d_state]
        self.D = nn.Parameter(torch.empty(d_inner))  # [d_inner]
        # as in the reference implementation: A_log and D are not weight-decayed (a trainer reads this flag)
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self._init_ssm(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        # S4D-real: A[d, n] = -(n + 1), the same for every channel
        n = torch.arange(1, self.d_state + 1, dtype=torch.float64)
        self.A_log.copy_(n.log().expand(self.d_inner, -1))
        self.D.fill_(1.0)
        # dt_proj maps a dt_rank-vector to d_inner step sizes; its scale keeps the pre-activation O(1)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # bias = softplus^-1(dt) so that softplus(bias) = dt, dt log-uniform in [dt_min, dt_max]
        u = torch.rand(self.d_inner, dtype=torch.float64)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # log(exp(dt) - 1), stable for small dt

    # ------------------------------------------------------------------ shared pieces
    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the conv output ``x: [..., d_inner]``: ``(x, delta, B, C)`` after SiLU / softplus."""
        x = F.silu(x)
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # [..., d_inner]
        return x, delta, Bm, Cm

    # ------------------------------------------------------------------ contract
    def _piece_width(self) -> int:
        return 2 * self.d_inner  # in_proj's output; measured: pieces pay on a CPU (Mixer._piece_len)

    def _forward(self, x: torch.Tensor, state: MambaState, mode: str) -> tuple[torch.Tensor, MambaState]:
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, d_inner] each
        xs, conv_state = self.conv.forward_shifted(xs, state.conv)  # measured faster here
        # the recurrence accumulates in the state's dtype (float32 under bf16 autocast)
        xs, delta, Bm, Cm = (t.to(state.ssm.dtype) for t in self._ssm_inputs(xs))
        A = -torch.exp(self.A_log.to(state.ssm.dtype))  # [d_inner, d_state]
        if mode == "scan":
            y, ssm = selective_scan_chunked(xs, delta, A, Bm, Cm, state.ssm, self.chunk_size, self.negative_eigenvalues)
        else:
            y, ssm = selective_scan_recurrent(xs, delta, A, Bm, Cm, state.ssm, self.negative_eigenvalues)
        y = (y + xs * self.D) * F.silu(z)  # [B, T, d_inner]
        return self.out_proj(y.to(x.dtype)), MambaState(conv_state, ssm)

    def _step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # [B, d_inner] each
        xs, conv_state = self.conv.step(xs, state.conv)
        xs, delta, B_t, C_t = (t.to(state.ssm.dtype) for t in self._ssm_inputs(xs))
        A = -torch.exp(self.A_log.to(state.ssm.dtype))  # [d_inner, d_state]
        y, ssm = selective_scan_step(xs, delta, A, B_t, C_t, state.ssm, self.negative_eigenvalues)
        y = (y + xs * self.D) * F.silu(z)  # [B, d_inner]
        return self.out_proj(y.to(x_t.dtype)), MambaState(conv_state, ssm)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> MambaState:
        kw = self._state_factory(device, dtype)
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, **kw),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, **kw),
        )

    def state_size(self, context_len: int) -> int:
        return self.d_inner * (self.d_conv - 1) + self.d_inner * self.d_state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, chunk_size={self.chunk_size}, negative_eigenvalues={self.negative_eigenvalues}"
        )
