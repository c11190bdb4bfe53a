"""RWKV-4's WKV op: the scan form equals the reference loop (outputs, the stabilised state (a, b, p), every
gradient); the loop equals the paper's unstabilised formula; huge keys never overflow in float32."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seqmix.ops.rwkv4 import EMPTY_MAX, wkv4_recurrent, wkv4_scan
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64
D = 5
NAMES = ["output wkv", "final a", "final b", "final p"]


def make_inputs(B: int, T: int, key_scale: float = 1.0, empty: bool = False, dtype=F64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rnd = partial(torch.randn, generator=g, dtype=F64)
    w = torch.exp(rnd(D) * 1.5)  # decay rates from ~0.05 to ~20 per step
    if empty:
        state = (torch.zeros(B, D, dtype=F64), torch.zeros(B, D, dtype=F64), torch.full((B, D), EMPTY_MAX, dtype=F64))
    else:  # a carried state: b > 0 and a/b a weighted mean of values
        b = torch.rand(B, D, generator=g, dtype=F64) + 0.1
        state = (b * rnd(B, D), b, rnd(B, D))
    x = {"w": w, "u": rnd(D), "k": rnd(B, T, D) * key_scale, "v": rnd(B, T, D), "state": state}
    return {n: tuple(s.to(dtype) for s in t) if isinstance(t, tuple) else t.to(dtype) for n, t in x.items()}


def run(form, x: dict) -> dict:
    return outputs_and_grads(form, x, output_names=NAMES)


# (B, T, chunk_size, key_scale, empty): one token, T not a multiple of C, C > T, C = 1, huge keys
CASES = [(2, 1, 16, 1.0, False), (2, 63, 16, 1.0, False), (1, 20, 64, 1.0, True), (2, 9, 1, 1.0, False),
         (2, 70, 32, 500.0, True), (1, 40, 8, 50.0, False)]


@pytest.mark.parametrize("B,T,C,key_scale,empty", CASES)
def test_scan_matches_reference_float64(B, T, C, key_scale, empty):
    x = make_inputs(B, T, key_scale, empty, seed=T)
    expected = run(wkv4_recurrent, x)
    actual = run(partial(wkv4_scan, chunk_size=C), x)
    assert_all_close(actual, expected, 1e-10, f"wkv4_scan B={B} T={T} C={C} keys x{key_scale}", grad_floor=1e-12)


def test_reference_is_the_papers_formula():
    """wkv_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same without v), with the carried
    state contributing e^{p0 - t w} (a0, b0) to numerator and denominator."""
    T = 15
    x = make_inputs(2, T, seed=3)
    w, u, k, v, (a0, b0, p0) = x["w"], x["u"], x["k"], x["v"], x["state"]
    o, (a, b, p) = wkv4_recurrent(w, u, k, v, x["state"])
    t = torch.arange(T, dtype=F64)
    lag = (t[:, None] - 1 - t[None, :])  # [T, T]: t - 1 - i
    terms = torch.exp(-lag[..., None] * w + k[:, None, :, :])  # [B, T(t), T(i), D]
    weight = torch.where((lag >= 0)[..., None], terms, torch.zeros((), dtype=F64))
    num = (weight * v[:, None]).sum(2) + torch.exp(u + k) * v + torch.exp(p0[:, None] - t[:, None] * w) * a0[:, None]
    den = weight.sum(2) + torch.exp(u + k) + torch.exp(p0[:, None] - t[:, None] * w) * b0[:, None]
    assert_close("wkv4_recurrent vs the paper's formula", o, num / den, 1e-12)
    # the final state is the numerator/denominator after the last token, scaled by e^-p
    last = torch.exp(-(T - 1 - t)[:, None] * w + k)  # [B, T, D]
    carried = torch.exp(p0 - T * w)
    assert_close("final a e^p", a * p.exp(), (last * v).sum(1) + carried * a0, 1e-12)
    assert_close("final b e^p", b * p.exp(), last.sum(1) + carried * b0, 1e-12)


def test_empty_state_first_output_is_the_first_value():
    x = make_inputs(2, 6, empty=True)
    o, _ = wkv4_scan(x["w"], x["u"], x["k"], x["v"], x["state"], 4)
    assert_close("wkv_0 from the empty state", o[:, 0], x["v"][:, 0], 1e-15)


@pytest.mark.parametrize("form", ["scan", "recurrent"])
def test_huge_keys_float32(form):
    """Keys of +-3000 (e^3000 overflows every float type): everything finite, and float32 within 1e-5 of the
    float64 reference (outputs and the state)."""
    want = run(wkv4_recurrent, make_inputs(2, 200, 3000.0, empty=True))
    fn = partial(wkv4_scan, chunk_size=64) if form == "scan" else wkv4_recurrent
    x32 = make_inputs(2, 200, 3000.0, empty=True, dtype=torch.float32)
    o, state = fn(x32["w"], x32["u"], x32["k"], x32["v"], x32["state"])
    for name, got, ref in zip(NAMES, (o, *state), (want[n] for n in NAMES)):
        assert torch.isfinite(got).all(), name
        assert_close(f"{form} float32 {name}", got.double(), ref, 1e-5)


def test_bad_inputs_fail_clearly():
    x = make_inputs(1, 4)
    with pytest.raises(ValueError, match="power of two"):
        wkv4_scan(x["w"], x["u"], x["k"], x["v"], x["state"], 12)
    with pytest.raises(ValueError, match=r"w and u must be \[D\]"):
        wkv4_scan(x["w"][:2], x["u"], x["k"], x["v"], x["state"])
    with pytest.raises(ValueError, match="state must be"):
        wkv4_recurrent(x["w"], x["u"], x["k"], x["v"], x["state"][:2])
