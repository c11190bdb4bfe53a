"""The gated convolutional layer of GCNN (Dauphin, Fan, Auli & Grangier 2017, "Language Modeling with
Gated Convolutional Networks", arXiv:1612.08083) as a token mixer:

    y = (X * W + b) (x) sigmoid(X * V + c)        causal convolution of width kernel_size over time,
                                                  full channel mixing, gated linear unit (GLU)

Its state is the window of the last ``kernel_size - 1`` inputs: a fixed-size, exact "recurrence". The
paper stacks such layers in residual (bottleneck) blocks; that composition belongs to the model.

Initialisation: Kaiming (He et al. 2015) as the paper states, ``N(0, 2 / (D k))`` for both halves of
the weight (fan-in ``D k``); zero biases.

Modes: ``"conv"`` (one ``F.conv1d``) and ``"recurrent"`` (the reference loop); see
``seqmix.ops.gated_conv``. State: ``[B, d_model, kernel_size - 1]``, the last inputs, oldest first.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.ops.gated_conv import gated_conv_parallel, gated_conv_recurrent, gated_conv_step

__all__ = ["GatedConv"]


class GatedConv(Mixer):
    """Gated causal convolution (GLU) mixer.

    Args:
        d_model: input and output width.
        kernel_size: width k of the causal convolution (the tokens each output reads, itself included).
        bias: the biases ``b`` and ``c``.
    """

    modes = ("conv", "recurrent")
    min_state_dtype = None  # the window stores inputs; it accumulates nothing

    def __init__(self, d_model: int, kernel_size: int = 4, bias: bool = True) -> None:
        super().__init__(d_model)
        self.kernel_size = options.positive_int("kernel_size", kernel_size, "1 means no mixing over time")
        bias = options.boolean("bias", bias)
        self.weight = nn.Parameter(torch.empty(2 * d_model, d_model, self.kernel_size))  # [2D, D, k]: W then V
        self.bias = nn.Parameter(torch.empty(2 * d_model)) if bias else None  # [2D]: b then c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_in")  # std sqrt(2 / (D k))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        form = gated_conv_parallel if mode == "conv" else gated_conv_recurrent
        y, window = form(x, self.weight, self.bias, state.to(x.dtype))
        return y, window.to(state.dtype)  # the state keeps its dtype (the window may be more precise)

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_t, window = gated_conv_step(x_t, self.weight, self.bias, state.to(x_t.dtype))
        return y_t, window.to(state.dtype)

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_model, self.kernel_size - 1, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.d_model * (self.kernel_size - 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}"
