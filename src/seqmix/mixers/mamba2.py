"""The Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", arXiv:2405.21060, Section 7 and Figure 6) as a token mixer::

    z, xBC, dt = in_proj(u)                        widths d_inner, d_inner + 2 d_state, n_heads
    x, B, C    = SiLU(causal depthwise conv(xBC))  kernel d_conv; B, C shared by all heads (ngroups = 1)
    dt         = softplus(dt + dt_bias)            [B, T, H], one step size per head
    a_t        = exp(dt_t A_h),  A_h = -exp(A_log_h)          a scalar decay per head
    S_t        = a_t S_{t-1} + B_t (dt_t x_t)^T    [d_state, head_dim] per head  (seqmix.ops.ssd)
    y_t        = S_t^T C_t + D_h x_t
    out        = out_proj(RMSNorm(y * SiLU(z)))    gated RMSNorm over d_inner (norm_before_gate=False)

Initialisation as in the reference implementation (``mamba_ssm`` Mamba2): ``A_h ~ U[1, 16]``
(``A_init_range``), ``D = 1``, ``dt_bias = softplus^-1(dt)`` with ``dt`` log-uniform in
``[dt_min, dt_max] = [1e-3, 0.1]`` floored at 1e-4; projections without bias, the conv with bias and
nn.Conv1d's default init; RMSNorm weight 1. Head dimension 64 as in the paper (``n_heads=None`` picks
heads of about 64 channels of ``d_inner``; fewer channels give one head).

``negative_eigenvalues=True`` (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues", arXiv:2411.12537; Sarrof et al. 2024) replaces the decay by
``a_t = 2 exp(dt_t A_h) - 1 in (-1, 1]``, their recipe for Mamba; the sign travels separately through
the chunkwise form (see ``seqmix.ops.ssd``). ``|a_t|`` is floored at the dtype's smallest normal number
so that ``log |a_t|`` stays finite where ``a_t`` crosses 0.

Deviations: ``dt_limit`` clamping and learnable initial states of the reference are not offered;
the state is stored ``[d_state, head_dim]`` per head (``mamba_ssm`` stores its transpose).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.conv import CausalConv1d
from seqmix.ops.gated_norm import gated_rms_norm
from seqmix.ops.short_conv import causal_conv_silu
from seqmix.ops.ssd import ssd_chunk, ssd_recurrent, ssd_step

__all__ = ["Mamba2", "Mamba2State"]


class Mamba2State(NamedTuple):
    """Streaming state of one Mamba-2 block."""

    conv: torch.Tensor  # [B, d_inner + 2 d_state, d_conv - 1], the last conv inputs
    ssm: torch.Tensor  # [B, n_heads, d_state, head_dim], the SSM state S


class Mamba2(Mixer):
    """Mamba-2 mixer; modes ``"chunk"`` (chunkwise SSD) and ``"recurrent"`` (the reference loop).

    Args:
        d_model: model width.
        d_state: state size N per head (paper: 128; 64 to 256 in the released models).
        d_conv: kernel of the short causal conv on x, B, C (1 disables mixing over time).
        expand: d_inner = expand * d_model.
        n_heads: heads over d_inner; None: heads of about 64 channels (the paper's head dimension).
        chunk_size: chunk length of the ``"chunk"`` form.
        negative_eigenvalues: decays in (-1, 1] instead of (0, 1] (Grazzi et al. 2024).
        A_init_range: ``-A`` is drawn uniformly from this range.
        dt_min, dt_max, dt_init_floor: the initial step sizes (log-uniform, floored).
        conv_bias, bias: biases of the conv and of the in/out projections.
        norm_eps: epsilon of the gated RMSNorm.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        n_heads: Optional[int] = None,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(d_model)
        self.d_state = options.positive_int("d_state", d_state, "the SSM state size N per head")
        self.d_conv = options.positive_int("d_conv", d_conv, "the short conv kernel size; 1 disables mixing")
        self.expand = options.positive_int("expand", expand, "d_inner = expand * d_model")
        self.d_inner = d_inner = self.expand * d_model
        if n_heads is None:
            n_heads = next(n for n in range(max(1, d_inner // 64), 0, -1) if d_inner % n == 0)
        n_heads = options.positive_int("n_heads", n_heads)
        if d_inner % n_heads:
            raise ValueError(f"n_heads must divide d_inner = expand * d_model = {d_inner}, got n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_inner // n_heads
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        ok = isinstance(A_init_range, (tuple, list)) and len(A_init_range) == 2
        ok = ok and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in A_init_range)
        if not ok or not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be two numbers 0 < low <= high, got {A_init_range!r}")
        dt_min = options.number("dt_min", dt_min, minimum=0, strict=True)
        dt_max = options.number("dt_max", dt_max, minimum=dt_min, hint="the step-size init range is [dt_min, dt_max]")
        dt_init_floor = options.number("dt_init_floor", dt_init_floor, minimum=0, strict=True)
        conv_bias, bias = options.boolean("conv_bias", conv_bias), options.boolean("bias", bias)
        self.norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)

        self.conv_dim = d_inner + 2 * self.d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + n_heads, bias=bias)  # [z, xBC, dt]
        self.conv = CausalConv1d(self.conv_dim, self.d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(n_heads))  # [H]
        self.A_log = nn.Parameter(torch.empty(n_heads))  # [H]
        self.D = nn.Parameter(torch.empty(n_heads))  # [H]
        self.norm_weight = nn.Parameter(torch.ones(d_inner))  # [d_inner]
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        for p in (self.dt_bias, self.A_log, self.D):  # not weight-decayed in the reference (a trainer reads this)
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self._init_ssm(tuple(A_init_range), dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, A_init_range: tuple[float, float], dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        A = torch.empty(self.n_heads, dtype=torch.float64).uniform_(*A_init_range)
        self.A_log.copy_(A.log())
        self.D.fill_(1.0)
        u = torch.rand(self.n_heads, dtype=torch.float64)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt), stable for small dt

    # ------------------------------------------------------------------ shared pieces
    def _decay(self, dtA: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(log|a|, sign or None)`` from ``dt * A <= 0``."""
        if not self.negative_eigenvalues:
            return dtA, None
        u = 2.0 * torch.expm1(dtA)  # a - 1 = 2 exp(dtA) - 2, in (-2, 0]
        tiny = torch.finfo(dtA.dtype).tiny
        # log1p keeps precision for a near 1 (small dt); |1 + u| is exact for u <= -1/2 (Sterbenz)
        log_abs = torch.where(
            u > -0.5, torch.log1p(u.clamp(min=-0.5)), torch.log((1.0 + u).abs().clamp(min=tiny))
        )
        sign = torch.where(u < -1.0, -1.0, 1.0).to(dtA.dtype)
        return log_abs, sign

    def _project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``z: [..., d_inner]``, ``xBC: [..., d_inner + 2 d_state]`` (before the conv), ``dt: [..., H]``."""
        return self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``RMSNorm(y * SiLU(z))`` over ``d_inner``, in ``y``'s dtype (hand-written backward: measured faster)."""
        return gated_rms_norm(y, z, self.norm_weight, self.norm_eps)

    # ------------------------------------------------------------------ contract
    def _piece_width(self) -> int:
        return self.in_proj.out_features  # measured: pieces pay on a CPU (Mixer._piece_len)

    def _forward(self, x: torch.Tensor, state: Mamba2State, mode: str) -> tuple[torch.Tensor, Mamba2State]:
        B, T, _ = x.shape
        z, xBC, dt = self._project(x)
        dtype = state.ssm.dtype
        with full_precision(x):
            # conv + SiLU as one op with a hand-written backward, [B, T, C] throughout (measured faster), in
            # the state's dtype like the rest of the SSM path (under autocast too)
            xBC, conv_state = causal_conv_silu(xBC.to(dtype), state.conv, self.conv.weight, self.conv.bias)
            xs, Bm, Cm = xBC.split([self.d_inner, self.d_state, self.d_state], dim=-1)
            dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))  # [B, T, H]
            log_a, sign = self._decay(dt * -torch.exp(self.A_log.to(dtype)))  # [B, T, H]
            xs = xs.view(B, T, self.n_heads, self.head_dim)  # [B, T, H, P]
            v = (xs * dt.unsqueeze(-1)).transpose(1, 2)  # [B, H, T, P]
            q, k = Cm.unsqueeze(1), Bm.unsqueeze(1)  # [B, 1, T, N]: shared by every head
            log_a = log_a.transpose(1, 2)  # [B, H, T]
            sign = None if sign is None else sign.transpose(1, 2)
            if mode == "chunk":
                y, ssm = ssd_chunk(q, k, v, log_a, state.ssm, self.chunk_size, sign=sign)
            else:
                y, ssm = ssd_recurrent(q, k, v, log_a, state.ssm, sign=sign)
            y = y.transpose(1, 2) + xs * self.D.to(dtype)[:, None]  # [B, T, H, P]
            y = self._gated_norm(y.reshape(B, T, self.d_inner), z)
        return self.out_proj(y.to(x.dtype)), Mamba2State(conv_state, ssm)

    def _step(self, x_t: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        B = x_t.shape[0]
        z, xBC, dt = self._project(x_t)
        xBC, conv_state = self.conv.step(xBC, state.conv)
        dtype = state.ssm.dtype
        with full_precision(x_t):
            xs, Bm, Cm = F.silu(xBC.to(dtype)).split([self.d_inner, self.d_state, self.d_state], dim=-1)
            dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))  # [B, H]
            log_a, sign = self._decay(dt * -torch.exp(self.A_log.to(dtype)))  # [B, H]
            xs = xs.view(B, self.n_heads, self.head_dim)  # [B, H, P]
            y, ssm = ssd_step(Cm.unsqueeze(1), Bm.unsqueeze(1), xs * dt.unsqueeze(-1), log_a, state.ssm, sign)
            y = y + xs * self.D.to(dtype)[:, None]  # [B, H, P]
            y = self._gated_norm(y.reshape(B, self.d_inner), z)
        return self.out_proj(y.to(x_t.dtype)), Mamba2State(conv_state, ssm)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> Mamba2State:
        kw = self._state_factory(device, dtype)
        return Mamba2State(
            conv=torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, **kw),
            ssm=torch.zeros(batch_size, self.n_heads, self.d_state, self.head_dim, **kw),
        )

    def state_size(self, context_len: int) -> int:
        return self.conv_dim * (self.d_conv - 1) + self.n_heads * self.d_state * self.head_dim

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, n_heads={self.n_heads}, "
            f"head_dim={self.head_dim}, d_conv={self.d_conv}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
