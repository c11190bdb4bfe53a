"""The SwiGLU feed-forward layer (Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202).

    MLP(x) = W_out (silu(W_gate x) * (W_up x))

without biases. Hidden width: ``d_hidden = round(mlp_ratio * 2/3 * d_model)`` -- the 2/3 keeps the
parameter count of a plain ``mlp_ratio``-wide two-matrix MLP despite the third matrix (the rule the
paper and LLaMA use), so ``mlp_ratio=4`` gives ``8/3 d_model``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options

__all__ = ["SwiGLU", "swiglu_hidden"]


def swiglu_hidden(d_model: int, mlp_ratio: float) -> int:
    """Hidden width of the SwiGLU layer: ``round(mlp_ratio * 2/3 * d_model)``, at least 1."""
    return max(1, round(mlp_ratio * 2 / 3 * d_model))


class SwiGLU(nn.Module):
    """Gated feed-forward layer ``W_out (silu(W_gate x) * W_up x)``.

    Args:
        d_model: input and output width.
        d_hidden: hidden width (see ``swiglu_hidden`` for the usual choice).
    """

    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        self.d_model = options.positive_int("d_model", d_model)
        self.d_hidden = options.positive_int("d_hidden", d_hidden)
        # gate and up projections in one matrix: one GEMM instead of two
        self.w_in = nn.Linear(d_model, 2 * d_hidden, bias=False)
        self.w_out = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)  # [..., d_hidden] each
        return self.w_out(F.silu(gate) * up)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}"
