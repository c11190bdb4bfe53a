"""Key-wise gated linear attention ops: the chunkwise form equals the reference loop (outputs, final state,
every gradient) for every extension (signs, complex phases, RWKV-6's bonus) and every sub-chunk path; the
loop equals the papers' closed forms; strong decays stay finite and accurate in float32."""

from __future__ import annotations

import math
import os
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqmix.ops.gla import _sub_chunk, gla_chunk, gla_recurrent, signed_decay
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64
H, K, V = 2, 3, 4
VARIANTS = ["plain", "sign", "phase", "bonus"]
# per-step log-decay ranges: whole chunks stay within the float64 bound (354), only sub-chunks of 16 do,
# not even those (exact pairwise diagonal blocks)
DECAYS = {"mild": 0.2, "strong": 20.0, "extreme": 60.0}
# Gradients far below the largest one (strong decays make some ~1e-12, and under an extreme decay a
# log-decay's gradient is a cancellation of O(1) terms, ~1e-17) are compared absolutely: a floor is a scale
# that the relative tolerance (1e-10) multiplies, so GRAD_FLOOR 1e-6 allows 1e-16 of the largest gradient
# (float64's resolution of it) and GRAD_ATOL 1e-5 allows 1e-15 absolute (one token under an extreme decay
# makes every gradient ~1e-10). Smaller floors asked for less than float64's rounding: the case B = T = 1,
# extreme, seed 0 differed by 7e-18 with the largest gradient 3.7.
GRAD_FLOOR, GRAD_ATOL = 1e-6, 1e-5


def make_inputs(B: int, T: int, variant: str, decay: str, dtype=F64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rnd = partial(torch.randn, generator=g, dtype=F64)
    log_alpha = -torch.rand(B, H, T, K, generator=g, dtype=F64) * DECAYS[decay]
    x = {"q": rnd(B, H, T, K), "k": rnd(B, H, T, K), "v": rnd(B, H, T, V), "log_alpha": log_alpha}
    rows = K
    x["sign"] = x["phase"] = x["bonus"] = None
    if variant == "sign":  # transitions of both signs, magnitudes in the decay range
        x["sign"] = torch.where(torch.rand(B, H, T, K, generator=g) < 0.5, -1.0, 1.0).to(F64)
    elif variant == "phase":
        x["phase"], rows = rnd(B, H, T, K) * 2, 2 * K
    elif variant == "bonus":
        x["bonus"] = rnd(H, K)
    x["initial_state"] = rnd(B, H, rows, V)
    return {n: t if t is None else t.to(dtype) for n, t in x.items()}


def run(form, x: dict) -> dict:
    """Outputs, final state and gradients w.r.t. every differentiable input (sign is a constant)."""
    names = [n for n in ("q", "k", "v", "log_alpha", "initial_state", "phase", "bonus") if x[n] is not None]

    def call(*tensors):
        kw = dict(zip(names, tensors))
        q, k, v, log_alpha, s0 = (kw.pop(n) for n in ("q", "k", "v", "log_alpha", "initial_state"))
        return form(q, k, v, log_alpha, s0, sign=x["sign"], **kw)

    return outputs_and_grads(call, {n: x[n] for n in names}, output_names=["output o", "final state"])


# (B, T, chunk_size, sub_chunk_size): one token, T a multiple of C, T not a multiple, C > T, C = 1,
# sub-chunks that do not divide the chunk, several chunks of several sub-chunks
SIZES = [(2, 1, 64, 16), (2, 32, 16, 4), (1, 63, 16, 16), (2, 20, 64, 16), (2, 9, 1, 16), (2, 37, 12, 5),
         (1, 100, 64, 16)]


@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("B,T,C,c", SIZES)
def test_chunk_matches_reference_float64(B, T, C, c, variant, decay):
    x = make_inputs(B, T, variant, decay, seed=T)
    expected = run(gla_recurrent, x)
    actual = run(partial(gla_chunk, chunk_size=C, sub_chunk_size=c), x)
    assert_all_close(actual, expected, 1e-10, f"gla_chunk {variant} {decay} B={B} T={T} C={C} c={c}", GRAD_FLOOR,
                     GRAD_ATOL)


@pytest.mark.parametrize("dtype,decay,path", [
    (F64, "mild", "whole chunk"),
    (F64, "strong", "sub-chunks"),
    (F64, "extreme", "exact"),
    (torch.float32, "mild", "whole chunk"),
    (torch.float32, "strong", "exact"),
])
def test_sub_chunk_paths_are_the_ones_exercised(dtype, decay, path):
    """The decay ranges above really take the three paths (whole chunk / shorter sub-chunks / exact diagonals)."""
    log_alpha = make_inputs(1, 128, "plain", decay, dtype)["log_alpha"].reshape(1, H, 2, 64, K)
    c, exact = _sub_chunk(log_alpha, 16)
    got = "exact" if exact else "whole chunk" if c == 64 else "sub-chunks"
    assert got == path and (c == 16 or not exact), (c, exact)


@pytest.mark.parametrize("variant", VARIANTS)
def test_strong_decays_float32(variant):
    """log alpha down to -20 per step over a long sequence: no overflow, and float32 stays within 1e-4 of the
    float64 reference in outputs, final state and gradients (each chunk here takes the exact path)."""
    T = 300
    expected = run(gla_recurrent, make_inputs(2, T, variant, "strong"))
    expected = {n: t.float() for n, t in expected.items()}
    actual = run(partial(gla_chunk, chunk_size=64), make_inputs(2, T, variant, "strong", torch.float32))
    assert all(torch.isfinite(t).all() for t in actual.values())
    assert_all_close(actual, expected, 1e-4, f"gla_chunk float32 {variant}, log alpha down to -20", grad_floor=1e-3)


def test_one_huge_decay_keeps_float32_precision():
    """A single decay of exp(-1e4) inside a chunk, mild decays around it: exponents are segment sums, not
    differences of cumulative sums (which would lose every digit after -1e4 in float32)."""
    x = make_inputs(2, 64, "plain", "mild")
    x["log_alpha"][:, :, 10] = -1e4
    want, _ = gla_recurrent(*(x[n] for n in ("q", "k", "v", "log_alpha", "initial_state")))
    x32 = {n: t if t is None else t.float() for n, t in x.items()}
    got, _ = gla_chunk(*(x32[n] for n in ("q", "k", "v", "log_alpha", "initial_state")), chunk_size=64)
    assert_close("float32 chunk after a decay of exp(-1e4)", got.double(), want, 2e-6)


def _closed_form(x: dict, bonus: bool = False, complex_: bool = False) -> torch.Tensor:
    """The papers' sums written out with explicit products of transitions (complex when phased):
    o_t = q_t^T [prod_{l<=t} A_l S_0 + sum_{j<=t} prod_{j<l<=t} A_l k_j v_j^T]   (GLA, GateLoop: Re of it)
    o_t = q_t^T [prod_{l<t} A_l S_0 + sum_{j<t} prod_{j<l<t} A_l k_j v_j^T] + (q_t u k_t) v_t   (RWKV-6)"""
    q, k, v, s0 = x["q"], x["k"], x["v"], x["initial_state"]
    a = x["log_alpha"].exp() * (1 if x["sign"] is None else x["sign"])
    if complex_:
        a = torch.polar(x["log_alpha"].exp(), x["phase"])
        s0 = torch.complex(s0[:, :, :K], s0[:, :, K:])
    T = q.shape[2]
    out = []
    for t in range(T):
        hi = t if bonus else t + 1  # transitions applied up to (excluding) hi
        acc = torch.prod(a[:, :, :hi], dim=2).unsqueeze(-1) * s0  # [B, H, K, V]
        for j in range(hi):
            kv = k[:, :, j, :, None] * v[:, :, j, None, :]  # [B, H, K, V]
            acc = acc + torch.prod(a[:, :, j + 1 : hi], dim=2).unsqueeze(-1) * kv
        o = torch.einsum("bhk,bhkv->bhv", q[:, :, t].to(acc.dtype), acc)
        if bonus:
            o = o + (q[:, :, t] * x["bonus"] * k[:, :, t]).sum(-1, keepdim=True) * v[:, :, t]
        out.append(o.real if complex_ else o)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_is_the_closed_form(variant):
    x = make_inputs(2, 12, variant, "mild")
    o, _ = gla_recurrent(*(x[n] for n in ("q", "k", "v", "log_alpha", "initial_state")),
                         sign=x["sign"], phase=x["phase"], bonus=x["bonus"])
    want = _closed_form(x, bonus=variant == "bonus", complex_=variant == "phase")
    assert_close(f"gla_recurrent ({variant}) vs closed form", o, want, 1e-12)


def test_phase_and_sign_change_the_output():
    """Guards the closed-form test from passing with an extension silently ignored."""
    for variant in ("phase", "sign"):
        x = make_inputs(1, 10, variant, "mild")
        o, _ = gla_chunk(*(x[n] for n in ("q", "k", "v", "log_alpha")), x["initial_state"], 4,
                         sign=x["sign"], phase=x["phase"])
        plain_state = x["initial_state"][:, :, :K] if variant == "phase" else x["initial_state"]
        o_plain, _ = gla_chunk(*(x[n] for n in ("q", "k", "v", "log_alpha")), plain_state, 4)
        assert (o - o_plain).abs().max() > 1e-3, variant


def test_signed_decay_is_2a_minus_1():
    log_a = torch.tensor([0.0, -1e-12, math.log(0.75), math.log(0.5), math.log(0.25), -50.0], dtype=F64)
    log_abs, sign = signed_decay(log_a)
    assert torch.equal(sign.abs(), torch.ones_like(sign)), "the sign must be +-1, never 0"
    assert_close("2a - 1", sign * log_abs.exp(), 2 * log_a.exp() - 1, 1e-12)
    assert torch.isfinite(log_abs).all() and sign[3] == 1 and sign[-1] == -1


def test_bad_inputs_fail_clearly():
    x = make_inputs(1, 5, "plain", "mild")
    q, k, v, la, s0 = (x[n] for n in ("q", "k", "v", "log_alpha", "initial_state"))
    with pytest.raises(ValueError, match="q, k and log_alpha"):
        gla_chunk(q, k[..., :2], v, la, s0)
    with pytest.raises(ValueError, match=r"state must be \[B, H, 2K, V\]"):
        gla_chunk(q, k, v, la, s0, phase=torch.zeros_like(q))
    with pytest.raises(ValueError, match="cannot be combined"):
        gla_recurrent(q, k, v, la, s0, phase=torch.zeros_like(q), bonus=torch.zeros(H, K, dtype=F64))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        gla_chunk(q, k, v, la, s0, 0)


@settings(max_examples=30, deadline=None, derandomize=bool(os.environ.get("CI")))
@given(
    st.integers(1, 2), st.integers(1, 50), st.integers(1, 40), st.integers(1, 20),
    st.sampled_from(VARIANTS), st.sampled_from(list(DECAYS)), st.integers(0, 2**31 - 1),
)
def test_chunk_matches_reference_random_sizes(B, T, C, c, variant, decay, seed):
    x = make_inputs(B, T, variant, decay, seed=seed)
    expected = run(gla_recurrent, x)
    actual = run(partial(gla_chunk, chunk_size=C, sub_chunk_size=c), x)
    assert_all_close(actual, expected, 1e-10, f"gla_chunk {variant} {decay} B={B} T={T} C={C} c={c}", GRAD_FLOOR,
                     GRAD_ATOL)
