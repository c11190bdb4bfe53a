"""Diagonal linear time-invariant SSMs as long convolutions (S4D; Gu, Gupta, Goel & Re 2022, "On the
Parameterization and Initialization of Diagonal State Space Models", NeurIPS 2022, arXiv:2206.11893).

Per channel ``h`` and complex mode ``n`` (the discretised system: ``z = exp(dt A)`` and ``b = B_bar``)::

    x_t[h, n] = z[h, n] * x_{t-1}[h, n] + b[h, n] * u_t[h]          x: [B, H, N] complex
    y_t[h]    = 2 Re( sum_n c[h, n] * x_t[h, n] )                   modes come in conjugate pairs: 2 Re

Unrolled from the state ``x_{-1}`` carried in, with the kernel ``K_l[h] = 2 Re sum_n c b z^l``::

    y_t     = sum_{s <= t} K_{t-s} u_s  +  2 Re sum_n c z^(t+1) x_{-1}                          (1)
    x_{T-1} = z^T x_{-1}  +  b * sum_s z^(T-1-s) u_s                                          (2)

Shapes: ``u: [B, T, H]`` real; ``log_z = dt A``, ``b``, ``c: [H, N]`` complex; ``initial_state: [B, H, N]``
complex. Both forms return ``(y: [B, T, H], final_state: [B, H, N])``:

- ``ssm_diag_recurrent``: the loop over ``ssm_diag_step``, the spec.
- ``ssm_diag_conv``: (1) as an FFT convolution with the kernel plus the state's free response (skipped
  when the state is zero and needs no gradient: it is identically zero), (2) as a reversed-kernel sum.
  Powers ``z^l`` are never formed as an ``[H, N, T]`` tensor: with ``l = j C + r`` (``C = chunk_size``),
  ``z^l = z^(jC) z^r``, so each of the three Vandermonde sums is one batched complex matmul over blocks,
  ``[.., J, N] @ [.., N, C]``, from ``H N (T / C + C)`` powers (every power is an ``exp`` of its exponent,
  not a product of rounded factors). The free response folds its extra ``z`` into the coefficients
  (``z^(t+1) = z^(jC) z^r z``). Differentiable by autograd in every input; memory is linear in ``T``.
"""

from __future__ import annotations

import torch

__all__ = ["fft_causal_conv", "ssm_diag_step", "ssm_diag_recurrent", "ssm_diag_kernel", "ssm_diag_conv"]


def _check(u: torch.Tensor, log_z: torch.Tensor, b: torch.Tensor, c: torch.Tensor, x0: torch.Tensor) -> None:
    if u.ndim != 3 or u.shape[1] == 0:
        raise ValueError(f"u must have shape [B, T, H] with T >= 1, got {tuple(u.shape)}")
    Bsz, _, H = u.shape
    if log_z.ndim != 2 or log_z.shape[0] != H:
        raise ValueError(f"log_z must have shape [H={H}, N], got {tuple(log_z.shape)}")
    for name, t in (("b", b), ("c", c)):
        if t.shape != log_z.shape:
            raise ValueError(f"{name} must have log_z's shape {tuple(log_z.shape)}, got {tuple(t.shape)}")
    if tuple(x0.shape) != (Bsz, H, log_z.shape[1]):
        raise ValueError(f"initial_state must have shape {(Bsz, H, log_z.shape[1])}, got {tuple(x0.shape)}")
    if not all(t.is_complex() for t in (log_z, b, c, x0)) or u.is_complex():
        raise ValueError("u must be real; log_z, b, c and initial_state complex")


# --------------------------------------------------------------------------- the spec
def ssm_diag_step(
    u_t: torch.Tensor, log_z: torch.Tensor, b: torch.Tensor, c: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token ``u_t: [B, H]`` -> ``(y_t: [B, H], x: [B, H, N])``."""
    x = torch.exp(log_z) * x + b * u_t.unsqueeze(-1)  # [B, H, N]
    y_t = 2.0 * (c * x).sum(-1).real  # [B, H]
    return y_t, x


def ssm_diag_recurrent(
    u: torch.Tensor, log_z: torch.Tensor, b: torch.Tensor, c: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: a Python loop over time."""
    _check(u, log_z, b, c, initial_state)
    x = initial_state
    ys = []
    for t in range(u.shape[1]):
        y_t, x = ssm_diag_step(u[:, t], log_z, b, c, x)
        ys.append(y_t)
    return torch.stack(ys, dim=1), x


# --------------------------------------------------------------------------- the convolution form
def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``y_t = sum_{s <= t} k_{t-s} u_s`` along the last dim: ``u: [..., H, T]``, ``k: [H, T]`` -> ``[..., H, T]``.

    Zero-padded to a power of two ``>= 2T`` so that the circular FFT convolution has no wrap-around.
    """
    T = u.shape[-1]
    n = 1 << (2 * T - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)  # [..., H, n]
    return y[..., :T]


def _powers(log_z: torch.Tensor, step: int, count: int) -> torch.Tensor:
    """``z^(step * i)`` for ``i < count``: ``[H, N, count]``, each power one ``exp`` (in polar form,
    which is cheaper than a complex ``exp`` on the CPU)."""
    e = torch.arange(count, device=log_z.device, dtype=log_z.real.dtype) * step  # [count]
    a = log_z.unsqueeze(-1) * e  # [H, N, count]
    return torch.polar(torch.exp(a.real), a.imag)


def _blocks(length: int, chunk_size: int) -> tuple[int, int]:
    """``(C, J)``: block length and number of blocks covering ``length``."""
    C = min(chunk_size, length)
    return C, -(-length // C)


def ssm_diag_kernel(log_z: torch.Tensor, cb: torch.Tensor, length: int, chunk_size: int = 64) -> torch.Tensor:
    """``K_l[h] = 2 Re sum_n cb[h, n] z[h, n]^l`` for ``l < length``: ``[H, length]`` (real).

    Blocked Vandermonde product: ``K_{jC + r} = 2 Re sum_n (cb z^(jC))_n (z^r)_n``, one batched matmul.
    """
    C, J = _blocks(length, chunk_size)
    k = _vandermonde(cb, _powers(log_z, C, J), _powers(log_z, 1, C))  # [H, J, C]
    return 2.0 * k.real.reshape(k.shape[0], J * C)[:, :length]


def _vandermonde(coef: torch.Tensor, outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``sum_n coef_n z_n^(jC) z_n^r`` as ``[..., J, C]`` from ``coef: [..., H, N]``, ``outer = z^(jC): [H, N, J]``
    and ``inner = z^r: [H, N, C]``."""
    return torch.matmul((coef.unsqueeze(-1) * outer).transpose(-1, -2), inner)


def ssm_diag_conv(
    u: torch.Tensor,
    log_z: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFT-convolution form of ``ssm_diag_recurrent`` (same function, same signature plus ``chunk_size``,
    the block length of the Vandermonde products)."""
    _check(u, log_z, b, c, initial_state)
    Bsz, T, H = u.shape
    C, J = _blocks(T, chunk_size)
    outer, inner = _powers(log_z, C, J), _powers(log_z, 1, C)  # z^(jC): [H, N, J], z^r: [H, N, C]
    ut = u.transpose(1, 2)  # [B, H, T]
    # 1. zero-state response: causal convolution with the kernel
    kernel = 2.0 * _vandermonde(c * b, outer, inner).real.reshape(H, J * C)[:, :T]  # [H, T]
    y = fft_causal_conv(ut, kernel)  # [B, H, T]
    # 2. free response of the carried state, 2 Re sum_n (c z x_{-1})_n z_n^(jC + r) at t = jC + r; identically
    #    zero (and skipped) for a zero state that needs no gradient
    x0 = initial_state
    if x0.requires_grad or x0.device.type == "meta" or bool(x0.any()):
        free = _vandermonde(c * torch.exp(log_z) * x0, outer, inner)  # [B, H, J, C]
        y = y + 2.0 * free.real.reshape(Bsz, H, J * C)[:, :, :T]
    # 3. final state (2): sum_s z^(T-1-s) u_s over the reversed input in blocks, T-1-s = jC + r
    u_rev = ut.new_zeros(Bsz, H, J * C)  # [B, H, J*C], zero past the start of the sequence
    u_rev[:, :, :T] = ut.flip(-1)
    inner_sums = torch.matmul(u_rev.reshape(Bsz, H, J, C).to(log_z.dtype), inner.transpose(-1, -2))  # [B, H, J, N]
    acc = (inner_sums * outer.transpose(-1, -2)).sum(-2)  # [B, H, N]
    final = torch.exp(log_z * T) * x0 + b * acc  # [B, H, N]
    return y.transpose(1, 2), final
