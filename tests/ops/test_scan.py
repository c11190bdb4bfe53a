"""Diagonal scan ops: the chunked Blelloch scan equals the reference loop (outputs, final state and the
gradients of log_a, b and the initial state), and the loop equals the closed form of the recurrence; the
same for the scan that takes the transition itself (signed and complex transitions)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
import torch

from seqmix.ops.scan import (
    blelloch_scan_,
    linear_scan_chunked,
    linear_scan_recurrent,
    scan_chunked,
    scan_recurrent,
)
from seqmix.testing import assert_all_close, outputs_and_grads

ARGS = ("log_a", "b", "initial_state")


def make_log_a(shape: tuple[int, ...], decay: str, g: torch.Generator) -> torch.Tensor:
    """log decays: moderate, within 1e-6 of a = 1, crushing (a ~ e^-50 .. e^-300), or a mix of both."""
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if decay == "random":
        return -3.0 * u
    if decay == "near_one":
        return -1e-6 * u
    if decay == "near_zero":  # cumulative products underflow to 0: any division by them would give inf/nan
        return -50.0 - 250.0 * u
    if decay == "mixed":
        return torch.where(u < 0.5, -1e-7 * u, -200.0 * u)
    raise ValueError(decay)


def make_inputs(shape: tuple[int, ...], decay: str, dtype=torch.float64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "log_a": make_log_a(shape, decay, g),
        "b": torch.randn(shape, generator=g, dtype=torch.float64),
        "initial_state": torch.randn((shape[0],) + shape[2:], generator=g, dtype=torch.float64),
    }
    return {n: t.to(dtype) for n, t in inputs.items()}


def run(form: Callable, inputs: dict) -> dict[str, torch.Tensor]:
    """Outputs, final state and gradients of a fixed random functional of both w.r.t. every input."""
    return outputs_and_grads(form, {n: inputs[n] for n in ARGS}, output_names=["output h", "final state h_last"])


# (shape [B, T, *rest], chunk_size, decay): T = 1, C = 1, C > T, T a multiple / not a multiple of C,
# a second trailing dimension, extreme decays, long sequences
CASES = [
    ((2, 1, 3), 16, "random"),
    ((2, 5, 3), 1, "random"),
    ((2, 7, 3), 64, "random"),
    ((2, 32, 3), 16, "random"),
    ((3, 37, 4, 2), 8, "random"),
    ((1, 63, 5), 16, "random"),
    ((2, 100, 3), 64, "near_zero"),
    ((2, 100, 3), 16, "mixed"),
    ((2, 2000, 2), 64, "near_one"),
    ((1, 1500, 3), 32, "mixed"),
]


@pytest.mark.parametrize("shape,chunk_size,decay", CASES)
def test_chunked_matches_reference(shape, chunk_size, decay):
    inputs = make_inputs(shape, decay)
    expected = run(scan_recurrent, inputs)
    actual = run(partial(scan_chunked, chunk_size=chunk_size), inputs)
    assert_all_close(actual, expected, 1e-10, f"scan_chunked{shape} C={chunk_size} {decay}")


@pytest.mark.parametrize("decay", ["random", "mixed"])
def test_chunked_float32_matches_float64_reference(decay):
    shape = (2, 77, 8)
    expected = run(scan_recurrent, make_inputs(shape, decay))
    actual = run(partial(scan_chunked, chunk_size=16), make_inputs(shape, decay, dtype=torch.float32))
    for name, t in actual.items():
        assert t.dtype == torch.float32, f"{name} is {t.dtype}, expected float32"
    expected = {n: t.float() for n, t in expected.items()}  # the float64 reference, rounded to float32
    assert_all_close(actual, expected, 1e-4, f"float32 scan_chunked ({decay})")


def test_reference_equals_closed_form():
    """h_t = exp(L_t) h0 + sum_{s<=t} exp(L_t - L_s) b_s with L_t = sum_{r<=t} log a_r (moderate decays)."""
    inputs = make_inputs((2, 9, 3), "random")
    log_a, b, h0 = inputs["log_a"], inputs["b"], inputs["initial_state"]
    L = log_a.cumsum(dim=1)  # [B, T, D]
    T = log_a.shape[1]
    expected = torch.stack(
        [torch.exp(L[:, t]) * h0 + sum(torch.exp(L[:, t] - L[:, s]) * b[:, s] for s in range(t + 1)) for t in range(T)],
        dim=1,
    )
    h, h_last = scan_recurrent(log_a, b, h0)
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12, msg="scan_recurrent output h vs closed form")
    torch.testing.assert_close(h_last, h[:, -1], rtol=0, atol=0, msg="h_last is not the last output")


def test_gradcheck_chunked():
    inputs = make_inputs((2, 11, 2), "random")
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in ARGS)
    assert torch.autograd.gradcheck(lambda *a: scan_chunked(*a, chunk_size=4), leaves)


def test_grad_of_h_last_only_and_of_h_only():
    """Backward must cope with one of the two outputs unused (autograd then passes None for it)."""
    inputs = make_inputs((2, 13, 3), "random")
    for pick in (0, 1):
        grads = []
        for form in (scan_recurrent, partial(scan_chunked, chunk_size=4)):
            leaves = [inputs[n].clone().requires_grad_(True) for n in ARGS]
            out = form(*leaves)[pick]
            grads.append(torch.autograd.grad(out.sum(), leaves))
        for n, ref, act in zip(ARGS, *grads):
            torch.testing.assert_close(act, ref, rtol=1e-10, atol=1e-12, msg=f"grad of {n} (output {pick} only)")


def test_non_contiguous_inputs():
    inputs = make_inputs((4, 20, 3), "random")
    # the same values, but time and batch strided as in a transposed [T, B, D] buffer
    strided = {n: t.transpose(0, 1).contiguous().transpose(0, 1) if t.ndim == 3 else t for n, t in inputs.items()}
    assert not strided["b"].is_contiguous()
    assert_all_close(run(partial(scan_chunked, chunk_size=8), strided), run(scan_recurrent, inputs), 1e-12, "strided")


@pytest.mark.parametrize("reverse", [False, True])
def test_blelloch_prefix_products(reverse):
    """With ``prefix`` the in-place scan also leaves the inclusive prefix (suffix) products in ``a``."""
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 16, 2, generator=g, dtype=torch.float64)
    x = torch.randn(3, 16, 2, generator=g, dtype=torch.float64)
    flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    expected_x, _ = scan_recurrent(flip(a).log(), flip(x), torch.zeros(3, 2, dtype=torch.float64))
    expected_a = flip(flip(a).cumprod(dim=1))
    a_, x_ = a.clone(), x.clone()
    blelloch_scan_(a_, x_, reverse=reverse, prefix=True)
    torch.testing.assert_close(x_, flip(expected_x), rtol=1e-12, atol=1e-12, msg="scanned x")
    torch.testing.assert_close(a_, expected_a, rtol=1e-12, atol=1e-14, msg="prefix products a")


def test_bad_arguments_fail_clearly():
    inputs = make_inputs((2, 5, 3), "random")
    la, b, h0 = (inputs[n] for n in ARGS)
    for bad in (0, 3, 48, True, 2.0):
        with pytest.raises(ValueError, match="chunk_size must be a"):
            scan_chunked(la, b, h0, chunk_size=bad)
    with pytest.raises(ValueError, match="share one shape"):
        scan_chunked(la, b[:, :4], h0)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        scan_chunked(la, b, h0[:1])
    with pytest.raises(ValueError, match="dtypes differ"):
        scan_recurrent(la, b.float(), h0)


# --------------------------------------------------------------------------- the transition given directly
LINEAR_ARGS = ("a", "b", "initial_state")


def make_linear_inputs(shape: tuple[int, ...], kind: str, dtype=torch.float64, seed: int = 0) -> dict:
    """Transitions ``a``: signed in [-1, 1] ("signed"), |a| within 1e-6 of 1 with random signs
    ("signed_near_one", parity-like over long sequences), tiny ("near_zero") or complex in the unit disk."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    if kind == "signed":
        a = 2.0 * u - 1.0
    elif kind == "signed_near_one":
        a = sign * (1.0 - 1e-6 * u)
    elif kind == "near_zero":
        a = sign * 1e-30 * u
    elif kind == "complex":
        phase = 2 * torch.pi * torch.rand(shape, generator=g, dtype=torch.float64)
        a = torch.polar(u.sqrt(), phase)
    else:
        raise ValueError(kind)
    complex_ = kind == "complex"
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.complex128 if complex_ else torch.float64)  # noqa: E731
    inputs = {"a": a, "b": rnd(*shape), "initial_state": rnd(shape[0], *shape[2:])}
    cdtype = {torch.float64: torch.complex128, torch.float32: torch.complex64}[dtype] if complex_ else dtype
    return {n: t.to(cdtype) for n, t in inputs.items()}


def run_linear(form: Callable, inputs: dict) -> dict[str, torch.Tensor]:
    """Outputs and gradients; complex tensors travel as real ``[..., 2]`` views so that every gradient
    (of the real and imaginary parts) is compared too (``outputs_and_grads`` differentiates real tensors)."""
    if not inputs["a"].is_complex():
        return outputs_and_grads(
            form, {n: inputs[n] for n in LINEAR_ARGS}, output_names=["output h", "final state h_last"]
        )

    def real_form(*tensors):
        return tuple(map(torch.view_as_real, form(*map(torch.view_as_complex, tensors))))

    real_inputs = {n: torch.view_as_real(inputs[n]) for n in LINEAR_ARGS}
    return outputs_and_grads(real_form, real_inputs, output_names=["output h", "final state h_last"])


LINEAR_CASES = [
    ((2, 1, 3), 16, "signed"),
    ((2, 5, 3), 1, "signed"),
    ((3, 37, 4, 2), 8, "signed"),
    ((1, 63, 5), 16, "complex"),
    ((2, 32, 3), 16, "complex"),
    ((2, 100, 3), 64, "near_zero"),
    ((2, 1500, 2), 64, "signed_near_one"),
    ((1, 700, 3), 32, "complex"),
]


@pytest.mark.parametrize("shape,chunk_size,kind", LINEAR_CASES)
def test_linear_chunked_matches_reference(shape, chunk_size, kind):
    inputs = make_linear_inputs(shape, kind)
    expected = run_linear(linear_scan_recurrent, inputs)
    actual = run_linear(partial(linear_scan_chunked, chunk_size=chunk_size), inputs)
    assert_all_close(actual, expected, 1e-10, f"linear_scan_chunked{shape} C={chunk_size} {kind}")


@pytest.mark.parametrize("kind", ["signed", "complex"])
def test_linear_chunked_float32_matches_float64_reference(kind):
    shape = (2, 77, 8)
    expected = run_linear(linear_scan_recurrent, make_linear_inputs(shape, kind))
    actual = run_linear(partial(linear_scan_chunked, chunk_size=16), make_linear_inputs(shape, kind, torch.float32))
    for name, t in actual.items():
        assert t.dtype == torch.float32, f"{name} is {t.dtype}, expected float32 (complex64 as pairs)"
    expected = {n: t.float() for n, t in expected.items()}
    assert_all_close(actual, expected, 1e-4, f"float32 linear_scan_chunked ({kind})")


def test_linear_scan_equals_log_scan_for_positive_decays():
    inputs = make_inputs((2, 29, 3), "random")
    want = run(partial(scan_chunked, chunk_size=8), inputs)
    linear = {"a": inputs["log_a"].exp(), "b": inputs["b"], "initial_state": inputs["initial_state"]}
    got = run_linear(partial(linear_scan_chunked, chunk_size=8), linear)
    for name in ("output h", "final state h_last", "grad of b", "grad of initial_state"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)
    # d/d(log a) = a * d/da
    torch.testing.assert_close(got["grad of a"] * linear["a"], want["grad of log_a"], rtol=1e-10, atol=1e-12)


def test_parity_with_signed_transitions():
    """a_t = -1 on odd tokens, +1 on even ones: h flips sign once per odd token (what [0, 1] decays cannot)."""
    bits = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1] * 9], dtype=torch.float64)  # [1, 99]
    a = (1 - 2 * bits).unsqueeze(-1)  # [1, 99, 1]
    h, _ = linear_scan_chunked(a, torch.zeros_like(a), torch.ones(1, 1, dtype=torch.float64), chunk_size=8)
    parity = bits.cumsum(1) % 2
    torch.testing.assert_close(h[..., 0], 1 - 2 * parity, rtol=0, atol=0)


def test_linear_scan_accepts_broadcast_transition():
    """A time-invariant transition may come as an expanded view; its gradient is summed over [B, T]."""
    g = torch.Generator().manual_seed(5)
    lam = torch.polar(torch.rand(4, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64))
    b = torch.randn(2, 21, 4, generator=g, dtype=torch.complex128)
    h0 = torch.randn(2, 4, generator=g, dtype=torch.complex128)
    grads = []
    for form in (linear_scan_recurrent, partial(linear_scan_chunked, chunk_size=4)):
        leaf = lam.clone().requires_grad_(True)
        h, _ = form(leaf.expand(2, 21, 4), b, h0)
        grads.append(torch.autograd.grad(h.abs().square().sum(), leaf)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["signed", "complex"])
def test_gradcheck_linear_chunked(kind):
    inputs = make_linear_inputs((2, 11, 2), kind)
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in LINEAR_ARGS)
    assert torch.autograd.gradcheck(lambda *a: linear_scan_chunked(*a, chunk_size=4), leaves)


def test_linear_bad_arguments_fail_clearly():
    inputs = make_linear_inputs((2, 5, 3), "signed")
    a, b, h0 = (inputs[n] for n in LINEAR_ARGS)
    with pytest.raises(ValueError, match="a and b must share one shape"):
        linear_scan_chunked(a, b[:, :4], h0)
    with pytest.raises(ValueError, match="dtypes differ"):
        linear_scan_chunked(a, b.to(torch.complex128), h0)
    with pytest.raises(ValueError, match="log_a must be real"):
        c = a.to(torch.complex128)
        scan_chunked(c, c, h0.to(torch.complex128))
