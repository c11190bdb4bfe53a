"""Softmax attention with a key/value cache (Vaswani et al. 2017, "Attention Is All You Need").

    o_i = sum_j softmax_j(q_i . k_j * scale) v_j

over the keys ``j`` that query ``i`` may see. The state is the key/value cache: ``T0`` earlier tokens
whose keys and values are kept as they are (keys already position-encoded by the caller). A new
token at cache position ``T0 + i`` sees, when causal, the keys ``0 .. T0 + i``; when not causal, all
``T0 + T`` keys.

All forms share one signature::

    attention_<form>(q, k, v, initial_state, causal=True, scale=None) -> (o, (k_all, v_all))

with ``q, k, v: [B, H, T, K]`` (``v`` may have its own last dimension ``V``), ``initial_state`` a pair
``(k_cache [B, H, T0, K], v_cache [B, H, T0, V])`` (``T0`` may be 0) and the returned state the cache
grown by the ``T`` new tokens. ``scale`` defaults to ``1 / sqrt(K)``.

- ``attention_recurrent``: the spec, a Python loop over time that appends one token and attends.
- ``attention_parallel``: ``torch.nn.functional.scaled_dot_product_attention`` over the whole block.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["attention_step", "attention_recurrent", "attention_parallel", "causal_cache_mask", "softmax_scale"]

KV = tuple[torch.Tensor, torch.Tensor]


def softmax_scale(q: torch.Tensor, scale: Optional[float]) -> float:
    """``scale``, or the usual ``1 / sqrt(head_dim)`` of the queries ``q: [..., K]`` when it is None."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: KV,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """One causal decoding step: append ``(k_t, v_t)`` to the cache, then attend from ``q_t``.

    ``q_t, k_t: [B, H, K]``, ``v_t: [B, H, V]``; returns ``(o_t [B, H, V], (k_cache, v_cache))`` with the
    cache one token longer.
    """
    k_cache = torch.cat((state[0], k_t.unsqueeze(2)), dim=2)  # [B, H, t+1, K]
    v_cache = torch.cat((state[1], v_t.unsqueeze(2)), dim=2)  # [B, H, t+1, V]
    scores = torch.einsum("bhk,bhsk->bhs", q_t, k_cache) * softmax_scale(q_t, scale)  # [B, H, t+1]
    o_t = torch.einsum("bhs,bhsv->bhv", scores.softmax(dim=-1), v_cache)  # [B, H, V]
    return o_t, (k_cache, v_cache)


def attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: KV,
    causal: bool = True,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """Reference: a loop over time. Causal: ``attention_step`` per token. Non-causal: the whole block
    is appended to the cache first and every query then attends to all of it, one query at a time."""
    T = q.shape[2]
    if causal:
        state = initial_state
        outputs = []
        for t in range(T):
            o_t, state = attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, scale)
            outputs.append(o_t)
        return torch.stack(outputs, dim=2), state  # [B, H, T, V]

    k_all = torch.cat((initial_state[0], k), dim=2)  # [B, H, T0+T, K]
    v_all = torch.cat((initial_state[1], v), dim=2)  # [B, H, T0+T, V]
    outputs = []
    for t in range(T):
        scores = torch.einsum("bhk,bhsk->bhs", q[:, :, t], k_all) * softmax_scale(q, scale)  # [B, H, T0+T]
        outputs.append(torch.einsum("bhs,bhsv->bhv", scores.softmax(dim=-1), v_all))  # [B, H, V]
    return torch.stack(outputs, dim=2), (k_all, v_all)


def causal_cache_mask(T: int, T0: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[T, T0+T]`` mask, True where new query ``i`` (absolute position ``T0+i``) may see key
    ``j``: ``j <= T0 + i``. It is the causal mask aligned to the bottom-right corner."""
    rows = torch.arange(T, device=device)[:, None] + T0  # [T, 1]
    cols = torch.arange(T0 + T, device=device)[None, :]  # [1, T0+T]
    return cols <= rows  # [T, T0+T]


def attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: KV,
    causal: bool = True,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """Fast form: one ``scaled_dot_product_attention`` call over the cache and the new block.

    SDPA's ``is_causal`` aligns its triangle to the top-left corner, which is only right when the cache
    is empty; with ``T0 > 0`` cached tokens we pass the bottom-right-aligned mask explicitly.
    """
    T, T0 = q.shape[2], initial_state[0].shape[2]
    if T0 == 0:
        k_all, v_all = k, v  # [B, H, T, K], [B, H, T, V]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=softmax_scale(q, scale))
        return o, (k_all, v_all)

    k_all = torch.cat((initial_state[0], k), dim=2)  # [B, H, T0+T, K]
    v_all = torch.cat((initial_state[1], v), dim=2)  # [B, H, T0+T, V]
    mask = causal_cache_mask(T, T0, q.device) if causal else None  # [T, T0+T]
    o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=softmax_scale(q, scale))
    return o, (k_all, v_all)  # o: [B, H, T, V]
