"""RWKV-6 ("Finch") time mixing as a token mixer.

Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence",
arXiv:2404.05892, Section 4 (Eq. 14-22). With ``x_{t-1}`` the previous token (token shift)::

    lerp_m(a, b)   = a + (b - a) * mu_m
    lora_m(z)      = lambda_m + tanh(z A_m) B_m
    ddlerp_m(a, b) = a + (b - a) * lora_m(lerp_x(a, b))            # data-dependent token shift
    d_t = lora_d(ddlerp_d(x_t, x_{t-1})),   w_t = exp(-exp(d_t))     # data-dependent decay
    r_t, k_t, v_t = ddlerp_{r,k,v}(x_t, x_{t-1}) W_{r,k,v}
    g_t = silu(ddlerp_g(x_t, x_{t-1}) W_g)
    wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(prod_{j=i+1}^{t-1} w_j) k_i^T v_i      # per head, [K, V]
    o_t = (GroupNorm_heads(r_t wkv_t) * g_t) W_o

``wkv`` is gated linear attention whose output reads the state before the current token plus a bonus
``u`` for it: ``seqmix.ops.gla`` with ``bonus=u`` (``S_t = diag(w_t) S_{t-1} + k_t^T v_t``,
``o_t = r_t S_{t-1} + (r_t * u * k_t).sum() v_t``). Parameter names and layout follow the authors'
``RWKV_Tmix_x060``, with the reference's ``[1, 1, d]`` vectors stored as ``[d]``: one LoRA
``time_maa_w1/w2`` yields the five shift mixes ``w, k, v, r, g``; rank 32, decay LoRA rank 64, head size
64, GroupNorm epsilon ``1e-5 * 8^2``.

Initialisation follows the authors' depth-dependent recipe; it needs the layer's position, given by
``layer_idx`` and ``n_layers`` (``r0 = layer_idx / (n_layers - 1)``, ``r1 = 1 - layer_idx / n_layers``):
mixes ``1 - (c / d)^r1`` (``v``: minus ``0.3 r0``; ``r``, ``g``: exponent ``r1 / 2``), decay biases
``-6 + 5 (c / (d-1))^(0.7 + 1.3 r0)``, bonus ``r0 (1 - c / (d-1)) + 0.1 ((c+1) mod 3 - 1)``,
``B`` matrices uniform in +-0.01, orthogonal ``W_{r,k,v,g}``. Deviations: the reference zero-initialises
the LoRA ``A`` matrices and ``W_o``, which leaves ``B``, and with ``W_o`` every other weight, without a
gradient at the first step; we draw ``A`` uniform in +-0.01 and ``W_o`` with PyTorch's default.

``negative_eigenvalues=True`` maps the decay to ``2 w - 1`` in (-1, 1] (Grazzi et al. 2024,
arXiv:2411.12537).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.mixers.gla import run_gla, transition
from seqmix.modules.token_shift import token_shift
from seqmix.ops.gla import gla_step

__all__ = ["RWKV6", "RWKV6State", "depth_ratios"]


class RWKV6State(NamedTuple):
    shift: torch.Tensor  # [B, d_model], the last input token (token shift)
    wkv: torch.Tensor  # [B, n_heads, K, K], the matrix-valued state


def depth_ratios(layer_idx: int, n_layers: int) -> tuple[float, float]:
    """RWKV's init ratios ``(layer_idx / (n_layers - 1), 1 - layer_idx / n_layers)`` after checking both."""
    layer_idx, n_layers = options.layer_position(layer_idx, n_layers)
    return layer_idx / max(n_layers - 1, 1), 1.0 - layer_idx / n_layers


class RWKV6(Mixer):
    """RWKV-6 (Finch) time mixing.

    Args:
        d_model: model width (also the attention width).
        n_heads: heads; head size ``d_model / n_heads``. None: heads of about 64 channels (the paper's).
        layer_idx, n_layers: this layer's position in the model, for the depth-dependent init.
        mix_rank: rank of the token-shift LoRA (paper: 32).
        decay_rank: rank of the decay LoRA (paper: 64).
        chunk_size: chunk length of the ``"chunk"`` form.
        norm_eps: GroupNorm epsilon (reference: ``1e-5 * head_size_divisor^2`` with divisor 8).
        negative_eigenvalues: decays ``2 w - 1`` in (-1, 1] instead of ``w`` in (0, 1).

    State: ``RWKV6State(shift [B, d_model], wkv [B, n_heads, K, K])``, constant in the context length.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        layer_idx: int = 0,
        n_layers: int = 1,
        mix_rank: int = 32,
        decay_rank: int = 64,
        chunk_size: int = 64,
        norm_eps: float = 64e-5,
        negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_model)
        self.n_heads, self.head_dim = options.heads(d_model, n_heads, default_head_dim=64)
        r0, r1 = depth_ratios(layer_idx, n_layers)
        self.mix_rank = options.positive_int("mix_rank", mix_rank, "rank of the token-shift LoRA")
        self.decay_rank = options.positive_int("decay_rank", decay_rank, "rank of the decay LoRA")
        self.chunk_size = options.positive_int("chunk_size", chunk_size)
        norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        self.negative_eigenvalues = options.boolean("negative_eigenvalues", negative_eigenvalues)
        d = d_model

        self.time_maa_x = nn.Parameter(torch.empty(d))
        self.time_maa_w = nn.Parameter(torch.empty(d))  # mu of the five shift mixes
        self.time_maa_k = nn.Parameter(torch.empty(d))
        self.time_maa_v = nn.Parameter(torch.empty(d))
        self.time_maa_r = nn.Parameter(torch.empty(d))
        self.time_maa_g = nn.Parameter(torch.empty(d))
        self.time_maa_w1 = nn.Parameter(torch.empty(d, 5 * self.mix_rank))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, self.mix_rank, d))
        self.time_decay = nn.Parameter(torch.empty(d))
        self.time_decay_w1 = nn.Parameter(torch.empty(d, self.decay_rank))
        self.time_decay_w2 = nn.Parameter(torch.empty(self.decay_rank, d))
        self.time_faaaa = nn.Parameter(torch.empty(self.n_heads, self.head_dim))  # the bonus u
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_x = nn.GroupNorm(self.n_heads, d, eps=norm_eps)
        self._init(r0, r1)

    @torch.no_grad()
    def _init(self, r0: float, r1: float) -> None:
        d = self.d_model
        ddd = torch.arange(d, dtype=torch.float64) / d
        self.time_maa_x.copy_(1 - ddd**r1)
        self.time_maa_w.copy_(1 - ddd**r1)
        self.time_maa_k.copy_(1 - ddd**r1)
        self.time_maa_v.copy_(1 - (ddd**r1 + 0.3 * r0))
        self.time_maa_r.copy_(1 - ddd ** (0.5 * r1))
        self.time_maa_g.copy_(1 - ddd ** (0.5 * r1))
        n = torch.arange(d, dtype=torch.float64) / max(d - 1, 1)
        self.time_decay.copy_(-6 + 5 * n ** (0.7 + 1.3 * r0))
        zigzag = ((torch.arange(d) + 1) % 3 - 1).to(torch.float64) * 0.1
        self.time_faaaa.copy_((r0 * (1 - n) + zigzag).view(self.n_heads, self.head_dim))
        for p in (self.time_maa_w1, self.time_maa_w2, self.time_decay_w1, self.time_decay_w2):
            nn.init.uniform_(p, -0.01, 0.01)
        for proj in (self.receptance, self.key, self.value, self.gate):
            nn.init.orthogonal_(proj.weight)
        self.output.reset_parameters()
        self.ln_x.reset_parameters()

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> RWKV6State:
        kw = self._state_factory(device, dtype)
        K = self.head_dim
        shift = torch.zeros(batch_size, self.d_model, **kw)
        return RWKV6State(shift, torch.zeros(batch_size, self.n_heads, K, K, **kw))

    def state_size(self, context_len: int) -> int:
        return self.d_model + self.n_heads * self.head_dim**2

    # ------------------------------------------------------------------ forms
    def _inputs(self, x: torch.Tensor, x_prev: torch.Tensor, dtype: torch.dtype):
        """r, k, v ``[..., H, K]`` and the decay logits ``d`` in the state's ``dtype``; the gate ``g: [..., D]``."""
        xx = x_prev - x
        xxx = x + xx * self.time_maa_x
        lora = torch.tanh(xxx @ self.time_maa_w1).unflatten(-1, (5, self.mix_rank))  # [..., 5, R]
        mu = torch.stack((self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g))
        mix = mu + torch.einsum("...nr,nrd->...nd", lora, self.time_maa_w2)  # [..., 5, D]
        xw, xk, xv, xr, xg = (x + xx * m for m in mix.unbind(-2))
        shape = (*x.shape[:-1], self.n_heads, self.head_dim)
        projections = zip((self.receptance, self.key, self.value), (xr, xk, xv))
        r, k, v = (proj(z).view(shape).to(dtype) for proj, z in projections)
        # the small LoRA term may be low precision; the bias it corrects is added in the state's dtype
        lora = torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        d = (self.time_decay.to(dtype) + lora.to(dtype)).view(shape)
        return r, k, v, d, F.silu(self.gate(xg))

    def _transition(self, d: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return transition(-torch.exp(d), self.negative_eigenvalues)  # log w = -exp(d)

    def _output(self, o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """GroupNorm over heads of ``o: [..., H, K]``, gate ``g``, output projection."""
        shape = g.shape
        o = self.ln_x(o.reshape(-1, self.d_model).to(g.dtype)).view(shape)
        return self.output(o * g)

    def _piece_width(self) -> int:
        return 2 * self.d_model  # pieces of 2048 tokens at B=4, d=256 measured best (Mixer._piece_len)

    def _forward(self, x: torch.Tensor, state: RWKV6State, mode: str) -> tuple[torch.Tensor, RWKV6State]:
        x_prev, shift = token_shift(x, state.shift)
        r, k, v, d, g = self._inputs(x, x_prev, state.wkv.dtype)
        bonus = self.time_faaaa.to(state.wkv.dtype)
        with full_precision(x):
            log_w, sign = self._transition(d)
            o, wkv = run_gla(mode, self.chunk_size, r, k, v, log_w, state.wkv, sign=sign, bonus=bonus)
        return self._output(o, g), RWKV6State(shift, wkv)

    def _step(self, x_t: torch.Tensor, state: RWKV6State) -> tuple[torch.Tensor, RWKV6State]:
        r, k, v, d, g = self._inputs(x_t, state.shift.to(x_t.dtype), state.wkv.dtype)
        bonus = self.time_faaaa.to(state.wkv.dtype)
        with full_precision(x_t):
            log_w, sign = self._transition(d)
            o, wkv = gla_step(r, k, v, log_w, state.wkv, sign=sign, bonus=bonus)
        return self._output(o, g), RWKV6State(x_t.to(state.shift.dtype, copy=True), wkv)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, mix_rank={self.mix_rank}, "
            f"decay_rank={self.decay_rank}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )

