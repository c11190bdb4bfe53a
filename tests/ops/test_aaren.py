"""Aaren ops: the chunkwise prefix scan equals the loop over the paper's operator (outputs, final
(m, u, w) and every gradient) and plain softmax attention of one query over each prefix; the operator is
associative; extreme scores stay finite in float32."""

from __future__ import annotations

import math

import pytest
import torch

from seqmix.ops.aaren import aaren_recurrent, aaren_scan, aaren_step
from seqmix.testing import assert_all_close, assert_close, outputs_and_grads

F64 = torch.float64


def _inputs(B, H, T, V, *, carried: bool, scale=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, T, generator=g, dtype=F64) * scale
    v = torch.randn(B, H, T, V, generator=g, dtype=F64)
    state = (torch.zeros(B, H, dtype=F64), torch.zeros(B, H, dtype=F64), torch.zeros(B, H, V, dtype=F64))
    if carried:
        _, state = aaren_recurrent(torch.randn(B, H, 4, generator=g, dtype=F64) * scale,
                                   torch.randn(B, H, 4, V, generator=g, dtype=F64), state)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return {"s": cast(s), "v": cast(v), "initial_state": tuple(map(cast, state))}


@pytest.mark.parametrize("carried", [False, True], ids=["empty", "carried"])
@pytest.mark.parametrize("T,C", [(1, 4), (7, 4), (16, 4), (33, 8), (20, 64)])
def test_scan_matches_loop(T, C, carried):
    inputs = _inputs(2, 3, T, 5, carried=carried)
    names = ["o", "m", "u", "w"]
    want = outputs_and_grads(aaren_recurrent, inputs, output_names=names)
    got = outputs_and_grads(lambda s, v, st: aaren_scan(s, v, st, C), inputs, output_names=names)
    assert_all_close(got, want, 1e-10, f"aaren_scan T={T} C={C} carried={carried}", 1e-3)


def test_outputs_are_softmax_attention_over_each_prefix():
    inputs = _inputs(2, 2, 12, 3, carried=False, seed=1)
    s, v = inputs["s"], inputs["v"]
    mask = torch.ones(12, 12, dtype=torch.bool).tril()
    want = (s[..., None, :].expand(-1, -1, 12, -1).masked_fill(~mask, float("-inf"))).softmax(-1) @ v
    for name, form in (("scan", lambda: aaren_scan(s, v, inputs["initial_state"], 5)),
                       ("loop", lambda: aaren_recurrent(s, v, inputs["initial_state"]))):
        o, (m, u, w) = form()
        assert_close(f"{name}: o_t vs softmax over the prefix", o, want, 1e-12)
        assert_close(f"{name}: m_T is the running max", m, s.amax(-1), 0.0)
        assert_close(f"{name}: w_T / u_T is the last output", w / u[..., None], want[:, :, -1], 1e-12)


def test_operator_is_associative():
    """Folding a sequence in two pieces, carrying (m, u, w), gives the state of one pass."""
    inputs = _inputs(2, 2, 21, 4, carried=True, seed=2)
    s, v, st = inputs["s"], inputs["v"], inputs["initial_state"]
    _, whole = aaren_recurrent(s, v, st)
    _, first = aaren_scan(s[..., :8], v[:, :, :8], st, 4)
    _, second = aaren_scan(s[..., 8:], v[:, :, 8:], first, 4)
    for name, a, b in zip("muw", second, whole):
        assert_close(f"{name} after two pieces vs one pass", a, b, 1e-12)


def test_extreme_scores_stay_finite_in_float32():
    """Scores of +-2000 (exp overflows float32 past 89) over 500 tokens: finite outputs and gradients."""
    inputs64 = _inputs(2, 2, 500, 4, carried=True, scale=2000.0, seed=3)
    inputs32 = {k: (tuple(t.float() for t in v) if isinstance(v, tuple) else v.float()) for k, v in inputs64.items()}
    got = outputs_and_grads(lambda s, v, st: aaren_scan(s, v, st, 64), inputs32, output_names=["o", "m", "u", "w"])
    for name, t in got.items():
        assert torch.isfinite(t).all(), f"non-finite {name}"
    want, _ = aaren_recurrent(inputs64["s"], inputs64["v"], inputs64["initial_state"])
    assert_close("float32 scan vs float64 loop", got["o"].double(), want, 1e-5)


def test_step_from_empty_state_ignores_stale_max():
    """u = 0 marks an empty prefix: whatever m holds, the first token's output is its value."""
    v_t = torch.randn(1, 2, 3, dtype=F64)
    state = (torch.full((1, 2), 1e4, dtype=F64), torch.zeros(1, 2, dtype=F64), torch.zeros(1, 2, 3, dtype=F64))
    o_t, (m, u, _) = aaren_step(torch.tensor([[-500.0, 3.0]], dtype=F64), v_t, state)
    assert_close("o_1 = v_1", o_t, v_t, 0.0)
    assert torch.equal(u, torch.ones_like(u)) and torch.equal(m, torch.tensor([[-500.0, 3.0]], dtype=F64))


# ---------------------------------------------------------------- the mixer
def test_mixer_matches_learned_query_attention():
    """Aaren end to end: o_t = softmax over j <= t of (q_h . W_k x_j / sqrt(K)), applied to W_v x_j."""
    from seqmix.mixers.aaren import Aaren

    torch.manual_seed(0)
    m = Aaren(16, n_heads=2, chunk_size=4).double()
    x = torch.randn(2, 13, 16, dtype=F64)
    k = m.kv.k_proj(x).view(2, 13, 2, 8).transpose(1, 2)  # [B, H, T, K]
    v = m.kv.v_proj(x).view(2, 13, 2, 8).transpose(1, 2)
    s = torch.einsum("bhtk,hk->bht", k, m.query) / math.sqrt(8)
    mask = torch.ones(13, 13, dtype=torch.bool).tril()
    o = s[..., None, :].expand(-1, -1, 13, -1).masked_fill(~mask, float("-inf")).softmax(-1) @ v
    want = m.kv.o_proj(o.transpose(1, 2).reshape(2, 13, 16))
    for mode in m.modes:
        y, state = m(x, mode=mode)
        assert_close(f"Aaren mixer ({mode}) vs formula", y, want, 1e-10)
        assert m.state_size(13) == m.state_size(10**6) == sum(t[0].numel() for t in state) == 2 * (2 + 8)
