"""Diagonal LTI SSM ops (S4D): the FFT-convolution form equals the reference loop (outputs, final state and
the gradients of every input, the complex ones as real/imaginary pairs), the kernel equals its definition,
and strong decays over long sequences stay finite."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from seqmix.ops.ssm_conv import fft_causal_conv, ssm_diag_conv, ssm_diag_kernel, ssm_diag_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

NAMES = ("u", "log_z", "b", "c", "initial_state")


def make_inputs(B: int, T: int, H: int, N: int, regime: str, dtype=torch.float64, seed: int = 0) -> dict:
    """S4D-like systems: dt in [1e-3, 0.1], Re A = -1/2, Im A = pi n ("typical"); dt up to 100 (strong
    decay, z^l underflows to 0: "strong"); dt = 1e-4 (z within 1e-4 of the unit circle: "slow")."""
    g = torch.Generator().manual_seed(seed)
    log_dt = torch.rand(H, generator=g, dtype=torch.float64) * math.log(100) + math.log(1e-3)
    if regime == "strong":
        log_dt = log_dt + math.log(1000)
    elif regime == "slow":
        log_dt = torch.full((H,), math.log(1e-4), dtype=torch.float64)
    A = torch.complex(-0.5 * (1 + torch.rand(H, N, generator=g, dtype=torch.float64)),
                      math.pi * torch.arange(N, dtype=torch.float64).expand(H, N))
    log_z = A * log_dt.exp().unsqueeze(-1)
    c = torch.randn(H, N, generator=g, dtype=torch.complex128)
    inputs = {
        "u": torch.randn(B, T, H, generator=g, dtype=torch.float64),
        "log_z": log_z,
        "b": torch.expm1(log_z) / A,  # zero-order hold with B = 1
        "c": c,
        "initial_state": torch.randn(B, H, N, generator=g, dtype=torch.complex128),
    }
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return {n: t.to(cdtype if t.is_complex() else dtype) for n, t in inputs.items()}


def run(form, inputs: dict) -> dict[str, torch.Tensor]:
    """Outputs and gradients of every input; complex tensors travel as real [..., 2] pairs."""
    names = list(inputs)
    complex_ = {n for n in names if inputs[n].is_complex()}

    def real_form(*tensors):
        args = [torch.view_as_complex(t) if n in complex_ else t for n, t in zip(names, tensors)]
        y, x = form(*args)
        return y, torch.view_as_real(x)

    real = {n: torch.view_as_real(t) if n in complex_ else t for n, t in inputs.items()}
    return outputs_and_grads(real_form, real, output_names=["output y", "final state"])


CASES = [  # (B, T, H, N, chunk_size, regime): T = 1, T < C, T not a multiple of C, C = 1, long T
    (2, 1, 3, 2, 16, "typical"),
    (1, 7, 2, 4, 16, "typical"),
    (2, 63, 3, 4, 16, "typical"),
    (2, 64, 2, 3, 16, "typical"),
    (1, 20, 2, 2, 1, "typical"),
    (2, 45, 3, 4, 8, "strong"),
    (1, 300, 2, 4, 32, "slow"),
    (1, 2000, 2, 3, 64, "typical"),
]


@pytest.mark.parametrize("B,T,H,N,chunk_size,regime", CASES)
def test_conv_matches_reference(B, T, H, N, chunk_size, regime):
    inputs = make_inputs(B, T, H, N, regime)
    expected = run(ssm_diag_recurrent, inputs)
    actual = run(partial(ssm_diag_conv, chunk_size=chunk_size), inputs)
    assert_all_close(actual, expected, 1e-10, f"ssm_diag_conv B={B} T={T} C={chunk_size} {regime}")


def test_conv_float32_matches_float64_reference():
    expected = run(ssm_diag_recurrent, make_inputs(2, 77, 3, 4, "typical"))
    actual = run(partial(ssm_diag_conv, chunk_size=16), make_inputs(2, 77, 3, 4, "typical", dtype=torch.float32))
    for name, t in actual.items():
        assert t.dtype == torch.float32, f"{name} is {t.dtype}, expected float32"
    assert_all_close(actual, {n: t.float() for n, t in expected.items()}, 1e-4, "float32 ssm_diag_conv")


@pytest.mark.parametrize("length,chunk_size", [(1, 64), (37, 8), (128, 64)])
def test_kernel_equals_definition(length, chunk_size):
    inputs = make_inputs(1, 1, 3, 4, "typical")
    cb = inputs["c"] * inputs["b"]
    powers = torch.exp(inputs["log_z"].unsqueeze(-1) * torch.arange(length, dtype=torch.float64))  # [H, N, L]
    expected = 2 * (cb.unsqueeze(-1) * powers).sum(1).real
    kernel = ssm_diag_kernel(inputs["log_z"], cb, length, chunk_size)
    torch.testing.assert_close(kernel, expected, rtol=1e-12, atol=1e-12)


def test_fft_causal_conv_equals_direct_sum():
    g = torch.Generator().manual_seed(1)
    u, k = torch.randn(2, 3, 29, generator=g, dtype=torch.float64), torch.randn(3, 29, generator=g, dtype=torch.float64)
    expected = torch.stack([sum(k[:, t - s] * u[..., s] for s in range(t + 1)) for t in range(29)], dim=-1)
    torch.testing.assert_close(fft_causal_conv(u, k), expected, rtol=1e-12, atol=1e-12)


def test_strong_decay_long_sequence_is_finite():
    """z^l underflows to exactly 0 for most l: no inf/nan in outputs, state or gradients."""
    inputs = make_inputs(1, 4096, 2, 4, "strong", dtype=torch.float32)
    result = run(partial(ssm_diag_conv, chunk_size=64), inputs)
    for name, t in result.items():
        assert torch.isfinite(t).all(), f"{name} has non-finite values"


def test_bad_arguments_fail_clearly():
    inputs = make_inputs(2, 5, 3, 4, "typical")
    args = [inputs[n] for n in NAMES]
    with pytest.raises(ValueError, match=r"log_z must have shape \[H=3, N\]"):
        ssm_diag_conv(args[0], args[1][:2], *args[2:])
    with pytest.raises(ValueError, match="c must have log_z's shape"):
        ssm_diag_conv(*args[:3], args[3][:, :2], args[4])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ssm_diag_recurrent(*args[:4], args[4][:1])
    with pytest.raises(ValueError, match="u must be real"):
        ssm_diag_conv(args[0].to(torch.complex128), *args[1:])
