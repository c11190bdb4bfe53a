"""The WKV operator of RWKV-4, in the paper's numerically stable form.

Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", arXiv:2305.13048, Eq. 14 and
Appendix (stable implementation). Per channel, with decay rate ``w > 0`` and bonus ``u``::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

``e^{k_i}`` overflows for large keys, so the state is kept scaled by its largest exponent ``p``: the
numerator and denominator sums are ``a e^p`` and ``b e^p``. One token (the reference CUDA kernel's
arithmetic, exponents never positive)::

    r   = max(p, u + k_t)                                 # output
    wkv = (e^{p - r} a + e^{u + k_t - r} v_t) / (e^{p - r} b + e^{u + k_t - r})
    p'  = max(p - w, k_t)                                 # state update
    a'  = e^{p - w - p'} a + e^{k_t - p'} v_t
    b'  = e^{p - w - p'} b + e^{k_t - p'}

The empty state is ``a = b = 0, p = -1e38`` (as the reference code): every ``e^{p - ...}`` is then 0.

Forms (same signature; ``chunk_size`` only for the scan form):

- ``wkv4_step`` / ``wkv4_recurrent``: one token / the spec, a Python loop over time.
- ``wkv4_scan``: the same states for all t at once, no loop over time:
    1. the running maximum is a max-plus recurrence with closed form
       ``p_t = max(p_{-1} - (t+1) w, max_{i<=t} (k_i - (t-i) w))``: a Hillis-Steele max-plus scan inside
       chunks of ``C`` tokens, another over the chunks' last values, one maximum to combine them;
    2. given ``p``, the scaled sums obey the linear recurrences above with decays
       ``e^{p_{t-1} - w - p_t} <= 1`` and inputs ``e^{k_t - p_t} <= 1``, both written through
       ``d = p_{t-1} - w - k_t`` so that the branch that wins the maximum gets exactly 1, as in the loop:
       one chunked Blelloch scan (``seqmix.ops.scan.scan_chunked``) for ``a`` and ``b`` together;
    3. outputs elementwise from ``(a, b, p)`` at ``t - 1``.
  The states are the paper's stable ``(a, b, p)``, equal to the loop's up to rounding; nothing
  overflows for any key size.

Shapes: ``w, u: [D]`` (``w`` the positive rate: the reference's ``exp(time_decay)``), ``k, v: [B, T, D]``,
state ``(a, b, p)`` each ``[B, D]``. Every form returns ``(wkv: [B, T, D], (a, b, p))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.ops.scan import check_chunk_size, scan_chunked

__all__ = ["wkv4_step", "wkv4_recurrent", "wkv4_scan", "EMPTY_MAX"]

Tensor = torch.Tensor
WKVState = tuple[Tensor, Tensor, Tensor]

EMPTY_MAX = -1e38  # the largest exponent of an empty state (the reference code's value)


def _check(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> None:
    if k.shape != v.shape or k.ndim != 3:
        raise ValueError(f"k and v must share one shape [B, T, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    if w.shape != (k.shape[-1],) or u.shape != (k.shape[-1],):
        raise ValueError(f"w and u must be [D] = [{k.shape[-1]}], got {tuple(w.shape)} and {tuple(u.shape)}")
    want = (k.shape[0], k.shape[-1])
    if len(state) != 3 or any(tuple(s.shape) != want for s in state):
        raise ValueError(f"state must be (a, b, p), each [B, D] = {want}, got {[tuple(s.shape) for s in state]}")


# --------------------------------------------------------------------------- the spec
def wkv4_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """One token: ``k, v: [B, D]`` -> ``(wkv: [B, D], (a, b, p))``."""
    a, b, p = state
    uk = u + k
    r = torch.maximum(p, uk)
    e1, e2 = torch.exp(p - r), torch.exp(uk - r)
    wkv = (e1 * a + e2 * v) / (e1 * b + e2)
    decayed = p - w
    p_new = torch.maximum(decayed, k)
    e1, e2 = torch.exp(decayed - p_new), torch.exp(k - p_new)
    return wkv, (e1 * a + e2 * v, e1 * b + e2, p_new)


def wkv4_recurrent(w: Tensor, u: Tensor, k: Tensor, v: Tensor, initial_state: WKVState) -> tuple[Tensor, WKVState]:
    """Reference: a Python loop of ``wkv4_step`` over time; the spec, not a fast path."""
    _check(w, u, k, v, initial_state)
    state = tuple(initial_state)
    outs = []
    for t in range(k.shape[1]):
        o_t, state = wkv4_step(w, u, k[:, t], v[:, t], state)
        outs.append(o_t)
    return torch.stack(outs, dim=1), state  # [B, T, D]


# --------------------------------------------------------------------------- the scan form
def _max_plus_scan(x: Tensor, rate: Tensor, dim: int) -> Tensor:
    """``y_t = max_{i<=t} (x_i - (t - i) rate)`` along ``dim``: a Hillis-Steele scan, log2(L) shifted maxima.

    Values stay at the scale of the winners (a candidate is ``x_i`` minus one product ``s * rate``), so the
    result is exact to a few ulp of ``|y|``; ``rate`` broadcasts against the last dimension.
    """
    L = x.shape[dim]
    shift = 1
    while shift < L:
        tail = torch.maximum(x.narrow(dim, shift, L - shift), x.narrow(dim, 0, L - shift) - shift * rate)
        x = torch.cat((x.narrow(dim, 0, shift), tail), dim=dim)
        shift *= 2
    return x


def _running_max(w: Tensor, k: Tensor, p0: Tensor, chunk_size: int) -> Tensor:
    """``p_t = max(p_{t-1} - w, k_t)`` for all t from ``p_{-1} = p0``: ``[B, T, D]`` (step 1 above).

    The closed form ``max(p0 - (t+1) w, max_{i<=t} (k_i - (t-i) w))`` as two small scans: inside chunks of
    ``C`` tokens, then over the chunks' last values (rate ``C w``); each token then takes the larger of its
    chunk's value and the previous chunks' maximum decayed to it. No loop over time or chunks.
    """
    B, T, D = k.shape
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    kc = (F.pad(k, (0, 0, 0, pad), value=float("-inf")) if pad else k).view(B, N, C, D)  # [B, N, C, D]
    local = _max_plus_scan(kc, w, dim=2)  # [B, N, C, D]: max over the chunk so far
    n = torch.arange(1, N + 1, device=k.device, dtype=k.dtype)[:, None]  # [N, 1]
    ends = torch.maximum(_max_plus_scan(local[:, :, -1], C * w, dim=1), p0.unsqueeze(1) - n * C * w)  # [B, N, D]
    before = torch.cat((p0.unsqueeze(1), ends[:, :-1]), dim=1)  # [B, N, D]: p before each chunk
    t = torch.arange(1, C + 1, device=k.device, dtype=k.dtype)[:, None]  # [C, 1]: steps since that p
    p = torch.maximum(local, before.unsqueeze(2) - t * w)  # [B, N, C, D]
    return p.view(B, N * C, D)[:, :T]


def wkv4_scan(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, initial_state: WKVState, chunk_size: int = 64
) -> tuple[Tensor, WKVState]:
    """All tokens at once (steps 1-3 of the module docstring); ``chunk_size`` a power of two."""
    _check(w, u, k, v, initial_state)
    check_chunk_size(chunk_size)
    a0, b0, p0 = initial_state

    # 1. the stabiliser p_t and its value before each token
    p = _running_max(w, k, p0, chunk_size)  # [B, T, D]
    p_prev = torch.cat((p0.unsqueeze(1), p[:, :-1]), dim=1)  # [B, T, D]

    # 2. the scaled sums a_t, b_t: one linear scan over the stacked pair
    # with d = p_{t-1} - w - k_t: p_{t-1} - w - p_t = min(d, 0) and k_t - p_t = min(-d, 0), so the branch
    # that wins the maximum gets exactly e^0 = 1, as in the loop (subtracting p_t would leave rounding)
    d = p_prev - w - k  # [B, T, D]
    log_decay = d.clamp(max=0)  # [B, T, D], <= 0
    weight = torch.exp((-d).clamp(max=0))  # [B, T, D], <= 1
    log_a = torch.stack((log_decay, log_decay), dim=2)  # [B, T, 2, D]
    inputs = torch.stack((weight * v, weight), dim=2)  # [B, T, 2, D]
    ab, ab_last = scan_chunked(log_a, inputs, torch.stack((a0, b0), dim=1), chunk_size)
    a_prev = torch.cat((a0.unsqueeze(1), ab[:, :-1, 0]), dim=1)  # [B, T, D]: the state before each token
    b_prev = torch.cat((b0.unsqueeze(1), ab[:, :-1, 1]), dim=1)

    # 3. outputs from the state before each token plus the bonus-weighted current token
    uk = u + k
    r = torch.maximum(p_prev, uk)
    e1, e2 = torch.exp(p_prev - r), torch.exp(uk - r)
    wkv = (e1 * a_prev + e2 * v) / (e1 * b_prev + e2)
    return wkv, (ab_last[:, 0], ab_last[:, 1], p[:, -1])
