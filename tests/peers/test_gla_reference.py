"""Our key-wise gated linear attention op (``seqmix.ops.gla``) against flash-linear-attention's references.

- ``fla.ops.gla.naive.naive_recurrent_gla``: the recurrence behind fla's GLA layer and, with ``k = 1 - f``
  and ``log_alpha = log f``, behind its HGRN2 layer;
- ``fla.ops.rwkv6.recurrent_naive.naive_recurrent_rwkv6`` and ``fla.ops.rwkv6.chunk_naive.naive_chunk_rwkv6``:
  RWKV-6's recurrence with the bonus ``u`` (the output reads the state before the current token).

The same tensors go into both; outputs and final states agree. fla computes in float32 and scales queries
by ``K^-0.5`` inside (we pass ``q * K^-0.5`` to ours, as our GLA mixer does). fla's package ``__init__``
imports triton, which CPU-only machines lack; the naive files need only torch (and einops), so they are
loaded directly from the installed package. Skipped when fla is not installed.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.gla import gla_chunk, gla_recurrent
from seqmix.testing import load_peer_file, assert_close


def _load(relative: str, name: str):
    return load_peer_file("fla", relative)


gla_naive = _load("ops/gla/naive.py", "_fla_gla_naive")
FORMS = [partial(gla_chunk, chunk_size=16), gla_recurrent]
FORM_IDS = ["chunk", "loop"]


def _inputs(B: int, H: int, T: int, K: int, V: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, T, K, generator=g), torch.randn(B, H, T, K, generator=g)
    v = torch.randn(B, H, T, V, generator=g)
    gate = torch.randn(B, H, T, K, generator=g) * 2
    return q, k, v, gate, torch.randn(B, H, K, V, generator=g)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("B,H,T,K,V", [(2, 2, 37, 8, 6), (1, 1, 1, 4, 4), (2, 3, 100, 16, 8)])
def test_gla_matches_fla_naive(form, B, H, T, K, V):
    q, k, v, gate, s0 = _inputs(B, H, T, K, V, seed=T)
    log_alpha = F.logsigmoid(gate) / 16  # GLA's gate with tau = 16
    # fla's layout is [B, T, H, *]
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    o_ref, s_ref = gla_naive.naive_recurrent_gla(t(q), t(k), t(v), t(log_alpha), s0, output_final_state=True)
    o, s = form(q * K**-0.5, k, v, log_alpha, s0)
    assert_close("GLA outputs vs fla naive_recurrent_gla", o, t(o_ref), 1e-5)
    assert_close("GLA final state vs fla naive_recurrent_gla", s, s_ref, 1e-5)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_hgrn2_recurrence_matches_fla_naive(form):
    """HGRN2's recurrence as fla runs it: keys 1 - f, decay f (lower bound 0.3, in log space)."""
    B, H, T, E = 2, 2, 45, 8
    q, _, v, f_logits, s0 = _inputs(B, H, T, E, E, seed=3)
    log_f = torch.logaddexp(torch.tensor(0.3).log(), torch.tensor(0.7).log() + F.logsigmoid(f_logits))
    k = -torch.expm1(log_f)
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    o_ref, s_ref = gla_naive.naive_recurrent_gla(t(q), t(k), t(v), t(log_f), s0, output_final_state=True)
    o, s = form(q * E**-0.5, k, v, log_f, s0)
    assert_close("HGRN2 outputs vs fla naive_recurrent_gla", o, t(o_ref), 1e-5)
    assert_close("HGRN2 final state vs fla naive_recurrent_gla", s, s_ref, 1e-5)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("B,H,T,K", [(2, 2, 37, 8), (1, 1, 1, 4), (2, 2, 96, 16)])
def test_rwkv6_matches_fla_naive(form, B, H, T, K):
    rwkv6_naive = _load("ops/rwkv6/recurrent_naive.py", "_fla_rwkv6_naive")
    q, k, v, d, s0 = _inputs(B, H, T, K, K, seed=T + 1)
    log_w = -torch.exp(d - 2)  # RWKV-6's decay w = exp(-exp(d))
    u = torch.randn(H, K, generator=torch.Generator().manual_seed(5))
    o_ref, s_ref = rwkv6_naive.naive_recurrent_rwkv6(
        q, k, v, log_w, u, scale=1.0, initial_state=s0, output_final_state=True
    )
    o, s = form(q, k, v, log_w, s0, bonus=u)
    assert_close("RWKV-6 outputs vs fla naive_recurrent_rwkv6", o, o_ref, 1e-5)
    assert_close("RWKV-6 final state vs fla naive_recurrent_rwkv6", s, s_ref, 1e-5)
    if T % 32 == 0:
        # fla's chunked reference needs whole chunks, starts from a zero state and takes differences of
        # cumulative log-decays, which lose float32 precision after decays as strong as those above
        # (down to exp(-680) per step): compare it on RWKV-6's initial decay range instead
        chunk_naive = _load("ops/rwkv6/chunk_naive.py", "_fla_rwkv6_chunk_naive")
        log_w = -torch.exp(d.clamp(-3, 3) - 3)
        o_chunk = chunk_naive.naive_chunk_rwkv6(q, k, v, log_w, u, chunk_size=32)
        o_zero, _ = form(q, k, v, log_w, torch.zeros_like(s0), bonus=u)
        assert_close("RWKV-6 outputs vs fla naive_chunk_rwkv6", o_zero, o_chunk, 1e-5)
