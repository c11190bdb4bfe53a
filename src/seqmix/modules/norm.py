"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467).

    y = x / sqrt(mean(x^2 over the last dim) + eps) * g

with a learned gain ``g`` (initialised to 1) and no bias or mean subtraction. The statistic is
computed in at least float32, so a bfloat16 residual stream still gets an accurate scale; the
output takes the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension with a learned gain.

    Args:
        d_model: size of the normalised (last) dimension.
        eps: added to the mean square before the square root.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.d_model = options.positive_int("d_model", d_model)
        self.eps = options.number("eps", eps, minimum=0, strict=True)
        self.weight = nn.Parameter(torch.ones(d_model))  # [D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = F.rms_norm(x.to(dtype), (self.d_model,), self.weight.to(dtype), self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps:g}"
