"""HGRN (Qin, Yang & Zhong 2023, "Hierarchically Gated Recurrent Neural Network for Sequence Modeling",
NeurIPS 2023, arXiv:2311.04823), the HGRU token mixer of layer ``k`` of ``n_layers``:

    mu_t    = sigmoid(W_f x_t)                        the data-dependent forget gate
    lam_t   = gamma_k + (1 - gamma_k) * mu_t          forget gate with the layer's lower bound gamma_k
    c_t     = SiLU(W_i x_t)                           the input
    h_t     = lam_t * h_{t-1} + (1 - lam_t) * c_t     input and forget gates tied
    o_t     = RMSNorm(h_t) * SiLU(W_g x_t)            output gate
    y_t     = W_o o_t

``log lam_t = logaddexp(log gamma_k, log(1 - gamma_k) + log sigmoid(W_f x_t))`` stays in log space and
the recurrence runs through the chunked scan of ``ops/scan.py``.

Where we follow the public code rather than the paper, and why:
- Real-valued recurrence. The paper's HGRU is complex, ``h_t = lam_t exp(i theta) h_{t-1} + ...`` with
  a learned, data-independent phase ``theta``, and reads out ``[Re h, Im h]``. The HGRN implementation in
  flash-linear-attention (``fla.layers.hgrn``, co-authored by the paper's second author), which the
  later HGRN literature compares against, is real-valued with the gated RMSNorm output above; we
  implement that version (its recurrence is checked against fla's reference op in ``tests/peers``).
- The lower bound. The paper learns ``Gamma`` in ``R^{n_layers x d}`` shared by all layers and sets
  ``gamma = cumsum(softmax(Gamma, dim=0))`` shifted so that the first layer's bound is 0. A mixer sees
  only its own layer, so we use that construction at its initialisation (``Gamma = 0``, as in fla): a
  fixed ``gamma_k = layer_idx / n_layers`` for every channel, which grows monotonically with depth as
  the paper requires. It is a constant, not a parameter.
- Projections without bias and PyTorch's default init; ``expand_ratio`` widens the recurrence (fla's
  default 1).

``negative_eigenvalues=True`` (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues", arXiv:2411.12537: map a decay in [0, 1] to ``2 a - 1``) uses the transition
``2 lam_t - 1``, in ``[2 gamma_k - 1, 1)``; the input keeps its weight ``(1 - lam_t)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.ops.scan import (
    check_chunk_size,
    linear_scan_chunked,
    linear_scan_recurrent,
    linear_scan_step,
    scan_chunked,
    scan_recurrent,
    scan_step,
)

__all__ = ["HGRN"]


class HGRN(Mixer):
    """HGRN (HGRU) mixer; modes ``"scan"`` (chunked Blelloch scan) and ``"recurrent"`` (the reference loop).

    State: ``h: [B, d_inner]`` with ``d_inner = expand_ratio * d_model``.
    """

    modes = ("scan", "recurrent")

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_layers: int = 1,
        expand_ratio: int = 1,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        layer_idx, self.n_layers = options.layer_position(layer_idx, n_layers)
        self.layer_idx = layer_idx
        self.expand_ratio = options.positive_int("expand_ratio", expand_ratio, "d_inner = expand_ratio * d_model")
        self.norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        self.chunk_size = check_chunk_size(chunk_size)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        self.d_inner = d_inner = self.expand_ratio * d_model
        #: the forget-gate lower bound gamma_k of this layer (see the module docstring)
        self.lower_bound = layer_idx / self.n_layers

        self.in_proj = nn.Linear(d_model, 3 * d_inner, bias=False)  # [.., 3 d_inner]: input, forget, output gate
        self.norm_weight = nn.Parameter(torch.ones(d_inner))  # [d_inner], the RMSNorm gain
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _recurrence_inputs(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(transition, input, output gate)`` for ``x: [..., d_model]``; the first two in ``dtype``.

        The transition is ``log lam_t`` (or ``2 lam_t - 1`` with negative eigenvalues)."""
        i, f, g = self.in_proj(x).chunk(3, dim=-1)
        i, f = i.to(dtype), f.to(dtype)
        with full_precision(i):
            log_lam = F.logsigmoid(f)  # [..., d_inner]
            gamma = self.lower_bound
            if gamma > 0:
                log_lam = torch.logaddexp(torch.full_like(log_lam, math.log(gamma)), math.log1p(-gamma) + log_lam)
            b = F.silu(i) * -torch.expm1(log_lam)  # (1 - lam_t) c_t
            decay = 2.0 * torch.exp(log_lam) - 1.0 if self.negative_eigenvalues else log_lam
        return decay, b, g

    def _output(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``W_o (RMSNorm(h) * SiLU(g))``; the norm in the state's precision, the rest in ``g``'s dtype."""
        with full_precision(h):
            h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.norm_eps) * self.norm_weight.to(h.dtype)
        return self.out_proj(h.to(g.dtype) * F.silu(g))

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        decay, b, g = self._recurrence_inputs(x, state.dtype)  # [B, T, d_inner] each
        neg = self.negative_eigenvalues
        with full_precision(x):
            if mode == "scan":
                h, h_last = (linear_scan_chunked if neg else scan_chunked)(decay, b, state, self.chunk_size)
            else:
                h, h_last = (linear_scan_recurrent if neg else scan_recurrent)(decay, b, state)
        return self._output(h, g), h_last

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decay, b, g = self._recurrence_inputs(x_t, state.dtype)  # [B, d_inner] each
        with full_precision(x_t):
            h = (linear_scan_step if self.negative_eigenvalues else scan_step)(decay, b, state)
        return self._output(h, g), h

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_inner, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.d_inner

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, layer_idx={self.layer_idx}, n_layers={self.n_layers}, "
            f"lower_bound={self.lower_bound:g}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
