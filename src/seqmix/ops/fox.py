"""Forgetting Attention (Lin, Nikishin, He & Courville 2025, "Forgetting Transformer: Softmax Attention
with a Forget Gate", arXiv:2503.02130, Eq. 3-5): softmax attention whose logits are down-weighted by a
data-dependent scalar forget gate ``f_t = sigmoid(w_f . x_t + b_f)`` per head::

    o_i = sum_{j <= i} exp(s_ij + D_ij) v_j / sum_{j <= i} exp(s_ij + D_ij)
    s_ij = scale * q_i . k_j,     D_ij = sum_{l = j+1}^{i} log f_l = F_i - F_j,   F_i = sum_{l <= i} log f_l

State (the KV cache of a decoder): after tokens ``0 .. t-1`` it holds every key and value and, per key,
``g_j = sum_{l = j+1}^{t-1} log f_l`` (<= 0): the log-decay from key ``j`` to the latest token, kept
relative to the current position so that it never grows without bound. A new token ``t`` adds
``log f_t`` to every ``g_j``, appends its own ``g_t = 0``, and attends with logits ``s_tj + g_j``.

All forms share one signature::

    fox_<form>(q, k, v, log_f, initial_state, scale=None) -> (o, (k_all, v_all, g_all))

with ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``log_f: [B, H, T]`` (<= 0) and ``initial_state =
(k_cache [B, H, T0, K], v_cache [B, H, T0, V], g_cache [B, H, T0])`` (``T0`` may be 0).

- ``fox_recurrent``: the spec, a loop over ``fox_step``.
- ``fox_parallel``: one ``scaled_dot_product_attention`` call. Because ``F_i`` is constant along a row
  it cancels in the softmax, ``softmax_j(s_ij + F_i - F_j) = softmax_j(s_ij - F_j)``, so the gate
  folds into one extra key channel ``-F_j / scale`` met by a query channel of ones. No [T, T] bias is
  materialised and SDPA's fused (flash) kernel with its O(T) memory and causal block skipping still
  applies; gradients reach ``log_f`` through that key channel. Precision note: the folded logit carries
  ``F_j`` in absolute terms, so its rounding error is ``eps * |F_j|`` rather than ``eps * |F_i - F_j|``:
  the same as the paper's own kernel, which also forms ``F_i - F_j`` from float32 cumulative sums. Run
  it in float32 or better (the mixer does); in float32 a cumulative log-gate of 1e4 costs ~1e-3 in the
  logits.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from seqmix.ops.attention import causal_cache_mask, softmax_scale

__all__ = ["fox_step", "fox_recurrent", "fox_parallel"]

Cache = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def fox_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    log_f_t: torch.Tensor,
    state: Cache,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, Cache]:
    """One decoding step: ``q_t, k_t: [B, H, K]``, ``v_t: [B, H, V]``, ``log_f_t: [B, H]``.

    Returns ``(o_t [B, H, V], (k_cache, v_cache, g_cache))``, the cache one token longer.
    """
    k_cache = torch.cat((state[0], k_t.unsqueeze(2)), dim=2)  # [B, H, t+1, K]
    v_cache = torch.cat((state[1], v_t.unsqueeze(2)), dim=2)  # [B, H, t+1, V]
    g_cache = torch.cat((state[2] + log_f_t.unsqueeze(2), torch.zeros_like(log_f_t).unsqueeze(2)), dim=2)  # [B, H, t+1]
    scores = torch.einsum("bhk,bhsk->bhs", q_t, k_cache) * softmax_scale(q_t, scale) + g_cache  # [B, H, t+1]
    o_t = torch.einsum("bhs,bhsv->bhv", scores.softmax(dim=-1), v_cache)  # [B, H, V]
    return o_t, (k_cache, v_cache, g_cache)


def fox_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: Cache,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, Cache]:
    """Reference: a Python loop over ``fox_step``."""
    state = initial_state
    outputs = []
    for t in range(q.shape[2]):
        o_t, state = fox_step(q[:, :, t], k[:, :, t], v[:, :, t], log_f[:, :, t], state, scale)
        outputs.append(o_t)
    return torch.stack(outputs, dim=2), state  # [B, H, T, V]


def fox_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: Cache,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, Cache]:
    """Fast form: the forget gate folded into an extra key channel, one SDPA call (see module doc)."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    T0 = initial_state[0].shape[2]
    scale = softmax_scale(q, scale)
    # 1. F_i = sum_{l <= i} log f_l over the new tokens; a cached key j has F_j = -g_j in this frame
    #    (its logit bias g_j + F_i = F_i - F_j), a new key F_j itself
    cum = torch.cumsum(log_f, dim=-1)  # [B, H, T]
    neg_F = torch.cat((initial_state[2], -cum), dim=-1)  # [B, H, T0+T], -F_j for every key
    k_all = torch.cat((initial_state[0], k), dim=2)  # [B, H, T0+T, K]
    v_all = torch.cat((initial_state[1], v), dim=2)  # [B, H, T0+T, V]
    # 2. fold: q' = [q, 1], k' = [k, -F_j / scale], so that scale * q'.k' = s_ij - F_j; SDPA's fused CPU
    #    kernel wants equal q/k and v widths, so the narrower side is padded with zeros, and all to a
    #    multiple of 8 (its vectorised inner loops: 65 channels ran ~12% slower than 72 on a 2-core CPU)
    E = -(-max(K + 1, V) // 8) * 8
    q_f = F.pad(torch.cat((q, torch.ones_like(q[..., :1])), dim=-1), (0, E - K - 1))  # [B, H, T, E]
    k_f = F.pad(torch.cat((k_all, (neg_F / scale).unsqueeze(-1)), dim=-1), (0, E - K - 1))  # [B, H, T0+T, E]
    v_f = F.pad(v_all, (0, E - V))  # [B, H, T0+T, E]
    # 3. causal attention; with a cache the triangle is aligned to the bottom-right corner
    if T0 == 0:
        o = F.scaled_dot_product_attention(q_f, k_f, v_f, is_causal=True, scale=scale)
    else:
        mask = causal_cache_mask(T, T0, q.device)  # [T, T0+T]
        o = F.scaled_dot_product_attention(q_f, k_f, v_f, attn_mask=mask, scale=scale)
    # 4. the new cache: g_j = sum_{l=j+1}^{T-1} log f_l, a suffix sum (exact for recent keys, no F_T - F_j)
    suffix = torch.flip(torch.cumsum(torch.flip(log_f, (-1,)), dim=-1), (-1,))  # [B, H, T], sum_{l >= j}
    g_new = torch.cat((suffix[..., 1:], torch.zeros_like(suffix[..., :1])), dim=-1)  # [B, H, T]
    g_all = torch.cat((initial_state[2] + cum[..., -1:], g_new), dim=-1)  # [B, H, T0+T]
    return o[..., :V], (k_all, v_all, g_all)
