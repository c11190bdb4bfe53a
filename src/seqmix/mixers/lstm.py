"""The LSTM as a token mixer: PyTorch's fused kernel for whole sequences, the same weights per step."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.ops.lstm import lstm_cell, lstm_fused, lstm_recurrent


class LSTMState(NamedTuple):
    h: torch.Tensor  # [B, H] hidden state
    c: torch.Tensor  # [B, H] cell state


class LSTM(Mixer):
    """Single-layer LSTM mixer (Hochreiter & Schmidhuber 1997).

    Args:
        d_model: input and output width.
        d_hidden: LSTM width H (default ``d_model``). When it differs from ``d_model`` (or ``out_proj``
            is True) a linear map brings ``h`` back to ``d_model``.
        forget_bias: initial forget-gate bias; 1.0 as recommended by Jozefowicz et al. 2015 so that
            early training does not forget by default.
        out_proj: force an output projection even when ``d_hidden == d_model``.
    """

    modes = ("fused", "recurrent")
    min_state_dtype = None  # the fused kernel computes h and c in the weights' dtype

    def __init__(
        self, d_model: int, d_hidden: Optional[int] = None, forget_bias: float = 1.0, out_proj: bool = False
    ) -> None:
        super().__init__(d_model)
        d_hidden = options.positive_int("d_hidden", d_model if d_hidden is None else d_hidden)
        forget_bias = options.number("forget_bias", forget_bias)
        out_proj = options.boolean("out_proj", out_proj)
        self.d_hidden = d_hidden
        # nn.LSTM owns the weights so that, on a GPU, they live in the one flat buffer cuDNN wants
        # (it re-flattens them after .to()); both forms below read them through all_weights.
        self.rnn = nn.LSTM(d_model, d_hidden, batch_first=True)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=False) if (out_proj or d_hidden != d_model) else None
        self.reset_parameters(forget_bias)

    def reset_parameters(self, forget_bias: float = 1.0) -> None:
        self.rnn.reset_parameters()  # U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias
        H = self.d_hidden
        with torch.no_grad():
            self.rnn.bias_ih_l0[H : 2 * H].fill_(forget_bias)
            self.rnn.bias_hh_l0[H : 2 * H].zero_()

    def _weights(self) -> list[torch.Tensor]:
        return self.rnn.all_weights[0]  # [w_ih [4H, D], w_hh [4H, H], b_ih [4H], b_hh [4H]]

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.out_proj is None else self.out_proj(h)

    def _forward(self, x: torch.Tensor, state: LSTMState, mode: str) -> tuple[torch.Tensor, LSTMState]:
        form = lstm_fused if mode == "fused" else lstm_recurrent
        h_all, (h, c) = form(x, *self._weights(), (state.h, state.c))  # h_all: [B, T, H]
        # under autocast the fused kernel returns low-precision states; keep the state's own dtype
        return self._out(h_all), LSTMState(h.to(state.h.dtype), c.to(state.c.dtype))

    def _step(self, x_t: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        h, c = lstm_cell(x_t, *self._weights(), (state.h, state.c))
        return self._out(h), LSTMState(h, c)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LSTMState:
        zeros = torch.zeros(batch_size, self.d_hidden, **self._state_factory(device, dtype))
        return LSTMState(zeros, zeros.clone())

    def state_size(self, context_len: int) -> int:
        return 2 * self.d_hidden
