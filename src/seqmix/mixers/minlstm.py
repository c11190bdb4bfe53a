"""minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?",
arXiv:2410.01201, Section 3.2), as a token mixer:

    f_t  = sigmoid(Linear_dh(x_t))            forget gate, input-only (no h_{t-1} in the gates)
    i_t  = sigmoid(Linear_dh(x_t))            input gate
    h~_t = Linear_dh(x_t)                     candidate, no tanh
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)     normalised gates: time-independent scale
    h_t  = f'_t * h_{t-1} + i'_t * h~_t       a diagonal linear recurrence
    y_t  = Linear_d(h_t)                      back to d_model

The normalised gates are computed in log space, never as a ratio: with ``log f = -softplus(-u_f)``
and ``log i = -softplus(-u_i)``, ``f' = sigmoid(log f - log i)``, so ``log f' = -softplus(log i - log f)``
and ``i' = 1 - f' = sigmoid(log i - log f)``. The recurrence runs through ``ops/scan.py`` with
``log f'`` as the log-decay. As for minGRU (``mixers/mingru.py``), the paper's ``g(.)`` on ``h~`` only
serves its logcumsumexp scan, which needs positive values; our scan keeps values in linear space, so
``h~`` is the plain linear map above.

Width ``d_h = expansion * d_model`` (default 1.5, as our minGRU; an assumption, the paper does not
prescribe one for language modelling). Layers use PyTorch's default Linear init: the paper prescribes
no special one.

``negative_eigenvalues=True`` (Grazzi et al. 2024, arXiv:2411.12537: map a decay in [0, 1] to
``2 a - 1``) uses the transition ``2 f'_t - 1`` in (-1, 1); the input term ``i'_t h~_t`` is unchanged.
"""

from __future__ import annotations

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

__all__ = ["MinLSTM"]


class MinLSTM(Mixer):
    """minLSTM mixer; modes ``"scan"`` (chunked Blelloch scan) and ``"recurrent"`` (the reference loop).

    State: ``h: [B, d_hidden]`` with ``d_hidden = round(expansion * d_model)``.
    """

    modes = ("scan", "recurrent")

    def __init__(
        self,
        d_model: int,
        expansion: float = 1.5,
        chunk_size: int = 64,
        bias: bool = True,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        expansion = options.number(
            "expansion", expansion, minimum=0, strict=True, hint="d_hidden = expansion * d_model"
        )
        bias = options.boolean("bias", bias)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        d_hidden = round(expansion * d_model)
        if d_hidden < 1:
            raise ValueError(
                f"expansion={expansion} with d_model={d_model} leaves no hidden unit; use a larger expansion"
            )
        self.chunk_size = check_chunk_size(chunk_size)
        self.expansion = expansion
        self.d_hidden = d_hidden
        # forget gate, input gate and candidate in one GEMM: [.., 3 * d_hidden]
        self.in_proj = nn.Linear(d_model, 3 * d_hidden, bias=bias)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=bias)

    def _gates(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log f' or 2 f' - 1, i' * h~)`` for ``x: [..., d_model]``, each ``[..., d_hidden]`` in ``dtype``."""
        u_f, u_i, h_tilde = (t.to(dtype) for t in self.in_proj(x).chunk(3, dim=-1))
        with full_precision(u_f):
            diff = F.softplus(-u_f) - F.softplus(-u_i)  # log i - log f
            log_f = -F.softplus(diff)  # log f' = log sigmoid(log f - log i)
            b = torch.sigmoid(diff) * h_tilde  # i' h~ with i' = sigmoid(log i - log f)
            if self.negative_eigenvalues:
                return 2.0 * torch.exp(log_f) - 1.0, b
        return log_f, b

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        # the recurrence accumulates in the state's dtype (float32 under bf16 autocast)
        decay, b = self._gates(x, state.dtype)  # [B, T, d_hidden] each
        neg = self.negative_eigenvalues
        with full_precision(x):
            if mode == "scan":
                h, h_last = (linear_scan_chunked if neg else scan_chunked)(decay, b, state, self.chunk_size)
            else:
                h, h_last = (linear_scan_recurrent if neg else scan_recurrent)(decay, b, state)
        return self.out_proj(h.to(x.dtype)), h_last

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decay, b = self._gates(x_t, state.dtype)  # [B, d_hidden] each
        with full_precision(x_t):
            h = (linear_scan_step if self.negative_eigenvalues else scan_step)(decay, b, state)
        return self.out_proj(h.to(x_t.dtype)), h

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.d_hidden

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_hidden={self.d_hidden}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
