"""The Elman RNN (Elman 1990, "Finding Structure in Time") as a token mixer:

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),    y_t = h_t  (or out_proj(h_t))

Modes: ``"fused"`` (PyTorch's tanh-RNN kernel, oneDNN/cuDNN) and ``"recurrent"`` (the loop over the cell
in ``seqmix.ops.rnn``); ``step`` runs the same cell with the same weights. The recurrence is nonlinear,
so the whole-sequence form is sequential in time by nature.

Initialisation: the paper predates any convention; we keep PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for the
input weights and biases and draw the recurrent matrix orthogonal (Saxe et al. 2014), which keeps
``W_hh``'s singular values at 1 so that early gradients neither vanish nor explode through time.

``_FusedRNN`` is shared with ``seqmix.mixers.gru``: the two differ only in the cell and kernel.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer
from seqmix.ops.rnn import elman_cell, elman_fused, elman_recurrent

__all__ = ["Elman"]


class _FusedRNN(Mixer):
    """A single-layer PyTorch RNN (``nn.RNN`` / ``nn.GRU``) with one state ``h: [B, d_hidden]``.

    Args:
        d_model: input and output width.
        d_hidden: hidden width H (default ``d_model``); when it differs from ``d_model`` (or ``out_proj``
            is True) a linear map brings ``h`` back to ``d_model``.
        out_proj: force an output projection even when ``d_hidden == d_model``.
    """

    modes = ("fused", "recurrent")
    min_state_dtype = None  # the fused kernel computes h in the weights' dtype
    _gates: ClassVar[int] = 1  # G: blocks of H rows in w_ih / w_hh
    _cell: ClassVar[Callable]
    _fused: ClassVar[Callable]
    _loop: ClassVar[Callable]

    def __init__(self, d_model: int, d_hidden: Optional[int] = None, out_proj: bool = False) -> None:
        super().__init__(d_model)
        d_hidden = options.positive_int("d_hidden", d_model if d_hidden is None else d_hidden)
        out_proj = options.boolean("out_proj", out_proj)
        self.d_hidden = d_hidden
        # the nn.RNN/nn.GRU module owns the weights so that, on a GPU, they sit in the one flat buffer
        # cuDNN wants; both forms read them through all_weights
        self.rnn = self._make_rnn(d_model, d_hidden)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=False) if (out_proj or d_hidden != d_model) else None
        self.reset_parameters()

    def _make_rnn(self, d_model: int, d_hidden: int) -> nn.RNNBase:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        self.rnn.reset_parameters()  # U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias
        H = self.d_hidden
        with torch.no_grad():
            for g in range(self._gates):  # one orthogonal H x H block per gate
                nn.init.orthogonal_(self.rnn.weight_hh_l0[g * H : (g + 1) * H])

    def _weights(self) -> list[torch.Tensor]:
        return self.rnn.all_weights[0]  # [w_ih [G*H, D], w_hh [G*H, H], b_ih [G*H], b_hh [G*H]]

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.out_proj is None else self.out_proj(h)

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        form = type(self)._fused if mode == "fused" else type(self)._loop
        h_all, h = form(x, *self._weights(), state)  # [B, T, H], [B, H]
        # under autocast the fused kernel returns a low-precision state; keep the state's own dtype
        return self._out(h_all), h.to(state.dtype)

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = type(self)._cell(x_t, *self._weights(), state)  # [B, H]
        return self._out(h), h.to(state.dtype)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.d_hidden

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}, out_proj={self.out_proj is not None}"


class Elman(_FusedRNN):
    """Elman (tanh) RNN mixer; state ``h: [B, d_hidden]``. See ``_FusedRNN`` for the options."""

    _cell = staticmethod(elman_cell)
    _fused = staticmethod(elman_fused)
    _loop = staticmethod(elman_recurrent)

    def _make_rnn(self, d_model: int, d_hidden: int) -> nn.RNNBase:
        return nn.RNN(d_model, d_hidden, nonlinearity="tanh", batch_first=True)
