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
from seqmix.ops.precision import full_precision

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


def _cos_sin(positions: torch.Tensor, theta: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``positions[:, None] * theta`` (``[P, K/2]``), in ``dtype``.

    Formed in float64 where the device has it: an angle of thousands of radians then keeps the precision
    of a short one, and only the cosine is rounded to ``dtype``.
    """
    wide = theta.dtype if theta.device.type == "mps" else torch.float64
    angles = positions.to(wide)[:, None] * theta.to(wide)  # [P, K/2]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_keys(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``rotate_pairs`` of ``x: [..., T, K]`` with precomputed ``cos, sin: [T, K/2]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _rotate_state_by(state: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``Rot_K`` of ``state: [..., K, V]`` by an angle whose ``cos, sin: [K/2]`` are given."""
    cos, sin = cos.unsqueeze(-1), sin.unsqueeze(-1)  # [K/2, 1]
    s1, s2 = state.chunk(2, dim=-2)  # [..., K/2, V] each
    return torch.cat((s1 * cos - s2 * sin, s1 * sin + s2 * cos), dim=-2)


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


class _AcrossChunks(torch.autograd.Function):
    """Retention of chunked, rotated inputs with a hand-written backward.

    Inputs, chunk-major so that every chunk's slice is one contiguous block for the matmuls:
    ``q, k: [N, BH, C, K]``, ``v: [N, BH, C, V]`` (heads merged into the batch, ``BH = B * H``), the
    per-head decays ``decay: [H, C, C]`` (gamma^(i-j), 0 above the diagonal), ``q_decay: [H, C, 1]``
    (gamma^(i+1)), ``k_decay: [H, N, C, 1]`` (gamma^(L_n-1-j)), ``chunk_decay: [H, N, 1, 1]``
    (gamma^(L_n)) and ``state: [BH, K, V]``. Returns ``o: [N, BH, C, V]`` and the final state (both in
    the frame of position 0). Forward::

        o_n     = ((q_n k_n^T) * decay) v_n + (q_n * q_decay) S_n          S_0 = state
        S_{n+1} = chunk_decay_n S_n + (k_n * k_decay_n)^T v_n

    Autograd through the same loop stacks every per-chunk gradient into a new tensor and sums the intra-
    and inter-chunk gradients of q, k and v in further passes; here each chunk's gradients are added in
    place into one buffer per input, and the states entering the chunks (kept from forward, each a
    separate ``[BH, K, V]`` tensor) are the only per-chunk memory. Backward, with ``G`` the gradient of
    the state leaving chunk n, for n = N-1 .. 0::

        dk_n += (v_n G^T) * k_decay_n      dv_n += (k_n * k_decay_n) G      dq_n += (do_n S_n^T) * q_decay
        G     = chunk_decay_n G + (q_n * q_decay)^T do_n

    plus the intra-chunk terms, batched over chunks. The decays get gradients too (``log_gamma`` is a
    differentiable argument of every form), computed only when asked for.
    """

    @staticmethod
    def forward(ctx, q, k, v, decay, q_decay, k_decay, chunk_decay, state):  # type: ignore[override]
        with full_precision(q):  # matmuls in the inputs' dtype, whatever the caller's autocast
            N, BH, C, _ = q.shape
            qd, kd, cd, dm = _per_batch(decay, q_decay, k_decay, chunk_decay, BH)
            o = ((q @ k.transpose(-1, -2)) * dm) @ v  # [N, BH, C, V]: intra-chunk, all chunks at once
            entering = []
            for n in range(N):
                entering.append(state)
                o[n].baddbmm_(q[n] * qd, state)  # [BH, C, V]: what the queries read from the state
                state = torch.baddbmm(state * cd[n], (k[n] * kd[n]).transpose(-1, -2), v[n])  # [BH, K, V]
            if any(ctx.needs_input_grad):
                ctx.save_for_backward(q, k, v, decay, q_decay, k_decay, chunk_decay, *entering)
            return o, state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, d_state):  # type: ignore[override]
        # the engine runs backward under the caller's autocast; forward ran in the inputs' dtype
        with full_precision(d_o):
            q, k, v, decay, q_decay, k_decay, chunk_decay, *entering = ctx.saved_tensors
            N, BH, C, K = q.shape
            H = decay.shape[0]
            qd, kd, cd, dm = _per_batch(decay, q_decay, k_decay, chunk_decay, BH)
            d_o = d_o.contiguous()
            want_decays = any(ctx.needs_input_grad[3:7])

            # 1. Intra-chunk terms, all chunks at once (scores recomputed: one small batched matmul).
            scores = q @ k.transpose(-1, -2)  # [N, BH, C, C], undecayed
            d_scores = d_o @ v.transpose(-1, -2)  # [N, BH, C, C]
            d_decay = (d_scores * scores).view(N, BH // H, H, C, C).sum((0, 1)) if want_decays else None
            d_scores = d_scores * dm
            dq = d_scores @ k  # [N, BH, C, K]
            dk = d_scores.transpose(-1, -2) @ q  # [N, BH, C, K]
            dv = (scores * dm).transpose(-1, -2) @ d_o  # [N, BH, C, V]

            # 2. Across chunks, last to first; G is the gradient of the state leaving chunk n.
            G = torch.zeros_like(entering[0]) if d_state is None else d_state.contiguous()  # [BH, K, V]
            if want_decays:
                d_qd = q.new_zeros(BH, C, 1)
                d_kd = q.new_zeros(N, BH, C, 1)
                d_cd = q.new_zeros(N, BH, 1, 1)
            for n in range(N - 1, -1, -1):
                S = entering[n]
                k_hat = k[n] * kd[n]  # [BH, C, K]
                v_G = v[n] @ G.transpose(-1, -2)  # [BH, C, K]: gradient of the decayed keys
                dk[n].addcmul_(v_G, kd[n])
                dv[n].baddbmm_(k_hat, G)
                do_S = d_o[n] @ S.transpose(-1, -2)  # [BH, C, K]: gradient of the decayed queries
                dq[n].addcmul_(do_S, qd)
                if want_decays:
                    d_kd[n] = (v_G * k[n]).sum(-1, keepdim=True)
                    d_qd += (do_S * q[n]).sum(-1, keepdim=True)
                    d_cd[n] = (G * S).sum((-1, -2), keepdim=True)
                G = torch.baddbmm(G * cd[n], (q[n] * qd).transpose(-1, -2), d_o[n])  # [BH, K, V]
            if not want_decays:
                return dq, dk, dv, None, None, None, None, G
            B = BH // H
            d_qd = d_qd.view(B, H, C, 1).sum(0)
            d_kd = d_kd.view(N, B, H, C, 1).sum(1).transpose(0, 1)  # [H, N, C, 1]
            d_cd = d_cd.view(N, B, H, 1, 1).sum(1).transpose(0, 1)  # [H, N, 1, 1]
            return dq, dk, dv, d_decay, d_qd, d_kd, d_cd, G


def _per_batch(decay, q_decay, k_decay, chunk_decay, BH: int):
    """The per-head decays of ``_AcrossChunks`` broadcast over the merged batch ``BH = B * H`` (views)."""
    H, N, C = k_decay.shape[:3]
    B = BH // H
    qd = q_decay.expand(B, H, C, 1).reshape(BH, C, 1)
    kd = k_decay.transpose(0, 1).unsqueeze(1).expand(N, B, H, C, 1).reshape(N, BH, C, 1)
    cd = chunk_decay.transpose(0, 1).unsqueeze(1).expand(N, B, H, 1, 1).reshape(N, BH, 1, 1)
    dm = decay.expand(B, H, C, C).reshape(1, BH, C, C)
    return qd, kd, cd, dm


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

    O(T C (K + V) + T K V) time; the only Python loop is over the T / C chunks (``_AcrossChunks``, with
    its own backward). T need not be a multiple of ``chunk_size``.

    Unlike the step, this form keeps the carried state in ONE frame for the whole call, that of position
    0 (the initial state's): queries and keys are rotated once by their positions ``1..T`` in the call,
    so that across chunks the state only decays (a scalar per head) and is rotated into the last token's
    frame once at the end. Rotating it into each chunk's frame instead costs passes over the ``[K, V]``
    state per chunk, forward and backward, which dominated this form on a CPU. The angles ``p * theta``
    (up to T radians) are formed in float64 where the device has it, so that their cosines keep the
    precision of short angles.
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)  # number of chunks
    pad = N * C - T

    # 1. Pad time to N*C with zeros and split into chunks, chunk-major, heads merged into the batch.
    #    Padded keys and values are zero and padded positions are masked out of the decays: they add
    #    nothing.
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q = q.reshape(B * H, N, C, K).transpose(0, 1)  # [N, B*H, C, K] (a view)
    k = k.reshape(B * H, N, C, K).transpose(0, 1)  # [N, B*H, C, K] (a view)
    v = v.reshape(B * H, N, C, V).transpose(0, 1).contiguous()  # [N, B*H, C, V]

    # 2. Rotate by the positions 1..N*C of the call (position 0 is the initial state's frame); the
    #    rotation writes the chunk-major copies.
    if theta is not None:
        cos, sin = _cos_sin(torch.arange(1, N * C + 1, device=q.device), theta, q.dtype)  # [N*C, K/2] each
        cos, sin = cos.view(N, 1, C, K // 2), sin.view(N, 1, C, K // 2)
        q = _rotate_keys(q, cos, sin)  # [N, B*H, C, K]
        k = _rotate_keys(k, cos, sin)  # [N, B*H, C, K]
    else:
        q, k = q.contiguous(), k.contiguous()

    # 3. Decays in log space. Chunk n holds L_n tokens (C except possibly the last).
    idx = torch.arange(C, device=q.device)  # [C]
    lengths = torch.full((N,), C, device=q.device, dtype=torch.long)  # [N]
    lengths[-1] = C - pad
    rel = idx[:, None] - idx[None, :]  # [C, C]
    decay = _decay_powers(rel, log_gamma, rel >= 0)  # [H, C, C]  gamma^(i-j), j <= i
    q_decay = _decay_powers(idx + 1, log_gamma, idx >= 0)  # [H, C]  gamma^(i+1)
    to_end = lengths[:, None] - 1 - idx[None, :]  # [N, C]
    k_decay = _decay_powers(to_end, log_gamma, to_end >= 0)  # [H, N, C]  gamma^(L_n-1-j)
    chunk_decay = _decay_powers(lengths, log_gamma, lengths >= 0)  # [H, N]  gamma^(L_n)

    # 4. Inside and across chunks.
    o, state = _AcrossChunks.apply(
        q, k, v, decay, q_decay[..., None], k_decay[..., None], chunk_decay[..., None, None],
        initial_state.reshape(B * H, K, V),
    )
    o = o.transpose(0, 1).reshape(B, H, N * C, V)[:, :, :T]  # [B, H, T, V]

    # 5. The final state into the frame of the last token.
    state = state.view(B, H, K, V)
    if theta is not None:
        cos, sin = _cos_sin(torch.full((1,), -T, device=q.device), theta, q.dtype)  # [1, K/2]
        state = _rotate_state_by(state, cos[0], sin[0])
    return o, state
