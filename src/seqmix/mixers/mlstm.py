"""The mLSTM block of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory",
arXiv:2405.04517, Section 2.4 and Figure 10: the pre-up-projection block) as a token mixer.

Layout, as in the authors' ``xlstm`` package (``mLSTMLayer``), without the block's pre-LayerNorm and
residual (a model adds those around every mixer)::

    x_m, z  = up_proj(x)                                  two branches of width inner = proj_factor * d_model
    x_c     = SiLU(causal depthwise conv(x_m))            kernel d_conv
    q, k    = blockdiag(x_c),  v = blockdiag(x_m)         block-diagonal projections, blocks of qkv_block_size
    log_i   = W_i [q, k, v] + b_i,  f~ = W_f [q, k, v] + b_f      one scalar gate per head and token
    log_f   = log sigmoid(f~)   (forget_gate="sigmoid";  f~ itself for "exp")
    h       = mLSTM cell(q, k / sqrt(head_dim), v, log_i, log_f)        (seqmix.ops.mlstm)
    y       = down_proj((GroupNorm_heads(h) + skip * x_c) * SiLU(z))

The paper's cell also has an output gate ``o_t = sigmoid(W_o x_t)``; in the block that role is played by
the ``SiLU(z)`` branch, and the package has no separate ``o_t``; we follow the block.

Initialisation as in the package: ``up_proj`` and the q/k/v blocks ``N(0, 2 / (5 d_model))`` ("small
init"); ``down_proj`` ``N(0, (2 / sqrt(d_model))^2)`` (Wang init for one block; a model of L blocks may
want ``2 / (L sqrt(d_model))``); gate weights 0, input gate bias ``N(0, 0.1^2)``, forget gate bias
linearly spaced in ``[3, 6]`` over the heads (forget gates near 1: long memory at the start of
training); the learnable skip and the norm weight 1 (the package stores the norm weight as
``1 + w``); the conv with nn.Conv1d's default init.

Deviation: the package rounds the inner width up to a multiple of 64; here
``inner = proj_factor * d_model`` exactly (so small test models stay small).
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
from seqmix.ops.mlstm import MLSTMCellState, mlstm_chunk, mlstm_recurrent, mlstm_step

__all__ = ["MLSTM", "MLSTMState"]

FORGET_GATES = ("sigmoid", "exp")


class MLSTMState(NamedTuple):
    """Streaming state of one mLSTM block."""

    conv: torch.Tensor  # [B, inner, d_conv - 1], the last conv inputs
    C: torch.Tensor  # [B, H, head_dim, head_dim], stabilised matrix memory
    n: torch.Tensor  # [B, H, head_dim], stabilised normaliser
    m: torch.Tensor  # [B, H], stabiliser


class MLSTM(Mixer):
    """mLSTM mixer; modes ``"chunk"`` (chunkwise, on the SSD kernel) and ``"recurrent"`` (the loop).

    Args:
        d_model: model width.
        n_heads: mLSTM heads over the inner width (the package's default: 4).
        proj_factor: inner width = proj_factor * d_model (paper: 2).
        d_conv: kernel of the causal conv on the q/k path (1 disables mixing over time).
        qkv_block_size: block size of the block-diagonal q, k, v projections (package default: 4).
        chunk_size: chunk length of the ``"chunk"`` form.
        forget_gate: "sigmoid" (the package's choice) or "exp" (the paper's alternative).
        eps: added to the normaliser ``max(|n.q|, exp(-m))``, as in the package.
        norm_eps: epsilon of the per-head GroupNorm.
        bias: biases of the up/down and q/k/v projections.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        proj_factor: float = 2.0,
        d_conv: int = 4,
        qkv_block_size: int = 4,
        chunk_size: int = 64,
        forget_gate: str = "sigmoid",
        eps: float = 1e-6,
        norm_eps: float = 1e-5,
        bias: bool = False,
    ) -> None:
        super().__init__(d_model)
        proj_factor = options.number("proj_factor", proj_factor, minimum=0, strict=True)
        inner = proj_factor * d_model
        if inner != int(inner):
            raise ValueError(f"proj_factor * d_model must be a whole number, got {proj_factor} * {d_model}")
        self.inner = inner = int(inner)
        self.n_heads = options.positive_int("n_heads", n_heads)
        if inner % self.n_heads:
            raise ValueError(f"n_heads must divide the inner width proj_factor * d_model = {inner}, got {n_heads}")
        self.head_dim = inner // self.n_heads
        self.qkv_block_size = options.positive_int("qkv_block_size", qkv_block_size)
        if inner % self.qkv_block_size:
            raise ValueError(f"qkv_block_size must divide the inner width {inner}, got {qkv_block_size}")
        self.d_conv = options.positive_int("d_conv", d_conv, "the short conv kernel size; 1 disables mixing")
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
        self.forget_gate = forget_gate
        self.eps = options.number("eps", eps, minimum=0)
        self.norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        bias = options.boolean("bias", bias)

        n_blocks, bs = inner // self.qkv_block_size, self.qkv_block_size
        self.up_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv = CausalConv1d(inner, self.d_conv, bias=True)
        self.q_weight = nn.Parameter(torch.empty(n_blocks, bs, bs))  # [blocks, out, in]
        self.k_weight = nn.Parameter(torch.empty(n_blocks, bs, bs))
        self.v_weight = nn.Parameter(torch.empty(n_blocks, bs, bs))
        self.qkv_bias = nn.Parameter(torch.zeros(3, inner)) if bias else None
        self.igate = nn.Linear(3 * inner, self.n_heads)
        self.fgate = nn.Linear(3 * inner, self.n_heads)
        self.norm_weight = nn.Parameter(torch.ones(inner))  # [inner], per-head GroupNorm
        self.skip = nn.Parameter(torch.ones(inner))  # [inner], the learnable skip of x_c
        self.down_proj = nn.Linear(inner, d_model, bias=bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        small = math.sqrt(2 / (5 * self.d_model))
        for w in (self.up_proj.weight, self.q_weight, self.k_weight, self.v_weight):
            nn.init.normal_(w, std=small)
        nn.init.normal_(self.down_proj.weight, std=2 / math.sqrt(self.d_model))
        for b in (self.up_proj.bias, self.down_proj.bias, self.qkv_bias):
            if b is not None:
                nn.init.zeros_(b)
        self.conv.reset_parameters()
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)
        nn.init.zeros_(self.fgate.weight)
        self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.n_heads))
        self.norm_weight.fill_(1.0)
        self.skip.fill_(1.0)

    # ------------------------------------------------------------------ shared pieces
    def _blockdiag(self, x: torch.Tensor, weight: torch.Tensor, which: int) -> torch.Tensor:
        """Block-diagonal projection of ``x: [..., inner]`` (the package's LinearHeadwiseExpand)."""
        # the weight follows x's dtype: under autocast x is already in low precision and einsum is not cast
        y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (weight.shape[0], -1)), weight.to(x.dtype))
        y = y.flatten(-2)  # [..., inner]
        return y if self.qkv_bias is None else y + self.qkv_bias[which].to(y.dtype)

    def _cell_inputs(self, x_m: torch.Tensor, x_c: torch.Tensor, dtype: torch.dtype):
        """q, k (scaled), v ``[..., H, head_dim]`` and ``log_i, log_f: [..., H]`` in ``dtype``."""
        q = self._blockdiag(x_c, self.q_weight, 0)  # [..., inner]
        k = self._blockdiag(x_c, self.k_weight, 1)
        v = self._blockdiag(x_m, self.v_weight, 2)
        # both gates read [q, k, v]; summing three projections spares the [..., 3 inner] concatenation
        weight = torch.cat((self.igate.weight, self.fgate.weight)).split(self.inner, dim=-1)  # 3 x [2H, inner]
        bias = torch.cat((self.igate.bias, self.fgate.bias))  # [2H]
        gates = F.linear(q, weight[0], bias) + F.linear(k, weight[1]) + F.linear(v, weight[2])  # [..., 2H]
        log_i, f = gates.to(dtype).chunk(2, dim=-1)  # [..., H] each
        log_f = F.logsigmoid(f) if self.forget_gate == "sigmoid" else f
        heads = (self.n_heads, self.head_dim)
        q, k, v = (t.to(dtype).unflatten(-1, heads) for t in (q, k, v))
        return q, k * self.head_dim**-0.5, v, log_i, log_f

    def _gate(self, h: torch.Tensor, x_c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``h: [..., H, head_dim]`` -> per-head norm, learnable skip and output gate: ``[..., inner]``."""
        h = F.layer_norm(h, (self.head_dim,), eps=self.norm_eps).flatten(-2) * self.norm_weight.to(h.dtype)
        return (h + self.skip.to(h.dtype) * x_c.to(h.dtype)) * F.silu(z.to(h.dtype))

    # ------------------------------------------------------------------ contract
    def _piece_width(self) -> int:
        return self.up_proj.out_features  # measured: pieces pay on a CPU (Mixer._piece_len)

    def _forward(self, x: torch.Tensor, state: MLSTMState, mode: str) -> tuple[torch.Tensor, MLSTMState]:
        x_m, z = self.up_proj(x).chunk(2, dim=-1)  # [B, T, inner] each
        x_c, conv_state = self.conv(x_m, state.conv)
        x_c = F.silu(x_c)
        q, k, v, log_i, log_f = (t.transpose(1, 2) for t in self._cell_inputs(x_m, x_c, state.C.dtype))
        with full_precision(x):  # the cell accumulates in the state's dtype
            cell = MLSTMCellState(state.C, state.n, state.m)
            if mode == "chunk":
                h, cell = mlstm_chunk(q, k, v, log_i, log_f, cell, self.chunk_size, self.eps)
            else:
                h, cell = mlstm_recurrent(q, k, v, log_i, log_f, cell, self.eps)
            y = self._gate(h.transpose(1, 2), x_c, z)  # h: [B, T, H, head_dim]
        return self.down_proj(y.to(x.dtype)), MLSTMState(conv_state, *cell)

    def _step(self, x_t: torch.Tensor, state: MLSTMState) -> tuple[torch.Tensor, MLSTMState]:
        x_m, z = self.up_proj(x_t).chunk(2, dim=-1)  # [B, inner] each
        x_c, conv_state = self.conv.step(x_m, state.conv)
        x_c = F.silu(x_c)
        q, k, v, log_i, log_f = self._cell_inputs(x_m, x_c, state.C.dtype)
        with full_precision(x_t):
            h, cell = mlstm_step(q, k, v, log_i, log_f, MLSTMCellState(state.C, state.n, state.m), self.eps)
            y = self._gate(h, x_c, z)
        return self.down_proj(y.to(x_t.dtype)), MLSTMState(conv_state, *cell)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> MLSTMState:
        kw = self._state_factory(device, dtype)
        H, Dh = self.n_heads, self.head_dim
        return MLSTMState(
            conv=torch.zeros(batch_size, self.inner, self.d_conv - 1, **kw),
            C=torch.zeros(batch_size, H, Dh, Dh, **kw),
            n=torch.zeros(batch_size, H, Dh, **kw),
            m=torch.zeros(batch_size, H, **kw),
        )

    def state_size(self, context_len: int) -> int:
        H, Dh = self.n_heads, self.head_dim
        return self.inner * (self.d_conv - 1) + H * Dh * Dh + H * Dh + H

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, inner={self.inner}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"d_conv={self.d_conv}, qkv_block_size={self.qkv_block_size}, chunk_size={self.chunk_size}, "
            f"forget_gate={self.forget_gate!r}"
        )
