"""sLSTM ops: the fast sequential form equals the reference loop (outputs, states, every gradient); the
stabiliser is a pure gauge (the unstabilised formula gives the same h); extreme gates stay finite."""

from __future__ import annotations

import pytest
import torch

from seqmix.ops.slstm import slstm_recurrent, slstm_sequential
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64
NAMES = ["h_all", "h", "c", "n", "m"]


def _inputs(B, T, NH, DH, *, carried: bool, gate_scale=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(B, T, NH, 4, DH, generator=g, dtype=F64) * gate_scale
    R = torch.randn(NH, DH, 4, DH, generator=g, dtype=F64) / DH**0.5
    zeros = torch.zeros(B, NH, DH, dtype=F64)
    state = (zeros, zeros, zeros, zeros)
    if carried:  # whatever the cell holds after a random prefix
        _, state = slstm_recurrent(torch.randn(B, 3, NH, 4, DH, generator=g, dtype=F64), R, state)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return {"pre": cast(pre), "R": cast(R), "initial_state": tuple(map(cast, state))}


@pytest.mark.parametrize("carried", [False, True], ids=["empty", "carried"])
@pytest.mark.parametrize("B,T,NH,DH", [(2, 13, 3, 4), (1, 1, 1, 5), (3, 30, 2, 2)])
def test_sequential_matches_reference(B, T, NH, DH, carried):
    inputs = _inputs(B, T, NH, DH, carried=carried)
    want = outputs_and_grads(slstm_recurrent, inputs, output_names=NAMES)
    got = outputs_and_grads(slstm_sequential, inputs, output_names=NAMES)
    assert_all_close(got, want, 1e-10, f"slstm_sequential B={B} T={T} carried={carried}")


def test_stabiliser_is_a_gauge():
    """With moderate gates, the unstabilised recurrence (exp input gate, no m) gives the same h."""
    inputs = _inputs(2, 25, 2, 3, carried=False, seed=3)
    pre, R = inputs["pre"], inputs["R"]
    h = c = n = torch.zeros(2, 2, 3, dtype=F64)
    hs = []
    for t in range(pre.shape[1]):
        i, f, z, o = (pre[:, t] + torch.einsum("bhd,hdge->bhge", h, R)).unbind(2)
        c = torch.sigmoid(f) * c + torch.exp(i) * torch.tanh(z)
        n = torch.sigmoid(f) * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        hs.append(h)
    h_all, (h_T, c_T, n_T, m_T) = slstm_sequential(pre, R, inputs["initial_state"])
    assert_close("h vs unstabilised sLSTM", h_all, torch.stack(hs, 1), 1e-12)
    assert_close("c exp(m) vs unstabilised c", c_T * torch.exp(m_T), c, 1e-12)
    assert_close("n exp(m) vs unstabilised n", n_T * torch.exp(m_T), n, 1e-12)


def test_extreme_gates_stay_finite_in_float32():
    """Input-gate pre-activations of +-300 (exp overflows float32 at 89) over 400 steps: finite, and
    float32 matches float64 (the gates are always <= 1 after stabilisation)."""
    inputs64 = _inputs(2, 400, 2, 4, carried=False, gate_scale=300.0, seed=4)
    inputs32 = {k: (tuple(t.float() for t in v) if isinstance(v, tuple) else v.float()) for k, v in inputs64.items()}
    pre = inputs32["pre"].requires_grad_(True)
    h32, state32 = slstm_sequential(pre, inputs32["R"], inputs32["initial_state"])
    h32.sum().backward()
    assert torch.isfinite(h32).all() and all(torch.isfinite(s).all() for s in state32), "non-finite forward"
    assert torch.isfinite(pre.grad).all(), "non-finite gradient"
    h64, _ = slstm_sequential(inputs64["pre"], inputs64["R"], inputs64["initial_state"])
    assert_close("float32 vs float64 under extreme gates", h32.double(), h64, 1e-4)


def test_empty_state_matches_first_step_convention():
    """From the zero state m_1 = i~ (the xlstm package's first step), so n_1 = 1 and c_1 = tanh(z~)."""
    inputs = _inputs(2, 1, 2, 3, carried=False, seed=5)
    _, (h, c, n, m) = slstm_sequential(inputs["pre"], torch.zeros_like(inputs["R"]), inputs["initial_state"])
    i, f, z, o = inputs["pre"][:, 0].unbind(2)
    assert_close("m_1", m, i, 0.0)
    assert_close("n_1", n, torch.ones_like(n), 0.0)
    assert_close("c_1", c, torch.tanh(z), 1e-15)


# ---------------------------------------------------------------- the mixer
def test_mixer_initialisation_follows_the_xlstm_package():
    from seqmix.mixers.slstm import SLSTM

    m = SLSTM(32, n_heads=4)
    ramp = torch.tensor([5 - 12 * (k / 7) ** 0.3 for k in range(8)])
    assert torch.allclose(m.bias[:, 1], ramp.expand(4, 8), atol=1e-6), "power-law forget-gate bias per head"
    assert m.bias[:, [0, 2, 3]].abs().max() == 0 and m.R.abs().max() == 0, "other biases and R start at zero"
    assert abs(m.w_in.std().item() - (2 / (5 * 32)) ** 0.5) < 0.02, "small init of the headwise projections"


@pytest.mark.parametrize("kwargs,match", [
    ({"n_heads": 3}, "n_heads"), ({"d_conv": -1}, "d_conv"), ({"recurrent_init": "ones"}, "recurrent_init"),
    ({"norm_eps": 0}, "norm_eps"),
])
def test_mixer_constructor_validation(kwargs, match):
    from seqmix.mixers.slstm import SLSTM

    with pytest.raises(ValueError, match=match):
        SLSTM(16, **kwargs)
