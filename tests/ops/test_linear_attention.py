"""Linear attention: every fast form against the reference loop, and the loop against the formula."""

from __future__ import annotations

import pytest
import torch

from seqmix.mixers.linear_attention import LinearAttention
from seqmix.ops.linear_attention import (
    _linear_attention_chunk_autograd,
    elu_feature_map,
    linear_attention_chunk,
    linear_attention_parallel,
    linear_attention_recurrent,
)
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64


def _inputs(B=2, H=2, T=9, K=4, V=3, logit_scale=1.0, seed=0):
    """Feature-mapped q, k (positive), values and a non-zero initial state (z0 > 0 as a real prefix gives)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    inp = {
        "q": elu_feature_map(rnd(B, H, T, K) * logit_scale),
        "k": elu_feature_map(rnd(B, H, T, K) * logit_scale),
        "v": rnd(B, H, T, V),
        "S0": rnd(B, H, K, V),
        "z0": rnd(B, H, K).abs() + 0.5,
    }
    return {n: t.detach().requires_grad_(True) for n, t in inp.items()}


def _run(fn, inp, **kw):
    """Outputs, final state and the gradients of every input for one fixed random loss."""
    return outputs_and_grads(
        lambda q, k, v, S0, z0: fn(q, k, v, (S0, z0), **kw), inp, output_names=["o", "S", "z"]
    )


FAST = {
    "parallel": lambda *a, chunk_size, **kw: linear_attention_parallel(*a, **kw),
    "chunk": linear_attention_chunk,
}


@pytest.mark.parametrize("form", list(FAST))
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
@pytest.mark.parametrize("T,C", [(1, 4), (5, 1), (9, 4), (16, 4), (37, 8), (7, 64)])
def test_fast_forms_match_reference(form, normalize, T, C):
    inp = _inputs(T=T)
    want = _run(linear_attention_recurrent, inp, normalize=normalize)
    got = _run(FAST[form], inp, chunk_size=C, normalize=normalize)
    assert_all_close(got, want, 1e-10, f"{form} T={T} C={C} normalize={normalize}")


@pytest.mark.parametrize("form", list(FAST))
@pytest.mark.parametrize("logit_scale", [1e-3, 30.0], ids=["tiny_logits", "huge_logits"])
def test_fast_forms_with_extreme_features(form, logit_scale):
    # huge logits: phi(x) spans ~1e-13..30, the normaliser is dominated by a few keys and tiny for others
    inp = _inputs(T=21, K=8, V=5, logit_scale=logit_scale, seed=3)
    want = _run(linear_attention_recurrent, inp)
    assert_all_close(_run(FAST[form], inp, chunk_size=8), want, 1e-9, f"{form} logit_scale={logit_scale}")


def test_tiny_normaliser_uses_eps():
    # keys and queries ~1e-30: the normaliser is ~0 and eps keeps the output finite
    inp = _inputs(T=6, seed=4)
    q, k = inp["q"].detach() * 1e-30, inp["k"].detach() * 1e-30
    zeros = (torch.zeros(2, 2, 4, 3, dtype=F64), torch.zeros(2, 2, 4, dtype=F64))
    for name, fn in [("recurrent", linear_attention_recurrent), ("parallel", linear_attention_parallel)]:
        o, _ = fn(q, k, inp["v"], zeros, eps=1e-6)
        assert torch.isfinite(o).all() and o.abs().max() < 1e-40, f"o ({name}) with a vanishing normaliser"
    o, _ = linear_attention_chunk(q, k, inp["v"], zeros, chunk_size=4, eps=1e-6)
    assert torch.isfinite(o).all() and o.abs().max() < 1e-40, "o (chunk) with a vanishing normaliser"


@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
def test_reference_matches_paper_formula(normalize):
    """o_i = sum_{j<=i} (q_i.k_j) v_j / (sum_{j<=i} q_i.k_j + eps), plus the initial state's terms."""
    inp = {n: t.detach() for n, t in _inputs(T=7, seed=5).items()}
    q, k, v, S0, z0 = inp["q"], inp["k"], inp["v"], inp["S0"], inp["z0"]
    o, (S, z) = linear_attention_recurrent(q, k, v, (S0, z0), normalize=normalize, eps=1e-6)
    for i in range(7):
        w = torch.einsum("bhk,bhjk->bhj", q[:, :, i], k[:, :, : i + 1])  # [B, H, i+1]
        num = torch.einsum("bhj,bhjv->bhv", w, v[:, :, : i + 1]) + torch.einsum("bhk,bhkv->bhv", q[:, :, i], S0)
        den = w.sum(-1) + (q[:, :, i] * z0).sum(-1)
        want = num / (den[..., None] + 1e-6) if normalize else num
        torch.testing.assert_close(o[:, :, i], want, rtol=1e-12, atol=1e-12, msg=f"o[:, :, {i}] vs formula")
    torch.testing.assert_close(S, S0 + torch.einsum("bhtk,bhtv->bhkv", k, v), msg="final S vs formula")
    torch.testing.assert_close(z, z0 + k.sum(2), msg="final z vs formula")


def test_chunk_is_exactly_causal():
    """Changing the last token leaves every earlier output bit-identical (no leak through prefix sums)."""
    inp = {n: t.detach() for n, t in _inputs(T=12, seed=6).items()}
    o1, _ = linear_attention_chunk(inp["q"], inp["k"], inp["v"], (inp["S0"], inp["z0"]), chunk_size=4)
    k2, v2 = inp["k"].clone(), inp["v"].clone()
    k2[:, :, -1] += 3.0
    v2[:, :, -1] -= 3.0
    o2, _ = linear_attention_chunk(inp["q"], k2, v2, (inp["S0"], inp["z0"]), chunk_size=4)
    assert torch.equal(o1[:, :, :-1], o2[:, :, :-1]), "chunk form: earlier outputs changed"


def test_elu_feature_map_is_positive():
    x = torch.tensor([-1e4, -30.0, -1.0, 0.0, 2.0], dtype=F64)
    phi = elu_feature_map(x)
    assert (phi >= 0).all() and phi[-1] == 3.0 and phi[3] == 1.0, f"phi = {phi}"


def test_chunk_rejects_bad_chunk_size():
    inp = {n: t.detach() for n, t in _inputs(T=3).items()}
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention_chunk(inp["q"], inp["k"], inp["v"], (inp["S0"], inp["z0"]), chunk_size=0)


@pytest.mark.parametrize("chunk", [linear_attention_chunk, _linear_attention_chunk_autograd])
def test_chunk_rejects_an_empty_sequence(chunk):
    inp = {n: t.detach()[:, :, :0] if n in "qkv" else t.detach() for n, t in _inputs(T=3).items()}
    with pytest.raises(ValueError, match="at least one time step, got T = 0"):
        chunk(inp["q"], inp["k"], inp["v"], (inp["S0"], inp["z0"]))


# ---------------------------------------------------------------- mixer-level checks
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 3}, "n_heads"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"normalize": 1}, "normalize"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearAttention(16, **kwargs)


def test_mixer_state_layout_and_size():
    m = LinearAttention(16, n_heads=2)
    S, z = m.init_state(3)
    assert S.shape == (3, 2, 8, 8) and z.shape == (3, 2, 8), "state layout"
    _, (S, z) = m(torch.randn(3, 5, 16))
    assert m.state_size(5) == m.state_size(10_000) == (S.numel() + z.numel()) // 3, "state_size"
