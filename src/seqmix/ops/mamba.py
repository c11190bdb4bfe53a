"""The selective scan of Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv:2312.00752, Algorithm 2 with the zero-order-hold A and the simplified Euler B):

    h_t = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]      h: [B, D, N]
    y_t[d] = sum_n C_t[n] * h_t[d, n]

Shapes: ``u, delta: [B, T, D]``, ``A: [D, N]`` (negative), ``Bm, Cm: [B, T, N]``,
``initial_state: [B, D, N]``; every form returns ``(y: [B, T, D], h_last: [B, D, N])``. The skip
``D * u`` and the output gate stay in the mixer, where autograd handles them.

``negative_eigenvalues=True`` (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues", arXiv:2411.12537, Section 4: their recipe for Mamba) replaces the transition by

    h_t = (2 exp(delta_t[d] * A[d, n]) - 1) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]

so that it ranges over (-1, 1) instead of (0, 1); the input term is unchanged.

Forms (same signature):

- ``selective_scan_recurrent``: a Python loop over ``selective_scan_step``, the spec.
- ``selective_scan_chunked``: a loop over chunks of ``chunk_size`` tokens. Inside a chunk the decays
  and inputs ``[B, C, D, N]`` are built, scanned with the Blelloch scan of ``ops/scan.py`` and
  contracted with ``C_t`` at once, so only one chunk of the ``[B, T, D, N]`` state sequence exists at
  a time. A custom backward recomputes each chunk from the state saved at its start (the strategy of
  the paper's fused kernel, Section 3.3.2), so autograd keeps only the inputs plus one ``[B, D, N]``
  state per chunk, not the ``[B, T, D, N]`` tensors.
"""

from __future__ import annotations

from typing import Optional

import torch

from seqmix.ops.scan import blelloch_scan_, check_chunk_size, next_pow2

__all__ = ["selective_scan_step", "selective_scan_recurrent", "selective_scan_chunked"]


def _decay(delta_t: torch.Tensor, A: torch.Tensor, negative_eigenvalues: bool) -> torch.Tensor:
    """``exp(delta_t * A)``, mapped to ``2 exp(.) - 1`` with ``negative_eigenvalues``; ``delta_t: [..., D]``."""
    a = torch.exp_(delta_t.unsqueeze(-1) * A)  # [..., D, N]
    # out of place: under autograd (the step and the loop) exp_'s backward needs its result unchanged
    return 2.0 * a - 1.0 if negative_eigenvalues else a


def _check(u, delta, A, Bm, Cm, initial_state) -> None:
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must share one shape [B, T, D], got {tuple(u.shape)} and {tuple(delta.shape)}")
    Bsz, T, D = u.shape
    if T == 0:
        raise ValueError("the selective scan needs at least one time step")
    if A.ndim != 2 or A.shape[0] != D:
        raise ValueError(f"A must have shape [D={D}, N], got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("Bm", Bm), ("Cm", Cm)):
        if tuple(t.shape) != (Bsz, T, N):
            raise ValueError(f"{name} must have shape {(Bsz, T, N)} ([B, T, N]), got {tuple(t.shape)}")
    if tuple(initial_state.shape) != (Bsz, D, N):
        raise ValueError(f"initial_state must have shape {(Bsz, D, N)} ([B, D, N]), got {tuple(initial_state.shape)}")
    dtypes = {t.dtype for t in (u, delta, A, Bm, Cm, initial_state)}
    if len(dtypes) != 1:
        raise ValueError(f"all inputs of the selective scan must share one dtype, got {sorted(map(str, dtypes))}")


# --------------------------------------------------------------------------- the spec
def selective_scan_step(
    u_t: torch.Tensor,
    delta_t: torch.Tensor,
    A: torch.Tensor,
    B_t: torch.Tensor,
    C_t: torch.Tensor,
    h: torch.Tensor,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``u_t, delta_t: [B, D]``, ``B_t, C_t: [B, N]``, ``h: [B, D, N]`` -> ``(y_t [B, D], h)``."""
    decay = _decay(delta_t, A, negative_eigenvalues)  # [B, D, N]
    h = decay * h + (delta_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)  # [B, D, N]
    y_t = (h * C_t.unsqueeze(1)).sum(-1)  # [B, D]
    return y_t, h


def selective_scan_recurrent(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    initial_state: torch.Tensor,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: a Python loop over time."""
    _check(u, delta, A, Bm, Cm, initial_state)
    h = initial_state
    ys = []
    for t in range(u.shape[1]):
        y_t, h = selective_scan_step(u[:, t], delta[:, t], A, Bm[:, t], Cm[:, t], h, negative_eigenvalues)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


# --------------------------------------------------------------------------- the chunked form
def _pad_time(t: torch.Tensor, length: int, value: float) -> torch.Tensor:
    """Pad dim 1 of ``t`` to ``length`` with ``value`` (the scan's identity element)."""
    if t.shape[1] == length:
        return t
    out = t.new_full((t.shape[0], length) + tuple(t.shape[2:]), value)
    out[:, : t.shape[1]] = t
    return out


def _chunks(T: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """``(start, end, padded length)`` per chunk; a short chunk is padded to the next power of two."""
    block = min(chunk_size, next_pow2(T))
    return [(s, min(T, s + block), next_pow2(min(T, s + block) - s)) for s in range(0, T, block)]


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, h0, chunk_size, negative_eigenvalues):  # type: ignore[override]
        Bsz, T, D = u.shape
        N = A.shape[1]
        chunks = _chunks(T, chunk_size)
        du = delta * u  # [B, T, D]
        y = u.new_empty(Bsz, T, D)  # [B, T, D]
        starts = u.new_empty(Bsz, len(chunks), D, N)  # [B, n_chunks, D, N], the state entering each chunk
        h = h0
        for k, (s, e, Lp) in enumerate(chunks):
            c = e - s
            starts[:, k] = h
            # 1. decays and inputs of the chunk, padded with the identity (a=1, x=0) to Lp
            a = _pad_time(_decay(delta[:, s:e], A, negative_eigenvalues), Lp, 1.0)  # [B, Lp, D, N]
            x = _pad_time(du[:, s:e, :, None] * Bm[:, s:e, None, :], Lp, 0.0)  # [B, Lp, D, N]
            # 2. fold the carried state into the first step, then scan from zero
            x[:, 0].addcmul_(a[:, 0], h)
            blelloch_scan_(a, x)
            # 3. contract with C_t now, so the chunk's states can be dropped
            y[:, s:e] = torch.matmul(x[:, :c], Cm[:, s:e, :, None]).squeeze(-1)  # [B, c, D]
            h = x[:, c - 1].clone()  # [B, D, N]
        ctx.chunk_size = chunk_size
        ctx.negative_eigenvalues = negative_eigenvalues
        ctx.save_for_backward(u, delta, A, Bm, Cm, starts)
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Optional[torch.Tensor], grad_last: Optional[torch.Tensor]):  # type: ignore[override]
        u, delta, A, Bm, Cm, starts = ctx.saved_tensors
        Bsz, T, D = u.shape
        if grad_y is None:
            grad_y = torch.zeros_like(u)
        grad_y = grad_y.contiguous()
        du = delta * u  # [B, T, D]
        g_du = torch.empty_like(u)  # [B, T, D]
        g_delta = torch.empty_like(u)  # [B, T, D], the part through the decays
        g_A = torch.zeros_like(A)  # [D, N]
        g_B = torch.empty_like(Bm)  # [B, T, N]
        g_C = torch.empty_like(Cm)  # [B, T, N]
        # lam_T: gradient reaching the state that leaves the current chunk from later chunks
        G = torch.zeros_like(starts[:, 0]) if grad_last is None else grad_last.clone()  # [B, D, N]
        for k, (s, e, Lp) in reversed(list(enumerate(_chunks(T, ctx.chunk_size)))):
            c = e - s
            h_start = starts[:, k]  # [B, D, N]
            # 1. recompute the chunk's states h (as in the forward pass)
            if ctx.negative_eigenvalues:
                # the derivative of a = 2 exp(delta A) - 1 is 2 exp(delta A), kept apart: as a + 1 it would
                # cancel to 0 where exp(delta A) underflows next to 1
                deriv = torch.exp_(delta[:, s:e, :, None] * A).mul_(2.0)  # [B, c, D, N]
                a = deriv - 1.0  # [B, c, D, N]
            else:
                a = _decay(delta[:, s:e], A, False)  # [B, c, D, N]
            a0 = a[:, 0].clone()  # [B, D, N]
            # the adjoint runs backwards with the decay of the NEXT step: a_next[t] = a[t+1]
            a_next = torch.empty_like(a, memory_format=torch.contiguous_format)  # [B, c, D, N]
            a_next[:, : c - 1] = a[:, 1:]
            a_next[:, c - 1].fill_(1.0)
            a, a_next = _pad_time(a, Lp, 1.0), _pad_time(a_next, Lp, 1.0)  # [B, Lp, D, N]
            h = _pad_time(du[:, s:e, :, None] * Bm[:, s:e, None, :], Lp, 0.0)  # [B, Lp, D, N]
            h[:, 0].addcmul_(a0, h_start)
            blelloch_scan_(a, h)
            del a
            h = h[:, :c]
            # 2. d h_t / d(delta_t A) = a_t h_{t-1}, which for t >= 1 is a_next[t-1] h[t-1] (no shifted copy
            # of h); with negative eigenvalues it is 2 exp(delta_t A) h_{t-1}
            if ctx.negative_eigenvalues:
                ah_prev = deriv[:, 1:].mul_(h[:, : c - 1])  # [B, c-1, D, N]
                da0 = deriv[:, 0]  # [B, D, N]
                del deriv
            else:
                ah_prev = a_next[:, : c - 1] * h[:, : c - 1]  # [B, c-1, D, N]
                da0 = a0
            # 3. adjoint lam_t = dL/dh_t = C_t grad_y_t + a_{t+1} lam_{t+1}; lam at the chunk end also gets G
            lam = _pad_time(grad_y[:, s:e, :, None] * Cm[:, s:e, None, :], Lp, 0.0)  # [B, Lp, D, N]
            lam[:, c - 1] += G
            blelloch_scan_(a_next, lam, reverse=True)
            del a_next
            lam = lam[:, :c]
            # 4. gradients of the chunk's inputs
            g_C[:, s:e] = torch.matmul(grad_y[:, s:e, None, :], h).squeeze(2)  # sum_d gy[d] h[d, n]
            g_du[:, s:e] = torch.matmul(lam, Bm[:, s:e, :, None]).squeeze(-1)  # sum_n lam[d, n] B[n]
            g_B[:, s:e] = torch.matmul(du[:, s:e, None, :], lam).squeeze(2)  # sum_d du[d] lam[d, n]
            # P_t = dL/d(delta_t A) = lam_t a_t h_{t-1}; then chain through log a = delta * A
            P = ah_prev.mul_(lam[:, 1:])  # [B, c-1, D, N], steps 1..c-1
            P0 = lam[:, 0] * da0 * h_start  # [B, D, N], step 0 (h_{-1} is the carried state)
            g_delta[:, s + 1 : e] = torch.einsum("bcdn,dn->bcd", P, A)
            g_delta[:, s] = torch.einsum("bdn,dn->bd", P0, A)
            g_A += (P * delta[:, s + 1 : e, :, None]).sum((0, 1)) + (P0 * delta[:, s, :, None]).sum(0)
            # 5. gradient reaching the state that enters this chunk
            G = a0 * lam[:, 0]
        grad_u = g_du * delta
        grad_delta = g_delta + g_du * u
        return grad_u, grad_delta, g_A, g_B, g_C, G, None, None


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int = 64,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan, same function as ``selective_scan_recurrent``; differentiable in every input.

    ``chunk_size`` must be a power of two. Peak extra memory is a few ``[B, chunk_size, D, N]`` tensors.
    """
    _check(u, delta, A, Bm, Cm, initial_state)
    check_chunk_size(chunk_size)
    c = torch.Tensor.contiguous
    return _SelectiveScan.apply(
        c(u), c(delta), c(A), c(Bm), c(Cm), c(initial_state), chunk_size, bool(negative_eigenvalues)
    )
