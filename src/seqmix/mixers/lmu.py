"""The Legendre Memory Unit as a token mixer, in the linear (parallelisable) form of Chilkuri & Eliasmith
2021 ("Parallelizing Legendre Memory Unit Training", arXiv:2102.11417) used by LMUFormer (Liu, Datta &
Beerel 2024, "LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre Memory Units",
arXiv:2402.04882); the memory is the Legendre delay system of Voelker, Kajic & Eliasmith 2019
("Legendre Memory Units: Continuous-Time Representation in Recurrent Neural Networks", NeurIPS 2019):

    u_t = W_u x_t + b_u                                    [memory_d] channels into the memory
    m_t = Abar m_{t-1} + Bbar u_t                          per channel, [memory_d, order]; fixed (Abar, Bbar)
    h_t = ReLU(W_m vec(m_t) + W_x x_t + b_h)               the hidden layer sees memory and input
    y_t = W_o h_t + b_o                                    back to d_model

``(Abar, Bbar)`` is the zero-order-hold discretisation of the order-``q`` Legendre delay system with
window ``theta`` (``ops/lmu.py``); it is fixed, computed once in float64 per ``(order, theta)`` and cached,
with its impulse response, per length, device and dtype (never stored as a buffer, so that a
bfloat16 model still runs the memory with the float32 state's matrices).

Choices, stated: as in LMUFormer's LMU cell ``u`` comes from the input only (the original LMU also
feeds back ``h_{t-1}``, which makes the recurrence nonlinear and sequential), ``h`` uses ReLU and
``W_o`` is the block's output projection (LMUFormer's 1x1 conv; its BatchNorm is left out, because batch
statistics would couple the sequences of a batch). Unlike LMUFormer, whose ``u`` passes a ReLU, ``u``
is linear here, as in Chilkuri & Eliasmith 2021. Defaults: ``memory_d = 1`` and ``d_hidden = d_model``
as in LMUFormer; ``order = 256`` (LMUFormer: ``d_model``) and ``theta = 256`` steps (LMUFormer: the
sequence length, 128). Linear layers keep PyTorch's default init.

Forms: ``"conv"`` (default; FFT convolution with the impulse response, ``ops/lmu.py``) and
``"recurrent"`` (the loop). State: the memory ``m: [B, memory_d, order]``.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.ops.lmu import lmu_conv, lmu_discretize, lmu_impulse_response, lmu_recurrent, lmu_step
from seqmix.ops.scan import next_pow2

__all__ = ["LMU"]


@functools.lru_cache(maxsize=16)
def _system(order: int, theta: float, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # built outside inference mode: a cached tensor made under torch.inference_mode could not be used later
    # in a forward that records gradients
    with torch.inference_mode(False):
        Abar, Bbar = lmu_discretize(order, theta)
        return Abar.to(device=device, dtype=dtype), Bbar.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _impulse(order: int, theta: float, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        Abar, Bbar = lmu_discretize(order, theta)
        return lmu_impulse_response(Abar, Bbar, length).to(device=device, dtype=dtype)  # [length, q], from float64


class LMU(Mixer):
    """Linear LMU mixer; modes ``"conv"`` (FFT convolution) and ``"recurrent"`` (the reference loop).

    State: ``m: [B, memory_d, order]``, constant in length.
    """

    modes = ("conv", "recurrent")

    def __init__(
        self,
        d_model: int,
        order: int = 256,
        theta: float = 256.0,
        memory_d: int = 1,
        d_hidden: Optional[int] = None,
    ) -> None:
        super().__init__(d_model)
        self.order = options.positive_int("order", order, "the number of Legendre polynomials q")
        self.theta = options.number("theta", theta, minimum=0, strict=True, hint="the memory window in steps")
        self.memory_d = options.positive_int("memory_d", memory_d, "channels written into the memory")
        self.d_hidden = options.positive_int("d_hidden", d_model if d_hidden is None else d_hidden, "None: d_model")
        self.in_proj = nn.Linear(d_model, self.memory_d)  # u
        self.memory_proj = nn.Linear(self.memory_d * self.order, self.d_hidden, bias=False)  # W_m
        self.input_proj = nn.Linear(d_model, self.d_hidden)  # W_x, b_h
        self.out_proj = nn.Linear(self.d_hidden, d_model)  # W_o, b_o

    def system(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed ``(Abar: [q, q], Bbar: [q])`` on ``device`` in ``dtype`` (cached)."""
        return _system(self.order, self.theta, torch.device(device), dtype)

    def _output(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``W_o ReLU(W_m vec(m) + W_x x + b_h) + b_o`` for memories ``m: [..., memory_d, q]``."""
        m = m.flatten(-2).to(x.dtype)  # [..., memory_d * q]
        return self.out_proj(F.relu(self.memory_proj(m) + self.input_proj(x)))

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.in_proj(x).to(state.dtype)  # [B, T, memory_d]
        with full_precision(x):
            Abar, Bbar = self.system(state.device, state.dtype)
            if mode == "conv":
                # one cached impulse response serves every length up to the next power of two
                H = _impulse(self.order, self.theta, next_pow2(x.shape[1]), state.device, state.dtype)
                m, m_last = lmu_conv(u, Abar, Bbar, state, impulse_response=H)
            else:
                m, m_last = lmu_recurrent(u, Abar, Bbar, state)
        return self._output(m, x), m_last

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.in_proj(x_t).to(state.dtype)  # [B, memory_d]
        with full_precision(x_t):
            m = lmu_step(u, *self.system(state.device, state.dtype), state)
        return self._output(m, x_t), m

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.memory_d, self.order, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.memory_d * self.order

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, order={self.order}, theta={self.theta:g}, memory_d={self.memory_d}, "
            f"d_hidden={self.d_hidden}"
        )
