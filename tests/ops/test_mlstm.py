"""mLSTM cell: the chunkwise form equals the stabilised recurrence (outputs, final C, n, m and every
gradient), the recurrence equals the paper's unstabilised formula, extreme gates stay finite."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.mlstm import mlstm_chunk, mlstm_recurrent, mlstm_stabiliser
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64
ARGS = ("q", "k", "v", "log_i", "log_f", "initial_state")


def make_inputs(B=2, H=2, T=9, K=4, V=5, regime="typical", forget="sigmoid", seed=0, dtype=F64, fresh=False):
    """Gates: typical (xLSTM init ranges), extreme (input pre-activations +-60, forget gates e^-30 or
    exp gates up to e^+8), or low_m: a state whose stabiliser stays near -800 (exp(-m) overflows
    float64)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    log_i = rnd(B, H, T)
    f_pre = 3.0 + rnd(B, H, T, scale=2.0)
    if regime == "extreme":
        log_i = rnd(B, H, T, scale=60.0)
        f_pre = rnd(B, H, T, scale=30.0) if forget == "sigmoid" else rnd(B, H, T, scale=8.0)
    if regime == "low_m":  # input gates that never win the max: m_t stays near m_0 - t * 0.05
        log_i = rnd(B, H, T) - 1000.0
    log_f = F.logsigmoid(f_pre) if forget == "sigmoid" else f_pre
    m0 = rnd(B, H) - (800.0 if regime == "low_m" else 0.0)
    state = (rnd(B, H, K, V), rnd(B, H, K).abs(), m0)
    if fresh:
        state = (torch.zeros(B, H, K, V, dtype=F64), torch.zeros(B, H, K, dtype=F64), torch.zeros(B, H, dtype=F64))
    inputs = {"q": rnd(B, H, T, K), "k": rnd(B, H, T, K) / K**0.5, "v": rnd(B, H, T, V), "log_i": log_i, "log_f": log_f}
    inputs = {n: t.to(dtype) for n, t in inputs.items()}
    inputs["initial_state"] = tuple(t.to(dtype) for t in state)
    return inputs


def run(form, inputs):
    return outputs_and_grads(form, {n: inputs[n] for n in ARGS}, output_names=["h", "final C", "final n", "final m"])


CASES = [(2, 1, 16), (2, 6, 1), (1, 7, 64), (2, 32, 16), (2, 63, 16), (1, 37, 8)]


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
@pytest.mark.parametrize("B,T,C", CASES)
def test_chunk_matches_reference(B, T, C, forget):
    inputs = make_inputs(B, T=T, forget=forget)
    expected = run(mlstm_recurrent, inputs)
    actual = run(partial(mlstm_chunk, chunk_size=C), inputs)
    assert_all_close(actual, expected, 1e-10, f"mlstm_chunk B={B} T={T} C={C} forget={forget}")


@pytest.mark.parametrize("regime,forget", [("extreme", "sigmoid"), ("extreme", "exp"), ("low_m", "sigmoid")])
def test_extreme_gates_stay_finite_and_equal(regime, forget):
    """Input gates up to e^+-180, forget gates e^-90 or e^+24 per step, or a stabiliser near -800
    (exp(-m) overflows even float64): every exponent stays <= 0 in both forms."""
    inputs = make_inputs(1, T=300, regime=regime, forget=forget, seed=1)
    expected = run(mlstm_recurrent, inputs)
    actual = run(partial(mlstm_chunk, chunk_size=32), inputs)
    for name, t in {**expected, **actual}.items():
        assert torch.isfinite(t).all(), f"{name} has non-finite values ({regime}, {forget})"
    assert_all_close(actual, expected, 1e-9, f"mlstm_chunk with {regime} gates ({forget})", grad_floor=1e-9)


def test_float32_chunk_matches_float64_reference():
    expected = {n: t.float() for n, t in run(mlstm_recurrent, make_inputs(2, T=70, seed=2)).items()}
    actual = run(partial(mlstm_chunk, chunk_size=16), make_inputs(2, T=70, seed=2, dtype=torch.float32))
    assert all(t.dtype == torch.float32 for t in actual.values())
    assert_all_close(actual, expected, 1e-4, "float32 mlstm_chunk vs float64 reference")


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_reference_equals_unstabilised_paper_formula(forget):
    """With eps = 0 the stabilised cell equals the paper's eq. 19-21 without stabilisation:
    C_t = f_t C_{t-1} + i_t k v^T, n_t = f_t n_{t-1} + i_t k, h_t = C_t^T q / max(|n_t . q|, 1)."""
    inputs = make_inputs(2, T=12, forget=forget, seed=3, fresh=True)
    q, k, v, log_i, log_f = (inputs[n] for n in ARGS[:5])
    h, state = mlstm_recurrent(q, k, v, log_i, log_f, inputs["initial_state"], eps=0.0)
    C = torch.zeros(2, 2, 4, 5, dtype=F64)
    n = torch.zeros(2, 2, 4, dtype=F64)
    for t in range(12):
        f, i = log_f[:, :, t].exp()[..., None], log_i[:, :, t].exp()[..., None]
        C = f[..., None] * C + (i * k[:, :, t]).unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        n = f * n + i * k[:, :, t]
        qn = (q[:, :, t] * n).sum(-1, keepdim=True)
        want = torch.einsum("bhk,bhkv->bhv", q[:, :, t], C) / torch.clamp(qn.abs(), min=1.0)
        torch.testing.assert_close(h[:, :, t], want, rtol=1e-11, atol=1e-12, msg=f"h[:, :, {t}]")
    m = state.m[..., None]
    torch.testing.assert_close(state.C * m[..., None].exp(), C, rtol=1e-11, atol=1e-12, msg="final C * exp(m)")
    torch.testing.assert_close(state.n * m.exp(), n, rtol=1e-11, atol=1e-12, msg="final n * exp(m)")


def test_stabiliser_solves_its_recurrence():
    inputs = make_inputs(2, T=45, regime="extreme", seed=4)
    log_i, log_f, m0 = inputs["log_i"], inputs["log_f"], inputs["initial_state"][2]
    m, want = m0, []
    for t in range(45):
        m = torch.maximum(log_f[:, :, t] + m, log_i[:, :, t])
        want.append(m)
    for C in (1, 8, 64):
        got = mlstm_stabiliser(log_i, log_f, m0, C)
        torch.testing.assert_close(got, torch.stack(want, -1), rtol=1e-12, atol=1e-10, msg=f"chunk {C}")


def test_bad_arguments_fail_clearly():
    inputs = make_inputs(2, T=5)
    args = [inputs[n] for n in ARGS]
    with pytest.raises(ValueError, match="log_f must have shape"):
        mlstm_chunk(*args[:4], args[4][:, :, :3], args[5])
    with pytest.raises(ValueError, match="m must have shape"):
        mlstm_recurrent(*args[:5], (args[5][0], args[5][1], args[5][2][:1]))
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm_chunk(*args, chunk_size=0)


# ---------------------------------------------------------------- the mLSTM mixer built on this op
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 3}, "n_heads must divide"),
        ({"qkv_block_size": 5}, "qkv_block_size"),
        ({"proj_factor": 1.3}, "whole number"),
        ({"forget_gate": "tanh"}, "forget_gate"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_mlstm_constructor_validation(kwargs, match):
    from seqmix.mixers.mlstm import MLSTM

    with pytest.raises(ValueError, match=match):
        MLSTM(16, **kwargs)


def test_mlstm_init_follows_the_package():
    from seqmix.mixers.mlstm import MLSTM

    m = MLSTM(256)
    assert (m.inner, m.n_heads, m.head_dim) == (512, 4, 128)
    torch.testing.assert_close(m.fgate.bias.detach(), torch.linspace(3.0, 6.0, 4), msg="forget gate biases")
    assert (m.fgate.weight == 0).all() and (m.igate.weight == 0).all(), "gate weights start at 0"
    assert (m.skip == 1).all() and (m.norm_weight == 1).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"bias": True}, {"qkv_block_size": 8, "n_heads": 2}, {"qkv_block_size": 3}, {"qkv_block_size": 16, "n_heads": 4}],
)
def test_mlstm_cell_inputs_equal_the_plain_formula(kwargs):
    """The tiled block-diagonal projections, the key scale on the weight and the gate weights folded
    through the block-diagonal maps equal the block's formula written out (per-block einsum, three gate
    projections of [q, k, v]), with non-zero biases."""
    from seqmix.mixers.mlstm import MLSTM

    torch.manual_seed(0)
    d_model = 12 if kwargs.get("qkv_block_size") == 3 else 16
    m = MLSTM(d_model, **kwargs).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x_m, x_c = torch.randn(2, 5, m.inner, dtype=F64), torch.randn(2, 5, m.inner, dtype=F64)

    def blockdiag(x, w, which):
        y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (w.shape[0], -1)), w).flatten(-2)
        return y if m.qkv_bias is None else y + m.qkv_bias[which]

    q, k, v = blockdiag(x_c, m.q_weight, 0), blockdiag(x_c, m.k_weight, 1), blockdiag(x_m, m.v_weight, 2)
    qkv = torch.cat((q, k, v), dim=-1)
    log_i, f = m.igate(qkv), m.fgate(qkv)
    heads = (m.n_heads, m.head_dim)
    k_scaled = k.unflatten(-1, heads) / m.head_dim**0.5
    want = (q.unflatten(-1, heads), k_scaled, v.unflatten(-1, heads), log_i, F.logsigmoid(f))
    got = m._cell_inputs(x_m, x_c, F64)
    for name, g, w in zip(("q", "k", "v", "log_i", "log_f"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)
    # the chunkwise form's layout, [B, H, T, ...], made from the tiles directly (blocks of 16 straddle heads)
    got = m._cell_inputs(x_m, x_c, F64, heads_first=True)
    for name, g, w in zip(("q", "k", "v", "log_i", "log_f"), got, want):
        torch.testing.assert_close(g, w.transpose(1, 2), rtol=1e-12, atol=1e-12, msg=f"{name}, heads first")
