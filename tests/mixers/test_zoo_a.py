"""Zoo A mixers (minlstm, rglru, hgrn, lru, s4d, lmu; negative eigenvalues for mamba): what the shared harness
cannot see — the papers' initialisations, gate bounds, the range of the transitions with
``negative_eigenvalues``, extreme gates, and option errors. Equivalence of the forms is the harness's job."""

from __future__ import annotations

import math

import pytest
import torch

from seqmix import build_mixer
from seqmix.mixers.rglru import sqrt_bounded_derivative
from seqmix.testing import fixed_weights


# --------------------------------------------------------------------------- minlstm
def test_minlstm_extreme_gates_stay_finite_and_convex():
    """Huge gate pre-activations: normalised gates in log space give finite outputs and gradients, and h stays
    a convex combination of the initial state and the candidates (|h| <= max |h0|, |h~|)."""
    torch.manual_seed(0)
    m = build_mixer("minlstm", d_model=8, chunk_size=8).double()
    with torch.no_grad():
        m.in_proj.weight[: 2 * m.d_hidden] *= 300.0  # forget and input gate pre-activations ~ +-1000
    x = fixed_weights((2, 50, 8), torch.float64, seed=1).requires_grad_(True)
    h0 = fixed_weights((2, m.d_hidden), torch.float64, seed=2)
    y, h = m(x, h0)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    h_tilde = m.in_proj(x)[..., 2 * m.d_hidden :]
    bound = torch.maximum(h0.abs(), h_tilde.abs().amax(1))
    assert (h.abs() <= bound + 1e-9).all()


def test_minlstm_negative_eigenvalues_range():
    """2 f' - 1 reaches -1 where the forget gate closes and the input gate opens, +1 the other way round."""
    m = build_mixer("minlstm", d_model=4, expansion=1, negative_eigenvalues=True).double()
    with torch.no_grad():
        m.in_proj.weight.zero_()
        m.in_proj.bias.zero_()
        m.in_proj.bias[:4] = torch.tensor([-40.0, 40.0, 0.0, 0.0], dtype=torch.float64)  # forget gate
        m.in_proj.bias[4:8] = torch.tensor([40.0, -40.0, 0.0, 5.0], dtype=torch.float64)  # input gate
    a, _ = m._gates(torch.zeros(1, 4, dtype=torch.float64), torch.float64)
    torch.testing.assert_close(a[0, :3], torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)
    assert -1.0 < a[0, 3] < 0.0


# --------------------------------------------------------------------------- rglru
def test_rglru_init_puts_a_to_the_c_in_the_papers_range():
    m = build_mixer("rglru", d_model=64)
    a_c = torch.sigmoid(m.Lambda.double()) ** m.c
    assert a_c.min() >= 0.9 - 1e-9 and a_c.max() <= 0.999 + 1e-9
    assert a_c.max() - a_c.min() > 0.05  # spread over the range, not a constant
    assert m.d_rnn == round(4 * 64 / 3) and m.c == 8.0 and m.d_conv == 4


def test_sqrt_bounded_derivative():
    x = torch.tensor([0.0, 1e-12, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
    y = sqrt_bounded_derivative(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y.detach(), x.detach().sqrt())
    torch.testing.assert_close(g, torch.tensor([1000.0, 1000.0, 1.0, 0.5], dtype=torch.float64))


def test_rglru_negative_eigenvalues_range():
    """a' = 2 a_t - 1 spans (-1, 1): a gate r_t ~ 1 with a small a = sigmoid(Lambda) gives a' < 0, and the
    input normalisation is sqrt(1 - a'^2)."""
    torch.manual_seed(0)
    m = build_mixer("rglru", d_model=8, negative_eigenvalues=True).double()
    with torch.no_grad():
        m.Lambda.fill_(-3.0)  # a = sigmoid(-3) ~ 0.047
        m.gate_bias.fill_(20.0)  # r_t = i_t = 1
    u = fixed_weights((3, m.d_rnn), torch.float64, seed=1)
    a, b = m._recurrence_inputs(u, torch.float64)
    expected = 2 * torch.sigmoid(torch.tensor(-3.0, dtype=torch.float64)) ** 8 - 1
    torch.testing.assert_close(a, expected.expand_as(a))
    torch.testing.assert_close(b, torch.sqrt(1 - a**2) * u)


# --------------------------------------------------------------------------- hgrn
@pytest.mark.parametrize("layer_idx,n_layers", [(0, 4), (1, 4), (3, 4)])
def test_hgrn_forget_gate_lower_bound(layer_idx, n_layers):
    torch.manual_seed(0)
    m = build_mixer("hgrn", d_model=8, layer_idx=layer_idx, n_layers=n_layers).double()
    with torch.no_grad():
        m.in_proj.weight.mul_(50.0)  # saturate the forget gate both ways
    log_lam, b, _ = m._recurrence_inputs(fixed_weights((4, 30, 8), torch.float64, seed=1), torch.float64)
    lam = log_lam.exp()
    gamma = layer_idx / n_layers
    assert lam.min() >= gamma - 1e-12 and lam.max() <= 1.0
    assert lam.min() < gamma + 1e-3  # the bound is reached, not an artefact of mild gates
    assert torch.isfinite(b).all()


def test_hgrn_negative_eigenvalues_flip_the_state():
    """Layer 0 (no lower bound) with a closed forget gate: transition 2 lam - 1 ~ -1 flips h every token."""
    torch.manual_seed(0)
    m = build_mixer("hgrn", d_model=4, negative_eigenvalues=True).double()
    with torch.no_grad():
        m.in_proj.weight.zero_()
        m.in_proj.weight[4:8].fill_(-100.0)  # forget pre-activation -100 * sum(x) for x > 0
    x = torch.full((1, 6, 4), 1.0, dtype=torch.float64)
    h0 = torch.ones(1, 4, dtype=torch.float64)
    _, h = m(x, h0)
    torch.testing.assert_close(h, h0)  # six flips
    _, h = m(x[:, :5], h0)
    torch.testing.assert_close(h, -h0)


def test_hgrn_bad_layer_index():
    with pytest.raises(ValueError, match=r"layer_idx must be an int in \[0, n_layers - 1\]"):
        build_mixer("hgrn", d_model=8, layer_idx=4, n_layers=4)


# --------------------------------------------------------------------------- lru
def test_lru_init_ring_and_normalisation():
    m = build_mixer("lru", d_model=16, d_state=512, r_min=0.4, r_max=0.9, max_phase=1.0)
    lam = m.eigenvalues(torch.float64)
    assert lam.abs().min() >= 0.4 - 1e-9 and lam.abs().max() <= 0.9 + 1e-9
    assert lam.angle().min() > 0 and lam.angle().max() <= 1.0 + 1e-9
    # uniform on the ring's area: |lambda|^2 is uniform in [r_min^2, r_max^2], mean (0.16 + 0.81) / 2
    assert abs(lam.abs().square().mean().item() - 0.485) < 0.03
    torch.testing.assert_close(m.gamma_log.double().exp(), torch.sqrt(1 - lam.abs() ** 2), rtol=1e-5, atol=1e-6)


def test_lru_negative_eigenvalues_same_layer_at_init():
    """With the same seed both parameterisations start as the same layer; only the path to -1 differs."""
    x = fixed_weights((2, 30, 16), torch.float64, seed=3)
    torch.manual_seed(0)
    plain = build_mixer("lru", d_model=16, d_state=8).double()
    torch.manual_seed(0)
    signed = build_mixer("lru", d_model=16, d_state=8, negative_eigenvalues=True).double()
    # equal up to the float32 rounding of the parameters (nu_log differs: it encodes (|lambda| + 1) / 2)
    lam, lam_plain = signed.eigenvalues(torch.float64), plain.eigenvalues(torch.float64)
    torch.testing.assert_close(lam, lam_plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(signed(x)[0], plain(x)[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # growing nu_log drives the eigenvalue to -exp(i theta), a real -1 for theta ~ 0
        signed.nu_log.fill_(10.0)
        signed.theta_log.fill_(-30.0)
    torch.testing.assert_close(signed.eigenvalues(torch.float64), torch.full((8,), -1.0 + 0j, dtype=torch.complex128))


# --------------------------------------------------------------------------- s4d
@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_init(init):
    N = 16
    m = build_mixer("s4d", d_model=4, d_state=N, init=init)
    n = torch.arange(N // 2, dtype=torch.float64)
    expected = math.pi * n if init == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)
    torch.testing.assert_close(m.A_imag.double(), expected.expand(4, -1).float().double())
    torch.testing.assert_close(m.log_A_real.exp(), torch.full((4, N // 2), 0.5))
    dt = m.log_dt.exp()
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)


def test_s4d_bad_options():
    with pytest.raises(ValueError, match="init must be one of 'lin', 'inv'"):
        build_mixer("s4d", d_model=4, init="legs")
    with pytest.raises(ValueError, match="d_state must be even"):
        build_mixer("s4d", d_model=4, d_state=5)


# --------------------------------------------------------------------------- lmu
def test_lmu_memory_holds_a_delayed_window():
    """The point of the Legendre memory (Voelker et al. 2019): linear readouts of m_t by the Legendre
    polynomials recover the window of the last theta inputs; at its ends, sum_i m_i ~ u_{t - theta} and
    sum_i (-1)^i m_i ~ u_t (Legendre polynomials are +-1 at the ends of their interval)."""
    q, theta = 12, 20
    m = build_mixer("lmu", d_model=4, order=q, theta=float(theta)).double()
    Abar, Bbar = m.system(torch.device("cpu"), torch.float64)
    u = torch.sin(torch.arange(300, dtype=torch.float64) / 10.0)  # smooth on the window's scale
    mems = []
    mem = torch.zeros(q, dtype=torch.float64)
    for t in range(len(u)):
        mem = Abar @ mem + Bbar * u[t]
        mems.append(mem)
    mems = torch.stack(mems[100:])  # [200, q], past the transient
    signs = (-1.0) ** torch.arange(q, dtype=torch.float64)
    newest = (mems @ signs - u[100:]).abs().max()
    oldest = (mems.sum(-1) - u[100 - theta : 300 - theta]).abs().max()
    assert newest < 1e-2 and oldest < 0.1, f"readout errors: newest {newest:.3g}, oldest {oldest:.3g}"


def test_lmu_defaults():
    m = build_mixer("lmu", d_model=64)
    assert (m.order, m.theta, m.memory_d, m.d_hidden) == (256, 256.0, 1, 64)
    assert m.state_size(4096) == 256


# --------------------------------------------------------------------------- mamba
def test_mamba_negative_eigenvalues_option():
    torch.manual_seed(0)
    plain = build_mixer("mamba", d_model=8, d_state=4).double()
    torch.manual_seed(0)
    signed = build_mixer("mamba", d_model=8, d_state=4, negative_eigenvalues=True).double()
    x = fixed_weights((1, 12, 8), torch.float64, seed=1)
    y0, _ = plain(x)
    y1, _ = signed(x)
    assert (y0 - y1).abs().max() > 1e-6  # the transition changed
    with pytest.raises(ValueError, match="negative_eigenvalues must be True or False"):
        build_mixer("mamba", d_model=8, negative_eigenvalues=1)
