"""RWKV-4 time mixing as a token mixer.

Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", arXiv:2305.13048, Section 3
(Eq. 11-14). With ``x_{t-1}`` the previous token (token shift) and per-channel mixes ``mu``::

    r_t = (mu_r x_t + (1 - mu_r) x_{t-1}) W_r
    k_t = (mu_k x_t + (1 - mu_k) x_{t-1}) W_k
    v_t = (mu_v x_t + (1 - mu_v) x_{t-1}) W_v
    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t})
    o_t = (sigmoid(r_t) * wkv_t) W_o

with a per-channel decay rate ``w = exp(time_decay) > 0`` and bonus ``u = time_first``. The WKV
operator (and its numerically stable state ``(a, b, p)``) lives in ``seqmix.ops.rwkv4``; the ``"scan"``
form computes it without a loop over time. Parameter names follow the reference
(``time_decay``, ``time_first``, ``time_mix_k/v/r``, ``key``, ``value``, ``receptance``, ``output``;
Hugging Face's ``RwkvSelfAttention`` calls the mixes ``time_mix_key/value/receptance``).

Initialisation: the reference's depth-dependent recipe, which needs the layer's position
(``layer_idx``, ``n_layers``; ``r0 = layer_idx / (n_layers - 1)``, ``r1 = 1 - layer_idx / n_layers``):
``time_decay[c] = -5 + 8 (c / (d-1))^(0.7 + 1.3 r0)``, ``time_first[c] = ln 0.3 + 0.5 ((c+1) mod 3 - 1)``,
``mu_k = (c / d)^r1``, ``mu_v = (c / d)^r1 + 0.3 r0``, ``mu_r = (c / d)^(r1 / 2)``. Deviation: the
reference zero-initialises ``key``, ``receptance`` and ``output``; a zero ``output`` leaves every
other weight without a gradient at the first step (and a zero ``key`` the key mix), so the linear
layers keep PyTorch's default here.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.mixers.rwkv6 import depth_ratios
from seqmix.modules.token_shift import token_shift
from seqmix.ops.rwkv4 import EMPTY_MAX, wkv4_recurrent, wkv4_scan, wkv4_step
from seqmix.ops.scan import check_chunk_size

__all__ = ["RWKV4", "RWKV4State"]


class RWKV4State(NamedTuple):
    shift: torch.Tensor  # [B, d_model], the last input token (token shift)
    a: torch.Tensor  # [B, d_model], WKV numerator / e^p
    b: torch.Tensor  # [B, d_model], WKV denominator / e^p
    p: torch.Tensor  # [B, d_model], the largest exponent seen (the stabiliser); -1e38 when empty


class RWKV4(Mixer):
    """RWKV-4 time mixing.

    Args:
        d_model: model width (also the attention width).
        layer_idx, n_layers: this layer's position in the model, for the depth-dependent init.
        chunk_size: chunk length of the ``"scan"`` form (a power of two).

    State: ``RWKV4State(shift, a, b, p)``, each ``[B, d_model]``, constant in the context length.
    """

    modes = ("scan", "recurrent")

    def __init__(self, d_model: int, layer_idx: int = 0, n_layers: int = 1, chunk_size: int = 64) -> None:
        super().__init__(d_model)
        r0, r1 = depth_ratios(layer_idx, n_layers)
        self.chunk_size = check_chunk_size(chunk_size)
        d = d_model
        self.time_decay = nn.Parameter(torch.empty(d))
        self.time_first = nn.Parameter(torch.empty(d))
        self.time_mix_k = nn.Parameter(torch.empty(d))
        self.time_mix_v = nn.Parameter(torch.empty(d))
        self.time_mix_r = nn.Parameter(torch.empty(d))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self._init(r0, r1)

    @torch.no_grad()
    def _init(self, r0: float, r1: float) -> None:
        d = self.d_model
        c = torch.arange(d, dtype=torch.float64)
        self.time_decay.copy_(-5 + 8 * (c / max(d - 1, 1)) ** (0.7 + 1.3 * r0))
        self.time_first.copy_(math.log(0.3) + 0.5 * ((c + 1) % 3 - 1))
        ddd = c / d
        self.time_mix_k.copy_(ddd**r1)
        self.time_mix_v.copy_(ddd**r1 + 0.3 * r0)
        self.time_mix_r.copy_(ddd ** (0.5 * r1))

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> RWKV4State:
        kw = self._state_factory(device, dtype)
        shape = (batch_size, self.d_model)
        zeros = lambda: torch.zeros(shape, **kw)  # noqa: E731
        return RWKV4State(zeros(), zeros(), zeros(), torch.full(shape, EMPTY_MAX, **kw))

    def state_size(self, context_len: int) -> int:
        return 4 * self.d_model

    # ------------------------------------------------------------------ forms
    def _inputs(self, x: torch.Tensor, x_prev: torch.Tensor, dtype: torch.dtype):
        """Receptance gate, keys, values (``[..., D]``; k and v in the state's ``dtype``), decay rate, bonus."""
        mix = lambda mu: x * mu + x_prev * (1 - mu)  # noqa: E731
        k = self.key(mix(self.time_mix_k)).to(dtype)
        v = self.value(mix(self.time_mix_v)).to(dtype)
        r = torch.sigmoid(self.receptance(mix(self.time_mix_r)))
        return r, k, v, self.time_decay.to(dtype), self.time_first.to(dtype)

    def _forward(self, x: torch.Tensor, state: RWKV4State, mode: str) -> tuple[torch.Tensor, RWKV4State]:
        x_prev, shift = token_shift(x, state.shift)
        r, k, v, time_decay, u = self._inputs(x, x_prev, state.a.dtype)
        with full_precision(x):
            w = torch.exp(time_decay)
            if mode == "scan":
                wkv, abp = wkv4_scan(w, u, k, v, (state.a, state.b, state.p), self.chunk_size)
            else:  # "recurrent": the reference loop
                wkv, abp = wkv4_recurrent(w, u, k, v, (state.a, state.b, state.p))
        return self.output(r * wkv.to(r.dtype)), RWKV4State(shift, *abp)

    def _step(self, x_t: torch.Tensor, state: RWKV4State) -> tuple[torch.Tensor, RWKV4State]:
        r, k, v, time_decay, u = self._inputs(x_t, state.shift.to(x_t.dtype), state.a.dtype)
        with full_precision(x_t):
            wkv, abp = wkv4_step(torch.exp(time_decay), u, k, v, (state.a, state.b, state.p))
        return self.output(r * wkv.to(r.dtype)), RWKV4State(x_t.to(state.shift.dtype, copy=True), *abp)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
