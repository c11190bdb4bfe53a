"""Gated RMSNorm, ``RMSNorm(y * SiLU(z)) * weight`` over the last dimension, with a hand-written backward.

Mamba-2's output norm (``norm_before_gate=False`` in ``mamba_ssm``). ``F.rms_norm`` runs a fused forward on
the CPU, but its backward is a composite of about a dozen element-wise passes over the activation; with the
gate in front that made the norm cost more than Mamba-2's output projection. Written out, with
``g = y * SiLU(z)``, ``r = (mean(g^2) + eps)^-1/2`` and ``n = g r``::

    out = n * weight
    dn  = dout * weight
    dg  = r * (dn - n * mean(dn * n))          # the RMSNorm backward
    dy  = dg * SiLU(z),   dz = dg * y * SiLU'(z),   dweight = sum(dout * n)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["gated_rms_norm"]


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, eps):
        s = F.silu(z)  # [..., D]
        g = y * s
        r = torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)  # [..., 1]
        n = g.mul_(r)  # [..., D], normalised (g is not needed any more)
        ctx.save_for_backward(y, z, s, n, r, weight)
        return n * weight

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        y, z, s, n, r, weight = ctx.saved_tensors
        dweight = (dout * n).reshape(-1, n.shape[-1]).sum(0)  # [D]
        dn = dout * weight  # [..., D]
        dg = torch.addcmul(dn, n, (dn * n).mean(-1, keepdim=True), value=-1.0).mul_(r)
        dy = dg * s
        dz = torch.ops.aten.silu_backward(dg.mul_(y), z)
        return dy, dz, dweight, None


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm(y * SiLU(z)) * weight`` over the last dimension; ``y, z: [..., D]``, ``weight: [D]``.

    Runs in ``y``'s dtype (``z`` and ``weight`` are cast to it); autocast leaves it alone.
    """
    return _GatedRMSNorm.apply(y, z.to(y.dtype), weight.to(y.dtype), eps)
