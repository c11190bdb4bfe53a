"""Rotary position embeddings (Su et al. 2021, RoFormer) as plain functions.

The last dimension ``K`` (even) is split into halves ``(x1, x2)``; pair ``i`` is the complex number
``x1[i] + j*x2[i]`` and is rotated by ``angles[..., i]``. Rotating queries by ``n*theta`` and keys by
``m*theta`` makes their dot product depend only on ``n - m``.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

__all__ = ["rotary_inv_freq", "rotate_pairs", "apply_rotary"]


def rotary_inv_freq(
    head_dim: int, base: float = 10000.0, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Angular frequencies ``theta_i = base^(-2i/K)`` for ``i < K/2``; returns ``[K // 2]``.

    Cached per arguments (a decoding step asks for them every token); treat the result as read-only.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    device = torch.device(device) if device is not None else None
    if torch.compiler.is_compiling():  # the compiler traces through caches; it folds the constant itself
        return _inv_freq.__wrapped__(head_dim, float(base), device, dtype or torch.get_default_dtype())
    return _inv_freq(head_dim, float(base), device, dtype or torch.get_default_dtype())


@functools.lru_cache(maxsize=64)
def _inv_freq(head_dim: int, base: float, device: Optional[torch.device], dtype: torch.dtype) -> torch.Tensor:
    # Built outside inference mode, so that a cache filled while decoding under torch.inference_mode()
    # still serves training; computed in float64 on the CPU (not every accelerator has float64), then moved.
    with torch.inference_mode(False), torch.no_grad():
        exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        return (base**-exponent).to(device=device, dtype=dtype)


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the half-split pairs of ``x: [..., K]`` by ``angles: [..., K/2]`` (broadcast).

    cos and sin are taken in the angles' dtype and only then cast to ``x``'s: an angle of a few
    thousand radians in bfloat16 is off by several radians, its cosine meaningless.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: [B, H, T, K]`` for ``positions: [T]`` (any real numbers) with ``inv_freq: [K/2]``.

    Angles are formed in at least float32 whatever the dtypes of ``x`` and ``inv_freq``.
    """
    angle_dtype = torch.promote_types(inv_freq.dtype, torch.float32)
    angles = positions.to(angle_dtype)[:, None] * inv_freq.to(angle_dtype)[None, :]  # [T, K/2]
    return rotate_pairs(x, angles)
