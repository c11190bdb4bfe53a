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
from seqmix.ops.short_conv import causal_conv_silu

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
    def _blockdiag(
        self, x: torch.Tensor, maps: tuple[tuple[torch.Tensor, int, float], ...], heads_first: bool
    ) -> list[torch.Tensor]:
        """Block-diagonal projections of ``x: [..., inner]`` (the package's LinearHeadwiseExpand).

        ``maps``: ``(weight [n_blocks, bs, bs], bias row, scale)`` per output; all read ``x``. The ``bs x bs``
        blocks are laid into dense diagonal tiles of up to 32 channels (zeros between the blocks of a tile)
        and every map's tiles are stacked, so one batched matmul over the tiles makes all outputs: on a CPU
        several times faster (forward and backward) than a matmul batched over the many tiny blocks. Outputs
        are ``[..., H, head_dim]``, or with ``heads_first`` (``x: [B, T, inner]``) ``[B, H, T, head_dim]``
        made straight from the tiles when they do not straddle heads (one copy instead of two).
        """
        n_blocks, bs, _ = maps[0][0].shape
        H, Dh = self.n_heads, self.head_dim
        aligned = Dh % bs == 0  # tiles can be kept inside heads
        per = next(
            p for p in range(max(1, 32 // bs), 0, -1) if n_blocks % p == 0 and (not aligned or Dh % (p * bs) == 0)
        )  # blocks per tile
        E, n_tiles = per * bs, n_blocks // per
        # the weights follow x's dtype: under autocast x is already in low precision
        eye = torch.eye(per, dtype=x.dtype, device=x.device)[None, :, None, :, None]  # [1, per, 1, per, 1]
        tiles = [(w.to(x.dtype).view(n_tiles, per, bs, 1, bs) * (eye * s)).reshape(n_tiles, E, E) for w, _, s in maps]
        tiles = torch.cat(tiles, dim=1)  # [tiles, maps * E out, E in], block-diagonal, scaled
        xt = x.reshape(-1, n_tiles, E).transpose(0, 1)  # [tiles, N, E]
        y = torch.bmm(xt, tiles.transpose(1, 2))  # [tiles, N, maps * E]
        outs = []
        for yi, (_, which, scale) in zip(y.split(E, dim=-1), maps):  # [tiles, N, E] each (split: one cat in backward)
            if self.qkv_bias is not None:
                yi = yi + (self.qkv_bias[which] * scale).to(y.dtype).view(n_tiles, 1, E)
            if heads_first and aligned:
                B, T = x.shape[:2]
                outs.append(yi.view(H, Dh // E, B, T, E).permute(2, 0, 3, 1, 4).reshape(B, H, T, Dh))
            else:
                out = yi.transpose(0, 1).reshape(*x.shape[:-1], H, Dh)  # [..., H, Dh]
                outs.append(out.transpose(1, 2) if heads_first else out)
        return outs

    def _cell_inputs(self, x_m: torch.Tensor, x_c: torch.Tensor, dtype: torch.dtype, heads_first: bool = False):
        """q, k (scaled), v ``[..., H, head_dim]`` and ``log_i, log_f: [..., H]`` in ``dtype``; with
        ``heads_first`` (``x: [B, T, inner]``) ``[B, H, T, head_dim]`` and ``[B, H, T]``."""
        # keys scaled by 1/sqrt(head_dim) through their weight
        q, k = self._blockdiag(x_c, ((self.q_weight, 0, 1.0), (self.k_weight, 1, self.head_dim**-0.5)), heads_first)
        (v,) = self._blockdiag(x_m, ((self.v_weight, 2, 1.0),), heads_first)
        # both gates read the unscaled [q, k, v], block-diagonal maps of [x_c, x_c, x_m]: folded into the gate
        # weights (tiny [2H, inner] products), the gates are two thin projections instead of three
        w = torch.cat((self.igate.weight, self.fgate.weight)).split(self.inner, dim=-1)  # 3 x [2H, inner]
        w_c = _fold(w[0], self.q_weight) + _fold(w[1], self.k_weight)  # [2H, inner], reads x_c
        bias = torch.cat((self.igate.bias, self.fgate.bias))  # [2H]
        if self.qkv_bias is not None:
            bias = bias + sum(wi @ b for wi, b in zip(w, self.qkv_bias))
        gates = F.linear(x_c, w_c, bias) + F.linear(x_m, _fold(w[2], self.v_weight))  # [..., 2H]
        log_i, f = gates.to(dtype).chunk(2, dim=-1)  # [..., H] each
        log_f = F.logsigmoid(f) if self.forget_gate == "sigmoid" else f
        if heads_first:
            log_i, log_f = log_i.transpose(1, 2), log_f.transpose(1, 2)  # [B, H, T]
        return q.to(dtype), k.to(dtype), v.to(dtype), log_i, log_f

    def _gate(self, h: torch.Tensor, x_c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``h: [..., H, head_dim]`` -> per-head norm, learnable skip and output gate: ``[..., inner]``."""
        # layer_norm per head, not group_norm over [N, inner]: the latter's CPU backward measured 3x slower
        h = F.layer_norm(h, (self.head_dim,), eps=self.norm_eps).flatten(-2) * self.norm_weight.to(h.dtype)
        h = torch.addcmul(h, x_c.to(h.dtype), self.skip.to(h.dtype))  # + skip * x_c
        return h * F.silu(z.to(h.dtype))

    # ------------------------------------------------------------------ contract
    def _piece_width(self) -> int:
        return self.up_proj.out_features  # measured: pieces pay on a CPU (Mixer._piece_len)

    def _forward(self, x: torch.Tensor, state: MLSTMState, mode: str) -> tuple[torch.Tensor, MLSTMState]:
        x_m, z = self.up_proj(x).chunk(2, dim=-1)  # [B, T, inner] each
        # conv + SiLU as one op with a hand-written backward, [B, T, C] throughout (measured faster)
        x_c, conv_state = causal_conv_silu(x_m, state.conv, self.conv.weight, self.conv.bias)
        q, k, v, log_i, log_f = self._cell_inputs(x_m, x_c, state.C.dtype, heads_first=True)  # [B, H, T, ...]
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


def _fold(w: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``w @ blockdiag(blocks)``: ``w: [M, n_blocks * bs]``, ``blocks: [n_blocks, bs out, bs in]`` -> ``[M, inner]``."""
    return torch.einsum("mgo,goi->mgi", w.unflatten(-1, (blocks.shape[0], -1)), blocks).flatten(-2)
