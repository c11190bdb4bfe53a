"""Gated linear attention with key-wise (diagonal, data-dependent) decay: the op behind GLA, HGRN2,
GateLoop and RWKV-6.

Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training",
arXiv:2312.06635 (Section 4: the recurrence and the secondary-chunked form). Per head, with a decay
``alpha_t = exp(log_alpha_t)`` per key channel::

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T          # [K, V]
    o_t = q_t^T S_t                                  # [V]

Three extensions, each an optional keyword of every form:

- ``sign`` (+-1 per key channel and step): the transition is ``sign_t * alpha_t``, so eigenvalues in
  [-1, 1] (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through Negative
  Eigenvalues", arXiv:2411.12537). ``signed_decay`` turns a decay ``a`` in (0, 1] into ``2a - 1``.
- ``phase`` (radians per key channel and step): complex transitions ``alpha_t * exp(i phase_t)``
  with real ``q, k, v`` and ``o_t = Re(q_t^T S_t)`` (GateLoop, Katsch 2023, arXiv:2311.01927). The
  complex state is held as real numbers, ``[B, H, 2K, V]``: rows ``:K`` the real part, ``K:`` the
  imaginary part.
- ``bonus`` ``u: [H, K]`` (RWKV-6, Peng et al. 2024, arXiv:2404.05892, Eq. 16-19): the output reads
  the state *before* the current token and adds the current token with weight ``u``::

      o_t = q_t^T S_{t-1} + (q_t * u * k_t).sum() v_t,      S_t as above.

Forms (same signature; ``chunk_size``/``sub_chunk_size`` only for the chunkwise one):

- ``gla_step``: one token; ``gla_recurrent``: a Python loop of it, the spec.
- ``gla_chunk``: the chunkwise form (the GLA paper's Section 4.2-4.3, with its secondary chunks).
  Time is cut into chunks of ``C`` tokens; inside a chunk all FLOPs between tokens are matmuls
  (``[C, C]`` scores, then scores times values); across chunks the ``[K, V]`` state follows a diagonal
  linear recurrence over the ``T / C`` chunks, a loop over chunks that reads, decays and adds to the
  state (with ``phase``, also rotates it).

Numerical stability. Writing ``b_i`` for the cumulative log-decay, the pairwise decay
``exp(b_i - b_j)`` factors as ``exp(b_i) * exp(-b_j)`` (that is what makes it a matmul), but
``exp(-b_j)`` overflows once a chunk's decays multiply below ~1e-38 (float32): a log-decay of -20 per
step does it in 5 steps. The split point decides: this op splits at the start of the sub-chunk of
``c`` tokens that holds ``i`` (``r``): ``exp(b_i - r) * exp(r - b_j)``. For ``j`` in an earlier
sub-chunk both factors are <= 1. For ``j`` in the same sub-chunk the key factor is ``exp(r - b_j) >= 1``,
bounded by the sub-chunk's total decay: the op picks ``c`` per call (``_sub_chunk``): the whole chunk
(fastest, one ``[C, C]`` matmul) when every chunk decays by less than ``exp(-44)`` (float32;
``exp(-354)`` in float64), else sub-chunks of ``sub_chunk_size`` under the same bound, else sub-chunks
whose diagonal ``[c, c]`` blocks get the exact pairwise decay per key channel (a ``[c, c, K]`` tensor,
masked to -inf before ``exp``; the GLA paper's "secondary-level" diagonal). No factor ever exceeds
``exp(44)`` and no product overflows; strong decays underflow to 0 (their true value is that small).
A split product ``exp(x) * exp(y)`` with ``|x|, |y| <= 44`` carries a relative rounding error of at most
~90 ulp (float32: 5e-6), which is the price of the matmul; the exact path and the loop have a few ulp.
Every exponent is a segment sum of log-decays summed directly, never the difference of two cumulative
sums (which cancels in float32 after a strong decay). ``log_alpha`` must be finite.

Signs and phases stay cheap: a product of signs between j and i is ``p_i p_j`` with ``p`` the cumulative
parity (``p_j^2 = 1``), so it folds into ``q`` and ``k``. A phase is removed by working in the frame of
the chunk start: with ``phi`` the cumulative phase inside the chunk, ``k' = exp(-i phi) k`` and
``q' = exp(i phi) q`` see only the real decay, so the chunk is a real GLA with ``2K`` keys
``[k cos phi, -k sin phi]`` and queries ``[q cos phi, -q sin phi]``; the state is rotated by the
chunk's total phase when it leaves the chunk.

Shapes: ``q, k, log_alpha, sign, phase: [B, H, T, K]``, ``v: [B, H, T, V]``, ``bonus: [H, K]``,
``initial_state: [B, H, K, V]`` (``[B, H, 2K, V]`` with ``phase``). Every form returns
``(o: [B, H, T, V], final_state)`` and is differentiable in every tensor argument except ``sign``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


__all__ = ["gla_step", "gla_recurrent", "gla_chunk", "signed_decay"]

Tensor = torch.Tensor


def signed_decay(log_a: Tensor) -> tuple[Tensor, Tensor]:
    """``(log|2a - 1|, sign(2a - 1))`` for a decay ``a = exp(log_a)`` in (0, 1]: the transition range
    extended to (-1, 1] as Grazzi et al. 2024 (arXiv:2411.12537) prescribe for ``exp``-parametrised
    decays. ``2a - 1 = expm1(log_a + log 2)`` keeps precision near the zero crossing; ``|2a - 1|`` is
    floored at the dtype's smallest normal number so the log stays finite, and the sign is +-1, never 0
    (a parity of 0 would also erase what enters after the crossing)."""
    a2 = torch.expm1(log_a + math.log(2.0))
    sign = torch.where(a2 < 0, -1.0, 1.0).to(a2.dtype)
    return a2.abs().clamp_min(torch.finfo(a2.dtype).tiny).log(), sign


def _check(q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor, state: Tensor, sign, phase, bonus) -> None:
    if q.shape != k.shape or q.shape != log_alpha.shape:
        raise ValueError(
            f"q, k and log_alpha must share one shape [B, H, T, K], got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(log_alpha.shape)}"
        )
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v must be [B, H, T, V] with q's [B, H, T], got {tuple(v.shape)} and q {tuple(q.shape)}")
    for name, t in (("sign", sign), ("phase", phase)):
        if t is not None and t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    if phase is not None and (sign is not None or bonus is not None):
        raise ValueError("phase (complex transitions) cannot be combined with sign or bonus")
    if bonus is not None and bonus.shape != (q.shape[1], q.shape[-1]):
        raise ValueError(f"bonus must be [H, K] = {(q.shape[1], q.shape[-1])}, got {tuple(bonus.shape)}")
    rows = q.shape[-1] * (2 if phase is not None else 1)
    want = (q.shape[0], q.shape[1], rows, v.shape[-1])
    if tuple(state.shape) != want:
        rows_name = "2K" if phase is not None else "K"
        raise ValueError(f"state must be [B, H, {rows_name}, V] = {want}, got {tuple(state.shape)}")


def _rotate(state: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Multiply the complex state ``[..., 2K, V]`` (real rows, then imaginary rows) by ``cos + i sin``
    (``[..., K]``) row-wise."""
    re, im = state.chunk(2, dim=-2)
    cos, sin = cos.unsqueeze(-1), sin.unsqueeze(-1)
    return torch.cat((cos * re - sin * im, sin * re + cos * im), dim=-2)


# --------------------------------------------------------------------------- the spec
def gla_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor,
    state: Tensor,
    *,
    sign: Optional[Tensor] = None,
    phase: Optional[Tensor] = None,
    bonus: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One token: ``q, k, log_alpha: [B, H, K]``, ``v: [B, H, V]`` -> ``(o: [B, H, V], state)``."""
    alpha = log_alpha.exp() if sign is None else sign * log_alpha.exp()  # [B, H, K]
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, K, V]
    if phase is not None:
        decayed = _rotate(state, alpha * phase.cos(), alpha * phase.sin())  # [B, H, 2K, V]
        state = decayed + F.pad(kv, (0, 0, 0, kv.shape[-2]))  # k v^T enters the real part only
        o = (q.unsqueeze(-2) @ state[..., : q.shape[-1], :]).squeeze(-2)  # Re(q^T S)
        return o, state
    new_state = alpha.unsqueeze(-1) * state + kv  # [B, H, K, V]
    if bonus is None:
        return (q.unsqueeze(-2) @ new_state).squeeze(-2), new_state
    o = (q.unsqueeze(-2) @ state).squeeze(-2) + (q * bonus * k).sum(-1, keepdim=True) * v
    return o, new_state


def gla_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor,
    initial_state: Tensor,
    *,
    sign: Optional[Tensor] = None,
    phase: Optional[Tensor] = None,
    bonus: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Reference: a Python loop of ``gla_step`` over time; the spec, not a fast path."""
    _check(q, k, v, log_alpha, initial_state, sign, phase, bonus)
    state = initial_state
    outs = []
    for t in range(q.shape[2]):
        o_t, state = gla_step(
            q[:, :, t],
            k[:, :, t],
            v[:, :, t],
            log_alpha[:, :, t],
            state,
            sign=None if sign is None else sign[:, :, t],
            phase=None if phase is None else phase[:, :, t],
            bonus=bonus,
        )
        outs.append(o_t)
    return torch.stack(outs, dim=2), state  # [B, H, T, V]


# --------------------------------------------------------------------------- the chunkwise form
def _check_size(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _scale(x: Tensor, factor: Tensor) -> Tensor:
    """``x * factor`` where ``x`` may hold ``2K`` features (the real and imaginary halves of a phased chunk)
    and ``factor`` ``K``: both halves then get the same factor, without materialising a doubled one."""
    K = factor.shape[-1]
    if x.shape[-1] == K:
        return x * factor
    return (x.unflatten(-1, (2, K)) * factor.unsqueeze(-2)).flatten(-2)


def _suffix_sum(x: Tensor, dim: int) -> Tensor:
    """``out[j] = sum_{l > j} x[l]`` along ``dim`` (exclusive suffix sums, summed directly)."""
    rev = x.flip(dim).cumsum(dim).flip(dim)  # inclusive suffix sums
    return torch.cat((rev.narrow(dim, 1, x.shape[dim] - 1), torch.zeros_like(rev.narrow(dim, 0, 1))), dim=dim)


def _segment_sums(g: Tensor, exclusive: bool) -> Tensor:
    """``out[..., i, j, :] = sum_{j < l <= i} g[..., l, :]`` (``l < i`` if ``exclusive``) for ``g: [..., c, K]``.

    Built as a cumulative sum over ``l`` of ``g_l`` masked to ``l > j`` (one column per j), so each
    entry is summed directly rather than as a difference. Entries with ``j >= i`` are 0 or partial
    sums; the caller masks them.
    """
    c = g.shape[-2]
    idx = torch.arange(c, device=g.device)
    after_j = (idx[:, None] > idx[None, :])[:, :, None]  # [c(l), c(j), 1]
    sums = torch.where(after_j, g.unsqueeze(-2), 0.0).cumsum(-3)  # [..., c(i), c(j), K]
    return F.pad(sums[..., :-1, :, :], (0, 0, 0, 0, 1, 0)) if exclusive else sums


def _between(tau: Tensor) -> Tensor:
    """``out[..., m, n, :] = sum_{n < p < m} tau[..., p, :]`` for sub-chunk totals ``tau: [..., s, K]``."""
    s = tau.shape[-2]
    idx = torch.arange(s, device=tau.device)
    after_n = (idx[:, None] > idx[None, :])[:, :, None]  # [s(p), s(n), 1]
    through = torch.where(after_n, tau.unsqueeze(-2), 0.0).cumsum(-3)  # [..., s(m'), s(n), K]: n < p <= m'
    return F.pad(through[..., :-1, :, :], (0, 0, 0, 0, 1, 0))  # shift: n < p <= m - 1


def _sub_chunk(g: Tensor, sub_chunk_size: int) -> tuple[int, bool]:
    """Choose the sub-chunk length for chunked log-decays ``g: [B, H, N, C, K]``: ``(c, exact)``.

    The matmul form splits ``exp(b_i - b_j)`` at the start of the sub-chunk holding ``i``; for ``j`` in
    that same sub-chunk the key factor is ``exp(-beta_j) >= 1``. It is safe while every sub-chunk's total
    log-decay is >= -limit (factors within ``exp(+-limit)``). The longest safe sub-chunk is fastest (the
    whole chunk: one ``[C, C]`` matmul; each halving doubles the scaled key copies): try ``C``, ``C/2``,
    ... down to ``sub_chunk_size``; if none is safe, sub-chunks of ``sub_chunk_size`` whose diagonal
    blocks are computed pairwise (``exact``). A data-dependent choice (a few host syncs); every choice
    computes the same function.
    """
    C = g.shape[3]
    if g.device.type == "meta":  # no data to look at: any choice is right
        return C, False
    limit = 0.5 * math.log(torch.finfo(g.dtype).max)  # float32: 44, float64: 354
    sub = min(sub_chunk_size, C)
    candidates = [C]
    while candidates[-1] % 2 == 0 and candidates[-1] // 2 >= sub:
        candidates.append(candidates[-1] // 2)
    if C % sub == 0 and sub not in candidates:
        candidates.append(sub)
    for c in candidates:
        totals = g.reshape(*g.shape[:3], C // c, c, g.shape[-1]).sum(4)  # [B, H, N, C/c, K]
        if bool(totals.min() >= -limit):
            return c, False
    return (sub, True) if C % sub == 0 else (C, True)  # no sub-chunk length divides: one exact block


def _carry_real(
    o: Tensor, q_in: Tensor, k_out: Tensor, v: Tensor, log_decay: Tensor, parity: Optional[Tensor], s0: Tensor
) -> tuple[Tensor, Tensor]:
    """Inter-chunk part for real transitions: ``o + q_in @ S_n`` for the state ``S_n`` entering each chunk.

    ``o: [B, H, N, C, V]`` (intra-chunk outputs), ``q_in: [B, H, N, C, K]`` (queries decayed from their
    chunk's start), ``k_out: [B, H, N, C, K]`` (keys decayed to their chunk's end, parity applied),
    ``v: [B, H, N, C, V]``, ``log_decay``, ``parity: [B, H, N, K]`` (+-1 or None), ``s0: [B, H, K, V]``.
    A loop over the N chunks that reads the state, then decays it row-wise and adds the chunk,
    ``S_n = p_n exp(log_decay_n) S_{n-1} + k_out_n^T v_n``. The states entering the chunks are never
    stacked: a ``[B, H, N, K, V]`` tensor is the largest of the op for wide heads, and on a CPU
    allocating and filling it (and its gradient) cost more than the loop's per-chunk matmuls.
    """
    B, H, N, C, K = q_in.shape
    V = v.shape[-1]
    decay = log_decay.exp() if parity is None else log_decay.exp() * parity  # [B, H, N, K]
    state = s0.reshape(B * H, K, V)
    outs = []
    # heads merged into the batch for baddbmm; unbind (not indexing in the loop): backward then assembles
    # each gradient once, not once per chunk
    chunks = (t.reshape(B * H, N, *t.shape[3:]).unbind(1) for t in (o, q_in, k_out, v, decay.unsqueeze(-1)))
    for o_n, q_n, k_n, v_n, d_n in zip(*chunks):
        outs.append(torch.baddbmm(o_n, q_n, state))  # [B*H, C, V]
        state = torch.baddbmm(state * d_n, k_n.transpose(-1, -2), v_n)  # [B*H, K, V]
    return torch.stack(outs, dim=1).view(B, H, N, C, V), state.view(B, H, K, V)


def _carry_loop(updates: Tensor, log_decay: Tensor, cos: Tensor, sin: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """States entering each chunk, and the last, for complex transitions (``updates: [B, H, N, 2K, V]``,
    phases as ``cos``/``sin`` ``[B, H, N, K]``): a loop over chunks that decays, adds and rotates; each
    rotation is by one chunk's phase, so no cumulative phase over the whole sequence (which float32 would
    round) is ever formed."""
    decay = torch.cat((log_decay, log_decay), dim=-1).exp().unsqueeze(-1)  # [B, H, N, 2K, 1]
    state, entering = s0, []
    # unbind (not indexing in the loop): backward then assembles each gradient once, not once per chunk
    for d_n, u_n, cos_n, sin_n in zip(decay.unbind(2), updates.unbind(2), cos.unbind(2), sin.unbind(2)):
        entering.append(state)
        state = _rotate(d_n * state + u_n, cos_n, sin_n)  # [B, H, 2K, V]
    return torch.stack(entering, dim=2), state


def gla_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor,
    initial_state: Tensor,
    chunk_size: int = 64,
    *,
    sign: Optional[Tensor] = None,
    phase: Optional[Tensor] = None,
    bonus: Optional[Tensor] = None,
    sub_chunk_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Chunkwise form; same function as ``gla_recurrent`` (see the module docstring).

    ``log_alpha`` should be <= 0 (a contraction). Steps:
      1. Pad T to N*C with identity tokens (q = k = v = 0, log_alpha = 0, sign 1, phase 0); pick the
         sub-chunk length c (``_sub_chunk``) and split each chunk into s = C / c sub-chunks.
      2. With ``phase``: move each chunk into the frame of its start (real GLA with 2K keys).
      3. Log-decays as direct segment sums: from each sub-chunk's start (``beta``), to its end, the
         sub-chunk totals (``tau``) and sums of whole sub-chunks. With ``bonus`` the query side stops
         one token early (the output reads the state before its own token).
      4. With ``sign``: fold the cumulative parities into q and k.
      5. Scores of each query with every key of its chunk, one matmul per sub-chunk m: the decay is
         split at the start of m, ``exp(beta_q_i) * exp(r_m - b_j)``; causal mask.
      6. If ``exact``: the diagonal sub-chunk blocks pairwise instead, ``exp(beta_q_i - beta_j)`` per
         key channel for j <= i (j < i with bonus). With bonus: the own-token term on the diagonal.
      7. Per chunk: its keys decayed to its end and its total decay.
      8. A loop over the chunks: each query reads the state entering its chunk (decayed to its
         position), then the chunk enters the state (with ``phase``: the states are collected first,
         rotating the state by each chunk's phase, and read afterwards).
    """
    _check(q, k, v, log_alpha, initial_state, sign, phase, bonus)
    B, H, T, K = q.shape
    V = v.shape[-1]
    chunk_size = _check_size("chunk_size", chunk_size)
    sub_chunk_size = _check_size("sub_chunk_size", sub_chunk_size)
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    exclusive = bonus is not None

    # 1. pad with identity tokens, chunk, choose the sub-chunks: [B, H, N, s, c, *]
    def chunked(t: Tensor, value: float = 0.0) -> Tensor:
        t = F.pad(t, (0, 0, 0, pad), value=value) if pad else t
        return t.reshape(B, H, N, C, t.shape[-1])

    g = chunked(log_alpha)  # [B, H, N, C, K]
    c, exact = _sub_chunk(g, sub_chunk_size)
    s = C // c

    def split(t: Tensor) -> Tensor:
        return t.reshape(B, H, N, s, c, t.shape[-1])

    if exclusive:
        u_term = (q * bonus[:, None, :] * k).sum(-1)  # [B, H, T]: own-token weight, no decay and no sign
        u_term = F.pad(u_term, (0, pad)) if pad else u_term
    q, k, v, g = chunked(q), chunked(k), chunked(v), split(g)

    # 2. complex transitions: chunk-start frame, keys and queries doubled
    if phase is not None:
        phi = chunked(phase).cumsum(3)  # [B, H, N, C, K]
        cos, sin = phi.cos(), phi.sin()
        q = torch.cat((q * cos, -q * sin), dim=-1)  # [B, H, N, C, 2K]
        k = torch.cat((k * cos, -k * sin), dim=-1)
        chunk_cos, chunk_sin = cos[:, :, :, -1], sin[:, :, :, -1]  # [B, H, N, K]: each chunk's total phase

    # 3. log-decays restarting at every sub-chunk. Every exponent is a sum of log-decays over a segment,
    #    summed directly (never as a difference of two cumulative sums, which would cancel in float32
    #    after a strong decay); all terms are <= 0, so these sums are accurate to a few ulp.
    beta = g.cumsum(-2)  # [B, H, N, s, c, K]: from the sub-chunk start through token i
    beta_q = F.pad(beta[..., :-1, :], (0, 0, 1, 0)) if exclusive else beta  # the query side's decay
    to_sub_end = _suffix_sum(g, -2)  # [B, H, N, s, c, K]: after token j to its sub-chunk's end
    tau = beta[..., -1, :]  # [B, H, N, s, K]: each sub-chunk's total
    gamma_in = F.pad(tau[..., :-1, :], (0, 0, 1, 0)).cumsum(-2)  # [B, H, N, s, K]: chunk start to sub-chunk start
    after_sub = _suffix_sum(tau, -2)  # [B, H, N, s, K]: sub-chunks after n, to the chunk end
    chunk_total = gamma_in[..., -1, :] + tau[..., -1, :]  # [B, H, N, K]
    Kx = q.shape[-1]  # 2K with phase: decays (over K) then apply to both halves, see _scale

    # 4. signs: the parity between j and i is p_i p_j
    chunk_parity = None
    if sign is not None:
        sg = chunked(sign, 1.0)  # [B, H, N, C, K]
        p = sg.cumprod(3)  # inclusive parity from the chunk start
        chunk_parity = p[:, :, :, -1]  # [B, H, N, K]
        q = q * (p * sg if exclusive else p)  # exclusive parity p_{i-1} = p_i * sign_i
        k = k * p
    q, k = split(q), split(k)  # [B, H, N, s, c, Kx]

    # 5. one matmul per sub-chunk m against every key of the chunk. Keys of earlier sub-chunks get
    #    exp(r_m - b_j) <= 1; keys of m itself exp(-beta_j) <= exp(limit) (see _sub_chunk), or, if exact,
    #    nothing here (step 6); later keys are masked before exp.
    q_ref = _scale(q, beta_q.exp())  # [B, H, N, s, c, Kx]
    sub = torch.arange(s, device=q.device)
    allowed = (sub[None, :] < sub[:, None]) if exact else (sub[None, :] <= sub[:, None])  # [s(m), s(n)]
    if s > 1 or not exact:
        between = _between(tau)  # [B, H, N, s(m), s(n), K]: sub-chunks strictly between n and m
        k_exp = to_sub_end[..., None, :, :, :] + between.unsqueeze(-2)  # [B, H, N, s(m), s(n), c, K]
        if not exact:  # keys of m itself: exp(-beta_j), from token j back to the start of m
            same = torch.eye(s, dtype=torch.bool, device=q.device)[:, :, None, None]
            k_exp = torch.where(same, -beta.unsqueeze(-4), k_exp)
        k_exp = k_exp.masked_fill(~allowed[:, :, None, None], float("-inf"))
        k_ref = _scale(k.unsqueeze(-4), k_exp.exp()).reshape(B, H, N, s, C, Kx)  # every key, per sub-chunk m
        attn = (q_ref @ k_ref.transpose(-1, -2)).reshape(B, H, N, C, C)  # [B, H, N, C, C]
        attn = attn.tril(-1 if exclusive else 0)  # causal; with bonus the own token is added below
    else:
        attn = q.new_zeros(B, H, N, C, C)

    # 6. exact diagonal blocks: pairwise decays, masked to -inf before exp
    if exact:
        idx = torch.arange(c, device=q.device)
        mask = (idx[:, None] > idx[None, :]) if exclusive else (idx[:, None] >= idx[None, :])  # [c, c]
        pair = _segment_sums(g, exclusive)  # [B, H, N, s, c(i), c(j), K]: after j through i (or i - 1)
        pair = pair.masked_fill(~mask[:, :, None], float("-inf")).exp()
        diag = (_scale(q.unsqueeze(-2), pair) * k.unsqueeze(-3)).sum(-1)  # [B, H, N, s, c, c]
        eye = torch.eye(s, dtype=q.dtype, device=q.device)[:, None, :, None]  # [s, 1, s, 1]
        attn = attn + (diag.unsqueeze(-2) * eye).reshape(B, H, N, C, C)  # on the block diagonal
    if exclusive:
        attn = attn + torch.diag_embed(u_term.reshape(B, H, N, C))
    o = attn @ v  # [B, H, N, C, V]

    # 7. per-chunk state contribution and decay, then the recurrence over chunks, 8. inter-chunk part
    q_flat = _scale(q_ref, gamma_in.unsqueeze(-2).exp()).reshape(B, H, N, C, Kx)  # decayed from the chunk start
    k_end = to_sub_end + after_sub.unsqueeze(-2)  # [B, H, N, s, c, K]: after token j to the chunk end
    k_out = _scale(k, k_end.exp()).reshape(B, H, N, C, Kx)  # [B, H, N, C, Kx]: decayed to the chunk end
    if phase is None:
        if chunk_parity is not None:  # tokens before the chunk end pass its later signs
            k_out = k_out * chunk_parity.unsqueeze(-2)
        o, state = _carry_real(o, q_flat, k_out, v, chunk_total, chunk_parity, initial_state)
    else:
        updates = k_out.transpose(-1, -2) @ v  # [B, H, N, 2K, V]
        entering, state = _carry_loop(updates, chunk_total, chunk_cos, chunk_sin, initial_state)
        o = o + q_flat @ entering  # [B, H, N, C, V]
    return o.reshape(B, H, N * C, V)[:, :, :T], state
