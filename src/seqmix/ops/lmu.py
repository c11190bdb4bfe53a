"""The memory of the Legendre Memory Unit (Voelker, Kajic & Eliasmith 2019, "Legendre Memory Units:
Continuous-Time Representation in Recurrent Neural Networks", NeurIPS 2019), in the linear, parallelisable
form of Chilkuri & Eliasmith 2021 ("Parallelizing Legendre Memory Unit Training", ICML 2021,
arXiv:2102.11417) used by LMUFormer (Liu, Datta & Beerel 2024, ICLR 2024, arXiv:2402.04882).

The delay system of order ``q`` and window ``theta`` (``i, j = 0..q-1``)::

    theta m'(t) = A m(t) + B u(t),   A[i, j] = (2i + 1) * (-1 if i < j else (-1)^(i - j + 1)),
                                     B[i]    = (2i + 1) * (-1)^i

is discretised with a zero-order hold over one time step (``dt = 1``; ``Abar = expm(A / theta)``,
``Bbar = (A / theta)^-1 (Abar - I) B / theta``, both from one matrix exponential of the augmented system).
Each of ``C`` input channels has its own memory, with the same fixed ``(Abar, Bbar)``::

    m_t[c] = Abar m_{t-1}[c] + Bbar u_t[c]                  m: [B, C, q]

Unrolled from the carried memory ``m_{-1}`` with the impulse response ``H_l = Abar^l Bbar``::

    m_t[c] = sum_{s <= t} H_{t-s} u_s[c]  +  Abar^(t+1) m_{-1}[c]

Shapes: ``u: [B, T, C]``, ``Abar: [q, q]``, ``Bbar: [q]``, ``initial_state: [B, C, q]``. Both forms return
``(m: [B, T, C, q], m_last: [B, C, q])``, every memory (the LMU's hidden layer reads them all):

- ``lmu_recurrent``: the loop over ``lmu_step``, the spec.
- ``lmu_conv``: the convolution with ``H`` as an FFT (``q`` output channels per input channel), plus the
  free response ``Abar^(t+1) m_{-1}`` by doubling (``[Abar^n X_0..X_{n-1}]`` extends ``X_0..X_{n-1}`` to
  ``2n`` steps, one GEMM per doubling), skipped when the carried memory is zero and needs no gradient;
  ``m_last`` is the last memory. ``Abar`` is dense and non-normal (not safely diagonalisable), so the
  free response costs ``O(T q^2)`` per channel, like the loop; the zero-state part costs ``O(T log T)``
  per memory coordinate.

``Abar`` and ``Bbar`` are fixed (no gradient flows to them); ``H`` may be precomputed by the caller and
passed as ``impulse_response`` (``lmu_impulse_response``).
"""

from __future__ import annotations

from typing import Optional

import torch

from seqmix.ops.ssm_conv import fft_causal_conv

__all__ = [
    "legendre_delay_system",
    "lmu_discretize",
    "lmu_impulse_response",
    "lmu_step",
    "lmu_recurrent",
    "lmu_conv",
]


def legendre_delay_system(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The continuous ``(A: [q, q], B: [q])`` of the Legendre delay system (times ``theta``), float64."""
    i = torch.arange(order, dtype=torch.float64)
    r = 2 * i + 1  # [q]
    diff = i[:, None] - i[None, :]  # [q, q], i - j
    sign = torch.where(diff < 0, -1.0, (-1.0) ** (diff + 1))
    return r[:, None] * sign, r * (-1.0) ** i


def lmu_discretize(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold with ``dt = 1``: ``expm([[A, B], [0, 0]] / theta) = [[Abar, Bbar], [0, 1]]`` (float64)."""
    A, B = legendre_delay_system(order)
    aug = torch.zeros(order + 1, order + 1, dtype=torch.float64)  # [q+1, q+1]
    aug[:order, :order] = A / theta
    aug[:order, order] = B / theta
    e = torch.linalg.matrix_exp(aug)
    return e[:order, :order].contiguous(), e[:order, order].contiguous()


def lmu_impulse_response(Abar: torch.Tensor, Bbar: torch.Tensor, length: int) -> torch.Tensor:
    """``H_l = Abar^l Bbar`` for ``l < length``: ``[length, q]``, by doubling (``log2(length)`` GEMMs)."""
    H = Bbar.unsqueeze(0)  # [1, q]
    power = Abar  # Abar^n for the current length n
    while H.shape[0] < length:
        H = torch.cat([H, H @ power.T], dim=0)  # rows n..2n-1: Abar^n H_l
        power = power @ power
    return H[:length]


def _check(u: torch.Tensor, Abar: torch.Tensor, Bbar: torch.Tensor, m0: torch.Tensor) -> None:
    if u.ndim != 3 or u.shape[1] == 0:
        raise ValueError(f"u must have shape [B, T, C] with T >= 1, got {tuple(u.shape)}")
    q = Abar.shape[-1]
    if Abar.shape != (q, q) or Bbar.shape != (q,):
        raise ValueError(f"Abar must be [q, q] and Bbar [q], got {tuple(Abar.shape)} and {tuple(Bbar.shape)}")
    expected = (u.shape[0], u.shape[2], q)
    if tuple(m0.shape) != expected:
        raise ValueError(f"initial_state must have shape {expected} ([B, C, q]), got {tuple(m0.shape)}")


# --------------------------------------------------------------------------- the spec
def lmu_step(u_t: torch.Tensor, Abar: torch.Tensor, Bbar: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One token ``u_t: [B, C]``: ``m [B, C, q] -> Abar m + Bbar u_t``."""
    return m @ Abar.T + u_t.unsqueeze(-1) * Bbar


def lmu_recurrent(
    u: torch.Tensor, Abar: torch.Tensor, Bbar: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: a Python loop over time."""
    _check(u, Abar, Bbar, initial_state)
    m = initial_state
    ms = []
    for t in range(u.shape[1]):
        m = lmu_step(u[:, t], Abar, Bbar, m)
        ms.append(m)
    return torch.stack(ms, dim=1), m


# --------------------------------------------------------------------------- the convolution form
def _free_response(Abar: torch.Tensor, m0: torch.Tensor, T: int) -> torch.Tensor:
    """``Abar^(t+1) m0`` for ``t < T``: ``[B, T, C, q]``, by doubling."""
    X = (m0 @ Abar.T).unsqueeze(1)  # [B, 1, C, q], t = 0
    power = Abar
    while X.shape[1] < T:
        X = torch.cat([X, X @ power.T], dim=1)  # steps n..2n-1 are Abar^n times steps 0..n-1
        power = power @ power
    return X[:, :T]


def lmu_conv(
    u: torch.Tensor,
    Abar: torch.Tensor,
    Bbar: torch.Tensor,
    initial_state: torch.Tensor,
    impulse_response: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFT-convolution form of ``lmu_recurrent`` (same function); ``impulse_response``: ``H`` of
    ``lmu_impulse_response`` for at least ``T`` steps, computed here when None."""
    _check(u, Abar, Bbar, initial_state)
    T = u.shape[1]
    H = lmu_impulse_response(Abar, Bbar, T) if impulse_response is None else impulse_response
    if H.shape[0] < T or H.shape[1] != Abar.shape[0]:
        raise ValueError(f"impulse_response must be [>= T={T}, q={Abar.shape[0]}], got {tuple(H.shape)}")
    # 1. zero-state response: every input channel through the q filters H[:, j]
    m = fft_causal_conv(u.transpose(1, 2).unsqueeze(2), H[:T].T)  # [B, C, q, T]
    m = m.permute(0, 3, 1, 2)  # [B, T, C, q]
    # 2. the carried memory's free response (identically zero for a zero memory that needs no gradient)
    m0 = initial_state
    if m0.requires_grad or m0.device.type == "meta" or bool(m0.any()):
        m = m + _free_response(Abar, m0, T)
    return m, m[:, -1].clone()  # a copy: the state must not keep every memory alive
