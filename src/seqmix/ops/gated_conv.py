"""Gated causal convolution with a gated linear unit (Dauphin, Fan, Auli & Grangier 2017, "Language
Modeling with Gated Convolutional Networks", arXiv:1612.08083, Eq. 1)::

    h = (X * W + b) (x) sigmoid(X * V + c)

``*`` a causal convolution over time of kernel width ``k`` mixing all channels: output ``t`` reads the
inputs ``t-k+1 .. t`` (the paper zero-pads the start by ``k - 1``). ``W`` and ``V`` are stacked into one
weight ``[2 D_out, D_in, k]`` (value half first, gate half second) and ``b, c`` into one bias
``[2 D_out]``, the ``F.conv1d`` layout.

All forms share one signature::

    gated_conv_<form>(x, weight, bias, initial_state) -> (h [B, T, D_out], window [B, D_in, k-1])

with ``x: [B, T, D_in]`` and ``initial_state`` the ``k - 1`` inputs before ``x`` (oldest first; zeros
for the paper's padding). The returned state is the last ``k - 1`` inputs.

- ``gated_conv_recurrent``: the spec, a loop over ``gated_conv_step`` (one window dot product per token).
- ``gated_conv_parallel``: one ``F.conv1d`` over the concatenation of the state and the input.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["gated_conv_step", "gated_conv_recurrent", "gated_conv_parallel"]


def _glu(pre: torch.Tensor, dim: int) -> torch.Tensor:
    value, gate = pre.chunk(2, dim=dim)
    return value * torch.sigmoid(gate)


def gated_conv_step(
    x_t: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token ``x_t: [B, D_in]`` with the window ``state: [B, D_in, k-1]`` -> ``(h_t [B, D_out], state)``."""
    window = torch.cat((state, x_t.unsqueeze(-1)), dim=-1)  # [B, D_in, k]
    pre = torch.einsum("bik,oik->bo", window, weight)  # [B, 2 D_out]
    if bias is not None:
        pre = pre + bias
    return _glu(pre, dim=-1), window[:, :, 1:]


def gated_conv_recurrent(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: a Python loop over ``gated_conv_step``."""
    state = initial_state
    hs = []
    for x_t in x.unbind(1):
        h_t, state = gated_conv_step(x_t, weight, bias, state)
        hs.append(h_t)
    return torch.stack(hs, dim=1), state  # [B, T, D_out]


def gated_conv_parallel(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast form: ``F.conv1d`` over ``[state, x]``; returns a copy of the last ``k - 1`` inputs as state."""
    window = torch.cat((initial_state, x.transpose(1, 2)), dim=-1)  # [B, D_in, k-1+T]
    pre = F.conv1d(window, weight, bias)  # [B, 2 D_out, T]
    h = _glu(pre, dim=1).transpose(1, 2)  # [B, T, D_out]
    keep = initial_state.shape[-1]
    return h, window[:, :, window.shape[-1] - keep :].clone()
