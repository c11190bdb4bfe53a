"""Scalar-decay linear attention (SSD): the chunkwise form equals the reference loop (outputs, final state
and every gradient), the loop equals the closed form, signed decays keep their parity, extreme decays stay
finite, and backward keeps no per-token state."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seqmix.ops.ssd import segsum, ssd_chunk, ssd_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64
ARGS = ("q", "k", "v", "log_a", "initial_state")


def make_inputs(B=2, H=3, Hq=3, Hk=3, T=9, K=4, V=5, regime="typical", signed=False, seed=0, dtype=F64):
    """Decays: typical (a in ~[0.1, 1]), strong (log a ~ -50..-250), weak (1 - a ~ 1e-9)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    log_a = -torch.rand(B, H, T, generator=g, dtype=F64) * 2.0
    if regime == "strong":
        log_a = -50.0 - 200.0 * torch.rand(B, H, T, generator=g, dtype=F64)
    elif regime == "weak":
        log_a = log_a * 1e-9
    inputs = {"q": rnd(B, Hq, T, K), "k": rnd(B, Hk, T, K), "v": rnd(B, H, T, V), "log_a": log_a,
              "initial_state": rnd(B, H, K, V)}  # fmt: skip
    inputs = {n: t.to(dtype) for n, t in inputs.items()}
    sign = torch.where(torch.rand(B, H, T, generator=g) < 0.4, -1.0, 1.0).to(dtype) if signed else None
    return inputs, sign


def run(form, inputs, sign, **kw):
    fn = lambda *a: form(*a, sign=sign, **kw)  # noqa: E731
    return outputs_and_grads(fn, {n: inputs[n] for n in ARGS}, output_names=["o", "final state"])


# (B, H, Hq, Hk, T, chunk): T = 1, C = 1, C > T, T a multiple / not a multiple of C, B = 1, shared q/k
CASES = [
    (2, 3, 3, 3, 1, 16),
    (2, 3, 3, 3, 6, 1),
    (1, 2, 2, 2, 7, 64),
    (2, 3, 1, 1, 32, 16),
    (2, 3, 1, 1, 63, 16),
    (1, 2, 1, 2, 37, 8),
    (2, 2, 2, 1, 20, 6),
]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("B,H,Hq,Hk,T,C", CASES)
def test_chunk_matches_reference(B, H, Hq, Hk, T, C, signed):
    inputs, sign = make_inputs(B, H, Hq, Hk, T, signed=signed)
    expected = run(ssd_recurrent, inputs, sign)
    actual = run(partial(ssd_chunk, chunk_size=C), inputs, sign)
    assert_all_close(actual, expected, 1e-10, f"ssd_chunk B={B} H={H} Hq={Hq} Hk={Hk} T={T} C={C} signed={signed}")


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("regime", ["strong", "weak"])
def test_extreme_decays_over_long_sequences(regime, signed):
    """Decays of e^-250 per token (every exponent masked before exp) and within 1e-9 of 1, T = 700."""
    inputs, sign = make_inputs(1, 2, 1, 1, 700, regime=regime, signed=signed, seed=1)
    expected = run(ssd_recurrent, inputs, sign)
    actual = run(partial(ssd_chunk, chunk_size=64), inputs, sign)
    for name, t in actual.items():
        assert torch.isfinite(t).all(), f"{name} has non-finite values ({regime} decays)"
    assert_all_close(actual, expected, 1e-10, f"ssd_chunk with {regime} decays")


def test_chunk_float32_matches_float64_reference():
    inputs, sign = make_inputs(2, 2, 1, 1, 77, seed=2)
    expected = {n: t.float() for n, t in run(ssd_recurrent, inputs, sign).items()}
    inputs32 = {n: t.float() for n, t in inputs.items()}
    actual = run(partial(ssd_chunk, chunk_size=16), inputs32, sign)
    assert all(t.dtype == torch.float32 for t in actual.values())
    assert_all_close(actual, expected, 1e-4, "float32 ssd_chunk vs float64 reference")


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_reference_equals_closed_form(signed):
    """o_t = sum_{j<=t} (prod_{j<s<=t} a_s) (q_t . k_j) v_j + (prod_{s<=t} a_s) S0^T q_t."""
    inputs, sign = make_inputs(2, 2, 2, 2, 8, signed=signed, seed=3)
    q, k, v, log_a, S0 = (inputs[n] for n in ARGS)
    a = log_a.exp() * (sign if signed else 1.0)  # [B, H, T]
    o, S = ssd_recurrent(q, k, v, log_a, S0, sign=sign)
    for t in range(8):
        want = torch.einsum("bhk,bhkv->bhv", q[:, :, t], S0) * a[:, :, : t + 1].prod(-1, keepdim=True)
        for j in range(t + 1):
            decay = a[:, :, j + 1 : t + 1].prod(-1)  # [B, H]
            want = want + (decay * (q[:, :, t] * k[:, :, j]).sum(-1))[..., None] * v[:, :, j]
        torch.testing.assert_close(o[:, :, t], want, rtol=1e-12, atol=1e-12, msg=f"o[:, :, {t}] vs closed form")


def test_negative_decay_tracks_parity():
    """With a_t = -1 (log a = 0, sign -1) the state flips sign every token: parity survives any length."""
    B, H, T, K, V = 1, 1, 1001, 2, 2
    q = torch.zeros(B, H, T, K, dtype=F64)
    q[..., 0] = 1.0
    k = torch.zeros(B, H, T, K, dtype=F64)
    k[:, :, 0, 0] = 1.0  # only the first token writes
    v = torch.ones(B, H, T, V, dtype=F64)
    log_a = torch.zeros(B, H, T, dtype=F64)
    sign = -torch.ones(B, H, T, dtype=F64)
    o, S = ssd_chunk(q, k, v, log_a, torch.zeros(B, H, K, V, dtype=F64), chunk_size=64, sign=sign)
    want = torch.tensor([(-1.0) ** t for t in range(T)], dtype=F64)
    torch.testing.assert_close(o[0, 0, :, 0], want, rtol=0, atol=1e-12, msg="parity of the output")
    assert S[0, 0, 0, 0].item() == 1.0, "the state after an odd number of flips"


def test_segsum_is_the_segment_sum():
    x = torch.randn(3, 6, dtype=F64)
    s = segsum(x)
    for i in range(6):
        for j in range(6):
            want = x[:, j + 1 : i + 1].sum(-1) if j <= i else torch.full((3,), float("-inf"), dtype=F64)
            torch.testing.assert_close(s[:, i, j], want, rtol=1e-14, atol=1e-14)


def test_chunk_is_exactly_causal():
    inputs, sign = make_inputs(1, 2, 1, 1, 12, seed=4)
    o1, _ = ssd_chunk(*(inputs[n] for n in ARGS), chunk_size=4)
    inputs["k"][:, :, -1] += 3.0
    inputs["v"][:, :, -1] -= 3.0
    o2, _ = ssd_chunk(*(inputs[n] for n in ARGS), chunk_size=4)
    assert torch.equal(o1[:, :, :-1], o2[:, :, :-1]), "earlier outputs changed"


def test_backward_keeps_no_per_token_state():
    """Autograd must not hold a [B, H, T, K, V] tensor: inputs, C x C blocks and one state per chunk."""
    B, H, T, K, V, C = 2, 2, 256, 8, 8, 16
    inputs, _ = make_inputs(B, H, 1, 1, T, K=K, V=V)
    leaves = [inputs[n].requires_grad_(True) for n in ARGS]
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ssd_chunk(*leaves, chunk_size=C)
    allowed = max(B * H * T * max(K, V, C), B * H * (T // C) * K * V)
    assert allowed < B * H * T * K * V
    too_big = [tuple(s) for s in saved if s.numel() > allowed]
    assert not too_big, f"autograd keeps tensors of shapes {too_big}"


def test_bad_arguments_fail_clearly():
    inputs, _ = make_inputs(2, 3, 3, 3, 5)
    args = [inputs[n] for n in ARGS]
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunk(*args, chunk_size=0)
    with pytest.raises(ValueError, match="q must have shape"):
        ssd_chunk(args[0][:, :2], *args[1:])
    with pytest.raises(ValueError, match="log_a must have shape"):
        ssd_recurrent(*args[:3], args[3][:, :, :2], args[4])
    with pytest.raises(ValueError, match="sign must have shape"):
        ssd_chunk(*args, sign=torch.ones(2, 3, 4, dtype=F64))


# ---------------------------------------------------------------- the Mamba-2 mixer built on this op
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 3}, "n_heads must divide d_inner"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"negative_eigenvalues": 1}, "negative_eigenvalues"),
        ({"A_init_range": (0.0, 16.0)}, "A_init_range"),
        ({"dt_min": 0.1, "dt_max": 0.01}, "dt_max"),
    ],
)
def test_mamba2_constructor_validation(kwargs, match):
    from seqmix.mixers.mamba2 import Mamba2

    with pytest.raises(ValueError, match=match):
        Mamba2(16, **kwargs)


def test_mamba2_init_follows_the_paper():
    from seqmix.mixers.mamba2 import Mamba2

    torch.manual_seed(0)
    m = Mamba2(256)
    assert (m.n_heads, m.head_dim, m.d_state) == (8, 64, 128), "head dimension 64, d_state 128"
    A = m.A_log.detach().exp()
    assert ((A >= 1.0) & (A <= 16.0)).all(), "-A ~ U[1, 16]"
    dt = torch.nn.functional.softplus(m.dt_bias.detach())
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all(), "softplus(dt_bias) in [1e-3, 0.1]"
    assert (m.D.detach() == 1).all()


def test_mamba2_negative_eigenvalues_decay():
    """log|a| and sign reproduce a = 2 exp(dt A) - 1 in [-1, 1], also where a crosses 0 and near 1."""
    from seqmix.mixers.mamba2 import Mamba2

    m = Mamba2(16, negative_eigenvalues=True).double()
    special = torch.tensor([0.0, 0.6931471805599453], dtype=F64)  # a = 1 and a = 0 (dt A = -log 2)
    dtA = -torch.cat((torch.logspace(-12, 2, 200, dtype=F64), special))
    log_abs, sign = m._decay(dtA)
    a = sign * log_abs.exp()
    want = 2 * dtA.exp() - 1
    assert torch.isfinite(log_abs).all() and (a <= 1).all() and (a >= -1).all()
    torch.testing.assert_close(a, want, rtol=1e-12, atol=1e-15)  # atol: want itself cancels near a = 0
    assert (a < 0).any() and (a > 0).any(), "both signs occur over this range of dt A"
