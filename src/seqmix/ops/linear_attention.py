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
  is a plain prefix sum and needs no loop at all). Its core is one autograd function with a
  hand-written backward (``seqmix.ops.linear_attention_fast``); ``_linear_attention_chunk_autograd`` is
  the same form by plain autograd, kept as a reference.

The parallel form and the chunkwise reference carry the normaliser as an extra value column
(``v' = [v, 1]``, ``S' = [S, z]``), so numerator and denominator come out of the same matmuls; the fused
chunkwise op computes it beside the values (an odd ``V + 1`` width slows every matmul down).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.ops.linear_attention_fast import linear_attention_chunk_fused

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


def _augment(v: torch.Tensor, S0: torch.Tensor, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the normaliser into the numerator: with ``v' = [v, 1]`` and ``S' = [S, z]`` the last column
    of ``q^T S'`` is ``q^T z``, so one set of matmuls yields both (and ``z`` needs no bookkeeping)."""
    v_aug = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [B, H, T, V+1]
    S_aug = torch.cat((S0, z0.unsqueeze(-1)), dim=-1)  # [B, H, K, V+1]
    return v_aug, S_aug


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
    """Quadratic form: ``o = q S0 + tril(q k^T) v``, the normaliser riding along as column ``V``."""
    Vd = v.shape[-1]
    v_aug, S0_aug = _augment(v, *initial_state)  # [B, H, T, V+1], [B, H, K, V+1]
    A = (q @ k.transpose(-1, -2)).tril()  # [B, H, T, T], diagonal included
    out = q @ S0_aug + A @ v_aug  # [B, H, T, V+1]
    S_aug = S0_aug + k.transpose(-1, -2) @ v_aug  # [B, H, K, V+1]
    o = _normalise(out[..., :Vd], out[..., Vd], normalize, eps)  # [B, H, T, V]
    return o, (S_aug[..., :Vd].contiguous(), S_aug[..., Vd].contiguous())


def _chunking(T: int, chunk_size: int) -> tuple[int, int, int]:
    """Chunk length ``C``, number of chunks ``N`` and padding ``N C - T`` of the chunkwise forms."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if T < 1:
        raise ValueError(f"the sequence must hold at least one time step, got T = {T}")
    C = min(chunk_size, T)  # a chunk longer than the sequence would only add padding
    N = -(-T // C)
    return C, N, N * C - T


def linear_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: SZ,
    chunk_size: int = 64,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, SZ]:
    """Chunkwise form with a hand-written backward (``seqmix.ops.linear_attention_fast``): no loop over
    time, and over chunks only in blocks of the ``C x C`` work.

    1. Pad ``T`` up to ``N * C`` with zero tokens: a zero key adds nothing to the state, and the
       padded queries' outputs are cut off at the end.
    2. The fused op, per chunk ``n``: the entering state, an exclusive prefix sum of ``k_n^T v_n`` from
       ``S0`` (and of the key sums from ``z0``); the numerator ``q_n S_in[n] + tril(q_n k_n^T) v_n``;
       with ``normalize`` the denominator ``q_n z_in[n] + tril(q_n k_n^T) 1``; the final state.
    3. Divide by the normaliser.
    """
    B, H, T, K = q.shape
    Vd = v.shape[-1]
    C, N, pad = _chunking(T, chunk_size)

    # 1. pad and split into chunks
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc = q.reshape(B, H, N, C, K)  # [B, H, N, C, K]
    kc = k.reshape(B, H, N, C, K)  # [B, H, N, C, K]
    vc = v.reshape(B, H, N, C, Vd)  # [B, H, N, C, V]

    # 2. numerator, denominator and the final state in one op
    S0, z0 = initial_state
    num, den, S, z = linear_attention_chunk_fused(qc, kc, vc, S0, z0, normalize)
    # (the padded tail is cut off only if there is one: even a full slice would cost a zero-filled copy
    # of the gradient in backward)
    num = num.view(B, H, N * C, Vd)[:, :, :T] if pad else num.view(B, H, T, Vd)  # [B, H, T, V]
    if not normalize:
        return num, (S, z)

    # 3. normalise
    assert den is not None  # computed with normalize
    den = den.view(B, H, N * C)[:, :, :T] if pad else den.view(B, H, T)  # [B, H, T]
    return _normalise(num, den, normalize, eps), (S, z)


def _linear_attention_chunk_autograd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: SZ,
    chunk_size: int = 64,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, SZ]:
    """Chunkwise form by plain autograd: the reference ``linear_attention_chunk``'s hand-written backward
    (``seqmix.ops.linear_attention_fast``) is tested against. Every chunk is handled at once (batched
    matmuls), no loop over time or chunks.

    1. With ``normalize``: append a ones column to ``v`` and ``z0`` to ``S0`` (see ``_augment``), so the
       normaliser becomes the last output column. Without it, ``z`` is only carried in the state
       (``z0`` plus the keys' sum) and the matmuls keep width ``V``.
    2. Pad ``T`` up to ``N * C`` with zero tokens: a zero key adds nothing to the state, and the
       padded queries' outputs are cut off at the end.
    3. Per chunk ``n``: its contribution ``kv_n = k_n^T v_n`` to the state.
    4. State entering chunk ``n``: ``S0 + sum_{m<n} kv_m``, an exclusive prefix sum (there is no decay,
       so the cross-chunk recurrence needs no loop).
    5. Output: inter-chunk ``q_n S_in[n]`` plus intra-chunk ``tril(q_n k_n^T) v_n``; then divide by
       the normaliser column.
    6. Final state: the state entering the last chunk plus that chunk's contribution.
    """
    B, H, T, K = q.shape
    Vd = v.shape[-1]
    C, N, pad = _chunking(T, chunk_size)

    # 1. fold the normaliser in; without normalisation the outputs need no z, and the state's z is just
    #    z0 plus the sum of the keys, so the matmuls keep their even width V
    S0, z0 = initial_state
    if normalize:
        v, S0 = _augment(v, S0, z0)  # [B, H, T, V+1], [B, H, K, V+1]
    W = v.shape[-1]

    # 2. pad and split into chunks
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc = q.reshape(B, H, N, C, K)  # [B, H, N, C, K]
    kc = k.reshape(B, H, N, C, K)  # [B, H, N, C, K]
    vc = v.reshape(B, H, N, C, W)  # [B, H, N, C, V+1]

    # 3. per-chunk contributions to the state
    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V+1]

    # 4. exclusive prefix sum, built by shifting rather than as (inclusive - own): that subtraction
    #    would leak chunk n's keys into its own outputs at rounding level and lose precision.
    S_in = torch.cat((S0.unsqueeze(2), kv[:, :, :-1]), dim=2).cumsum(2)  # [B, H, N, K, V+1]

    # 5. inter-chunk + intra-chunk parts
    A = (qc @ kc.transpose(-1, -2)).tril()  # [B, H, N, C, C], diagonal included
    out = (qc @ S_in + A @ vc).reshape(B, H, N * C, W)[:, :, :T]  # [B, H, T, W]

    # 6. final state
    S = S_in[:, :, -1] + kv[:, :, -1]  # [B, H, K, W]
    if not normalize:
        return out, (S, z0 + k.sum(2))
    o = _normalise(out[..., :Vd], out[..., Vd], normalize, eps)  # [B, H, T, V]
    return o, (S[..., :Vd].contiguous(), S[..., Vd].contiguous())
