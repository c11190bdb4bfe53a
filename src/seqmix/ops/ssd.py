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
  the state is passed along (one scale-and-add of the ``[B, H, K, V]`` state per chunk). All chunks are
  handled by batched matmuls; a Python loop runs over the ``T / C`` chunks for the state passing only,
  never over tokens. Its backward is written by hand (``seqmix.ops.ssd_fast``).

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
    # [..., L(s), L(j)]: x_s in every column j with s > j, else 0 (one pass: where broadcasts x)
    rows = torch.where(idx[:, None] > idx[None, :], x.unsqueeze(-1), x.new_zeros(()))
    out = rows.cumsum(-2)  # sum over j < s <= i
    return out.masked_fill_(idx[:, None] < idx[None, :], float("-inf"))  # cumsum's backward needs not its output


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
    """Chunkwise SSD (paper Listing 1), one autograd function with a hand-written backward.

    1. Pad ``T`` to ``N * C``: padded tokens have ``k = 0`` and ``log_a = 0`` (``a = 1``), so they leave
       the state untouched; their outputs are cut off.
    2. Per chunk, log-decays from each token to each later one: ``segsum(log_a)`` (``[.., C, C]``), to the
       chunk's end (its last row) and from the chunk's start (inclusive cumulative sum ``G``).
    3. What every chunk adds to the state, ``sum_j (decay j -> end) k_j v_j^T``, for all chunks at once.
    4. State passing: ``S <- a_chunk S + (3.)``, a loop over the ``T / C`` chunks on ``[B, H, K, V]``.
    5. Outputs, all chunks at once: ``((q k^T) * L) v`` with ``L = P_i P_j exp(segsum)`` inside the chunk
       plus ``P_i exp(G_i) q_i^T S_in`` from the state entering it.

    The backward mirrors these steps (``seqmix.ops.ssd_fast`` writes out its formulas): a reverse loop
    over chunks for the state gradients, batched matmuls for the rest. Autograd keeps the inputs, the
    ``C x C`` decay and score blocks, the inter-chunk outputs and one state per chunk; never a state per
    token. When ``q`` and ``k`` are shared by all heads (Mamba-2) their matmuls take all heads at once.
    Runs with autocast off (the state accumulates in the inputs' dtype); double backward is not
    supported (``ssd_recurrent`` offers it).
    """
    _check(q, k, v, log_a, initial_state, sign)
    C = min(positive_chunk_size(chunk_size), v.shape[2])
    from seqmix.ops.ssd_fast import ssd_chunk_fused  # it builds on segsum below

    return ssd_chunk_fused(q, k, v, log_a, initial_state, C, sign)
