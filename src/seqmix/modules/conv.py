"""Short causal depthwise convolution with a streaming state (the "short conv" of H3, Mamba, GLA...).

Output channel ``c`` at time ``t`` is ``bias[c] + sum_k weight[c, k] * x[t - (K-1) + k, c]``: a window of
the last ``K`` inputs of that channel, nothing from the future. The streaming state holds the last
``K - 1`` inputs, ``[B, channels, K-1]``, oldest first, so that a sequence cut anywhere and fed piece by
piece (or token by token through ``step``) gives the same outputs as the whole sequence at once.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options

__all__ = ["CausalConv1d"]


class CausalConv1d(nn.Module):
    """Depthwise causal conv1d over ``x: [B, T, channels]`` with kernel size ``kernel_size``.

    ``forward`` runs ``F.conv1d`` on the concatenation of the state and the input, so it is right for
    any ``T >= 1``, including ``T < kernel_size - 1``; ``step`` does the same window sum for one token.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True) -> None:
        super().__init__()
        channels = options.positive_int("channels", channels)
        kernel_size = options.positive_int("kernel_size", kernel_size, "1 means no mixing over time")
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # [C, 1, K], the F.conv1d layout
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default (what Mamba uses): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = K per group
        bound = 1.0 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        """Zero history: ``[batch_size, channels, kernel_size - 1]``."""
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        return torch.zeros(batch_size, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def _check_state(self, state: torch.Tensor, batch_size: int) -> None:
        expected = (batch_size, self.channels, self.kernel_size - 1)
        if tuple(state.shape) != expected:
            raise ValueError(f"conv_state must have shape {expected} ([B, channels, K-1]), got {tuple(state.shape)}")

    def forward(
        self, x: torch.Tensor, conv_state: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, T, channels]`` -> ``(y: [B, T, channels], new_state: [B, channels, K-1])``."""
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"x must have shape [B, T, {self.channels}], got {tuple(x.shape)}")
        B, T = x.shape[:2]
        if conv_state is None:
            conv_state = self.init_state(B, device=x.device, dtype=x.dtype)
        self._check_state(conv_state, B)
        # the window is in the input's dtype; the state keeps its own (it may be more precise)
        window = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=2)  # [B, C, K-1+T]
        y = F.conv1d(window, self.weight, self.bias, groups=self.channels)  # [B, C, T]
        # [B, C, K-1], the last K-1 inputs; a copy, so the state does not keep the whole window alive
        new_state = window[:, :, window.shape[2] - (self.kernel_size - 1) :].to(conv_state.dtype, copy=True)
        return y.transpose(1, 2), new_state

    def forward_shifted(
        self, x: torch.Tensor, conv_state: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s function as K shifted multiply-adds in ``[B, T, channels]``, channels innermost.

        ``forward`` runs ``F.conv1d`` on ``[B, C, T]``: two transposed copies and an output whose
        transposed layout slows the element-wise ops after it. On a CPU this form measured about half the
        fwd+bwd time of conv + SiLU inside Mamba's 1024-token pieces (B=4, C=512), but slower than
        ``forward`` on one whole [4, 4096, 768] sequence, so a mixer picks the form it measured.
        """
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"x must have shape [B, T, {self.channels}], got {tuple(x.shape)}")
        B, T = x.shape[:2]
        K = self.kernel_size
        if conv_state is None:
            conv_state = self.init_state(B, device=x.device, dtype=x.dtype)
        self._check_state(conv_state, B)
        # [B, K-1+T, C], the last K-1 inputs first, in the input's dtype
        window = torch.cat([conv_state.to(x.dtype).transpose(1, 2), x], dim=1)
        w = self.weight[:, 0, :]  # [C, K]
        y = window[:, :T] * w[:, 0] if self.bias is None else torch.addcmul(self.bias, window[:, :T], w[:, 0])
        for k in range(1, K):
            y = y.addcmul(window[:, k : k + T], w[:, k])  # [B, T, C]
        # [B, C, K-1], a copy, so the state does not keep the window alive
        new_state = window[:, window.shape[1] - (K - 1) :].transpose(1, 2).to(conv_state.dtype, copy=True)
        return y, new_state

    def step(self, x_t: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token ``x_t: [B, channels]`` -> ``(y_t: [B, channels], new_state)``."""
        if x_t.ndim != 2 or x_t.shape[-1] != self.channels:
            raise ValueError(f"x_t must have shape [B, {self.channels}], got {tuple(x_t.shape)}")
        self._check_state(conv_state, x_t.shape[0])
        window = torch.cat([conv_state.to(x_t.dtype), x_t.unsqueeze(2)], dim=2)  # [B, C, K]
        y_t = (window * self.weight[:, 0, :]).sum(dim=2)  # [B, C]
        if self.bias is not None:
            y_t = y_t + self.bias
        return y_t.to(x_t.dtype), window[:, :, 1:].to(conv_state.dtype, copy=True)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
