"""Linear attention with a data-dependent scalar decay per head: the state space dual (SSD) of Mamba-2.

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
State Space Duality", arXiv:2405.21060 (Section 6, Listing 1: the chunkwise SSD algorithm).

Per head ``h``, with ``a_t = sign_t * exp(log_a_t)`` (``sign_t = +1`` unless signed decays are given)::

    S_t = a_t S_{t-1} + k_t v_t^T          # [K, V]
    o_t = S_t^T q_t                        # [V]

In Mamba-2's names ``q = C``, ``k = B``, ``v = dt * x`` and ``log_a = dt * A``; mLSTM (``seqmix.ops.mlstm``)
and simple gated linear attention are the same recurrence with other inputs.

Shapes: ``q: [B, Hq, T, K]`` and ``k: [B, Hk, T, K]`` with ``Hq, Hk`` either 1 (shared by all heads, like
Mamba-2's ``ngroups = 1``) or ``H``; ``v: [B, H, T, V]``; ``log_a: [B, H, T]`` (``<= 0`` for a decay);
``sign: [B, H, T]`` of +-1 or ``None``; ``initial_state: [B, H, K, V]``. Every form returns
``(o: [B, H, T, V], final_state: [B, H, K, V])`` and is differentiable in every tensor argument except
``sign`` (piecewise constant).

- ``ssd_recurrent``: the spec, a Python loop over ``ssd_step``.
- ``ssd_chunk``: chunks of ``C`` tokens. Inside a chunk the output is a masked ``C x C`` matmul with the
  decay matrix ``L[i, j] = prod_{j < s <= i} a_s`` plus the entering state's contribution; across chunks
  the state is passed along (one scale-and-add of the ``[B, H, K, V]`` state per chunk). A Python loop
  runs over the ``T / C`` chunks, never over tokens.

Numerics. Decays enter only as ``exp`` of sums of ``log|a|`` over a segment, built by a masked cumulative
sum (the "segsum" of the paper's listing) and masked to ``-inf`` above the diagonal BEFORE ``exp``: every
exponent is ``<= 0`` for decays in ``[-1, 1]``, so nothing overflows however strong the decay or long the
chunk, and no ratio of cumulative products is ever formed. Signed decays (Grazzi et al. 2024, negative
eigenvalues) carry their sign separately: the sign of ``prod_{j < s <= i} a_s`` is ``P_i P_j`` with
``P`` the cumulative product of signs inside the chunk (exact, since the signs are +-1).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["positive_chunk_size", "segsum", "ssd_step", "ssd_recurrent", "ssd_chunk"]


def positive_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` if it is a positive int (any length works: the last chunk is padded)."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def segsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = sum_{j < s <= i} x[..., s]`` for ``j <= i`` and ``-inf`` above the diagonal.

    ``x: [..., L]`` -> ``[..., L, L]``. Built as a cumulative sum of a masked copy rather than as the
    difference of two cumulative sums, which would cancel catastrophically when those sums are large.
    """
    L = x.shape[-1]
    idx = torch.arange(L, device=x.device)
    rows = x.unsqueeze(-1).expand(*x.shape, L)  # [..., L(s), L(j)]: x_s in every column j
    out = rows.masked_fill(idx[:, None] <= idx[None, :], 0.0).cumsum(-2)  # keep s > j, sum over s <= i
    return out.masked_fill(idx[:, None] < idx[None, :], float("-inf"))


def _check(q, k, v, log_a, initial_state, sign) -> None:
    B, H, T, V = v.shape
    K = initial_state.shape[-2]
    for name, t in (("q", q), ("k", k)):
        if t.ndim != 4 or t.shape[0] != B or t.shape[1] not in (1, H) or t.shape[2:] != (T, K):
            raise ValueError(f"{name} must have shape [B={B}, 1 or H={H}, T={T}, K={K}], got {tuple(t.shape)}")
    if tuple(log_a.shape) != (B, H, T):
        raise ValueError(f"log_a must have shape [B, H, T] = {(B, H, T)}, got {tuple(log_a.shape)}")
    if sign is not None and tuple(sign.shape) != (B, H, T):
        raise ValueError(f"sign must have shape [B, H, T] = {(B, H, T)}, got {tuple(sign.shape)}")
    if tuple(initial_state.shape) != (B, H, K, V):
        shape = tuple(initial_state.shape)
        raise ValueError(f"initial_state must have shape [B, H, K, V] = {(B, H, K, V)}, got {shape}")


# --------------------------------------------------------------------------- the spec
def ssd_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    log_a_t: torch.Tensor,
    state: torch.Tensor,
    sign_t: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``q_t: [B, Hq, K]``, ``k_t: [B, Hk, K]``, ``v_t: [B, H, V]``, ``log_a_t: [B, H]``."""
    a = log_a_t.exp() if sign_t is None else sign_t * log_a_t.exp()  # [B, H]
    state = a[..., None, None] * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V]
    o = (q_t.unsqueeze(-2) @ state).squeeze(-2)  # [B, H, V]
    return o, state


def ssd_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    initial_state: torch.Tensor,
    sign: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: ``ssd_step`` in a Python loop over time."""
    _check(q, k, v, log_a, initial_state, sign)
    state = initial_state
    outs = []
    for t in range(v.shape[2]):
        o_t, state = ssd_step(
            q[:, :, t], k[:, :, t], v[:, :, t], log_a[:, :, t], state, None if sign is None else sign[:, :, t]
        )
        outs.append(o_t)
    return torch.stack(outs, dim=2), state  # [B, H, T, V]


# --------------------------------------------------------------------------- fast form
def ssd_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int = 64,
    sign: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise SSD (paper Listing 1, with the state passed along chunk by chunk).

    1. Pad ``T`` to ``N * C``: padded tokens have ``k = 0`` and ``log_a = 0`` (``a = 1``), so they leave
       the state untouched; their outputs are cut off.
    2. Per chunk, log-decays from each token to each later one: ``segsum(log_a)`` (``[.., C, C]``), to the
       chunk's end (its last row) and from the chunk's start (inclusive cumulative sum ``G``).
    3. Intra-chunk outputs: ``((q k^T) * L) v`` with ``L = P_i P_j exp(segsum)``; when ``q`` and ``k`` are
       shared by all heads their scores are computed once.
    4. Inter-chunk outputs: ``P_i exp(G_i) q_i^T S_in`` from the state ``S_in`` entering the chunk.
    5. State passing: ``S <- a_chunk S + sum_j (decay j -> end) k_j v_j^T``.

    The chunks are visited in a loop that does steps 2-5 for one chunk at a time: every intermediate
    is a ``[B, H, C, C]`` or ``[B, H, K, V]`` block that stays in cache, and no ``[B, H, T/C, K, V]``
    stack of states is ever built (backward keeps one state per chunk). On CPUs this measured faster
    than batching steps 2-3 over all chunks, whose large temporaries cost more in memory traffic than
    the loop costs in dispatch.
    """
    _check(q, k, v, log_a, initial_state, sign)
    B, H, T, V = v.shape
    K = q.shape[-1]
    C = min(positive_chunk_size(chunk_size), T)
    N = -(-T // C)
    pad = N * C - T

    # 1. pad and split into chunks
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_a = F.pad(log_a, (0, pad))
        if sign is not None:
            sign = F.pad(sign, (0, pad), value=1.0)
    chunks = [
        q.reshape(B, q.shape[1], N, C, K).unbind(2),  # N x [B, Hq, C, K]
        k.reshape(B, k.shape[1], N, C, K).unbind(2),  # N x [B, Hk, C, K]
        v.reshape(B, H, N, C, V).unbind(2),  # N x [B, H, C, V]
        log_a.reshape(B, H, N, C).unbind(2),  # N x [B, H, C]
        (None,) * N if sign is None else sign.reshape(B, H, N, C).unbind(2),
    ]

    state = initial_state
    outs = []
    for q_n, k_n, v_n, la_n, s_n in zip(*chunks):
        # 2. decays inside the chunk, masked to -inf above the diagonal before exp
        L = segsum(la_n).exp()  # [B, H, C, C]
        from_start = la_n.cumsum(-1).exp()  # [B, H, C]: decay from the chunk's start through token i
        to_end = L[..., -1, :]  # [B, H, C]: decay from token j to the chunk's last token
        chunk_decay = from_start[..., -1]  # [B, H]
        if s_n is not None:
            P = s_n.cumprod(-1)  # [B, H, C], +-1
            L = L * (P.unsqueeze(-1) * P.unsqueeze(-2))
            to_end = to_end * (P[..., -1:] * P)
            from_start = from_start * P
            chunk_decay = chunk_decay * P[..., -1]
        # 3. + 4. outputs
        scores = q_n @ k_n.transpose(-1, -2)  # [B, Hq|Hk|1, C, C]
        o = (scores * L) @ v_n + (q_n @ state) * from_start.unsqueeze(-1)  # [B, H, C, V]
        outs.append(o)
        # 5. the state entering the next chunk; the decay scales v, so a shared k is not copied per head
        state = chunk_decay[..., None, None] * state + k_n.transpose(-1, -2) @ (v_n * to_end.unsqueeze(-1))
    o = torch.stack(outs, dim=2).reshape(B, H, N * C, V)  # [B, H, T', V]
    return o[:, :, :T], state
