"""Our Hawk recurrent block (``rglru``) against the pure-PyTorch RecurrentGemma recurrent block of Hugging Face
``transformers`` (``RecurrentGemmaRecurrentBlock``, the Griffin/RecurrentGemma release): the same weights in
both give the same outputs. Skipped when transformers is not installed.

Mapping: their ``linear_x``/``linear_y`` are the two halves of our ``in_proj``; their block-diagonal
``recurrent_gate_weight``/``input_gate_weight`` ([heads, bw, bw], applied as ``x @ W``) the two halves of our
``gate_weight``; their ``recurrent_param`` is ``-Lambda`` (they write ``log a = -softplus(param)``). Their
block resets the state where ``position_ids == 0`` (document starts); we feed positions from 1 so that
both compute the plain recurrence from a zero state.
"""

from __future__ import annotations

import pytest
import torch

from seqmix import build_mixer
from seqmix.testing import assert_close, fixed_weights

rg = pytest.importorskip("transformers.models.recurrent_gemma.modeling_recurrent_gemma")
from transformers import RecurrentGemmaConfig  # noqa: E402

D_MODEL = 24


def pair(d_rnn: int, n_heads: int):
    torch.manual_seed(0)
    ours = build_mixer("rglru", d_model=D_MODEL, d_rnn=d_rnn, n_heads=n_heads, chunk_size=16)
    with torch.no_grad():  # non-zero biases, so that a misplaced bias shows
        ours.gate_bias.normal_()
        ours.in_proj.bias.normal_()
    config = RecurrentGemmaConfig(
        hidden_size=D_MODEL, lru_width=d_rnn, num_attention_heads=n_heads, conv1d_width=4,
        hidden_activation="gelu_pytorch_tanh", vocab_size=16, num_hidden_layers=1,
    )
    theirs = rg.RecurrentGemmaRecurrentBlock(config, layer_idx=0)
    bw = d_rnn // n_heads
    with torch.no_grad():
        theirs.linear_x.weight.copy_(ours.in_proj.weight[:d_rnn])
        theirs.linear_x.bias.copy_(ours.in_proj.bias[:d_rnn])
        theirs.linear_y.weight.copy_(ours.in_proj.weight[d_rnn:])
        theirs.linear_y.bias.copy_(ours.in_proj.bias[d_rnn:])
        theirs.conv_1d.weight.copy_(ours.conv.weight)
        theirs.conv_1d.bias.copy_(ours.conv.bias)
        theirs.rg_lru.recurrent_gate_weight.copy_(ours.gate_weight[:, :, :bw])
        theirs.rg_lru.input_gate_weight.copy_(ours.gate_weight[:, :, bw:])
        theirs.rg_lru.recurrent_gate_bias.copy_(ours.gate_bias[:, :bw])
        theirs.rg_lru.input_gate_bias.copy_(ours.gate_bias[:, bw:])
        theirs.rg_lru.recurrent_param.copy_(-ours.Lambda)
        theirs.linear_out.weight.copy_(ours.out_proj.weight)
        theirs.linear_out.bias.copy_(ours.out_proj.bias)
    return ours, theirs


@pytest.mark.parametrize("d_rnn,n_heads", [(24, 1), (32, 4)])
@pytest.mark.parametrize("mode", ["scan", "recurrent"])
def test_same_weights_same_outputs(mode, d_rnn, n_heads):
    ours, theirs = pair(d_rnn, n_heads)
    B, T = 2, 37
    x = fixed_weights((B, T, D_MODEL), torch.float32, seed=1)
    positions = torch.arange(1, T + 1).expand(B, T)
    with torch.no_grad():
        y, _ = ours(x, mode=mode)
        y_ref, _ = theirs(x, position_ids=positions, attention_mask=None, use_cache=False)
        y_step = torch.stack([ours.step(x[:, t], s)[0] for t, s in _states(ours, x)], dim=1)
    assert_close(f"rglru mode={mode!r} vs transformers RecurrentGemma", y, y_ref, 2e-5)
    assert_close("rglru step loop vs transformers RecurrentGemma", y_step, y_ref, 2e-5)


def _states(mixer, x):
    """(t, state before token t) along the sequence."""
    state = mixer.init_state(x.shape[0])
    for t in range(x.shape[1]):
        yield t, state
        _, state = mixer.step(x[:, t], state)
