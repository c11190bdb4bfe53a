"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?",
arXiv:2410.01201), as a token mixer:

    z_t  = sigmoid(Linear_dh(x_t))            update gate, input-only (no h_{t-1} in the gate)
    h~_t = Linear_dh(x_t)                     candidate, no tanh
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t   a diagonal linear recurrence
    y_t  = Linear_d(h_t)                      back to d_model

The decay ``1 - z_t`` is kept in log space, ``log(1 - sigmoid(u)) = -softplus(u)``, and the
recurrence runs through ``ops/scan.py``. The paper's log-space variant also passes ``h~`` through
``g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0)`` only so that its logcumsumexp scan can take the log
of the values; our scan keeps values in linear space, so ``h~`` stays the plain linear map above.

Width: the paper writes ``d_h = alpha * d_x`` with an expansion factor ``alpha``. We default to
``expansion=1.5``, the value common minGRU language-model setups use (an assumption: we could not
confirm the paper's own per-task setting). Layers use PyTorch's default Linear init: the paper
prescribes no special one.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.ops.scan import check_chunk_size, scan_chunked, scan_recurrent, scan_step

__all__ = ["MinGRU"]


class MinGRU(Mixer):
    """minGRU mixer; modes ``"scan"`` (chunked Blelloch scan) and ``"recurrent"`` (the reference loop).

    State: ``h: [B, d_hidden]`` with ``d_hidden = round(expansion * d_model)``.
    """

    modes = ("scan", "recurrent")

    def __init__(self, d_model: int, expansion: float = 1.5, chunk_size: int = 64, bias: bool = True) -> None:
        super().__init__(d_model)
        expansion = options.number("expansion", expansion, minimum=0, strict=True, hint="d_hidden = expansion * d_model")
        bias = options.boolean("bias", bias)
        d_hidden = round(expansion * d_model)
        if d_hidden < 1:
            raise ValueError(
                f"expansion={expansion} with d_model={d_model} leaves no hidden unit; use a larger expansion"
            )
        self.chunk_size = check_chunk_size(chunk_size)
        self.expansion = expansion
        self.d_hidden = d_hidden
        # gate pre-activation and candidate in one GEMM: [.., 2 * d_hidden]
        self.in_proj = nn.Linear(d_model, 2 * d_hidden, bias=bias)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=bias)

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log(1 - z), z * h~)`` for ``x: [..., d_model]``, each ``[..., d_hidden]``."""
        u, h_tilde = self.in_proj(x).chunk(2, dim=-1)
        return -F.softplus(u), torch.sigmoid(u) * h_tilde

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        # the recurrence accumulates in the state's dtype (float32 under bf16 autocast)
        log_a, b = (t.to(state.dtype) for t in self._gates(x))  # [B, T, d_hidden] each
        if mode == "scan":
            h, h_last = scan_chunked(log_a, b, state, self.chunk_size)
        else:
            h, h_last = scan_recurrent(log_a, b, state)
        return self.out_proj(h.to(x.dtype)), h_last

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, b = (t.to(state.dtype) for t in self._gates(x_t))  # [B, d_hidden] each
        h = scan_step(log_a, b, state)
        return self.out_proj(h.to(x_t.dtype)), h

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.d_hidden

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}, chunk_size={self.chunk_size}"
