"""Retention: the decayed, rotated linear attention of RetNet.

Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
arXiv:2307.08621 (Eq. 1-7: recurrent, parallel and chunkwise forms of retention).

Per head, with a fixed decay ``gamma = exp(log_gamma)`` in (0, 1) and rotary frequencies ``theta``,
the paper defines (zero initial state, absolute positions ``n``, ``m``)::

    o_n = sum_{m <= n} gamma^(n-m) * <rot(q_n, n*theta), rot(k_m, m*theta)> * v_m

Frame convention (what the state means). To avoid a position counter in the state we keep it in the
frame of the current token: after token ``n``::

    S_n = sum_{m <= n} gamma^(n-m) * rot(k_m, (m-n)*theta) (outer) v_m          # [K, V]
    o_n = q_n^T S_n                                                             # q is never rotated
    S_n = gamma * Rot_K(-theta) S_{n-1} + k_n (outer) v_n                         # the recurrence

``rot`` rotates half-split pairs of the key dimension (``seqmix.modules.rotary.rotate_pairs``) and
``Rot_K`` applies it to every column of ``S`` (rotates along the key dimension). Since rotations are
orthogonal, ``q_n . rot(k_m, (m-n)theta) = rot(q_n, n theta) . rot(k_m, m theta)``, so this equals the
paper's form; an initial state ``S_0`` given to a whole-sequence form is the state "after token -1".

Whole-sequence forms use positions local to the block ``p = i + 1`` (``i = 0..L-1``) with
``q~_i = rot(q_i, p theta)`` and ``k~_j = rot(k_j, p theta)``::

    o_i   = sum_{j <= i} gamma^(i-j) (q~_i . k~_j) v_j  +  gamma^(i+1) q~_i^T S_c
    S_new = Rot_K(-L theta) [ gamma^L S_c + sum_j gamma^(L-1-j) k~_j (outer) v_j ]

Every power of gamma is ``exp(exponent * log_gamma)`` with ``exponent >= 0`` (masked before ``exp``),
never a ratio of cumulative products, so nothing overflows for strong decays or long blocks.

The paper also rescales scores (``D`` row-normalisation, division by ``max(|sum R|, 1)``) for numerical
stability; with the per-head GroupNorm that follows retention those change nothing but the GroupNorm
epsilon's effect, and the second one has no exact recurrent form, so these ops compute plain retention.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``log_gamma: [H]`` (negative), ``theta: [K/2]`` or
``None`` (no rotation), ``initial_state: [B, H, K, V]``. All forms return ``(o: [B, H, T, V],
final_state: [B, H, K, V])`` and are differentiable in every tensor argument.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from seqmix.modules.rotary import rotate_pairs

__all__ = ["retention_step", "retention_recurrent", "retention_parallel", "retention_chunk"]


def _rotate_state(state: torch.Tensor, angles: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``scale * Rot_K(angles) S``: rotate the key dimension of ``state: [..., K, V]`` by ``angles: [..., K/2]``.

    Works on the two halves of the key dimension in place of a transposed ``rotate_pairs``: the state is
    the largest tensor a decoding step touches, and strided passes over it dominated the step's time.
    ``scale`` (broadcast against ``angles``) folds a decay into the rotation at no extra pass.
    """
    cos, sin = angles.cos().unsqueeze(-1), angles.sin().unsqueeze(-1)  # [..., K/2, 1]
    if scale is not None:
        cos, sin = cos * scale.unsqueeze(-1), sin * scale.unsqueeze(-1)
    s1, s2 = state.chunk(2, dim=-2)  # [..., K/2, V] each
    return torch.cat((s1 * cos - s2 * sin, s1 * sin + s2 * cos), dim=-2)


def _decay_powers(exponent: torch.Tensor, log_gamma: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``gamma_h^exponent`` where ``valid`` and 0 elsewhere: ``[H, *exponent.shape]``.

    The exponent is masked to -inf BEFORE exp, so no positive exponent is ever evaluated.
    """
    e = exponent.to(log_gamma.dtype) * log_gamma.view(-1, *([1] * exponent.ndim))
    return e.masked_fill(~valid, float("-inf")).exp()


# --------------------------------------------------------------------------- the spec
def retention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gamma: torch.Tensor,
    theta: Optional[torch.Tensor],
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``q, k: [B, H, K]``, ``v: [B, H, V]``, ``state: [B, H, K, V]`` -> ``(o: [B, H, V], state)``."""
    gamma = log_gamma.exp()  # [H]
    if theta is not None:
        # move the old state into the new token's frame and decay it, in one pass
        decayed = _rotate_state(state, -theta, gamma[:, None])  # [B, H, K, V]
    else:
        decayed = gamma[:, None, None] * state
    state = torch.baddbmm(
        decayed.flatten(0, 1), k.flatten(0, 1).unsqueeze(-1), v.flatten(0, 1).unsqueeze(-2)
    ).view_as(state)  # [B, H, K, V]: decayed + k v^T
    o = (q.unsqueeze(-2) @ state).squeeze(-2)  # [B, H, V]
    return o, state


def retention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gamma: torch.Tensor,
    theta: Optional[torch.Tensor],
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: a Python loop of ``retention_step`` over time. O(T) steps; the spec, not a fast path."""
    state = initial_state
    outs = []
    for t in range(q.shape[2]):
        o_t, state = retention_step(q[:, :, t], k[:, :, t], v[:, :, t], log_gamma, theta, state)
        outs.append(o_t)
    return torch.stack(outs, dim=2), state  # [B, H, T, V]


# --------------------------------------------------------------------------- fast forms
def retention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gamma: torch.Tensor,
    theta: Optional[torch.Tensor],
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The T x T form (paper Eq. 5) plus the initial-state term and the final state.

    O(T^2) time and memory; best for short sequences.
    """
    T = q.shape[2]
    idx = torch.arange(T, device=q.device)  # [T]

    # 1. Rotate by positions 1..T (position 0 is the initial state's frame).
    if theta is not None:
        angles = (idx + 1).to(theta.dtype)[:, None] * theta  # [T, K/2]
        q = rotate_pairs(q, angles)  # [B, H, T, K]
        k = rotate_pairs(k, angles)  # [B, H, T, K]

    # 2. Decay matrix gamma^(i-j) for j <= i, and the decays from the initial state / to the end.
    rel = idx[:, None] - idx[None, :]  # [T, T]
    decay = _decay_powers(rel, log_gamma, rel >= 0)  # [H, T, T]
    q_decay = _decay_powers(idx + 1, log_gamma, idx >= 0)  # [H, T]  gamma^(i+1)
    k_decay = _decay_powers(T - 1 - idx, log_gamma, idx >= 0)  # [H, T]  gamma^(T-1-j)
    total_decay = (T * log_gamma).exp()[:, None, None]  # [H, 1, 1]  gamma^T

    # 3. Outputs: masked decayed scores, plus what the initial state contributes.
    scores = (q @ k.transpose(-1, -2)) * decay  # [B, H, T, T]
    o = scores @ v + (q * q_decay[..., None]) @ initial_state  # [B, H, T, V]

    # 4. Final state in the frame of the last token.
    state = total_decay * initial_state + (k * k_decay[..., None]).transpose(-1, -2) @ v  # [B, H, K, V]
    if theta is not None:
        state = _rotate_state(state, -T * theta)
    return o, state


def retention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gamma: torch.Tensor,
    theta: Optional[torch.Tensor],
    initial_state: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form (paper Eq. 7): masked C x C matmuls inside chunks, a state recurrence across them.

    O(T C (K + V) + T K V) time; the only Python loop is over the T / C chunks, and it only updates the
    ``[B, H, K, V]`` state. T need not be a multiple of ``chunk_size``.
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)  # number of chunks
    pad = N * C - T

    # 1. Pad time to N*C with zeros and split into chunks. Padded keys/values are zero and padded
    #    positions are masked out of the decays below, so they contribute nothing.
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q = q.reshape(B, H, N, C, K)
    k = k.reshape(B, H, N, C, K)
    v = v.reshape(B, H, N, C, V)

    # 2. Rotate by local positions 1..C: the carried state is in the frame of local position 0.
    idx = torch.arange(C, device=q.device)  # [C]
    if theta is not None:
        angles = (idx + 1).to(theta.dtype)[:, None] * theta  # [C, K/2]
        q = rotate_pairs(q, angles)  # [B, H, N, C, K]
        k = rotate_pairs(k, angles)  # [B, H, N, C, K]

    # 3. Decays in log space. Chunk c holds L_c tokens (C except possibly the last).
    lengths = torch.full((N,), C, device=q.device, dtype=torch.long)  # [N]
    lengths[-1] = C - pad
    rel = idx[:, None] - idx[None, :]  # [C, C]
    decay = _decay_powers(rel, log_gamma, rel >= 0)[:, None]  # [H, 1, C, C]  gamma^(i-j), j <= i
    q_decay = _decay_powers(idx + 1, log_gamma, idx >= 0)  # [H, C]  gamma^(i+1)
    to_end = lengths[:, None] - 1 - idx[None, :]  # [N, C]
    k_decay = _decay_powers(to_end, log_gamma, to_end >= 0)  # [H, N, C]  gamma^(L_c-1-j)
    chunk_decay = _decay_powers(lengths, log_gamma, lengths >= 0)  # [H, N]  gamma^(L_c)

    # 4. Intra-chunk outputs, all chunks at once.
    scores = (q @ k.transpose(-1, -2)) * decay  # [B, H, N, C, C]
    o = scores @ v  # [B, H, N, C, V]

    # 5. What each chunk adds to the state (in the frame of its local position 0), all chunks at once.
    updates = (k * k_decay[..., None]).transpose(-1, -2) @ v  # [B, H, N, K, V]

    # 6. State recurrence across chunks; keep the state entering each chunk for step 7. unbind (not
    #    indexing in the loop) so that backward assembles each gradient once instead of once per chunk.
    chunk_updates = updates.unbind(2)  # N x [B, H, K, V]
    chunk_decays = chunk_decay[..., None, None].unbind(1)  # N x [H, 1, 1]
    if theta is not None:
        back = (-lengths.to(theta.dtype)[:, None] * theta).unbind(0)  # N x [K/2]: into the chunk's last frame
    state = initial_state
    entering = []
    for c in range(N):
        entering.append(state)
        state = chunk_decays[c] * state + chunk_updates[c]  # [B, H, K, V]
        if theta is not None:
            state = _rotate_state(state, back[c])
    entering_states = torch.stack(entering, dim=2)  # [B, H, N, K, V]

    # 7. Inter-chunk outputs: each query reads the state that entered its chunk, decayed by gamma^(i+1).
    o = o + (q * q_decay[:, None, :, None]) @ entering_states  # [B, H, N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T]
    return o, state
