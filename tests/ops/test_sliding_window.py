"""Sliding-window attention ops: the blockwise and banded forms equal the ring-buffer loop (outputs, the
kept window and every gradient), with and without a cache and rotary; a window covering the whole
sequence is plain causal attention; the kept state never exceeds window - 1 tokens."""

from __future__ import annotations

import math

import pytest
import torch

from seqmix.modules.rotary import apply_rotary, rotary_inv_freq
from seqmix.ops.attention import attention_parallel
from seqmix.ops.sliding_window import swa_chunk, swa_parallel, swa_recurrent
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64


def _inputs(B, H, T, T0, K, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return {"q": rnd(B, H, T, K), "k": rnd(B, H, T, K), "v": rnd(B, H, T, V),
            "initial_state": (rnd(B, H, T0, K), rnd(B, H, T0, V))}


def _run(form, inputs, window, rotary, chunk_size=None):
    inv = rotary_inv_freq(inputs["q"].shape[-1], 10000.0, dtype=F64) if rotary else None
    if form is swa_chunk:
        fn = lambda q, k, v, s: swa_chunk(q, k, v, s, window, chunk_size, inv)  # noqa: E731
    else:
        fn = lambda q, k, v, s: form(q, k, v, s, window, inv)  # noqa: E731
    return outputs_and_grads(fn, inputs, output_names=["o", "k_tail", "v_tail"])


@pytest.mark.parametrize("rotary", [True, False], ids=["rotary", "norotary"])
@pytest.mark.parametrize(
    "T,T0,W,C", [(1, 0, 3, 4), (1, 2, 3, 4), (13, 0, 4, 5), (13, 3, 4, 4), (20, 2, 7, 3), (9, 5, 6, 16), (17, 0, 1, 4)]
)
def test_fast_forms_match_ring_loop(rotary, T, T0, W, C):
    inputs = _inputs(2, 2, T, min(T0, W - 1), 6, 5)  # a ring never holds more than W - 1 tokens
    want = _run(swa_recurrent, inputs, W, rotary)
    what = f"T={T} T0={T0} W={W} rotary={rotary}"
    assert_all_close(_run(swa_parallel, inputs, W, rotary), want, 1e-10, f"swa_parallel {what}", 1e-3)
    assert_all_close(_run(swa_chunk, inputs, W, rotary, C), want, 1e-10, f"swa_chunk C={C} {what}", 1e-3)


def test_reference_matches_banded_formula():
    """Query i (absolute T0 + i) sees keys T0+i-W < j <= T0+i; rotary at absolute positions gives the same."""
    inputs = _inputs(1, 2, 10, 3, 4, 3, seed=1)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    k_all, v_all = torch.cat((inputs["initial_state"][0], k), 2), torch.cat((inputs["initial_state"][1], v), 2)
    inv = rotary_inv_freq(4, 10000.0, dtype=F64)
    start = 1000  # any absolute origin: only relative positions matter
    pos = torch.arange(13) + start
    scores = apply_rotary(q, pos[3:], inv) @ apply_rotary(k_all, pos, inv).transpose(-1, -2) / math.sqrt(4)
    allowed = torch.tensor([[3 + i - 4 < j <= 3 + i for j in range(13)] for i in range(10)])
    want = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v_all
    o, (k_tail, _) = swa_recurrent(q, k, v, inputs["initial_state"], 4, inv)
    assert_close("swa_recurrent vs banded formula", o, want, 1e-10)
    assert_close("kept keys: the last window - 1, unrotated", k_tail, k_all[:, :, -3:], 0.0)


def test_window_covering_everything_is_causal_attention():
    inputs = _inputs(2, 2, 30, 0, 8, 8, seed=2)
    want, _ = attention_parallel(inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"])
    for form in (swa_parallel, swa_recurrent):
        o, _ = form(inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"], 64)
        assert_close(f"{form.__name__} with window >= T vs causal attention", o, want, 1e-12)
    o, _ = swa_chunk(inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"], 64, 8)
    assert_close("swa_chunk with window >= T vs causal attention", o, want, 1e-12)


def test_long_stream_keeps_a_bounded_state():
    """2000 tokens in pieces of 333 with window 50: the kept state stays at 49 tokens and the outputs
    equal one blockwise pass over the whole stream."""
    inputs = _inputs(1, 2, 2000, 0, 8, 8, seed=3)
    inv = rotary_inv_freq(8, 10000.0, dtype=F64)
    whole, _ = swa_chunk(inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"], 50, 64, inv)
    state, pieces = inputs["initial_state"], []
    for s in range(0, 2000, 333):
        sl = slice(s, s + 333)
        o, state = swa_chunk(inputs["q"][:, :, sl], inputs["k"][:, :, sl], inputs["v"][:, :, sl], state, 50, 64, inv)
        assert state[0].shape[2] == 49 and state[1].shape[2] == 49, "the ring must hold window - 1 tokens"
        pieces.append(o)
    assert_close("streamed vs whole", torch.cat(pieces, 2), whole, 1e-10)


# ---------------------------------------------------------------- the mixer
def test_mixer_ring_is_bounded_and_rejects_an_oversized_state():
    from seqmix import build_mixer

    torch.manual_seed(0)
    m = build_mixer("swa", 16, n_heads=2, window=6, chunk_size=4).double()
    x = torch.randn(2, 30, 16, dtype=F64)
    y, state = m(x)
    assert state.k.shape == (2, 2, 5, 8) and m.state_size(30) == m.state_size(10**6) == 2 * 5 * 16
    ys, s = [], m.init_state(2)
    for t in range(30):
        y_t, s = m.step(x[:, t], s)
        ys.append(y_t)
        assert s.k.shape[2] == min(t + 1, 5), "the ring grows to window - 1 tokens, then stays"
    assert_close("step loop vs forward", torch.stack(ys, 1), y, 1e-10)
    too_long = (torch.zeros(2, 2, 6, 8, dtype=F64), torch.zeros(2, 2, 6, 8, dtype=F64))
    with pytest.raises(ValueError, match="window - 1 = 5"):
        m(x, too_long)


@pytest.mark.parametrize("kwargs,match", [({"window": 0}, "window"), ({"chunk_size": 0}, "chunk_size"),
                                          ({"n_heads": 16}, "rotary"), ({"rotary": 1}, "rotary")])
def test_mixer_constructor_validation(kwargs, match):
    from seqmix.mixers.swa import SlidingWindowAttention

    with pytest.raises(ValueError, match=match):
        SlidingWindowAttention(16, **kwargs)
