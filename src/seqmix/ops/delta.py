"""The delta rule: fast weights corrected towards each new value (DeltaNet).

Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers",
arXiv:2102.11174 (eq. 24-26); chunkwise form from Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length", arXiv:2406.06484 (Section 3, the WY /
UT-transform representation).

Per head, with the state ``S: [K, V]`` (the transpose of the papers' ``V x K`` fast weight matrix)::

    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        = S_{t-1} + k_t u_t^T,      u_t = beta_t (v_t - S_{t-1}^T k_t)     # the "delta"
    o_t = S_t^T q_t

With L2-normalised keys the transition ``I - beta k k^T`` has eigenvalue ``1 - beta`` along ``k`` and 1
elsewhere: ``beta in [0, 1]`` keeps it in ``[0, 1]``; ``beta in [0, 2]`` (Grazzi et al. 2024, negative
eigenvalues) extends it to ``[-1, 1]`` (a reflection at ``beta = 2``). The ops take ``beta`` as given.

Chunkwise form. Inside a chunk of ``C`` tokens entered with state ``S0``, stacking the rows ``u_r``::

    U = diag(beta) (V - K S0 - tril(K K^T, -1) U)
    =>  A U = diag(beta) V - diag(beta) K S0,     A = I + tril(diag(beta) K K^T, -1)   (unit lower triangular)
    =>  U = U~ - W S0,    U~ = A^{-1} diag(beta) V,   W = A^{-1} diag(beta) K
    O = Q S0 + tril(Q K^T) U,        S_end = S0 + K^T U

``W`` and ``U~`` do not depend on the state, so one batched triangular solve
(``torch.linalg.solve_triangular``) yields them for every chunk at once; ``U = U~ - W S``, the outputs and
the state update run in a loop over the ``T / C`` chunks (never over tokens), as a few matmuls each.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``beta: [B, H, T]``, ``initial_state: [B, H, K, V]``.
Every form returns ``(o: [B, H, T, V], final_state: [B, H, K, V])`` and is differentiable in all tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.ops.precision import full_precision
from seqmix.ops.ssd import positive_chunk_size

__all__ = ["delta_step", "delta_recurrent", "delta_chunk"]


def _check(q, k, v, beta, initial_state) -> None:
    B, H, T, V = v.shape
    K = q.shape[-1]
    for name, t, want in (
        ("q", q, (B, H, T, K)),
        ("k", k, (B, H, T, K)),
        ("beta", beta, (B, H, T)),
        ("initial_state", initial_state, (B, H, K, V)),
    ):
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


# --------------------------------------------------------------------------- the spec
def delta_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, beta_t: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``q_t, k_t: [B, H, K]``, ``v_t: [B, H, V]``, ``beta_t: [B, H]``, ``state: [B, H, K, V]``."""
    retrieved = (k_t.unsqueeze(-2) @ state).squeeze(-2)  # [B, H, V]: S^T k
    u = beta_t.unsqueeze(-1) * (v_t - retrieved)  # [B, H, V]
    state = state + k_t.unsqueeze(-1) * u.unsqueeze(-2)  # [B, H, K, V]
    o = (q_t.unsqueeze(-2) @ state).squeeze(-2)  # [B, H, V]
    return o, state


def delta_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: ``delta_step`` in a Python loop over time."""
    _check(q, k, v, beta, initial_state)
    state = initial_state
    outs = []
    for t in range(v.shape[2]):
        o_t, state = delta_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], state)
        outs.append(o_t)
    return torch.stack(outs, dim=2), state  # [B, H, T, V]


class _AcrossChunks(torch.autograd.Function):
    """The state-dependent part of ``delta_chunk``, with a hand-written backward.

    Inputs ``[BH, N, C, *]`` (heads merged into the batch): queries ``q``, keys ``k``, ``W``, ``U~`` and
    the causal scores ``s = tril(Q K^T)`` of every chunk, and the state ``[BH, K, V]``. Forward, chunk by
    chunk::

        U_n = U~_n - W_n S_n        O_n = s_n U_n + q_n S_n        S_{n+1} = S_n + k_n^T U_n

    Autograd through the same loop stacks every per-chunk gradient into a new tensor and allocates and
    sums partial gradients per chunk; here each is written once into a chunk-major buffer. Forward keeps
    the states entering the chunks (separate ``[BH, K, V]`` tensors) and ``U``. Backward, with ``G`` the
    gradient of the state leaving chunk n, for n = N-1 .. 0::

        dU_n = s_n^T dO_n + k_n G          dq_n = dO_n S_n^T        ds_n = dO_n U_n^T
        dk_n = U_n G^T                     dW_n = -dU_n S_n^T       dU~_n = dU_n
        G    = G + q_n^T dO_n - W_n^T dU_n
    """

    @staticmethod
    def forward(ctx, q, k, W, U_tilde, scores, state):  # type: ignore[override]
        with full_precision(q):  # matmuls in the inputs' dtype, whatever the caller's autocast
            BH, N, C, _ = q.shape
            V = U_tilde.shape[-1]
            o = q.new_empty(N, BH, C, V)  # chunk-major: each chunk's block contiguous
            U = q.new_empty(N, BH, C, V)
            entering = []
            for n in range(N):
                entering.append(state)
                torch.baddbmm(U_tilde[:, n], W[:, n], state, alpha=-1, out=U[n])  # U~ - W S
                torch.baddbmm(scores[:, n] @ U[n], q[:, n], state, out=o[n])  # s U + q S
                state = torch.baddbmm(state, k[:, n].transpose(-1, -2), U[n])  # S + k^T U
            if any(ctx.needs_input_grad):
                ctx.save_for_backward(q, k, W, scores, U, *entering)
            return o.transpose(0, 1), state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, d_state):  # type: ignore[override]
        # the engine runs backward under the caller's autocast; forward ran in the inputs' dtype
        with full_precision(d_o):
            q, k, W, scores, U, *entering = ctx.saved_tensors
            BH, N, C, K = q.shape
            d_o = d_o.transpose(0, 1).contiguous()  # [N, BH, C, V]
            dq, dk, dW = (q.new_empty(N, BH, C, K) for _ in range(3))
            dU = torch.empty_like(U)
            ds = q.new_empty(N, BH, C, C)
            G = torch.zeros_like(entering[0]) if d_state is None else d_state.contiguous()  # [BH, K, V]
            for n in range(N - 1, -1, -1):
                S = entering[n]
                torch.baddbmm(k[:, n] @ G, scores[:, n].transpose(-1, -2), d_o[n], out=dU[n])
                torch.bmm(d_o[n], S.transpose(-1, -2), out=dq[n])
                torch.bmm(d_o[n], U[n].transpose(-1, -2), out=ds[n])
                torch.bmm(U[n], G.transpose(-1, -2), out=dk[n])
                torch.bmm(dU[n], S.transpose(-1, -2), out=dW[n]).neg_()
                G = torch.baddbmm(torch.baddbmm(G, q[:, n].transpose(-1, -2), d_o[n]), W[:, n].transpose(-1, -2), dU[n], alpha=-1)
            grads = (t.transpose(0, 1) for t in (dq, dk, dW, dU, ds))
            return (*grads, G)


# --------------------------------------------------------------------------- fast form
def delta_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise delta rule (UT transform).

    1. Pad ``T`` to ``N * C`` with ``k = 0, beta = 0`` tokens (no update; their outputs are cut off).
    2. ``A = I + tril(diag(beta) K K^T, -1)`` per chunk; one batched triangular solve gives ``A^{-1}``,
       two matmuls ``W`` and ``U~``.
    3. ``tril(Q_n K_n^T)`` of every chunk in one batched matmul; then a loop over chunks:
       ``U_n = U~_n - W_n S``; outputs ``O_n = Q_n S + tril(Q_n K_n^T) U_n``; ``S += K_n^T U_n``.
    """
    _check(q, k, v, beta, initial_state)
    B, H, T, V = v.shape
    K = q.shape[-1]
    C = min(positive_chunk_size(chunk_size), T)
    N = -(-T // C)
    pad = N * C - T

    # 1. (heads merged into the batch: the loop below runs batched matmuls)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta = F.pad(beta, (0, pad))
    qc = q.reshape(B * H, N, C, K)  # [B*H, N, C, K]
    kc = k.reshape(B * H, N, C, K)  # [B*H, N, C, K]
    vc = v.reshape(B * H, N, C, V)  # [B*H, N, C, V]
    bc = beta.reshape(B * H, N, C, 1)  # [B*H, N, C, 1]

    # 2. the UT transform; the diagonal of A is 1 by construction (unitriangular) and never read.
    #    Solving for the C x C inverse and multiplying is far faster on CPUs than solving for the
    #    K + V right-hand sides directly (LAPACK's batched trsm is slow for wide right-hand sides).
    A = torch.tril(bc * (kc @ kc.transpose(-1, -2)), diagonal=-1)  # [B*H, N, C, C]
    eye = torch.eye(C, dtype=A.dtype, device=A.device).expand_as(A)
    A_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)  # [B*H, N, C, C]
    W = A_inv @ (bc * kc)  # [B*H, N, C, K]
    U_tilde = A_inv @ (bc * vc)  # [B*H, N, C, V]
    scores = (qc @ kc.transpose(-1, -2)).tril()  # [B*H, N, C, C]: all chunks in one batched matmul

    # 3. the state-dependent part, chunk by chunk (states are never stacked: see ssd_chunk)
    o, state = _AcrossChunks.apply(qc, kc, W, U_tilde, scores, initial_state.reshape(B * H, K, V))
    return o.reshape(B, H, N * C, V)[:, :, :T], state.view(B, H, K, V)
