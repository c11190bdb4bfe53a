"""Softmax attention: the SDPA form against the reference loop, and the mixer against plain math."""

from __future__ import annotations

import math

import pytest
import torch

from seqmix.mixers.attention import Attention, KVCache
from seqmix.modules.rotary import apply_rotary, rotary_inv_freq
from seqmix.ops.attention import attention_parallel, attention_recurrent, causal_cache_mask
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64


def _inputs(B, H, T, T0, K, V, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * s).requires_grad_(True)

    return {
        "q": rnd(B, H, T, K, s=scale),
        "k": rnd(B, H, T, K, s=scale),
        "v": rnd(B, H, T, V),
        "k_cache": rnd(B, H, T0, K, s=scale),
        "v_cache": rnd(B, H, T0, V),
    }


def _run(fn, inp, causal):
    """Outputs, final state and the gradients of every input for one fixed random loss."""
    return outputs_and_grads(
        lambda q, k, v, k_cache, v_cache: fn(q, k, v, (k_cache, v_cache), causal=causal),
        inp,
        output_names=["o", "k_all", "v_all"],
    )


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("T,T0", [(1, 0), (1, 4), (7, 0), (7, 5), (13, 1)])
def test_parallel_matches_reference(causal, T, T0):
    inp = _inputs(B=2, H=3, T=T, T0=T0, K=8, V=6)
    want = _run(attention_recurrent, inp, causal)
    got = _run(attention_parallel, inp, causal)
    assert_all_close(got, want, 1e-10, f"attention_parallel causal={causal} T={T} T0={T0}")


def test_parallel_matches_reference_with_saturated_softmax():
    # logits of order 1e3: the softmax is one-hot-like; both forms must stay finite and agree
    inp = _inputs(B=1, H=2, T=9, T0=3, K=8, V=8, scale=12.0, seed=1)
    assert_all_close(_run(attention_parallel, inp, True), _run(attention_recurrent, inp, True), 1e-10, "saturated")


def test_reference_matches_textbook_formula():
    """The loop reproduces softmax(q k^T / sqrt(K) + mask) v with a bottom-right causal mask."""
    inp = _inputs(B=2, H=2, T=6, T0=3, K=4, V=5, seed=2)
    q, k, v = inp["q"], inp["k"], inp["v"]
    k_all = torch.cat((inp["k_cache"], k), 2)
    v_all = torch.cat((inp["v_cache"], v), 2)
    scores = q @ k_all.transpose(-1, -2) / math.sqrt(4)  # [B, H, 6, 9]
    allowed = torch.tensor([[j <= 3 + i for j in range(9)] for i in range(6)])
    want = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v_all
    o, _ = attention_recurrent(q, k, v, (inp["k_cache"], inp["v_cache"]), causal=True)
    torch.testing.assert_close(o, want, rtol=1e-12, atol=1e-12, msg="o vs textbook formula")
    assert torch.equal(causal_cache_mask(6, 3, torch.device("cpu")), allowed), "causal_cache_mask"


# ---------------------------------------------------------------- the mixer against plain math
def _naive_mixer(m: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    B, T, D = x.shape
    H, K = m.n_heads, m.head_dim
    q, k, v = (p(x).view(B, T, H, K).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    if m.rotary:
        inv = rotary_inv_freq(K, m.rotary_base, dtype=x.dtype)
        pos = torch.arange(T, dtype=x.dtype)
        q, k = apply_rotary(q, pos, inv), apply_rotary(k, pos, inv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(K)  # [B, H, T, T]
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o = scores.softmax(-1) @ v  # [B, H, T, K]
    return m.o_proj(o.transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("rotary", [True, False], ids=["rotary", "norotary"])
def test_mixer_matches_naive_attention(causal, rotary):
    torch.manual_seed(0)
    m = Attention(16, n_heads=2, rotary=rotary, causal=causal, bias=True).double()
    x = torch.randn(2, 11, 16, dtype=F64)
    want = _naive_mixer(m, x, causal)
    for mode in m.modes:
        y, state = m(x, mode=mode)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12, msg=lambda s: f"y ({mode}): {s}")
        assert isinstance(state, KVCache) and state.k.shape == (2, 2, 11, 8), f"state ({mode})"
    if not causal:
        # bidirectional: the first output must depend on the last input
        x2 = x.clone()
        x2[:, -1] += 1.0
        assert not torch.allclose(m(x2)[0][:, 0], m(x)[0][:, 0]), "non-causal mixer ignores the future"


def test_bidirectional_mixer_refuses_cache_and_step():
    m = Attention(16, n_heads=2, causal=False).double()
    x = torch.randn(1, 4, 16, dtype=F64)
    _, state = m(x)
    with pytest.raises(ValueError, match="causal=False"):
        m(x, state)
    with pytest.raises(RuntimeError, match="causal=False"):
        m.step(x[:, 0])


def test_cache_positions_continue_from_cache_length():
    """Streaming through step gives the rotary positions 0..T-1, i.e. the same as one forward."""
    torch.manual_seed(1)
    m = Attention(16, n_heads=2).double()
    x = torch.randn(2, 5, 16, dtype=F64)
    y_full, s_full = m(x)
    state = m.init_state(2)
    assert state.k.shape == (2, 2, 0, 8) and m.state_size(0) == 0, "empty initial cache"
    ys = []
    for t in range(5):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_full, rtol=1e-10, atol=1e-12, msg="y step vs forward")
    torch.testing.assert_close(state.k, s_full.k, rtol=1e-10, atol=1e-12, msg="cached (rotated) keys")
    assert m.state_size(5) == sum(t[0].numel() for t in state), "state_size"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 16}, "rotary"),  # head_dim 1 is odd
        ({"rotary_base": 0.5}, "rotary_base"),
        ({"causal": "yes"}, "causal"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Attention(16, **kwargs)


def test_odd_head_dim_without_rotary_is_allowed():
    m = Attention(15, n_heads=5, rotary=False)
    assert m(torch.randn(1, 3, 15))[0].shape == (1, 3, 15)
