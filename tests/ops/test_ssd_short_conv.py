"""The fused short conv + SiLU (``seqmix.ops.short_conv``, used by the SSD-based mixers Mamba-2 and mLSTM)
equals ``CausalConv1d.forward`` followed by SiLU: outputs, new state and every gradient (input, carried
state, weight, bias), for every kernel size including 1, T shorter than the kernel, and without bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.modules.conv import CausalConv1d
from seqmix.ops import short_conv
from seqmix.ops.short_conv import causal_conv_silu
from seqmix.testing import assert_all_close, fixed_weights, outputs_and_grads

F64 = torch.float64


@pytest.mark.parametrize("block", [None, 3], ids=["one block", "blocks of 3"])
@pytest.mark.parametrize("K,T,bias", [(4, 11, True), (4, 2, True), (1, 5, True), (3, 7, False), (2, 1, True)])
def test_fused_conv_silu_equals_the_module(K, T, bias, block, monkeypatch):
    if block is not None:  # the tokens run in blocks of `block` (the last one short): taps cross block edges
        monkeypatch.setattr(short_conv, "_block_len", lambda B, C: block)
    torch.manual_seed(K * 10 + T)
    conv = CausalConv1d(6, K, bias=bias).double()
    inputs = {"x": fixed_weights((2, T, 6), F64, 1), "state": fixed_weights((2, 6, K - 1), F64, 2)}
    params = dict(conv.named_parameters())

    def reference(x, state):
        y, new_state = conv(x, state)
        return F.silu(y), new_state

    def fused(x, state):
        return causal_conv_silu(x, state, conv.weight, conv.bias)

    expected = outputs_and_grads(reference, inputs, params=params, output_names=["y", "state"])
    actual = outputs_and_grads(fused, inputs, params=params, output_names=["y", "state"])
    assert_all_close(actual, expected, 1e-12, f"causal_conv_silu K={K} T={T} bias={bias}")


def test_low_precision_input_keeps_a_float32_state():
    conv = CausalConv1d(4, 4)
    x = torch.randn(2, 9, 4).bfloat16()
    state = torch.randn(2, 4, 3)
    y, new_state = causal_conv_silu(x, state, conv.weight, conv.bias)
    assert y.dtype == torch.bfloat16 and new_state.dtype == torch.float32
    torch.testing.assert_close(new_state, x[:, -3:].transpose(1, 2).float(), rtol=0, atol=0)
    want, _ = conv(x.float(), state)
    torch.testing.assert_close(y.float(), F.silu(want), rtol=2e-2, atol=2e-2)
