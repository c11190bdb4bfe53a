"""Attention as a many-to-many RNN (Feng, Tung, Hajimirsadeghi, Ahmed, Bengio & Mori 2024, "Attention as an
RNN", arXiv:2405.13956, Sec. 3): the softmax attention of ONE query over every prefix of the keys.

With scores ``s_j = scale * q . k_j`` of a query ``q`` fixed for the whole sequence, the output at ``t`` is
``o_t = sum_{j <= t} exp(s_j) v_j / sum_{j <= t} exp(s_j)``. The paper carries it as the triple
(running max, denominator, numerator) ``(m_t, u_t, w_t)`` with ``u_t = sum_{j <= t} exp(s_j - m_t)`` and
``w_t = sum_{j <= t} exp(s_j - m_t) v_j``, combined by the associative operator (Sec. 3.2)::

    (m_A, u_A, w_A) + (m_B, u_B, w_B) = (m, u_A e^{m_A - m} + u_B e^{m_B - m}, w_A e^{m_A - m} + w_B e^{m_B - m}),
    m = max(m_A, m_B),        o_t = w_t / u_t

A token is the triple ``(s_t, 1, v_t)``; the empty prefix is the identity ``(-inf, 0, 0)``. Our states
hold ``u = 0`` for "empty" (whatever ``m``), so that a zero state is the empty state; elsewhere ``u >= 1``.

All forms share one signature::

    aaren_<form>(s, v, initial_state) -> (o [B, H, T, V], (m [B, H], u [B, H], w [B, H, V]))

with ``s: [B, H, T]`` and ``v: [B, H, T, V]``.

- ``aaren_recurrent``: the spec, a loop over ``aaren_step`` (the operator applied to one token).
- ``aaren_scan``: the parallel prefix scan in chunkwise form. With the log-normaliser
  ``L_t = log sum_{j <= t} exp(s_j) = m_t + log u_t`` (one ``logcumsumexp``), every output is
  ``o_t = sum_j exp(s_j - L_t) v_j``, weights <= 1: inside a chunk a masked ``C x C`` matrix of those
  weights times the values (a GEMM), plus the output at the end of the previous chunk weighted by
  ``exp(L_prev - L_t)``; the chunk-end outputs themselves come from one small ``[n_chunks, n_chunks]``
  lower-triangular matrix of weights ``exp(L_end(c') - L_end(c))``. No loop over time, no exponent > 0.
  The final triple is ``m_T = max(m_0, max_j s_j)``, ``u_T = exp(L_T - m_T)``, ``w_T = u_T o_T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["aaren_step", "aaren_recurrent", "aaren_scan"]

Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def aaren_step(s_t: torch.Tensor, v_t: torch.Tensor, state: Triple) -> tuple[torch.Tensor, Triple]:
    """Fold one token ``(s_t [B, H], 1, v_t [B, H, V])`` into ``(m, u, w)``; returns ``(o_t, new state)``."""
    m, u, w = state
    seen = u > 0
    m_new = torch.where(seen, torch.maximum(m, s_t), s_t)
    # the old prefix's weight e^{m - m_new} (<= 1); exactly 0 for an empty prefix, without computing e^{m - s}
    a = torch.exp(torch.where(seen, m - m_new, torch.full_like(m, float("-inf"))))  # [B, H]
    b = torch.exp(s_t - m_new)  # [B, H], the new token's weight (<= 1)
    u_new = a * u + b
    w_new = a.unsqueeze(-1) * w + b.unsqueeze(-1) * v_t  # [B, H, V]
    return w_new / u_new.unsqueeze(-1), (m_new, u_new, w_new)


def aaren_recurrent(s: torch.Tensor, v: torch.Tensor, initial_state: Triple) -> tuple[torch.Tensor, Triple]:
    """Reference: a Python loop over ``aaren_step``."""
    state = initial_state
    outputs = []
    for s_t, v_t in zip(s.unbind(2), v.unbind(2)):
        o_t, state = aaren_step(s_t, v_t, state)
        outputs.append(o_t)
    return torch.stack(outputs, dim=2), state  # [B, H, T, V]


def aaren_scan(
    s: torch.Tensor, v: torch.Tensor, initial_state: Triple, chunk_size: int = 64
) -> tuple[torch.Tensor, Triple]:
    """Chunkwise parallel prefix form (see module doc); ``chunk_size`` only sets the block size."""
    B, H, T = s.shape
    V = v.shape[-1]
    m0, u0, w0 = initial_state
    # 1. the carried prefix as (log-normaliser L0, output o0); an empty prefix has L0 = -inf, o0 = 0
    seen = u0 > 0
    u0_safe = torch.where(seen, u0, torch.ones_like(u0))
    L0 = torch.where(seen, m0 + torch.log(u0_safe), torch.full_like(m0, float("-inf")))  # [B, H]
    o0 = w0 / u0_safe.unsqueeze(-1)  # [B, H, V]; w0 = 0 when empty
    # 2. log-normalisers of every prefix: L_t = logaddexp(L0, logcumsumexp(s)_t)
    L = torch.logaddexp(L0.unsqueeze(-1), torch.logcumsumexp(s, dim=-1))  # [B, H, T]
    # 3. chunks of C; padding tokens get s = -inf (weight 0) and repeat the last normaliser
    C = min(chunk_size, T)
    nc = -(-T // C)
    pad = nc * C - T
    s_c = F.pad(s, (0, pad), value=float("-inf")).view(B, H, nc, C)  # [B, H, nc, C]
    L_c = F.pad(L, (0, pad), mode="replicate").view(B, H, nc, C)  # [B, H, nc, C]
    v_c = F.pad(v, (0, 0, 0, pad)).view(B, H, nc, C, V)  # [B, H, nc, C, V]
    # 4. inside each chunk: weights exp(s_j - L_i) for j <= i (<= 1), times the values
    causal = torch.ones(C, C, dtype=torch.bool, device=s.device).tril()  # [C, C]
    logits = (s_c.unsqueeze(-2) - L_c.unsqueeze(-1)).masked_fill(~causal, float("-inf"))  # [B, H, nc, C, C]
    local = torch.exp(logits) @ v_c  # [B, H, nc, C, V]
    # 5. the output at every chunk end: o_end(c) = sum_{c' <= c} exp(L_end(c') - L_end(c)) local_end(c')
    #    + exp(L0 - L_end(c)) o0 (the end-of-chunk rows of `local` are normalised by L_end(c'))
    L_end = L_c[..., -1]  # [B, H, nc]
    lower = torch.ones(nc, nc, dtype=torch.bool, device=s.device).tril()  # [nc, nc]
    cross = (L_end.unsqueeze(-2) - L_end.unsqueeze(-1)).masked_fill(~lower, float("-inf"))  # [B, H, nc, nc]
    o_end = torch.exp(cross) @ local[..., -1, :] + torch.exp(L0.unsqueeze(-1) - L_end).unsqueeze(-1) * o0.unsqueeze(-2)
    # 6. every output adds the previous chunk end (o0 before chunk 0), weighted by exp(L_prev - L_t)
    L_prev = torch.cat((L0.unsqueeze(-1), L_end[..., :-1]), dim=-1)  # [B, H, nc]
    o_prev = torch.cat((o0.unsqueeze(-2), o_end[..., :-1, :]), dim=-2)  # [B, H, nc, V]
    o = local + torch.exp(L_prev.unsqueeze(-1) - L_c).unsqueeze(-1) * o_prev.unsqueeze(-2)  # [B, H, nc, C, V]
    o = o.view(B, H, nc * C, V)[:, :, :T]  # [B, H, T, V]
    # 7. the final triple
    m_T = torch.maximum(torch.where(seen, m0, torch.full_like(m0, float("-inf"))), s.amax(dim=-1))  # [B, H]
    u_T = torch.exp(L[..., -1] - m_T)  # [B, H]
    return o, (m_T, u_T, u_T.unsqueeze(-1) * o[:, :, -1])
