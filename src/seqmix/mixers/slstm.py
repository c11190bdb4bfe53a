"""The sLSTM layer of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory",
arXiv:2405.04517) as a token mixer, laid out as the ``sLSTMLayer`` of the authors' ``xlstm`` package:

    x_c            = SiLU(causal depthwise conv(x))             kernel d_conv (0: no conv, x_c = x)
    i~, f~         = headwise(x_c)   z~, o~ = headwise(x)       block-diagonal per head, no bias
    pre_t          = [i~, f~, z~, o~]_t + b                     [B, T, NH, 4, DH]
    h_t            = sLSTM cell(pre_t, R, state)                 see seqmix.ops.slstm
    y_t            = GroupNorm_NH(h_t) * weight                  per-head layer norm, no bias

The residual connection, the pre-norm and the gated feed-forward of the paper's sLSTM *block* belong to
the model around the mixer; the layer itself has no output projection (the paper's post-up-projection
block feeds it straight into the residual stream).

Initialisation as in the ``xlstm`` package defaults: headwise projections ``N(0, 2 / (5 d_model))``
("small init", Nguyen & Salazar 2019); recurrent matrices zero (``recurrent_init="zeros"``; ``"uniform"``
draws ``U(-1/sqrt(d_model), 1/sqrt(d_model))``); biases zero except the forget gate, which gets the
"power-law" ramp ``b_f[k] = 5 - 12 (k / (DH - 1))^0.3`` over each head's DH units (from long memory,
sigmoid(5), down to sigmoid(-7)); the conv keeps the ``nn.Conv1d`` default; the norm weight is 1.

Modes: ``"sequential"`` (the fast loop of ``slstm_sequential``: one GEMM for all input projections, one
batched per-head matmul per step) and ``"recurrent"`` (the reference loop). The recurrence is nonlinear,
so both are sequential in time. State: ``SLSTMState(h, c, n, m, conv)``.
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
from seqmix.ops.slstm import slstm_cell, slstm_recurrent, slstm_sequential

__all__ = ["SLSTM", "SLSTMState"]


class SLSTMState(NamedTuple):
    h: torch.Tensor  # [B, NH, DH] hidden state (fed back through R)
    c: torch.Tensor  # [B, NH, DH] cell, scaled by exp(-m)
    n: torch.Tensor  # [B, NH, DH] normaliser, scaled by exp(-m); 0 means empty
    m: torch.Tensor  # [B, NH, DH] stabiliser (log scale of c and n)
    conv: torch.Tensor  # [B, d_model, d_conv - 1] the last conv inputs ([B, d_model, 0] without conv)


_RECURRENT_INITS = ("zeros", "uniform")


class SLSTM(Mixer):
    """sLSTM mixer.

    Args:
        d_model: model width; ``n_heads`` must divide it.
        n_heads: heads NH, each with its own ``[DH, 4 DH]`` recurrent block (the paper uses 4).
        d_conv: kernel of the causal conv on the input/forget-gate path (the package's 4); 0 removes it.
        recurrent_init: ``"zeros"`` (package default) or ``"uniform"``.
        norm_eps: epsilon of the per-head layer norm.
    """

    modes = ("sequential", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_conv: int = 4,
        recurrent_init: str = "zeros",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(d_model)
        n_heads, head_dim = options.heads(d_model, n_heads)
        if not isinstance(d_conv, int) or isinstance(d_conv, bool) or d_conv < 0:
            raise ValueError(f"d_conv must be an int >= 0 (0 removes the conv), got {d_conv!r}")
        if recurrent_init not in _RECURRENT_INITS:
            raise ValueError(f"recurrent_init must be one of {_RECURRENT_INITS}, got {recurrent_init!r}")
        self.norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        self.n_heads, self.head_dim, self.d_conv = n_heads, head_dim, d_conv
        self.recurrent_init = recurrent_init

        self.conv = CausalConv1d(d_model, d_conv) if d_conv > 0 else None
        # headwise projections, [gate, head, out, in]: gates (i, f) read the conv path, (z, o) read x
        self.w_in = nn.Parameter(torch.empty(4, n_heads, head_dim, head_dim))
        self.bias = nn.Parameter(torch.empty(n_heads, 4, head_dim))  # [NH, 4, DH]
        self.R = nn.Parameter(torch.empty(n_heads, head_dim, 4, head_dim))  # [NH, DH, 4, DH]
        self.norm_weight = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.w_in, std=math.sqrt(2 / (5 * self.d_model)))
        if self.recurrent_init == "zeros":
            nn.init.zeros_(self.R)
        else:
            bound = 1 / math.sqrt(self.d_model)
            nn.init.uniform_(self.R, -bound, bound)
        self.bias.zero_()
        ramp = torch.arange(self.head_dim, dtype=torch.float64) / max(self.head_dim - 1, 1)
        self.bias[:, 1, :] = (5.0 - 12.0 * ramp**0.3).to(self.bias.dtype)  # forget gate, per head
        self.norm_weight.fill_(1.0)
        if self.conv is not None:
            self.conv.reset_parameters()

    # ------------------------------------------------------------------ shared pieces
    def _gate_inputs(self, x: torch.Tensor, x_conv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``pre = [i~, f~, z~, o~] + b`` for ``x, x_conv: [..., D]``; returns ``[..., NH, 4, DH]`` in ``dtype``."""
        heads = (self.n_heads, self.head_dim)
        xc, xx = x_conv.unflatten(-1, heads), x.unflatten(-1, heads)  # [..., NH, DH]
        w = self.w_in.to(x.dtype)
        if_ = torch.einsum("...hd,ghed->...hge", xc, w[:2])  # [..., NH, 2, DH]
        zo = torch.einsum("...hd,ghed->...hge", xx, w[2:])  # [..., NH, 2, DH]
        return torch.cat((if_, zo), dim=-2).to(dtype) + self.bias.to(dtype)

    def _out(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-head layer norm of ``h: [..., NH, DH]``, scaled; returns ``[..., D]`` in ``dtype``."""
        y = F.layer_norm(h, (self.head_dim,), eps=self.norm_eps).flatten(-2)
        return (y * self.norm_weight.to(y.dtype)).to(dtype)

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: SLSTMState, mode: str) -> tuple[torch.Tensor, SLSTMState]:
        if self.conv is not None:
            x_conv, conv_state = self.conv(x, state.conv)  # [B, T, D]
            x_conv = F.silu(x_conv)
        else:
            x_conv, conv_state = x, state.conv
        dtype = state.c.dtype
        pre = self._gate_inputs(x, x_conv, dtype)  # [B, T, NH, 4, DH]
        form = slstm_sequential if mode == "sequential" else slstm_recurrent
        with full_precision(x):
            h_all, (h, c, n, m) = form(pre, self.R.to(dtype), tuple(state[:4]))
            y = self._out(h_all, x.dtype)
        return y, SLSTMState(h, c, n, m, conv_state)

    def _step(self, x_t: torch.Tensor, state: SLSTMState) -> tuple[torch.Tensor, SLSTMState]:
        if self.conv is not None:
            x_conv, conv_state = self.conv.step(x_t, state.conv)  # [B, D]
            x_conv = F.silu(x_conv)
        else:
            x_conv, conv_state = x_t, state.conv
        dtype = state.c.dtype
        pre_t = self._gate_inputs(x_t, x_conv, dtype)  # [B, NH, 4, DH]
        with full_precision(x_t):
            h, c, n, m = slstm_cell(pre_t, self.R.to(dtype), tuple(state[:4]))
            y = self._out(h, x_t.dtype)
        return y, SLSTMState(h, c, n, m, conv_state)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> SLSTMState:
        kw = self._state_factory(device, dtype)
        zeros = torch.zeros(batch_size, self.n_heads, self.head_dim, **kw)
        conv = torch.zeros(batch_size, self.d_model, max(self.d_conv - 1, 0), **kw)
        return SLSTMState(zeros, zeros.clone(), zeros.clone(), zeros.clone(), conv)

    def state_size(self, context_len: int) -> int:
        return 4 * self.d_model + self.d_model * max(self.d_conv - 1, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, d_conv={self.d_conv}"
