"""The chunkwise SSD as one autograd function with a hand-written backward (``seqmix.ops.ssd.ssd_chunk``).

The recurrence and its notation are those of ``seqmix.ops.ssd``. Autograd through the chunk-by-chunk
loop recorded some forty small ops per chunk and a backward node for each; here every chunk is handled
at once by a few batched matmuls, and only the passing of the ``[K, V]`` state runs in a loop over the
``N = T / C`` chunks (one scale-and-add each, forward and backward).

Layout. The heads split into ``G`` groups of ``R`` heads that share ``q`` and ``k``: ``G = 1, R = H`` for
Mamba-2's shared ``B, C`` (``Hq = Hk = 1``), ``G = H, R = 1`` for per-head ``q, k`` (mLSTM). Values,
outputs and states are held token-major with the heads of a group side by side (``[B, G, N, C, R, V]``,
states ``[B, G, N, K, R * V]``), so the matmuls with the shared ``q``/``k`` fold the ``R`` heads into one
wide ``[C, K] @ [K, R V]`` product; only the ``C x C`` intra-chunk products run per head. A Mamba-2 ``v``
that is a transposed view of ``[B, T, H, P]`` memory is already token-major: no copy.

Per chunk, with ``L[i, j] = P_i P_j exp(segsum)`` (``-inf`` masked before ``exp``, see ``segsum``),
``f_i = P_i exp(G_i)`` (decay from the chunk start, ``G`` the inclusive cumulative log-decay),
``e_j = L[C-1, j]`` (decay to the chunk end) and ``d = f_{C-1}`` (the whole chunk)::

    A = q k^T,  W = A * L
    o = W v + f * (q S_in)                         # [C, V] per head
    S_out = d S_in + k^T (e * v)

and backward, with ``D`` the gradient of ``S_out`` and ``do`` that of ``o``::

    dS_in = d D + q^T (f * do)                     # the only sequential part, a loop over chunks
    dv = W^T do + e * (k D)
    dA = (do v^T) * L            -> dq = dA k + (f * do) S_in^T,   dk = dA^T q + (e * v) D^T
    dG_i = sum_j dSeg[i, j] - sum_j dSeg[j, i] + f_i df_i - e_i de_i  (+ sum_j e_j de_j + d dd at i = C-1)
    dlog_a = reverse cumulative sum of dG over the chunk

where ``dSeg = dA * A = dW * W`` is the gradient of the segment sums (``d(P e^s)/ds = P e^s``, so signs
need no extra term). The terms that cancel exactly are left out rather than computed and subtracted (the
diagonal of ``dSeg``, and ``e_{C-1} = 1``): with strong decays the true gradient is far below the rounding
of those O(1) terms. ``q`` and ``k`` of a group sum their gradients over its ``R`` heads. Forward keeps
for backward the inputs, ``L``, ``W``, ``e * v``, the entering states and the inter-chunk outputs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from seqmix.ops.precision import full_precision
from seqmix.ops.ssd import segsum

__all__ = ["ssd_chunk_fused"]


def _decays(la: torch.Tensor, sign: Optional[torch.Tensor]):
    """``L [.., C, C]``, ``f [.., C]``, ``e [.., C]``, ``d [..]`` of chunks ``la: [.., C]`` (module doc)."""
    L = segsum(la).exp_()  # [..., C, C], zero above the diagonal
    f = la.cumsum(-1).exp()  # [..., C]
    if sign is not None:
        P = sign.cumprod(-1)  # [..., C], +-1
        L = L * (P.unsqueeze(-1) * P.unsqueeze(-2))
        f = f * P
    return L, f, L[..., -1, :], f[..., -1]


class _SSDChunk(torch.autograd.Function):
    """Inputs already chunked: ``q, k: [B, G, N, C, K]``, ``v: [B, G, R, N, C, V]`` (any strides),
    ``log_a, sign: [B, G, R, N, C]``, ``S0: [B, G, R, K, V]``. Outputs ``o: [B, G, N, C, R, V]``
    (token-major) and ``S: [B, G, R, K, V]``."""

    @staticmethod
    def forward(ctx, q, k, v, log_a, S0, sign):
        B, G, R, N, C, V = v.shape
        K = q.shape[-1]
        # 1. decays inside every chunk
        L, f, e, d = _decays(log_a, sign)  # [B,G,R,N,C,C], [B,G,R,N,C] x 2, [B,G,R,N]
        f_t = f.permute(0, 1, 3, 4, 2).unsqueeze(-1)  # [B, G, N, C, R, 1] token-major views
        e_t = e.permute(0, 1, 3, 4, 2).unsqueeze(-1)
        vt = v.permute(0, 1, 3, 4, 2, 5).contiguous()  # [B, G, N, C, R, V]; free for a token-major v
        vh = vt.squeeze(4).unsqueeze(2) if R == 1 else v.contiguous()  # [B, G, R, N, C, V]
        # 2. what each chunk adds to the state: k^T (e * v), the R heads side by side
        ev = vt * e_t  # [B, G, N, C, R, V]
        kv = k.transpose(-1, -2) @ ev.view(B, G, N, C, R * V)  # [B, G, N, K, R V]
        # 3. the states entering every chunk (the sequential part)
        S = S0.permute(0, 1, 3, 2, 4).reshape(B, G, K, R * V)  # [B, G, K, R V]
        d_t = d.permute(0, 1, 3, 2)[:, :, :, None, :, None]  # [B, G, N, 1, R, 1]
        states = torch.empty(B, G, N, K, R, V, dtype=v.dtype, device=v.device)  # [B, G, N, K, R, V]
        kv, S = kv.view(B, G, N, K, R, V), S.view(B, G, K, R, V)
        states[:, :, 0] = S
        for n in range(N - 1):  # each new state is written straight into its slot
            torch.addcmul(kv[:, :, n], states[:, :, n], d_t[:, :, n], out=states[:, :, n + 1])
        S = torch.addcmul(kv[:, :, N - 1], states[:, :, N - 1], d_t[:, :, N - 1])  # [B, G, K, R, V]
        states = states.view(B, G, N, K, R * V)
        # 4. outputs: from the entering state (all heads in one product) plus inside the chunk (per head)
        o_inter = (q @ states).view(B, G, N, C, R, V).mul_(f_t)  # [B, G, N, C, R, V]
        W = (q @ k.transpose(-1, -2)).unsqueeze(2) * L  # [B, G, R, N, C, C]: scores A times decays
        o_intra = W @ vh  # [B, G, R, N, C, V]
        o = o_inter + o_intra.permute(0, 1, 3, 4, 2, 5)  # [B, G, N, C, R, V]
        ctx.save_for_backward(q, k, vt, vh, ev, L, W, f, e, d, states, o_inter)
        S_out = S.permute(0, 1, 3, 2, 4)  # [B, G, R, K, V]
        return o, S_out

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dS_out):
        with full_precision(do):  # backward may be called under autocast: the state's precision holds here too
            return _SSDChunk._backward(ctx, do, dS_out)

    @staticmethod
    def _backward(ctx, do, dS_out):
        q, k, vt, vh, ev, L, W, f, e, d, states, o_inter = ctx.saved_tensors
        B, G, N, C, R, V = vt.shape
        K = q.shape[-1]
        f_t = f.permute(0, 1, 3, 4, 2).unsqueeze(-1)  # [B, G, N, C, R, 1]
        e_t = e.permute(0, 1, 3, 4, 2).unsqueeze(-1)
        do_t = do.contiguous()  # [B, G, N, C, R, V]
        do_h = do_t.squeeze(4).unsqueeze(2) if R == 1 else do_t.permute(0, 1, 4, 2, 3, 5).contiguous()
        # 1. gradients of the states leaving every chunk: a loop over chunks in reverse
        fdo = (do_t * f_t).view(B, G, N, C, R * V)  # [B, G, N, C, R V]
        U = q.transpose(-1, -2) @ fdo  # [B, G, N, K, R V]: what each chunk's outputs send to its S_in
        d_t = d.permute(0, 1, 3, 2)[:, :, :, None, :, None]  # [B, G, N, 1, R, 1]
        Ds = torch.empty(B, G, N, K, R, V, dtype=U.dtype, device=U.device)  # grad of the state leaving chunk n
        U = U.view(B, G, N, K, R, V)
        Ds[:, :, N - 1] = dS_out.permute(0, 1, 3, 2, 4)
        for n in range(N - 1, 0, -1):
            torch.addcmul(U[:, :, n], Ds[:, :, n], d_t[:, :, n], out=Ds[:, :, n - 1])
        dS0 = torch.addcmul(U[:, :, 0], Ds[:, :, 0], d_t[:, :, 0]).permute(0, 1, 3, 2, 4)  # [B, G, R, K, V]
        Ds = Ds.view(B, G, N, K, R * V)
        # 2. through the state update S_out = d S_in + k^T (e * v)
        dv = (k @ Ds).view(B, G, N, C, R, V).mul_(e_t)  # [B, G, N, C, R, V]
        ede = (dv * vt).sum(-1)  # [B, G, N, C, R]: e_j de_j
        ede[:, :, :, -1] = 0.0  # e_{C-1} = 1 depends on no decay (kept, it would cancel in step 5)
        dk = ev.view(B, G, N, C, R * V) @ Ds.transpose(-1, -2)  # [B, G, N, C, K]
        # d dd = d <D, S_in> per chunk and head, chunk by chunk: a whole [B, G, N, K, R V] product would be
        # one more large temporary
        ddd = torch.stack([(Ds[:, :, n] * states[:, :, n]).view(B, G, K, R, V).sum((2, 4)) for n in range(N)], 2)
        ddd = ddd * d.permute(0, 1, 3, 2)  # [B, G, N, R]
        # 3. through the inter-chunk output f * (q S_in)
        dq = fdo @ states.transpose(-1, -2)  # [B, G, N, C, K]
        fdf = (do_t * o_inter).sum(-1)  # [B, G, N, C, R]: f_i df_i
        # 4. through the intra-chunk output (A * L) v, per head
        dW = do_h @ vh.transpose(-1, -2)  # [B, G, R, N, C, C]
        # dSeg = dA * A = dW * W. The diagonal's share of the row and the column sums below cancels
        # exactly: leave it out, or its rounding would swamp the tiny gradients of strong decays
        dseg = (dW * W).tril_(-1)  # [B, G, R, N, C, C]
        dA = dW.mul_(L)  # [B, G, R, N, C, C]
        dA = dA.squeeze(2) if R == 1 else dA.sum(2)  # [B, G, N, C, C]: q, k shared by the group's heads
        dq += dA @ k
        dk += dA.transpose(-1, -2) @ q
        dv_h = W.transpose(-1, -2) @ do_h  # [B, G, R, N, C, V]
        dv += dv_h.permute(0, 1, 3, 4, 2, 5)
        # 5. the log-decays: gradient of the cumulative sums G, then a reverse cumulative sum
        dG = dseg.sum(-1) - dseg.sum(-2) + (fdf - ede).permute(0, 1, 4, 2, 3)  # [B, G, R, N, C]
        dG[..., -1] += ede.sum(3).permute(0, 1, 3, 2) + ddd.permute(0, 1, 3, 2)
        dlog_a = dG.flip(-1).cumsum(-1).flip(-1)  # [B, G, R, N, C]
        dv_out = dv.permute(0, 1, 4, 2, 3, 5)  # [B, G, R, N, C, V] view of the token-major gradient
        return dq, dk, dv_out, dlog_a, dS0, None


def ssd_chunk_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int,
    sign: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ssd.ssd_chunk``'s function (same arguments, already checked, ``chunk_size <= T``)."""
    B, H, T, V = v.shape
    K = q.shape[-1]
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T
    if not (q.shape[1] == k.shape[1] and q.shape[1] in (1, H)):  # mixed sharing: give every head its own
        q, k = q.expand(B, H, T, K), k.expand(B, H, T, K)
    G = q.shape[1]
    R = H // G
    if pad:  # padded tokens: k = 0 and a = 1 leave the state alone; their outputs are cut off
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_a = F.pad(log_a, (0, pad))
        sign = None if sign is None else F.pad(sign, (0, pad), value=1.0)
    heads = (B, G, R, N, C)
    with full_precision(v):
        o, S = _SSDChunk.apply(
            q.reshape(B, G, N, C, K).contiguous(),  # once here, not in every matmul that reads it
            k.reshape(B, G, N, C, K).contiguous(),
            v.reshape(*heads, V),
            log_a.reshape(heads),
            initial_state.reshape(B, G, R, K, V),
            None if sign is None else sign.reshape(heads),
        )
    o = o.view(B, G, N * C, R, V).permute(0, 1, 3, 2, 4).reshape(B, H, N * C, V)  # a view: G = 1 or R = 1
    return o[:, :, :T], S.reshape(B, H, K, V)
