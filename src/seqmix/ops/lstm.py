"""LSTM math (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

Gate order and weight layout follow PyTorch's ``nn.LSTM`` (input, forget, cell, output), so the fused
kernel PyTorch ships (oneDNN on CPU, cuDNN on GPU) and the step below use the very same weights:

    [i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Both forms take ``x: [B, T, D]``, the four weight tensors and ``initial_state = (h0, c0)`` with
``h0, c0: [B, H]``, and return ``(h_all: [B, T, H], (h_T, c_T))``.
"""

from __future__ import annotations

import torch

__all__ = ["lstm_cell", "lstm_recurrent", "lstm_fused"]

Pair = tuple[torch.Tensor, torch.Tensor]


def lstm_cell(
    x_t: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, state: Pair
) -> Pair:
    """One LSTM step: ``x_t: [B, D]`` -> ``(h_t, c_t)``, each ``[B, H]``."""
    h, c = state
    gates = torch.addmm(b_ih, x_t, w_ih.t()) + torch.addmm(b_hh, h, w_hh.t())  # [B, 4H]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def lstm_recurrent(
    x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
    initial_state: Pair,
) -> tuple[torch.Tensor, Pair]:
    """The reference: a Python loop over time calling ``lstm_cell``."""
    state = initial_state
    hs = []
    for t in range(x.shape[1]):
        state = lstm_cell(x[:, t], w_ih, w_hh, b_ih, b_hh, state)
        hs.append(state[0])
    return torch.stack(hs, dim=1), state


def lstm_fused(
    x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
    initial_state: Pair,
) -> tuple[torch.Tensor, Pair]:
    """PyTorch's fused single-layer LSTM kernel (the same one ``nn.LSTM`` calls)."""
    h0, c0 = initial_state
    # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    h_all, h_n, c_n = torch.lstm(
        x, (h0.unsqueeze(0), c0.unsqueeze(0)), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, True
    )
    return h_all, (h_n.squeeze(0), c_n.squeeze(0))
