"""Our forgetting attention against flash-linear-attention's reference op
``fla.ops.forgetting_attn.naive.naive_forgetting_attn`` (the FoX op: logits ``q.k * scale + F_i - F_j``,
``F`` the cumulative log forget gate). The same tensors go into both (fla computes in float32); outputs
agree. Skipped when fla is not installed.

fla's package ``__init__`` may import triton, which CPU-only machines can lack; the naive reference file
needs only torch and einops, so it is loaded directly from the installed package.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.fox import fox_parallel, fox_recurrent
from seqmix.testing import load_peer_file, assert_close


def _load(relative: str, name: str):
    return load_peer_file("fla", relative)


def _qkv(B, T, H, K, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, K, generator=g) for _ in range(3)], g


@pytest.mark.parametrize("B,T,H,K", [(2, 37, 3, 16), (1, 1, 2, 8), (2, 130, 2, 32)])
def test_fox_matches_fla_naive_forgetting_attn(B, T, H, K):
    naive = _load("ops/forgetting_attn/naive.py", "_fla_forgetting_attn_naive")
    (q, k, v), g = _qkv(B, T, H, K, seed=T)
    log_f = F.logsigmoid(torch.randn(B, T, H, generator=g) * 2 + 1)  # [B, T, H], fla's g
    want = naive.naive_forgetting_attn(q, k, v, log_f)  # [B, T, H, K]
    heads = lambda t: t.transpose(1, 2)  # noqa: E731  [B, T, H, K] -> [B, H, T, K]
    empty = (torch.zeros(B, H, 0, K), torch.zeros(B, H, 0, K), torch.zeros(B, H, 0))
    for form in (fox_parallel, fox_recurrent):
        o, _ = form(heads(q), heads(k), heads(v), log_f.transpose(1, 2), empty)
        assert_close(f"{form.__name__} vs fla naive_forgetting_attn", heads(o), want, 1e-5)
