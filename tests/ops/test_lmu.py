"""LMU memory ops: the delay system and its discretisation match the paper's definitions, the impulse
response equals its definition, and the FFT-convolution form equals the reference loop (memories, final
memory and gradients), with and without a carried memory, for awkward and long sequences."""

from __future__ import annotations

import pytest
import torch

from seqmix.ops.lmu import (
    legendre_delay_system,
    lmu_conv,
    lmu_discretize,
    lmu_impulse_response,
    lmu_recurrent,
)
from seqmix.testing import assert_all_close, outputs_and_grads


def test_delay_system_matches_the_paper():
    """Voelker et al. 2019, Eq. 2: A[i, j] = (2i+1) (-1 if i < j else (-1)^(i-j+1)), B[i] = (2i+1) (-1)^i."""
    A, B = legendre_delay_system(3)
    expected_A = torch.tensor([[-1.0, -1.0, -1.0], [3.0, -3.0, -3.0], [-5.0, 5.0, -5.0]], dtype=torch.float64)
    torch.testing.assert_close(A, expected_A, rtol=0, atol=0)
    torch.testing.assert_close(B, torch.tensor([1.0, -3.0, 5.0], dtype=torch.float64), rtol=0, atol=0)


def test_discretization_is_zero_order_hold():
    """Abar = expm(A / theta); Bbar = (A / theta)^-1 (Abar - I) B / theta."""
    q, theta = 6, 10.0
    A, B = legendre_delay_system(q)
    Abar, Bbar = lmu_discretize(q, theta)
    torch.testing.assert_close(Abar, torch.linalg.matrix_exp(A / theta), rtol=1e-12, atol=1e-13)
    expected_B = torch.linalg.solve(A / theta, (Abar - torch.eye(q, dtype=torch.float64)) @ (B / theta))
    torch.testing.assert_close(Bbar, expected_B, rtol=1e-10, atol=1e-12)


def test_discretization_matches_scipy():
    """The discretisation keras-lmu and LMUFormer use: scipy.signal.cont2discrete(..., method="zoh")."""
    signal = pytest.importorskip("scipy.signal")
    q, theta = 6, 10.0
    A, B = legendre_delay_system(q)
    Abar, Bbar = lmu_discretize(q, theta)
    Ad, Bd, *_ = signal.cont2discrete((A.numpy() / theta, B.numpy()[:, None] / theta, None, None), dt=1.0, method="zoh")
    torch.testing.assert_close(Abar, torch.from_numpy(Ad), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Bbar, torch.from_numpy(Bd[:, 0]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 7, 64, 100])
def test_impulse_response_equals_definition(length):
    Abar, Bbar = lmu_discretize(5, 8.0)
    expected = [Bbar]
    for _ in range(length - 1):
        expected.append(Abar @ expected[-1])
    torch.testing.assert_close(lmu_impulse_response(Abar, Bbar, length), torch.stack(expected), rtol=1e-10, atol=1e-12)


def make_inputs(B: int, T: int, C: int, q: int, theta: float, carried: bool, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Abar, Bbar = lmu_discretize(q, theta)
    m0 = torch.randn(B, C, q, generator=g, dtype=torch.float64)
    if not carried:
        m0 = torch.zeros_like(m0)
    u = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    inputs = {"u": u, "Abar": Abar, "Bbar": Bbar, "initial_state": m0}
    return {n: t.to(dtype) for n, t in inputs.items()}


def run(form, inputs: dict) -> dict[str, torch.Tensor]:
    """Memories, final memory and gradients w.r.t. u and the initial memory ((Abar, Bbar) are fixed)."""
    fixed = (inputs["Abar"], inputs["Bbar"])
    leaves = {"u": inputs["u"], "initial_state": inputs["initial_state"]}
    return outputs_and_grads(lambda u, m0: form(u, *fixed, m0), leaves, output_names=["memories m", "final memory"])


CASES = [  # (B, T, C, q, theta, carried)
    (2, 1, 1, 4, 5.0, True),
    (2, 1, 2, 4, 5.0, False),
    (1, 7, 2, 6, 10.0, True),
    (2, 63, 1, 8, 30.0, True),
    (3, 64, 2, 3, 2.0, False),
    (1, 1000, 1, 16, 100.0, True),
]


@pytest.mark.parametrize("B,T,C,q,theta,carried", CASES)
def test_conv_matches_reference(B, T, C, q, theta, carried):
    inputs = make_inputs(B, T, C, q, theta, carried)
    expected = run(lmu_recurrent, inputs)
    actual = run(lmu_conv, inputs)
    assert_all_close(actual, expected, 1e-10, f"lmu_conv B={B} T={T} C={C} q={q} carried={carried}")


def test_precomputed_impulse_response_may_be_longer():
    inputs = make_inputs(2, 21, 2, 5, 9.0, True)
    H = lmu_impulse_response(inputs["Abar"], inputs["Bbar"], 64)
    args = [inputs[n] for n in ("u", "Abar", "Bbar", "initial_state")]
    for got, want in zip(lmu_conv(*args, impulse_response=H), lmu_conv(*args)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="impulse_response must be"):
        lmu_conv(*args, impulse_response=H[:20])


def test_zero_memory_skips_nothing_it_needs():
    """The free response is skipped for a zero memory without gradient; with a gradient it still flows."""
    inputs = make_inputs(1, 30, 1, 6, 12.0, carried=False)
    want = run(lmu_recurrent, inputs)
    got = run(lmu_conv, inputs)  # outputs_and_grads makes the zero memory a leaf that requires grad
    assert_all_close(got, want, 1e-10, "zero memory with gradient")
    with torch.no_grad():
        m, m_last = lmu_conv(*(inputs[n] for n in ("u", "Abar", "Bbar", "initial_state")))
    torch.testing.assert_close(m, want["memories m"], rtol=1e-10, atol=1e-12)


def test_float32_long_sequence_matches_float64():
    """Order 64 over 4096 steps in float32 (matrices from float64): close to the float64 loop, finite."""
    inputs64 = make_inputs(1, 4096, 1, 64, 512.0, True)
    with torch.no_grad():
        want, _ = lmu_recurrent(*(inputs64[n] for n in ("u", "Abar", "Bbar", "initial_state")))
        got, _ = lmu_conv(*(inputs64[n].float() for n in ("u", "Abar", "Bbar", "initial_state")))
    assert torch.isfinite(got).all()
    err = (got.double() - want).abs().max() / want.abs().max()
    assert err < 1e-4, f"float32 lmu_conv relative error {err:.2e}"


def test_bad_arguments_fail_clearly():
    inputs = make_inputs(2, 5, 2, 4, 5.0, True)
    u, Abar, Bbar, m0 = (inputs[n] for n in ("u", "Abar", "Bbar", "initial_state"))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        lmu_conv(u, Abar, Bbar, m0[:, :1])
    with pytest.raises(ValueError, match="Abar must be"):
        lmu_recurrent(u, Abar[:3], Bbar, m0)
    with pytest.raises(ValueError, match=r"u must have shape \[B, T, C\]"):
        lmu_conv(u[:, :0], Abar, Bbar, m0)
