"""The chunkwise causal linear attention as one autograd function with a hand-written backward
(``seqmix.ops.linear_attention.linear_attention_chunk`` calls it; notation of that module).

Autograd through the plain chunkwise form recorded a ``tril``, a ``cat``, a ``cumsum`` and the adds of
every gradient that flows into one tensor from two products, and the normaliser rode along as an odd
extra value column (``V + 1`` wide matmuls run ~15% slower than ``V`` wide ones). Here the states run on
whole tensors, everything of size ``C x C`` runs in blocks of chunks that are used again while in cache,
products are accumulated in place (``baddbmm_``), and the normaliser is computed beside the values.

Per chunk ``n`` (``q_n, k_n: [C, K]``, ``v_n: [C, V]``, ``S0: [K, V]``, ``z0: [K]``; ``M`` the
lower-triangular mask, diagonal included; ``1`` a vector of ones)::

    kv_n = k_n^T v_n,  ks_n = k_n^T 1          # [K, V], [K]
    S_in[n] = S0 + sum_{m<n} kv_m              # exclusive prefix sums (no decay: plain running sums)
    z_in[n] = z0 + sum_{m<n} ks_m
    A_n = M * (q_n k_n^T)                      # [C, C]
    num_n = q_n S_in[n] + A_n v_n              # [C, V]
    den_n = q_n z_in[n] + A_n 1                # [C], only with the normaliser
    S_out = S_in[N-1] + kv_{N-1},  z_out = z_in[N-1] + ks_{N-1}

(``o = num / (den + eps)`` is left to the caller). Backward, with ``dnum_n``, ``dden_n``, ``D``, ``Z`` the
gradients of ``num_n``, ``den_n``, ``S_out``, ``z_out``::

    G_n = q_n^T dnum_n,  g_n = q_n^T dden_n    # what chunk n's outputs send to its entering state
    dkv_n = D + sum_{m>n} G_m,  dS0 = D + sum_n G_n    # kv_n enters every later chunk and S_out
    dks_n = Z + sum_{m>n} g_m,  dz0 = Z + sum_n g_n
    dA_n = M * (dnum_n v_n^T + dden_n 1^T)
    dq_n = dnum_n S_in[n]^T + dA_n k_n + dden_n z_in[n]^T
    dk_n = v_n dkv_n^T + dA_n^T q_n + 1 dks_n^T
    dv_n = k_n dkv_n + A_n^T dnum_n

The forward's exclusive prefix sums are built by shifting, not as ``inclusive - own`` (that subtraction
would leak chunk n's keys into its own outputs at rounding level), and backward's reverse sums likewise
add only the later chunks. Forward keeps for backward the chunked inputs, the entering states and the
masked scores ``A`` (``C / K`` times the size of ``q``, as autograd kept them), block by block (see
``_BLOCK_ELEMENTS``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from seqmix.ops.precision import full_precision

__all__ = ["linear_attention_chunk_fused"]

# Chunks per block of the C x C work: a block's scores (2**19 elements, 2 MiB in float32) are used again
# while still in cache, and backward's score gradients live in one buffer reused block after block.
# 2**18 and 2**20 measured slower. The scores are kept block by block, not as one tensor of C / K times
# the size of q: past glibc's largest mmap threshold (32 MiB) every allocation is a fresh mapping whose
# page faults cost as much as some products (measured at B=4, H=8, T=4096, K=V=32, C=64, forward and
# backward: one [BH N, C, C] tensor up to ~20% slower than blocks in a process doing nothing else and
# about equal in one that holds other large tensors; recomputing the scores in backward instead 8-22%
# slower in the latter, 4-9% faster in the former).
_BLOCK_ELEMENTS = 1 << 19
_LOOP_MIN_ELEMENTS = 1 << 11  # see _loop_over_chunks


def _block_length(C: int) -> int:
    """Chunks per block of the ``C x C`` work (see ``_BLOCK_ELEMENTS``)."""
    return max(1, _BLOCK_ELEMENTS // (C * C))


def _loop_over_chunks(x: torch.Tensor) -> bool:
    """Whether running sums over the chunks of ``x: [BH, N, K, V]`` go chunk by chunk: ``cumsum`` over a
    middle dimension walks memory with a stride of ``K V`` per element and is 2-6x slower than one add per
    chunk once a chunk's ``BH K V`` elements pay for the add's call (measured: even at ~2k elements)."""
    return x[:, 0].numel() >= _LOOP_MIN_ELEMENTS


def _prefix_states(k3: torch.Tensor, v3: torch.Tensor, S0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S_in [BH, N, K, V]`` and ``S_out [BH, K, V]`` from chunks ``k3: [BH N, C, K]``, ``v3: [BH N, C, V]``.

    ``kv`` is written one slot late into a flat buffer of ``BH N + 1`` states, so that viewed as
    ``[BH, N, K, V]`` slot ``(s, n)`` already holds ``kv[s, n-1]`` for ``n >= 1``: the shift of the
    exclusive sum costs no copy. Slot ``(s, 0)`` holds the previous sequence's last ``kv``, which ``S_out``
    needs; it is taken out, ``S0`` written in its place, and a running sum in place finishes.
    """
    BH, K, V = S0.shape
    N = k3.shape[0] // BH
    flat = torch.empty(BH * N + 1, K, V, dtype=v3.dtype, device=v3.device)  # [BH N + 1, K, V]
    torch.bmm(k3.transpose(1, 2), v3, out=flat[1:])  # flat[1 + s N + n] = kv[s, n]
    kv_last = flat[N::N].clone()  # [BH, K, V]: kv[s, N-1]
    S_in = flat[: BH * N].view(BH, N, K, V)
    S_in[:, 0] = S0
    if _loop_over_chunks(S_in):
        states = S_in.unbind(1)  # N views [BH, K, V]
        for n in range(1, N):
            states[n].add_(states[n - 1])
    else:
        S_in.cumsum_(1)
    return S_in, kv_last.add_(S_in[:, -1])


def _state_grads(
    q3: torch.Tensor, do3: torch.Tensor, D: Optional[torch.Tensor], BH: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dkv [BH, N, K, V]`` and ``dS0 [BH, K, V]`` (module doc) from chunks ``q3: [BH N, C, K]``,
    ``do3: [BH N, C, V]`` and ``D: [BH, K, V]`` (None: zero).

    The mirror image of ``_prefix_states``: ``G_n = q_n^T do_n`` is written one slot early into a flat
    buffer, so that viewed as ``[BH, N, K, V]`` slot ``(s, n)`` holds ``G[s, n+1]`` for ``n < N-1``;
    ``G[s, 0]`` (needed for ``dS0``) sits in the previous sequence's last slot and is taken out, ``D``
    written there, and a reverse running sum in place finishes. Only later chunks are ever added in.
    """
    K, V = q3.shape[2], do3.shape[2]
    N = q3.shape[0] // BH
    flat = torch.empty(BH * N + 1, K, V, dtype=do3.dtype, device=do3.device)  # [BH N + 1, K, V]
    torch.bmm(q3.transpose(1, 2), do3, out=flat[:-1])  # flat[s N + n] = G[s, n]
    G0 = flat[:-1:N].clone()  # [BH, K, V]: G[s, 0]
    dkv = flat[1:].view(BH, N, K, V)
    if D is None:
        dkv[:, -1] = 0.0
    else:
        dkv[:, -1] = D
    if _loop_over_chunks(dkv):
        grads = dkv.unbind(1)  # N views [BH, K, V]
        for n in range(N - 2, -1, -1):
            grads[n].add_(grads[n + 1])
    else:
        dkv.copy_(dkv.flip(1).cumsum(1).flip(1))
    return dkv, G0.add_(dkv[:, 0])


def _exclusive_sums(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``x0 + sum_{m<n} x[:, m]`` for every ``n``, ``x: [BH, N, K]`` (small: the key sums)."""
    return torch.cat((x0.unsqueeze(1), x[:, :-1]), 1).cumsum(1)  # [BH, N, K]


def _later_sums(g: Optional[torch.Tensor], Z: Optional[torch.Tensor], BH: int, N: int, K: int, like: torch.Tensor):
    """``(Z + sum_{m>n} g[:, m]`` for every ``n``, ``Z + sum_n g[:, n])`` for ``g: [BH, N, K]`` (None: zero)
    and ``Z: [BH, K]`` (None: zero); ``(None, None)`` when both are zero."""
    if g is None and Z is None:
        return None, None
    later = like.new_zeros(BH, N, K)  # [BH, N, K]
    if g is not None and N > 1:
        later[:, :-1] = g[:, 1:].flip(1).cumsum(1).flip(1)
    if Z is not None:
        later += Z.unsqueeze(1)
    total = later[:, 0] if g is None else later[:, 0] + g[:, 0]  # [BH, K]
    return later, total


class _LinearAttentionChunk(torch.autograd.Function):
    """Inputs already chunked and contiguous: ``q, k: [BH N, C, K]``, ``v: [BH N, C, V]``, ``S0: [BH, K, V]``,
    ``z0: [BH, K]``. Outputs ``num: [BH N, C, V]``, ``S_out: [BH, K, V]``, ``z_out: [BH, K]`` and, with
    ``normalize``, ``den: [BH N, C]``."""

    @staticmethod
    def forward(ctx, q, k, v, S0, z0, normalize: bool):
        BH, K, _ = S0.shape
        BHN, C, _ = q.shape
        N = BHN // BH
        # 1. entering states and key sums
        S_in, S_out = _prefix_states(k, v, S0)  # [BH, N, K, V], [BH, K, V]
        S_in3 = S_in.view(BHN, *S_in.shape[2:])  # [BH N, K, V]
        ks = k.sum(1).view(BH, N, K)  # [BH, N, K]
        z_in = _exclusive_sums(ks, z0)  # [BH, N, K]
        z_out = z_in[:, -1] + ks[:, -1]  # [BH, K]
        # 2. per block of chunks: from the entering state, then inside the chunk while its scores are in cache
        num = torch.empty_like(v)  # [BH N, C, V]
        den = q.new_empty(BHN, C, 1) if normalize else None  # [BH N, C, 1]
        step = _block_length(C)
        z3 = z_in.view(BHN, K, 1)
        none = [None] * -(-BHN // step)
        scores = []  # the masked scores of every block, kept for backward
        for qb, kb, vb, Sb, zb, nb, db in zip(
            *(none if t is None else t.split(step) for t in (q, k, v, S_in3, z3, num, den))
        ):
            torch.bmm(qb, Sb, out=nb)
            # (tril_ measured ~4x faster than masked_fill_ with a cached mask, and faster than mul_ by one)
            Ab = torch.bmm(qb, kb.transpose(1, 2)).tril_()  # [blk, C, C]
            nb.baddbmm_(Ab, vb)
            if normalize:
                torch.sum(Ab, -1, keepdim=True, out=db).baddbmm_(qb, zb)  # A 1 + q z_in
            scores.append(Ab)
        ctx.save_for_backward(q, k, v, S_in3, z3 if normalize else None, *scores)
        ctx.set_materialize_grads(False)
        ctx.n_seq = BH
        if den is not None:
            return num, S_out, z_out, den.view(BHN, C)
        return num, S_out, z_out

    @staticmethod
    @once_differentiable
    def backward(ctx, dnum, dS_out, dz_out, dden=None):
        with full_precision(ctx.saved_tensors[0]):  # backward may run under the caller's autocast
            return _LinearAttentionChunk._backward(ctx, dnum, dS_out, dz_out, dden)

    @staticmethod
    def _backward(ctx, dnum, dS_out, dz_out, dden):
        q, k, v, S_in3, z3, *scores = ctx.saved_tensors
        need_q, need_k, need_v, need_S0, need_z0, _ = ctx.needs_input_grad
        BH, (BHN, C, K) = ctx.n_seq, q.shape
        N = BHN // BH
        dnum = torch.zeros_like(v) if dnum is None else dnum.contiguous()  # [BH N, C, V]
        dden = None if dden is None else dden.contiguous().view(BHN, C, 1)  # [BH N, C, 1]
        # 1. gradients of the states: what each chunk's outputs send to its entering state, summed over
        #    the later chunks
        dkv, dS0 = _state_grads(q, dnum, dS_out, BH)  # [BH, N, K, V], [BH, K, V]
        dkv = dkv.view(BHN, K, -1)
        g = None if dden is None else torch.bmm(q.transpose(1, 2), dden).view(BH, N, K)  # [BH, N, K]
        dks, dz0 = _later_sums(g, dz_out, BH, N, K, q)  # [BH, N, K], [BH, K] (or None)
        dks = None if dks is None else dks.view(BHN, 1, K)
        # 2. per block of chunks: the scores' gradient, and every input gradient accumulated in place
        dq = torch.empty_like(q) if need_q else None
        dk = torch.empty_like(k) if need_k else None
        dv = torch.empty_like(v) if need_v else None
        step = _block_length(C)
        dA_buf = q.new_empty(min(step, BHN), C, C)  # [blk, C, C], reused
        none = [None] * -(-BHN // step)
        tensors = (q, k, v, dnum, dden, S_in3, z3, dkv, dks, dq, dk, dv)
        for (qb, kb, vb, dnb, ddb, Sb, zb, dkvb, dksb, dqb, dkb, dvb), Ab in zip(
            zip(*(none if t is None else t.split(step) for t in tensors)), scores
        ):
            if need_q or need_k:
                dA = torch.bmm(dnb, vb.transpose(1, 2), out=dA_buf[: len(qb)])  # [blk, C, C]
                if ddb is not None:
                    dA += ddb  # the normaliser's row sums
                dA.tril_()
            if need_q:
                torch.bmm(dnb, Sb.transpose(1, 2), out=dqb).baddbmm_(dA, kb)
                if ddb is not None:
                    dqb.baddbmm_(ddb, zb.transpose(1, 2))
            if need_k:
                torch.bmm(vb, dkvb.transpose(1, 2), out=dkb).baddbmm_(dA.transpose(1, 2), qb)
                if dksb is not None:
                    dkb += dksb
            if need_v:
                torch.bmm(kb, dkvb, out=dvb).baddbmm_(Ab.transpose(1, 2), dnb)
        if need_z0 and dz0 is None:
            dz0 = q.new_zeros(BH, K)
        return dq, dk, dv, (dS0 if need_S0 else None), (dz0 if need_z0 else None), None


def linear_attention_chunk_fused(
    qc: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    S0: torch.Tensor,
    z0: torch.Tensor,
    normalize: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``qc, kc: [B, H, N, C, K]``, ``vc: [B, H, N, C, V]``, ``S0: [B, H, K, V]``, ``z0: [B, H, K]`` ->
    ``(num [B, H, N, C, V], den [B, H, N, C] or None without normalize, S_out [B, H, K, V],
    z_out [B, H, K])`` (module doc). Runs with autocast off: the states are sums over the whole sequence
    and keep the inputs' dtype."""
    B, H, N, C, K = qc.shape
    V = vc.shape[-1]
    with full_precision(vc):
        outs = _LinearAttentionChunk.apply(
            qc.reshape(B * H * N, C, K).contiguous(),  # once here, not in every product that reads it
            kc.reshape(B * H * N, C, K).contiguous(),
            vc.reshape(B * H * N, C, V).contiguous(),
            S0.reshape(B * H, K, V).contiguous(),
            z0.reshape(B * H, K).contiguous(),
            normalize,
        )
    num, S, z = outs[0].view(B, H, N, C, V), outs[1].view(B, H, K, V), outs[2].view(B, H, K)
    den = outs[3].view(B, H, N, C) if normalize else None
    return num, den, S, z
