"""Selective-scan ops: the chunked form equals the reference loop (outputs, final state and the gradients
of u, delta, A, B, C and the initial state), the loop equals the closed form, and the chunked form
never keeps a [B, T, D, N] tensor for backward."""

from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
import torch

from seqmix.ops.mamba import selective_scan_chunked, selective_scan_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

ARGS = ("u", "delta", "A", "Bm", "Cm", "initial_state")
D, N = 3, 4


def make_inputs(B: int, T: int, regime: str, dtype=torch.float64, seed: int = 0) -> dict:
    """Step sizes: typical (softplus of a normal), tiny (decay within 1e-7 of 1) or huge (decay ~ e^-200)."""
    g = torch.Generator().manual_seed(seed)
    rnd = partial(torch.randn, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(rnd(B, T, D))
    if regime == "tiny":
        delta = delta * 1e-7
    elif regime == "huge":
        delta = 50.0 + 10.0 * delta
    inputs = {
        "u": rnd(B, T, D),
        "delta": delta,
        "A": -torch.arange(1, N + 1, dtype=torch.float64).expand(D, N) * (1 + 0.1 * rnd(D, N).abs()),
        "Bm": rnd(B, T, N),
        "Cm": rnd(B, T, N),
        "initial_state": rnd(B, D, N),
    }
    return {n: t.to(dtype) for n, t in inputs.items()}


def run(form: Callable, inputs: dict) -> dict[str, torch.Tensor]:
    """Outputs, final state and gradients of a fixed random functional of both w.r.t. every input."""
    return outputs_and_grads(form, {n: inputs[n] for n in ARGS}, output_names=["output y", "final state h_last"])


# (B, T, chunk_size, regime): T = 1, C = 1, C > T, T a multiple / not a multiple of C, extreme step sizes,
# a long sequence
CASES = [
    (2, 1, 16, "typical"),
    (2, 6, 1, "typical"),
    (1, 7, 64, "typical"),
    (2, 32, 16, "typical"),
    (3, 63, 16, "typical"),
    (2, 45, 8, "tiny"),
    (2, 45, 8, "huge"),
    (1, 1200, 64, "typical"),
    (1, 1200, 32, "tiny"),
]


@pytest.mark.parametrize("B,T,chunk_size,regime", CASES)
def test_chunked_matches_reference(B, T, chunk_size, regime):
    inputs = make_inputs(B, T, regime)
    expected = run(selective_scan_recurrent, inputs)
    actual = run(partial(selective_scan_chunked, chunk_size=chunk_size), inputs)
    assert_all_close(actual, expected, 1e-10, f"selective_scan_chunked B={B} T={T} C={chunk_size} {regime}")


def test_chunked_float32_matches_float64_reference():
    expected = run(selective_scan_recurrent, make_inputs(2, 77, "typical"))
    actual = run(partial(selective_scan_chunked, chunk_size=16), make_inputs(2, 77, "typical", dtype=torch.float32))
    for name, t in actual.items():
        assert t.dtype == torch.float32, f"{name} is {t.dtype}, expected float32"
    expected = {n: t.float() for n, t in expected.items()}  # the float64 reference, rounded to float32
    assert_all_close(actual, expected, 1e-4, "float32 selective_scan_chunked")


@pytest.mark.parametrize("B,T,chunk_size,regime", [(2, 1, 16, "typical"), (3, 63, 16, "typical"), (2, 45, 8, "tiny"),
                                                   (2, 45, 8, "huge"), (1, 700, 64, "typical")])
def test_negative_eigenvalues_chunked_matches_reference(B, T, chunk_size, regime):
    """The signed transition 2 exp(delta A) - 1: outputs, state and every gradient equal the loop's."""
    inputs = make_inputs(B, T, regime)
    expected = run(partial(selective_scan_recurrent, negative_eigenvalues=True), inputs)
    actual = run(partial(selective_scan_chunked, chunk_size=chunk_size, negative_eigenvalues=True), inputs)
    assert_all_close(actual, expected, 1e-10, f"selective_scan_chunked(negative_eigenvalues) T={T} {regime}")


def test_negative_eigenvalues_transition():
    """With B = 0 and u = 0 the state evolves by exactly prod_t (2 exp(delta_t A) - 1): a huge step size
    flips its sign every token (transition -1), which exp(delta A) in (0, 1) could never do."""
    inputs = make_inputs(1, 9, "huge")
    inputs["Bm"] = torch.zeros_like(inputs["Bm"])
    _, h = selective_scan_chunked(*(inputs[n] for n in ARGS), chunk_size=4, negative_eigenvalues=True)
    a = 2 * torch.exp(inputs["delta"][0, :, :, None] * inputs["A"]) - 1  # [T, D, N]
    torch.testing.assert_close(h[0], inputs["initial_state"][0] * a.prod(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h[0], -inputs["initial_state"][0], rtol=1e-12, atol=1e-14)  # 9 flips


def test_gradcheck_chunked_negative_eigenvalues():
    inputs = make_inputs(2, 9, "typical")
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in ARGS)
    form = partial(selective_scan_chunked, chunk_size=4, negative_eigenvalues=True)
    assert torch.autograd.gradcheck(form, leaves)


def test_reference_equals_closed_form():
    """y_t = C_t . (exp(A S_t) h0 + sum_{s<=t} exp(A (S_t - S_s)) delta_s u_s B_s), S_t = sum_{r<=t} delta_r."""
    inputs = make_inputs(2, 8, "typical")
    u, delta, A, Bm, Cm, h0 = (inputs[n] for n in ARGS)
    S = delta.cumsum(dim=1)  # [B, T, D]
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(S[:, t, :, None] * A) * h0
        for s in range(t + 1):
            decay = torch.exp((S[:, t] - S[:, s])[:, :, None] * A)  # [B, D, N]
            h = h + decay * (delta[:, s] * u[:, s])[:, :, None] * Bm[:, s, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    y, h_last = selective_scan_recurrent(u, delta, A, Bm, Cm, h0)
    torch.testing.assert_close(y, torch.stack(ys, dim=1), rtol=1e-11, atol=1e-12, msg="output y vs closed form")
    torch.testing.assert_close(h_last, h, rtol=1e-11, atol=1e-12, msg="final state vs closed form")


def test_gradcheck_chunked():
    inputs = make_inputs(2, 9, "typical")
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in ARGS)
    assert torch.autograd.gradcheck(lambda *a: selective_scan_chunked(*a, chunk_size=4), leaves)


def test_backward_keeps_no_full_state_sequence():
    """Autograd must not hold a [B, T, D, N] tensor: only inputs and one [B, D, N] state per chunk."""
    B, T, C = 2, 256, 16
    inputs = {n: t.requires_grad_(True) for n, t in make_inputs(B, T, "typical").items()}
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_chunked(*(inputs[n] for n in ARGS), chunk_size=C)
    allowed = max(B * T * max(D, N), B * (T // C) * D * N)  # the inputs, or one state per chunk
    assert allowed < B * T * D * N
    too_big = [s for s in saved if torch.Size(s).numel() > allowed]
    assert not too_big, f"autograd keeps tensors of shapes {too_big} (B={B}, T={T}, D={D}, N={N})"


def test_bad_arguments_fail_clearly():
    inputs = make_inputs(2, 5, "typical")
    args = [inputs[n] for n in ARGS]
    with pytest.raises(ValueError, match="chunk_size must be a"):
        selective_scan_chunked(*args, chunk_size=24)
    with pytest.raises(ValueError, match=r"A must have shape \[D=3, N\]"):
        selective_scan_chunked(args[0], args[1], args[2][:2], *args[3:])
    with pytest.raises(ValueError, match="Cm must have shape"):
        selective_scan_chunked(*args[:4], args[4][:, :, :2], args[5])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan_recurrent(*args[:5], args[5][:1])
    with pytest.raises(ValueError, match="share one dtype"):
        selective_scan_chunked(args[0].float(), *args[1:])


# --------------------------------------------------------------------------- the mixer's fast forward path
@pytest.mark.parametrize("kernel_size,bias", [(4, True), (2, False), (1, True)])
def test_mixer_conv_matches_causal_conv1d(kernel_size, bias):
    """The mixer's shifted multiply-add conv is CausalConv1d's function: outputs and carried state."""
    from seqmix.mixers.mamba import Mamba

    torch.manual_seed(0)
    mixer = Mamba(d_model=4, d_conv=kernel_size, conv_bias=bias).double()
    for T in (1, 2, 9):
        xs = torch.randn(3, T, mixer.d_inner, dtype=torch.float64)
        state = torch.randn(3, mixer.d_inner, kernel_size - 1, dtype=torch.float64)
        y, new_state = mixer.conv.forward_shifted(xs, state)
        y_ref, state_ref = mixer.conv(xs, state)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12, msg=f"conv output, K={kernel_size}, T={T}")
        torch.testing.assert_close(new_state, state_ref, rtol=0, atol=0, msg=f"conv state, K={kernel_size}, T={T}")
