"""Gated convolution ops: the conv1d form equals the window loop (outputs, window state, every gradient)
and the paper's formula with a zero-padded nn.Conv1d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.gated_conv import gated_conv_parallel, gated_conv_recurrent
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64


def _inputs(B, T, D_in, D_out, k, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return {"x": rnd(B, T, D_in), "weight": rnd(2 * D_out, D_in, k), "bias": rnd(2 * D_out) if bias else None,
            "initial_state": rnd(B, D_in, k - 1)}


@pytest.mark.parametrize("B,T,k,bias", [(2, 9, 4, True), (1, 1, 4, True), (2, 3, 6, False), (3, 10, 1, True)])
def test_conv_matches_loop(B, T, k, bias):
    inputs = _inputs(B, T, 5, 3, k, bias=bias)
    want = outputs_and_grads(gated_conv_recurrent, inputs, output_names=["h", "window"])
    got = outputs_and_grads(gated_conv_parallel, inputs, output_names=["h", "window"])
    assert_all_close(got, want, 1e-10, f"gated_conv_parallel B={B} T={T} k={k}")


def test_matches_paper_formula_from_zero_padding():
    """h = (X*W + b) * sigmoid(X*V + c), with the sequence start zero-padded by k - 1."""
    inputs = _inputs(2, 12, 4, 4, 3, seed=1)
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    conv = F.conv1d(F.pad(x.transpose(1, 2), (2, 0)), w, b)  # [B, 2D, T]
    want = (conv[:, :4] * torch.sigmoid(conv[:, 4:])).transpose(1, 2)
    h, window = gated_conv_parallel(x, w, b, torch.zeros(2, 4, 2, dtype=F64))
    assert_close("gated conv vs paper formula", h, want, 1e-12)
    assert_close("window = last k - 1 inputs", window, x[:, -2:].transpose(1, 2), 0.0)


def test_mixer_option_validation():
    from seqmix.mixers.gated_conv import GatedConv

    with pytest.raises(ValueError, match="kernel_size"):
        GatedConv(8, kernel_size=0)
    with pytest.raises(ValueError, match="bias"):
        GatedConv(8, bias="no")
