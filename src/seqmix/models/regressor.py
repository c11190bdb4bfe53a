"""Vectors in, vectors out: a stack of blocks over real-valued inputs, one prediction per position.

    h_0 = Dropout(W_in x + b_in)                      x: [B, T, d_in]
    h_l = Block_l(h_{l-1})                             any registered mixers, as in LanguageModel
    y = W_out RMSNorm(h_L) + b_out                     y: [B, T, d_out], float32

The model behind in-context regression (Garg et al. 2022, arXiv:2208.01066: the input token is a vector,
the output a scalar read at chosen positions) and time-series forecasting (a window of multivariate
observations in, the forecast read from the last position or from every position). It keeps the mixer
contract like ``LanguageModel``: ``forward(x, state)`` continues a sequence, ``step(x_t, state)``
consumes one position, and with causal mixers position t sees only x[:, :t+1].

Initialisation follows ``LanguageModel`` (GPT-2 style): the input projection is N(0, 0.02) like an
embedding, the head N(0, 0.02) with zero biases.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from seqmix.mixers.base import full_precision
from seqmix.models.config import RegressorConfig
from seqmix.models.language_model import INIT_STD, build_blocks, init_backbone_
from seqmix.models.pretrained import PretrainedMixin
from seqmix.modules.norm import RMSNorm

__all__ = ["SequenceRegressor"]


class SequenceRegressor(PretrainedMixin, nn.Module):
    """``x: [B, T, d_in]`` -> ``(y: [B, T, d_out], state)``; see the module docstring."""

    config_class = RegressorConfig
    format_name = "seqmix.SequenceRegressor"

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        if not isinstance(config, RegressorConfig):
            raise TypeError(f"SequenceRegressor takes a RegressorConfig, got {type(config).__name__}")
        self.config = config
        self.input = nn.Linear(config.d_in, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = build_blocks(config)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.d_out)
        init_backbone_(self.input, self.blocks)
        nn.init.zeros_(self.input.bias)
        nn.init.normal_(self.head.weight, std=INIT_STD)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """``x: [B, T, d_in]`` (float) -> ``(y: [B, T, d_out] float32, one mixer state per layer)``."""
        self._check_input(x, 3, "[batch, time, d_in]")
        h = self.dropout(self.input(x))  # [B, T, D]
        new_states = []
        for block, s in zip(self.blocks, self._states(state)):
            h, s = block(h, s)
            new_states.append(s)
        return self._head(h), new_states

    def step(self, x_t: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """One position per sequence ``x_t: [B, d_in]`` -> ``(y_t: [B, d_out] float32, new state)``."""
        self._check_input(x_t, 2, "[batch, d_in]")
        h = self.dropout(self.input(x_t))  # [B, D]
        new_states = []
        for block, s in zip(self.blocks, self._states(state)):
            h, s = block.step(h, s)
            new_states.append(s)
        return self._head(h), new_states

    def init_state(self, batch_size: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> list:
        return [block.init_state(batch_size, device=device, dtype=dtype) for block in self.blocks]

    def state_size(self, context_len: int) -> int:
        """Elements held per sequence after ``context_len`` positions, summed over the layers."""
        return sum(block.state_size(context_len) for block in self.blocks)

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: Any, ndim: int, layout: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"inputs must be a floating-point tensor of shape {layout}, got {got}")
        if x.ndim != ndim or x.shape[-1] != self.config.d_in or (ndim == 3 and x.shape[1] == 0):
            raise ValueError(f"inputs must have shape {layout} with d_in={self.config.d_in} and at least one "
                             f"position, got shape {tuple(x.shape)}")

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        with full_precision(h):  # float32 predictions: the loss compares them with float targets
            h = h.to(torch.promote_types(self.head.weight.dtype, torch.float32))
            return nn.functional.linear(self.norm(h), self.head.weight.to(h.dtype), self.head.bias.to(h.dtype))

    def _states(self, state: Optional[list]) -> list:
        if state is None:
            return [None] * len(self.blocks)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            raise ValueError(f"state must be a list with one mixer state per layer ({len(self.blocks)}), "
                             f"got {type(state).__name__}")
        return list(state)
