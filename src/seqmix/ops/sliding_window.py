"""Causal sliding-window softmax attention (Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document
Transformer", arXiv:2004.05150; the local attention of Griffin, De et al. 2024, arXiv:2402.19427)::

    o_i = sum_{i-W < j <= i} softmax_j(scale * q_i . k_j) v_j          window W: the token and W-1 before it

with optional rotary positions (Su et al. 2021) on ``q`` and ``k``. Rotary scores depend only on
``i - j``, so the forms rotate in a *local frame*: the keys passed in (cache, then new tokens) sit at
positions ``0, 1, ..., T0+T-1`` and the new queries at ``T0 .. T0+T-1``. The state therefore holds the
last ``W - 1`` keys *unrotated* and needs no position counter: it is bounded whatever the stream length.

All forms share one signature (``chunk_size`` only for the blockwise form)::

    swa_<form>(q, k, v, initial_state, window, [chunk_size,] inv_freq=None, scale=None)
        -> (o [B, H, T, V], (k_tail [B, H, n, K], v_tail [B, H, n, V]))

with ``q, k: [B, H, T, K]`` (unrotated), ``v: [B, H, T, V]``, ``initial_state = (k_cache, v_cache)``
holding ``T0 <= W - 1`` earlier tokens (``T0`` may be 0), ``inv_freq: [K/2]`` the rotary frequencies
(None: no rotary) and ``n = min(W - 1, T0 + T)`` tokens kept.

- ``swa_recurrent``: the spec, a loop over ``swa_step`` (a ring of the last W-1 tokens plus the new one).
- ``swa_parallel``: one SDPA call with the banded ``[T, T0+T]`` mask (O(T^2) memory; fine for short T).
  Both fast forms fall back to plain causal SDPA while the window covers every key (``T0 + T <= W``).
- ``swa_chunk``: queries in blocks of ``chunk_size``; block ``b`` attends to its own ``C + W - 1`` keys
  only (one SDPA call over all blocks, a shared band mask), so memory and work are O(T (C + W)), not
  O(T^2).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from seqmix.modules.rotary import apply_rotary
from seqmix.ops.attention import softmax_scale

__all__ = ["swa_step", "swa_recurrent", "swa_parallel", "swa_chunk", "window_mask"]

KV = tuple[torch.Tensor, torch.Tensor]


def _local_frame(
    q: torch.Tensor, k_all: torch.Tensor, inv_freq: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate keys ``[B, H, P, K]`` to positions ``0 .. P-1`` and queries ``[B, H, T, K]`` to ``P-T .. P-1``."""
    if inv_freq is None:
        return q, k_all
    P, T = k_all.shape[2], q.shape[2]
    positions = torch.arange(P, device=q.device)  # [P]
    return apply_rotary(q, positions[P - T :], inv_freq), apply_rotary(k_all, positions, inv_freq)


def _tail(k_all: torch.Tensor, v_all: torch.Tensor, window: int) -> KV:
    """The last ``window - 1`` tokens (copies, so the state does not keep the whole block alive)."""
    n = min(window - 1, k_all.shape[2])
    P = k_all.shape[2]
    return k_all[:, :, P - n :].clone(), v_all[:, :, P - n :].clone()


def window_mask(T: int, T0: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[T, T0+T]``: query ``i`` (position ``T0+i``) sees key ``j`` iff ``T0+i-W < j <= T0+i``."""
    rows = torch.arange(T, device=device)[:, None] + T0  # [T, 1]
    cols = torch.arange(T0 + T, device=device)[None, :]  # [1, T0+T]
    return (cols <= rows) & (cols > rows - window)


def _attend_all(q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``q: [B, H, T, K]`` over every key ``[B, H, T0+T, K]``: the window covers them all."""
    T, T0 = q.shape[2], k_all.shape[2] - q.shape[2]
    if T0 == 0:  # SDPA's top-left causal triangle is right, and its fused kernel skips masked blocks
        return F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True, scale=scale)
    mask = window_mask(T, T0, T0 + T, q.device)  # [T, T0+T], the bottom-right triangle
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=scale)


def swa_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: KV,
    window: int,
    inv_freq: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """One token: ``q_t, k_t: [B, H, K]``, ``v_t: [B, H, V]``; every cached token is inside the window."""
    k_win = torch.cat((state[0], k_t.unsqueeze(2)), dim=2)  # [B, H, n+1, K]
    v_win = torch.cat((state[1], v_t.unsqueeze(2)), dim=2)  # [B, H, n+1, V]
    q_rot, k_rot = _local_frame(q_t.unsqueeze(2), k_win, inv_freq)  # [B, H, 1, K], [B, H, n+1, K]
    scores = torch.einsum("bhk,bhsk->bhs", q_rot[:, :, 0], k_rot) * softmax_scale(q_t, scale)  # [B, H, n+1]
    o_t = torch.einsum("bhs,bhsv->bhv", scores.softmax(dim=-1), v_win)  # [B, H, V]
    return o_t, _tail(k_win, v_win, window)


def swa_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: KV,
    window: int,
    inv_freq: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """Reference: a Python loop over ``swa_step``."""
    state = initial_state
    outputs = []
    for t in range(q.shape[2]):
        o_t, state = swa_step(q[:, :, t], k[:, :, t], v[:, :, t], state, window, inv_freq, scale)
        outputs.append(o_t)
    return torch.stack(outputs, dim=2), state  # [B, H, T, V]


def swa_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: KV,
    window: int,
    inv_freq: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """One SDPA call over the cache and the new block with the banded mask."""
    T, T0 = q.shape[2], initial_state[0].shape[2]
    k_all = torch.cat((initial_state[0], k), dim=2)  # [B, H, T0+T, K]
    v_all = torch.cat((initial_state[1], v), dim=2)  # [B, H, T0+T, V]
    q_rot, k_rot = _local_frame(q, k_all, inv_freq)
    if T0 + T <= window:
        return _attend_all(q_rot, k_rot, v_all, softmax_scale(q, scale)), _tail(k_all, v_all, window)
    mask = window_mask(T, T0, window, q.device)  # [T, T0+T]
    o = F.scaled_dot_product_attention(q_rot, k_rot, v_all, attn_mask=mask, scale=softmax_scale(q, scale))
    return o, _tail(k_all, v_all, window)


def swa_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: KV,
    window: int,
    chunk_size: int,
    inv_freq: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, KV]:
    """Blockwise form: query block ``b`` (``C`` queries) against its ``C + W - 1`` keys, all blocks at once."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    T0, W, C = initial_state[0].shape[2], window, chunk_size
    nb = -(-T // C)  # blocks; the last one is padded with T_pad - T dummy queries
    T_pad, L = nb * C, C + W - 1
    k_all = torch.cat((initial_state[0], k), dim=2)  # [B, H, T0+T, K]
    v_all = torch.cat((initial_state[1], v), dim=2)  # [B, H, T0+T, V]
    q_rot, k_rot = _local_frame(q, k_all, inv_freq)
    if T0 + T <= W:  # no key ever leaves the window: plain causal attention, no blocks needed
        return _attend_all(q_rot, k_rot, v_all, softmax_scale(q, scale)), _tail(k_all, v_all, window)
    # 1. pad keys by W-1 in front (positions before the cache) and to T_pad behind; in padded coordinates
    #    block b's keys start at T0 + b C, i.e. the key W-1 places before its first query
    k_pad = F.pad(k_rot, (0, 0, W - 1, T_pad - T))[:, :, T0:]  # [B, H, W-1+T_pad, K]
    v_pad = F.pad(v_all, (0, 0, W - 1, T_pad - T))[:, :, T0:]  # [B, H, W-1+T_pad, V]
    k_blocks = k_pad.unfold(2, L, C).transpose(-1, -2)  # [B, H, nb, L, K]
    v_blocks = v_pad.unfold(2, L, C).transpose(-1, -2)  # [B, H, nb, L, V]
    q_blocks = F.pad(q_rot, (0, 0, 0, T_pad - T)).view(B, H, nb, C, K)  # [B, H, nb, C, K]
    # 2. query r sees block key u iff r <= u <= r + W - 1 (the band) and the key is not front padding;
    #    the diagonal key u = r + W - 1 is always allowed, so no row is empty
    r = torch.arange(C, device=q.device)[:, None]  # [C, 1]
    u = torch.arange(L, device=q.device)[None, :]  # [1, L]
    band = (u >= r) & (u <= r + W - 1)  # [C, L]
    first_key = T0 + torch.arange(nb, device=q.device) * C - (W - 1)  # [nb] absolute position of key u = 0
    real = (first_key[:, None] + torch.arange(L, device=q.device)[None, :]) >= 0  # [nb, L]
    mask = band[None] & real[:, None, :]  # [nb, C, L]
    # 3. one SDPA call, blocks folded into the head dimension: [B, H*nb, C|L, K|V]
    o = F.scaled_dot_product_attention(
        q_blocks.reshape(B, H * nb, C, K),
        k_blocks.reshape(B, H * nb, L, K),
        v_blocks.reshape(B, H * nb, L, V),
        # [1, H*nb, C, L]: SDPA's fused CPU kernel takes 2-d or 4-d masks only (3-d falls back to the slow
        # math path, which materialises the scores)
        attn_mask=mask.repeat(H, 1, 1).unsqueeze(0),
        scale=softmax_scale(q, scale),
    )
    o = o.view(B, H, T_pad, V)[:, :, :T]  # [B, H, T, V]
    return o, _tail(k_all, v_all, window)
