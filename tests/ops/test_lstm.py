"""The LSTM ops use nn.LSTM's weight layout: the fused kernel, the cell and the loop agree with it."""

from __future__ import annotations

import torch

from seqmix.ops.lstm import lstm_fused, lstm_recurrent


def _reference_module(d_in: int, d_hidden: int) -> torch.nn.LSTM:
    torch.manual_seed(0)
    return torch.nn.LSTM(d_in, d_hidden, batch_first=True).double()


def test_forms_agree_with_nn_lstm():
    rnn = _reference_module(5, 7)
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    h0 = torch.randn(3, 7, dtype=torch.float64)
    c0 = torch.randn(3, 7, dtype=torch.float64)
    expected, (h_n, c_n) = rnn(x, (h0[None], c0[None]))
    for form in (lstm_fused, lstm_recurrent):
        y, (h, c) = form(x, *weights, (h0, c0))
        assert torch.allclose(y, expected, atol=1e-12), f"{form.__name__}: outputs"
        assert torch.allclose(h, h_n[0], atol=1e-12), f"{form.__name__}: final h"
        assert torch.allclose(c, c_n[0], atol=1e-12), f"{form.__name__}: final c"


def test_single_step_sequence():
    rnn = _reference_module(4, 4)
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    x = torch.randn(2, 1, 4, dtype=torch.float64)
    zeros = torch.zeros(2, 4, dtype=torch.float64)
    y_fused, _ = lstm_fused(x, *weights, (zeros, zeros))
    y_loop, _ = lstm_recurrent(x, *weights, (zeros, zeros))
    assert torch.allclose(y_fused, y_loop, atol=1e-12)
