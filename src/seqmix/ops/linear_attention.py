"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", ICML 2020).

With feature-mapped queries and keys ``q_t = phi(Q_t)``, ``k_t = phi(K_t)`` (``phi(x) = elu(x) + 1``
in the paper, see ``elu_feature_map``), per head::

    S_t = S_{t-1} + k_t v_t^T              # [K, V]
    z_t = z_{t-1} + k_t                    # [K]
    o_t = q_t^T S_t / (q_t^T z_t + eps)    # normalize=True  (paper eq. 6 plus eps)
    o_t = q_t^T S_t                        # normalize=False

All forms share one signature (``chunk_size`` only for the chunkwise form)::

    linear_attention_<form>(q, k, v, initial_state, [chunk_size,] normalize=True, eps=1e-6)
        -> (o [B, H, T, V], (S [B, H, K, V], z [B, H, K]))

with ``q, k: [B, H, T, K]`` (already feature-mapped), ``v: [B, H, T, V]`` and
``initial_state = (S0, z0)``. ``z`` is carried even when ``normalize=False`` so that the state has one
layout; it then does not influence the output.

- ``linear_attention_recurrent``: the spec, a Python loop over ``linear_attention_step``.
- ``linear_attention_parallel``: the masked ``T x T`` form plus the initial state's contribution.
- ``linear_attention_chunk``: masked ``C x C`` blocks inside chunks; the state entering each chunk is
  an exclusive cumulative sum of per-chunk ``k^T v`` (there is no decay, so the cross-chunk recurrence
  is a plain prefix sum and needs no loop at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "elu_feature_map",
    "linear_attention_step",
    "linear_attention_recurrent",
    "linear_attention_parallel",
    "linear_attention_chunk",
]

SZ = tuple[torch.Tensor, torch.Tensor]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``phi(x) = elu(x) + 1``: positive everywhere, so the normaliser ``q^T z`` stays positive."""
    return F.elu(x) + 1.0


def _normalise(num: torch.Tensor, den: torch.Tensor, normalize: bool, eps: float) -> torch.Tensor:
    return num / (den.unsqueeze(-1) + eps) if normalize else num


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: SZ,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, SZ]:
    """One token: ``q_t, k_t: [B, H, K]``, ``v_t: [B, H, V]``; returns ``(o_t [B, H, V], (S, z))``."""
    S = state[0] + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V]
    z = state[1] + k_t  # [B, H, K]
    num = torch.einsum("bhk,bhkv->bhv", q_t, S)  # [B, H, V]
    den = (q_t * z).sum(-1)  # [B, H]
    return _normalise(num, den, normalize, eps), (S, z)


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: SZ,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, SZ]:
    """Reference: the recurrence above, one token at a time."""
    state = initial_state
    outputs = []
    for t in range(q.shape[2]):
        o_t, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, normalize, eps)
        outputs.append(o_t)
    return torch.stack(outputs, dim=2), state  # [B, H, T, V]


def linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: SZ,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, SZ]:
    """Quadratic form: ``o = q S0 + tril(q k^T) v`` (and likewise the normaliser)."""
    S0, z0 = initial_state
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # [T, T], diagonal included
    A = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, T, T]
    num = q @ S0 + A @ v  # [B, H, T, V]
    den = q @ z0.unsqueeze(-1)  # [B, H, T, 1]
    den = den.squeeze(-1) + A.sum(-1)  # [B, H, T]
    S = S0 + k.transpose(-1, -2) @ v  # [B, H, K, V]
    z = z0 + k.sum(2)  # [B, H, K]
    return _normalise(num, den, normalize, eps), (S, z)


def linear_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: SZ,
    chunk_size: int = 64,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, SZ]:
    """Chunkwise form; every chunk is handled at once (batched matmuls), no loop over time or chunks.

    1. Pad ``T`` up to ``N * C`` with zero tokens: a zero key adds nothing to ``S`` or ``z``, and the
       padded queries' outputs are cut off at the end.
    2. Per chunk ``n``: ``kv_n = k_n^T v_n`` and ``ksum_n = sum_t k_n,t``.
    3. State entering chunk ``n``: ``S0 + sum_{m<n} kv_m`` (exclusive prefix sum), likewise for ``z``.
    4. Output: inter-chunk ``q_n S_in[n]`` plus intra-chunk ``tril(q_n k_n^T) v_n``.
    5. Final state: the state entering the last chunk plus that chunk's contribution.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    S0, z0 = initial_state
    B, H, T, K = q.shape
    Vd = v.shape[-1]
    C = min(chunk_size, T)  # a chunk longer than the sequence would only add padding
    N = -(-T // C)
    pad = N * C - T

    # 1. pad and split into chunks
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc = q.reshape(B, H, N, C, K)  # [B, H, N, C, K]
    kc = k.reshape(B, H, N, C, K)  # [B, H, N, C, K]
    vc = v.reshape(B, H, N, C, Vd)  # [B, H, N, C, V]

    # 2. per-chunk contributions to the state
    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V]
    ksum = kc.sum(3)  # [B, H, N, K]

    # 3. exclusive prefix sums give the state entering each chunk. They are built by shifting, not
    #    as (inclusive - own): that subtraction would let chunk n's keys leak into its own outputs at
    #    rounding level and lose precision.
    S_in = torch.cat((S0.unsqueeze(2), kv[:, :, :-1]), dim=2).cumsum(2)  # [B, H, N, K, V]
    z_in = torch.cat((z0.unsqueeze(2), ksum[:, :, :-1]), dim=2).cumsum(2)  # [B, H, N, K]

    # 4. inter-chunk + intra-chunk parts
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [C, C]
    A = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C]
    num = qc @ S_in + A @ vc  # [B, H, N, C, V]
    den = (qc @ z_in.unsqueeze(-1)).squeeze(-1) + A.sum(-1)  # [B, H, N, C]
    o = _normalise(num, den, normalize, eps).reshape(B, H, N * C, Vd)[:, :, :T]  # [B, H, T, V]

    # 5. final state
    S = S_in[:, :, -1] + kv[:, :, -1]  # [B, H, K, V]
    z = z_in[:, :, -1] + ksum[:, :, -1]  # [B, H, K]
    return o, (S, z)
