"""Forgetting attention ops: the folded-SDPA form equals the reference loop and the paper's formula
(explicit D_ij = F_i - F_j bias), with and without a cache; strong forgetting over long T stays finite."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.attention import attention_parallel
from seqmix.ops.fox import fox_parallel, fox_recurrent
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64


def _inputs(B, H, T, T0, K, V, *, gate=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    log_f = F.logsigmoid(rnd(B, H, T) * gate + 1.0)
    # a cache as the recurrence leaves it: g_j = sum of later log-gates, the last one 0
    log_f0 = F.logsigmoid(rnd(B, H, T0) + 1.0)
    g0 = torch.flip(torch.cumsum(torch.flip(log_f0, (-1,)), -1), (-1,)) - log_f0
    out = {"q": rnd(B, H, T, K), "k": rnd(B, H, T, K), "v": rnd(B, H, T, V), "log_f": log_f,
           "initial_state": (rnd(B, H, T0, K), rnd(B, H, T0, V), g0)}
    return {k: (tuple(t.to(dtype) for t in v) if isinstance(v, tuple) else v.to(dtype)) for k, v in out.items()}


def _run(fn, inputs):
    return outputs_and_grads(fn, inputs, output_names=["o", "k_all", "v_all", "g_all"])


# T = 1 without a cache: one key, softmax = 1, the q gradient is exactly 0 (compared absolutely via the floor)
@pytest.mark.parametrize("T,T0", [(1, 0), (1, 3), (9, 0), (9, 4), (31, 1)])
@pytest.mark.parametrize("K,V", [(8, 8), (4, 6), (6, 3)])
def test_parallel_matches_reference(T, T0, K, V):
    inputs = _inputs(2, 3, T, T0, K, V)
    what = f"fox_parallel T={T} T0={T0}"
    assert_all_close(_run(fox_parallel, inputs), _run(fox_recurrent, inputs), 1e-10, what, grad_floor=1e-3)


def test_reference_matches_paper_formula():
    """o = softmax(q k^T / sqrt(K) + D) v with D_ij = sum_{l=j+1}^{i} log f_l over cache and new tokens."""
    inputs = _inputs(2, 2, 7, 3, 4, 5, seed=1)
    q, k, v, log_f = inputs["q"], inputs["k"], inputs["v"], inputs["log_f"]
    k0, v0, g0 = inputs["initial_state"]
    F_new = torch.cumsum(log_f, -1)  # [B, H, T]
    F_all = torch.cat((-g0, F_new), -1)  # cached key j: F_j = -g_j in the frame where F_{T0-1} = 0
    scores = q @ torch.cat((k0, k), 2).transpose(-1, -2) / math.sqrt(4) + F_new[..., :, None] - F_all[..., None, :]
    allowed = torch.tensor([[j <= 3 + i for j in range(10)] for i in range(7)])
    want = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ torch.cat((v0, v), 2)
    o, (_, _, g_all) = fox_recurrent(q, k, v, log_f, (k0, v0, g0))
    assert_close("fox_recurrent vs the paper's formula", o, want, 1e-12)
    assert_close("final g = F_T - F_j", g_all, F_new[..., -1:] - F_all, 1e-12)


def test_open_gates_give_plain_causal_attention():
    inputs = _inputs(2, 2, 12, 0, 8, 8, seed=2)
    zero = torch.zeros_like(inputs["log_f"])
    o, _ = fox_parallel(inputs["q"], inputs["k"], inputs["v"], zero, inputs["initial_state"])
    want, _ = attention_parallel(inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"][:2])
    assert_close("log f = 0 vs softmax attention", o, want, 1e-12)


def test_strong_forgetting_over_long_sequences():
    """log f down to about -30 over T = 600 (cumulative log-gates near -1e4): float32 stays finite, its
    gradients too, and matches float64 to the precision the folded gate allows (eps32 * |F| ~ 1e-3)."""
    inputs64 = _inputs(1, 2, 600, 5, 8, 8, gate=15.0, seed=3)
    assert inputs64["log_f"].sum(-1).min() < -2000, "the test wants cumulative log-gates in the thousands"
    inputs32 = {k: (tuple(t.float() for t in v) if isinstance(v, tuple) else v.float()) for k, v in inputs64.items()}
    got = _run(fox_parallel, inputs32)
    for name, t in got.items():
        assert torch.isfinite(t).all(), f"non-finite {name}"
    want, _ = fox_recurrent(inputs64["q"], inputs64["k"], inputs64["v"], inputs64["log_f"], inputs64["initial_state"])
    assert_close("float32 folded form vs float64 reference", got["o"].double(), want, 1e-3)


# ---------------------------------------------------------------- the mixer
def test_mixer_matches_paper_formula():
    """FoX end to end: projections, forget gate sigmoid(w_f x + b_f), the D_ij bias, output projection."""
    from seqmix.mixers.fox import ForgettingAttention

    torch.manual_seed(0)
    m = ForgettingAttention(16, n_heads=2).double()
    x = torch.randn(2, 11, 16, dtype=F64)
    q, k, v = (p(x).view(2, 11, 2, 8).transpose(1, 2) for p in (m.qkv.q_proj, m.qkv.k_proj, m.qkv.v_proj))
    F_cum = torch.cumsum(F.logsigmoid(m.fgate_proj(x)), 1).transpose(1, 2)  # [B, H, T]
    scores = q @ k.transpose(-1, -2) / math.sqrt(8) + F_cum[..., :, None] - F_cum[..., None, :]
    scores = scores.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf"))
    want = m.qkv.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 11, 16))
    for mode in m.modes:
        y, state = m(x, mode=mode)
        assert_close(f"FoX mixer ({mode}) vs formula", y, want, 1e-10)
        assert state.k.shape == (2, 2, 11, 8) and state.log_g.shape == (2, 2, 11)
        assert m.state_size(11) == sum(t[0].numel() for t in state)
