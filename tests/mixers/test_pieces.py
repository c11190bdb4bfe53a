"""On a CPU, mixers that opt in run a long sequence as state-carrying pieces: the same function."""

from __future__ import annotations

import pytest
import torch

import seqmix.mixers.base as base
from seqmix import build_mixer, get_spec, list_mixers
from seqmix.testing import assert_all_close, fixed_weights, outputs_and_grads

D = 8


def _mixer(name):
    torch.manual_seed(0)
    return build_mixer(name, d_model=D, **get_spec(name).test_options).double()


PIECED = [s.name for s in list_mixers() if _mixer(s.name)._piece_width() is not None]


def test_the_mixers_measured_to_gain_opt_in():
    assert set(PIECED) >= {"mamba", "mamba2", "mlstm", "rwkv6"}


@pytest.mark.parametrize("name", PIECED)
@pytest.mark.parametrize("extra_tokens", [3, 0])
def test_pieces_equal_one_pass(name, extra_tokens, monkeypatch):
    """Outputs, final state and every gradient (inputs, carried state, parameters), last piece short or not."""
    mixer = _mixer(name)
    chunk = int(getattr(mixer, "chunk_size", 1))
    B, T = 2, 5 * chunk + extra_tokens
    x = fixed_weights((B, T, D), torch.float64, seed=1)
    with torch.no_grad():
        _, state = mixer(fixed_weights((B, 7, D), torch.float64, seed=2))  # a realistic carried state
    inputs = {"x": x, "state": state}
    params = dict(mixer.named_parameters())
    monkeypatch.setattr(base, "PIECE_FLOATS", 1 << 60)  # one pass
    assert mixer._piece_len(x, mixer.modes[0]) is None
    expected = outputs_and_grads(lambda x, s: mixer(x, s), inputs, params=params)
    monkeypatch.setattr(base, "PIECE_FLOATS", mixer._piece_width() * B * 2 * chunk)  # pieces of two chunks
    assert mixer._piece_len(x, mixer.modes[0]) == 2 * chunk
    actual = outputs_and_grads(lambda x, s: mixer(x, s), inputs, params=params)
    assert_all_close(actual, expected, 1e-10, f"{name} in pieces of {2 * chunk}, T={T}")


def test_pieces_are_for_the_cpu_and_the_fast_forms_only(monkeypatch):
    mixer = _mixer("mamba2")
    monkeypatch.setattr(base, "PIECE_FLOATS", 1)
    x = torch.zeros(2, 100, D, dtype=torch.float64)
    assert mixer._piece_len(x, "chunk") == mixer.chunk_size  # at least one chunk
    assert mixer._piece_len(x, "recurrent") is None  # the reference stays one plain loop
    assert mixer._piece_len(x.to("meta"), "chunk") is None  # other devices: one call
    assert _mixer("attention")._piece_len(x, "parallel") is None  # not opted in
