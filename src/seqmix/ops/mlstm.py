"""The mLSTM cell: a matrix memory with exponential gating and a stabiliser.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", arXiv:2405.04517, Section 2.3 and
Appendix A.3 (stabilised mLSTM). With pre-activations ``log_i_t`` (the exponential input gate
``i_t = exp(log_i_t)``) and ``log_f_t`` (``log sigmoid`` of the forget pre-activation for a sigmoid
forget gate, the pre-activation itself for an exponential one), per head::

    m_t = max(log_f_t + m_{t-1}, log_i_t)                 # stabiliser
    f'_t = exp(log_f_t + m_{t-1} - m_t),  i'_t = exp(log_i_t - m_t)      # both <= 1
    C_t = f'_t C_{t-1} + i'_t k_t v_t^T                   # [K, V]
    n_t = f'_t n_{t-1} + i'_t k_t                         # [K]
    h_t = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)

The stabilised ``C, n`` are the paper's ``C, n`` times ``exp(-m_t)``, so ``h_t`` equals the unstabilised
``C q / max(|n . q|, 1)`` up to ``eps`` (the paper's eq. 19-21). This is what the ``xlstm`` package's
``recurrent_step_stabilized_simple`` computes (``eps = 1e-6``, ``m_0 = 0`` for a fresh state); keys
arrive already scaled (the package divides them by ``sqrt(K)``; ``seqmix.mixers.mlstm`` does that).

The output normalisation is written without overflow: with ``c = exp(min(m_t, 0))``,
``h = (c C^T q) / (max(c |n . q|, exp(-max(m_t, 0))) + c eps)``, the same number, but no ``exp(-m)``
above 1 is formed (``m_t`` far below 0, after long strong forgetting, would overflow ``exp(-m_t)``).

Chunkwise form, built on ``seqmix.ops.ssd``: once the stabilisers ``m_t`` are known, the stabilised
recurrence is a scalar-decay linear recurrence ``C_t = a'_t C_{t-1} + k'_t v_t^T`` with
``log a'_t = log_f_t + m_{t-1} - m_t <= 0`` and ``k'_t = exp(log_i_t - m_t) k_t``, and the normaliser
``n`` rides along as an extra value column (``v' = [v, 1]``). The stabilisers themselves solve a
max-plus recurrence; with ``F`` the cumulative log forget gate inside a chunk,
``m_t = F_t + max(m_in, max_{j <= t}(log_i_j - F_j))`` (a ``cummax``) and ``m_in`` is carried across
chunks. Every exponent is <= 0 as in the recurrent form, so neither form overflows.

Shapes: ``q, k: [B, H, T, K]``, ``v: [B, H, T, V]``, ``log_i, log_f: [B, H, T]``, state
``(C: [B, H, K, V], n: [B, H, K], m: [B, H])``; every form returns ``(h: [B, H, T, V], state)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from seqmix.ops.ssd import positive_chunk_size, ssd_chunk

__all__ = ["MLSTMCellState", "mlstm_normalise", "mlstm_step", "mlstm_recurrent", "mlstm_chunk", "mlstm_stabiliser"]


class MLSTMCellState(NamedTuple):
    C: torch.Tensor  # [B, H, K, V] stabilised matrix memory
    n: torch.Tensor  # [B, H, K] stabilised normaliser
    m: torch.Tensor  # [B, H] stabiliser (log scale of C and n)


def mlstm_normalise(num: torch.Tensor, qn: torch.Tensor, m: torch.Tensor, eps: float) -> torch.Tensor:
    """``num / (max(|qn|, exp(-m)) + eps)`` without forming an ``exp(-m)`` above 1.

    ``num: [..., V]``, ``qn: [...]``, ``m: [...]``.
    """
    c = torch.exp(torch.clamp(m, max=0.0))  # [...], <= 1
    floor = torch.exp(-torch.clamp(m, min=0.0))  # exp(-m) * c, <= 1
    den = torch.maximum(qn.abs() * c, floor) + eps * c
    return num * (c / den).unsqueeze(-1)


def _check(q, k, v, log_i, log_f, state) -> None:
    B, H, T, V = v.shape
    K = q.shape[-1]
    shapes = {"q": (q, (B, H, T, K)), "k": (k, (B, H, T, K)), "log_i": (log_i, (B, H, T)), "log_f": (log_f, (B, H, T))}
    shapes.update({"C": (state[0], (B, H, K, V)), "n": (state[1], (B, H, K)), "m": (state[2], (B, H))})
    for name, (t, want) in shapes.items():
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


# --------------------------------------------------------------------------- the spec
def mlstm_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    log_i_t: torch.Tensor,
    log_f_t: torch.Tensor,
    state: MLSTMCellState,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMCellState]:
    """One token: ``q_t, k_t: [B, H, K]``, ``v_t: [B, H, V]``, gates ``[B, H]``."""
    C, n, m = state
    m_new = torch.maximum(log_f_t + m, log_i_t)  # [B, H]
    f = torch.exp(log_f_t + m - m_new)[..., None]  # [B, H, 1]
    i = torch.exp(log_i_t - m_new)[..., None]  # [B, H, 1]
    C = f[..., None] * C + (i * k_t).unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V]
    n = f * n + i * k_t  # [B, H, K]
    num = (q_t.unsqueeze(-2) @ C).squeeze(-2)  # [B, H, V]
    qn = (q_t * n).sum(-1)  # [B, H]
    return mlstm_normalise(num, qn, m_new, eps), MLSTMCellState(C, n, m_new)


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: MLSTMCellState,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMCellState]:
    """Reference: ``mlstm_step`` in a Python loop over time."""
    _check(q, k, v, log_i, log_f, initial_state)
    state = MLSTMCellState(*initial_state)
    outs = []
    for t in range(v.shape[2]):
        h_t, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], log_i[:, :, t], log_f[:, :, t], state, eps)
        outs.append(h_t)
    return torch.stack(outs, dim=2), state  # [B, H, T, V]


# --------------------------------------------------------------------------- fast form
def mlstm_stabiliser(log_i: torch.Tensor, log_f: torch.Tensor, m0: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """All stabilisers ``m_t = max(log_f_t + m_{t-1}, log_i_t)`` at once: ``[B, H, T]``.

    Inside chunks ``m_t = F_t + max(m_in, cummax_j(log_i_j - F_j))`` with chunk-local cumulative log
    forget gates ``F`` (chunk-local so that their magnitude, and the rounding of the sums, stays that of
    one chunk); ``m_in`` is carried across chunks by a loop over the ``T / C`` chunks on ``[B, H]``.
    """
    B, H, T = log_i.shape
    C = min(positive_chunk_size(chunk_size), T)
    N = -(-T // C)
    pad = N * C - T
    if pad:  # padded tokens come last and are cut off: they cannot change a real m_t
        log_i, log_f = F.pad(log_i, (0, pad)), F.pad(log_f, (0, pad))
    Fc = log_f.reshape(B, H, N, C).cumsum(-1)  # [B, H, N, C]
    M = (log_i.reshape(B, H, N, C) - Fc).cummax(-1).values  # [B, H, N, C]
    m_in = m0
    entering = []
    for F_n, M_n in zip(Fc[..., -1].unbind(2), M[..., -1].unbind(2)):
        entering.append(m_in)
        m_in = F_n + torch.maximum(m_in, M_n)  # [B, H]
    m = Fc + torch.maximum(torch.stack(entering, dim=2).unsqueeze(-1), M)  # [B, H, N, C]
    return m.reshape(B, H, N * C)[..., :T]


def mlstm_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: MLSTMCellState,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMCellState]:
    """Chunkwise mLSTM.

    1. Stabilisers ``m_t`` for every token (``mlstm_stabiliser``).
    2. Stabilised decays ``log a'_t = log_f_t + m_{t-1} - m_t`` and key scales ``exp(log_i_t - m_t)``,
       both exponents <= 0.
    3. ``ssd_chunk`` on ``v' = [v, 1]`` and ``S' = [C, n]``: numerator and ``n . q`` in one pass.
    4. Normalise (``mlstm_normalise``).
    """
    _check(q, k, v, log_i, log_f, initial_state)
    C0, n0, m0 = initial_state
    Vd = v.shape[-1]
    # 1.
    m = mlstm_stabiliser(log_i, log_f, m0, chunk_size)  # [B, H, T]
    # 2.
    m_prev = torch.cat((m0.unsqueeze(-1), m[..., :-1]), dim=-1)  # [B, H, T]
    log_a = log_f + m_prev - m  # [B, H, T]
    k_scaled = k * torch.exp(log_i - m).unsqueeze(-1)  # [B, H, T, K]
    # 3.
    v_aug = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [B, H, T, V+1]
    S_aug = torch.cat((C0, n0.unsqueeze(-1)), dim=-1)  # [B, H, K, V+1]
    out, S_aug = ssd_chunk(q, k_scaled, v_aug, log_a, S_aug, chunk_size)
    # 4.
    num, qn = out.split([Vd, 1], dim=-1)  # split, not two slices: backward joins them in one pass
    h = mlstm_normalise(num, qn.squeeze(-1), m, eps)  # [B, H, T, V]
    state = MLSTMCellState(S_aug[..., :Vd].contiguous(), S_aug[..., Vd].contiguous(), m[..., -1])
    return h, state
