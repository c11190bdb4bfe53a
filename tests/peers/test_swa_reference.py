"""Our sliding-window attention against flash-linear-attention's reference op
``fla.ops.attn.naive.naive_parallel_attn`` with ``window_size`` (query ``i`` sees keys ``i - W < j <= i``).
The same tensors go into both; outputs agree. Skipped when fla is not installed.

fla's package ``__init__`` may import triton, which CPU-only machines can lack; the naive reference file
needs only torch, so it is loaded directly from the installed package.
"""

from __future__ import annotations


import pytest
import torch

from seqmix.ops.sliding_window import swa_chunk, swa_parallel, swa_recurrent
from seqmix.testing import load_peer_file, assert_close


def _load(relative: str, name: str):
    return load_peer_file("fla", relative)


def _qkv(B, T, H, K, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, K, generator=g) for _ in range(3)], g


@pytest.mark.parametrize("B,T,H,K,W", [(2, 37, 3, 16, 5), (1, 1, 2, 8, 3), (2, 130, 2, 32, 64), (1, 20, 1, 4, 1)])
def test_swa_matches_fla_naive_windowed_attention(B, T, H, K, W):
    naive = _load("ops/attn/naive.py", "_fla_attn_naive")
    (q, k, v), _ = _qkv(B, T, H, K, seed=W)
    want, _ = naive.naive_parallel_attn(q, k, v, window_size=W)  # [B, T, H, K]
    heads = lambda t: t.transpose(1, 2)  # noqa: E731
    empty = (torch.zeros(B, H, 0, K), torch.zeros(B, H, 0, K))
    forms = {
        "swa_chunk": lambda *a: swa_chunk(*a, W, 16),
        "swa_parallel": lambda *a: swa_parallel(*a, W),
        "swa_recurrent": lambda *a: swa_recurrent(*a, W),
    }
    for name, form in forms.items():
        o, _ = form(heads(q), heads(k), heads(v), empty)
        assert_close(f"{name} vs fla naive_parallel_attn(window_size={W})", heads(o), want, 1e-5)
