"""Classic nonlinear RNN cells: the Elman (tanh) RNN and the GRU, in PyTorch's weight layout.

Elman RNN (Elman 1990, "Finding Structure in Time"; the "simple RNN" of Lipton, Berkowitz & Elkan 2015,
"A Critical Review of Recurrent Neural Networks for Sequence Learning", arXiv:1506.00019)::

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)

GRU (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation", arXiv:1406.1078), in the convention of PyTorch's ``nn.GRU`` and cuDNN, gates ordered
(reset r, update z, candidate n)::

    r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Deviation from Cho et al.: the paper resets the state *before* the recurrent matmul,
``n_t = tanh(W x_t + U (r_t * h_{t-1}))``; PyTorch and cuDNN reset *after* it, ``r_t * (U h_{t-1} + b)``,
which lets all three recurrent matmuls run as one GEMM. Both are GRUs; they are not the same function.
We follow PyTorch so that its fused kernel and our step share the very same weights.

Every form takes ``x: [B, T, D]``, the four weight tensors ``w_ih [G*H, D], w_hh [G*H, H], b_ih [G*H],
b_hh [G*H]`` (G = 1 for Elman, 3 for GRU) and ``initial_state: [B, H]``, and returns
``(h_all: [B, T, H], h_T: [B, H])``. ``*_recurrent`` is the spec (a Python loop over the cell);
``*_fused`` calls the kernel ``nn.RNN`` / ``nn.GRU`` use (oneDNN on CPU, cuDNN on GPU); on a CPU the
GRU's is differentiated by the hand-written backward of ``seqmix.ops.gru_adjoint``. Both recurrences are
nonlinear in ``h``, so no parallel-in-time form exists; the fused kernel is the fast path.
"""

from __future__ import annotations

import torch

from seqmix.ops.gru_adjoint import gru_fused_adjoint

__all__ = ["elman_cell", "elman_recurrent", "elman_fused", "gru_cell", "gru_recurrent", "gru_fused"]


def _loop(cell, x, w_ih, w_hh, b_ih, b_hh, initial_state):
    h = initial_state
    hs = []
    for t in range(x.shape[1]):
        h = cell(x[:, t], w_ih, w_hh, b_ih, b_hh, h)
        hs.append(h)
    return torch.stack(hs, dim=1), h  # [B, T, H], [B, H]


# --------------------------------------------------------------------------- Elman
def elman_cell(
    x_t: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """One Elman step: ``x_t: [B, D]``, ``h: [B, H]`` -> ``h_t: [B, H]``."""
    return torch.tanh(torch.addmm(b_ih, x_t, w_ih.t()) + torch.addmm(b_hh, h, w_hh.t()))


def elman_recurrent(x, w_ih, w_hh, b_ih, b_hh, initial_state):
    """Reference: a Python loop over ``elman_cell``."""
    return _loop(elman_cell, x, w_ih, w_hh, b_ih, b_hh, initial_state)


def elman_fused(x, w_ih, w_hh, b_ih, b_hh, initial_state):
    """PyTorch's fused single-layer tanh RNN (the kernel behind ``nn.RNN``)."""
    # torch.rnn_tanh(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    params = [w_ih, w_hh, b_ih, b_hh]
    h_all, h_n = torch.rnn_tanh(x, initial_state.unsqueeze(0), params, True, 1, 0.0, False, False, True)
    return h_all, h_n.squeeze(0)


# --------------------------------------------------------------------------- GRU
def gru_cell(
    x_t: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """One GRU step (PyTorch convention, reset after the recurrent matmul): ``[B, D], [B, H] -> [B, H]``."""
    gi = torch.addmm(b_ih, x_t, w_ih.t())  # [B, 3H]
    gh = torch.addmm(b_hh, h, w_hh.t())  # [B, 3H]
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)  # (1 - z) n + z h


def gru_recurrent(x, w_ih, w_hh, b_ih, b_hh, initial_state):
    """Reference: a Python loop over ``gru_cell``."""
    return _loop(gru_cell, x, w_ih, w_hh, b_ih, b_hh, initial_state)


def gru_fused(x, w_ih, w_hh, b_ih, b_hh, initial_state):
    """PyTorch's fused single-layer GRU (the kernel behind ``nn.GRU``).

    On a CPU, outside autocast, it is differentiated by ``seqmix.ops.gru_adjoint`` (PyTorch's own CPU GRU
    backward replays every step's autograd graph and is about 2x slower); on a GPU and under autocast,
    by PyTorch's (cuDNN's on a GPU).
    """
    if x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        return gru_fused_adjoint(x, w_ih, w_hh, b_ih, b_hh, initial_state)
    h_all, h_n = torch.gru(x, initial_state.unsqueeze(0), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, True)
    return h_all, h_n.squeeze(0)
