"""DeltaNet: linear attention whose fast weights follow the delta rule, as a token mixer.

Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers",
arXiv:2102.11174; layer and chunkwise training from Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length", arXiv:2406.06484 (Section 3.3: SiLU
feature map then L2 normalisation of q and k, short convolutions, beta = sigmoid(W_beta x))::

    q, k, v = SiLU(causal depthwise conv([W_q x, W_k x, W_v x]))      kernel d_conv, no bias
    q = q / ||q|| * head_dim^-1/2,  k = k / ||k||                     per head (||x|| = sqrt(sum x^2 + 1e-6))
    beta    = sigmoid(W_beta x)                                       one per head and token
    S_t     = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      (seqmix.ops.delta)
    o_t     = S_t^T q_t
    y       = W_o RMSNorm_head(o)                                     RMSNorm per head, shared weight

This is the layer of the authors' ``flash-linear-attention`` (``DeltaNet`` with its defaults
``qk_activation="silu"``, ``qk_norm="l2"``, ``use_gate=False``, ``conv_bias=False``, ``norm_eps=1e-5``);
the three short convolutions run as one depthwise conv over the concatenated channels, the same
function. Heads of about 128 channels by default (the library's DeltaNet config: 2048 wide, 16 heads).
Projections keep PyTorch's default initialisation.

``negative_eigenvalues=True`` (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues", arXiv:2411.12537) uses ``beta = 2 sigmoid(W_beta x) in (0, 2)``: the
transition's eigenvalue along ``k``, ``1 - beta``, then ranges over ``(-1, 1)`` instead of ``(0, 1)``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.conv import CausalConv1d
from seqmix.ops.delta import delta_chunk, delta_recurrent, delta_step

__all__ = ["DeltaNet", "DeltaNetState"]


class DeltaNetState(NamedTuple):
    """Streaming state of one DeltaNet layer."""

    conv: torch.Tensor  # [B, 3 * d_model, d_conv - 1], the last inputs of the q/k/v convs
    S: torch.Tensor  # [B, n_heads, head_dim, head_dim], the fast weights


def _l2_normalise(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * x / ||x||``; the scale goes into the per-row factor, not a pass over ``x``."""
    return x * (torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6) * scale)


class DeltaNet(Mixer):
    """DeltaNet mixer; modes ``"chunk"`` (UT-transform chunkwise form) and ``"recurrent"`` (the loop).

    Args:
        d_model: model width (also the key and value width).
        n_heads: heads; None: heads of about 128 channels.
        d_conv: kernel of the short convs on q, k, v (1: a per-channel scale, no mixing over time).
        chunk_size: chunk length of the ``"chunk"`` form.
        negative_eigenvalues: beta in (0, 2) instead of (0, 1) (Grazzi et al. 2024).
        conv_bias: bias in the short convs (the reference has none).
        norm_eps: epsilon of the per-head output RMSNorm.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        d_conv: int = 4,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
        conv_bias: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(d_model)
        self.n_heads, self.head_dim = options.heads(d_model, n_heads, default_head_dim=128)
        self.d_conv = options.positive_int("d_conv", d_conv, "the short conv kernel size; 1 disables mixing")
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        conv_bias = options.boolean("conv_bias", conv_bias)
        self.norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)

        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)  # [W_q; W_k; W_v]
        self.conv = CausalConv1d(3 * d_model, self.d_conv, bias=conv_bias)
        self.b_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))  # [head_dim], shared by the heads
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    # ------------------------------------------------------------------ shared pieces
    def _inputs(self, qkv: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype):
        """From the conv output ``qkv: [..., 3 D]`` and the beta logits ``[..., H]``: q, k, v
        ``[..., H, head_dim]`` and beta ``[..., H]`` in ``dtype`` (normalised in that precision)."""
        heads = (self.n_heads, self.head_dim)
        q, k, v = (t.unflatten(-1, heads) for t in F.silu(qkv.to(dtype)).chunk(3, dim=-1))
        q = _l2_normalise(q, self.head_dim**-0.5)
        k = _l2_normalise(k)
        beta = torch.sigmoid(beta.to(dtype))  # [..., H]
        return q, k, v, 2.0 * beta if self.negative_eigenvalues else beta

    def _norm(self, o: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm of ``o: [..., H, head_dim]``, heads merged: ``[..., D]``."""
        return F.rms_norm(o, (self.head_dim,), self.norm_weight.to(o.dtype), self.norm_eps).flatten(-2)

    # ------------------------------------------------------------------ contract
    def _piece_width(self) -> int:
        # measured (B=4, d=256, T=4096, 2 threads): pieces of 640 tokens with the shifted conv ran fwd+bwd
        # in ~0.65 of the time of one pass with F.conv1d (Mixer._piece_len)
        return 2 * self.qkv_proj.out_features

    def _forward(self, x: torch.Tensor, state: DeltaNetState, mode: str) -> tuple[torch.Tensor, DeltaNetState]:
        # the conv as shifted multiply-adds: in pieces it measured faster than F.conv1d (see CausalConv1d)
        qkv, conv_state = self.conv.forward_shifted(self.qkv_proj(x), state.conv)
        beta_in = self.b_proj(x)  # projections run under autocast, outside full precision
        with full_precision(x):
            q, k, v, beta = (t.transpose(1, 2) for t in self._inputs(qkv, beta_in, state.S.dtype))
            if mode == "chunk":
                o, S = delta_chunk(q, k, v, beta, state.S, self.chunk_size)
            else:
                o, S = delta_recurrent(q, k, v, beta, state.S)
            o = self._norm(o.transpose(1, 2))  # [B, T, D]
        return self.o_proj(o.to(x.dtype)), DeltaNetState(conv_state, S)

    def _step(self, x_t: torch.Tensor, state: DeltaNetState) -> tuple[torch.Tensor, DeltaNetState]:
        qkv, conv_state = self.conv.step(self.qkv_proj(x_t), state.conv)
        beta_in = self.b_proj(x_t)
        with full_precision(x_t):
            q, k, v, beta = self._inputs(qkv, beta_in, state.S.dtype)
            o, S = delta_step(q, k, v, beta, state.S)
            o = self._norm(o)  # [B, D]
        return self.o_proj(o.to(x_t.dtype)), DeltaNetState(conv_state, S)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> DeltaNetState:
        kw = self._state_factory(device, dtype)
        return DeltaNetState(
            conv=torch.zeros(batch_size, 3 * self.d_model, self.d_conv - 1, **kw),
            S=torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, **kw),
        )

    def state_size(self, context_len: int) -> int:
        return 3 * self.d_model * (self.d_conv - 1) + self.n_heads * self.head_dim * self.head_dim

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, d_conv={self.d_conv}, "
            f"chunk_size={self.chunk_size}, negative_eigenvalues={self.negative_eigenvalues}"
        )
