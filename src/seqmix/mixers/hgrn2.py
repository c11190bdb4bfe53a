"""HGRN2: the hierarchically gated linear RNN with outer-product state expansion, as a token mixer.

Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion", arXiv:2404.07904, Section 3. HGRN's
gates, with the input gate tied to the forget gate (``1 - f``) acting as a key and the output gate as a
query, so that the state grows from ``d`` to ``d x expand_ratio`` without new parameters. Per head
(head width ``E = d_model / n_heads``, the paper's expand ratio)::

    f_t = beta + (1 - beta) * sigmoid(x_t W_f + b_f)      # forget gate with the layer's lower bound
    i_t = silu(x_t W_i + b_i)                             # input (value)
    g_t = sigmoid(x_t W_g + b_g)                          # output gate (query)
    S_t = diag(f_t) S_{t-1} + (1 - f_t) i_t^T             # [E, E]
    y_t = LayerNorm(concat_h(g_t^T S_t)) W_o + b_o

This is the gated linear attention recurrence with ``q = g``, ``k = 1 - f``, ``v = i`` and
``alpha = f`` (``seqmix.ops.gla``). Activations, biases and the LayerNorm follow the authors' released
``Hgru2_1d`` layer (one ``d -> 3d`` input projection). The paper uses ``E = 128`` for language models;
``n_heads=None`` picks heads of about 128 channels that divide ``d_model``.

Lower bound: HGRN learns ``beta`` per layer and channel at the *model* level (softmax over layers, then
a cumulative sum, so that upper layers forget more slowly). A mixer sees only its own layer, so, as in
``seqmix.mixers.hgrn``, the bound is that construction at its initialisation: the constant
``layer_idx / n_layers`` (the models fill in both per layer; 0 in the first layer). ``lower_bound``
overrides it with any fixed number in [0, 1).

``negative_eigenvalues=True`` extends the transition to ``2 f - 1`` in (-1, 1] (Grazzi et al. 2024,
arXiv:2411.12537) and leaves the tied key ``1 - f`` as it is: only the state transition changes, as in
their recipe for Mamba.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.mixers.gla import run_gla, transition
from seqmix.ops.gla import gla_step

__all__ = ["HGRN2"]


class HGRN2(Mixer):
    """HGRN2 token mixer.

    Args:
        d_model: model width.
        n_heads: heads; the head width ``d_model / n_heads`` is the expand ratio (paper: 128). None: heads
            of about 128 channels.
        lower_bound: the forget gate's lower bound beta in [0, 1); None: ``layer_idx / n_layers``.
        layer_idx, n_layers: this layer's position in the model (filled in by the models).
        chunk_size: chunk length of the ``"chunk"`` form.
        norm_eps: epsilon of the output LayerNorm.
        negative_eigenvalues: transitions ``2 f - 1`` in (-1, 1] instead of ``f`` in (0, 1].

    State: ``S: [B, n_heads, E, E]`` with ``E = d_model / n_heads``, constant in the context length.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        lower_bound: Optional[float] = None,
        layer_idx: int = 0,
        n_layers: int = 1,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.n_heads, self.head_dim = options.heads(d_model, n_heads, default_head_dim=128)
        self.layer_idx, self.n_layers = options.layer_position(layer_idx, n_layers)
        if lower_bound is None:
            lower_bound = self.layer_idx / self.n_layers
        lower_bound = options.number("lower_bound", lower_bound, minimum=0, hint="and < 1")
        if lower_bound >= 1:
            raise ValueError(f"lower_bound must be a number >= 0 and < 1, got {lower_bound!r}")
        self.lower_bound = lower_bound
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)

        self.in_proj = nn.Linear(d_model, 3 * d_model)  # input i, output gate g, forget gate f
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.out_proj = nn.Linear(d_model, d_model)

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        E = self.head_dim
        return torch.zeros(batch_size, self.n_heads, E, E, **self._state_factory(device, dtype))

    def state_size(self, context_len: int) -> int:
        return self.n_heads * self.head_dim**2

    # ------------------------------------------------------------------ forms
    def _inputs(self, proj: torch.Tensor, dtype: torch.dtype):
        """``(q, k, v, log|a|, sign)`` from the input projection ``proj: [..., 3D]``, each ``[..., H, E]`` in the
        state's ``dtype``; gates computed in that dtype (call under ``full_precision``)."""
        lead = proj.shape[:-1]
        i, g, f = (t.view(*lead, self.n_heads, self.head_dim).to(dtype) for t in proj.chunk(3, dim=-1))
        log_f = F.logsigmoid(f)  # log of the forget gate, then the lower bound in log space
        if self.lower_bound > 0:
            bound = torch.full_like(log_f, math.log(self.lower_bound))
            log_f = torch.logaddexp(bound, math.log1p(-self.lower_bound) + log_f)
        k = -torch.expm1(log_f)  # 1 - f, accurate when f is near 1
        log_alpha, sign = transition(log_f, self.negative_eigenvalues)
        return torch.sigmoid(g), k, F.silu(i), log_alpha, sign

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(o.flatten(-2).to(x.dtype)))

    def _piece_width(self) -> int:
        return self.in_proj.out_features  # measured: pieces pay on a CPU (Mixer._piece_len)

    def _forward(self, x: torch.Tensor, state: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        proj = self.in_proj(x)  # in autocast's precision
        with full_precision(x):
            q, k, v, log_alpha, sign = self._inputs(proj, state.dtype)
            o, state = run_gla(mode, self.chunk_size, q, k, v, log_alpha, state, sign=sign)
        return self._output(x, o), state

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        proj = self.in_proj(x_t)
        with full_precision(x_t):
            q, k, v, log_alpha, sign = self._inputs(proj, state.dtype)
            o, state = gla_step(q, k, v, log_alpha, state, sign=sign)
        return self._output(x_t, o), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"lower_bound={self.lower_bound}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
