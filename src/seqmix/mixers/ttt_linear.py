"""TTT-Linear: a TTT layer whose hidden state is a linear model (Sun et al. 2024, "Learning to (Learn
at Test Time): RNNs with Expressive Hidden States", arXiv:2407.04620), as a token mixer.

Layer, as in the authors' PyTorch release (``ttt-lm-pytorch``, ``TTTLinear`` with ``use_gate=False``,
``share_qk=False``, ``pre_conv=False``: the Transformer-backbone configuration)::

    q, k, v = W_Q x, W_K x, W_V x                 split into heads of F = head_dim channels
    q, k    = RoPE(q, k; position in the mini-batch)     (positions t mod b, as in the release)
    lr      = base_lr * sigmoid(theta_h . x + c_h) / F   learnable per-token inner learning rate (Sec. 2.7)
    eta_i   = max(1 / (i + 1) + delta_i, 0)              per-position factor, delta learnable (init 0)
    z       = mini-batch TTT of f(x; W, b) = x + LN(x W + b)   (seqmix.ops.ttt)
    y       = W_O LayerNorm(z)                           post-norm over d_model, eps 1e-6

Initialisation as in the release: the inner model's initial ``W ~ N(0, 0.02^2)``, ``b = 0``, its
LayerNorm at identity; ``theta ~ N(0, 0.02^2)``, ``c = 0``; ``W_Q, W_K, W_V, W_O ~ N(0, 0.02^2)`` (the
release's model-level init). Default head dimension 64 and mini-batch size 16 (the paper's).

The rotary convention is seqmix's half-split pairs (the release permutes features to match its JAX
code: the same family of functions). The learned initial weights ``W, b`` are parameters; the state
holds the difference from them, so the zero state is "nothing learned yet" (see ``seqmix.ops.ttt``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import options
from seqmix.mixers.base import Mixer, full_precision
from seqmix.modules.rotary import rotary_inv_freq, rotate_pairs
from seqmix.ops.ttt import TTTParams, TTTState, ttt_linear_chunk, ttt_linear_recurrent, ttt_linear_step

__all__ = ["TTTLinear"]


class TTTLinear(Mixer):
    """TTT-Linear mixer; modes ``"chunk"`` (mini-batch dual form) and ``"recurrent"`` (the token loop).

    Args:
        d_model: model width.
        n_heads: heads; None: heads of about 64 channels.
        mini_batch_size: TTT mini-batch size b (paper: 16).
        base_lr: base inner learning rate (paper: 1.0 for TTT-Linear).
        rotary: rotate q and k by their position inside the mini-batch.
        rotary_base: base of the rotary frequencies.
        eps: epsilon of the inner LayerNorm.
        norm_eps: epsilon of the post-norm.

    State: ``seqmix.ops.ttt.TTTState`` (the inner model's offset from its learned initial weights, the
    running gradient sums of the current mini-batch and the position in it), constant in length.
    """

    modes = ("chunk", "recurrent")

    def __init__(
        self,
        d_model: int,
        n_heads: Optional[int] = None,
        mini_batch_size: int = 16,
        base_lr: float = 1.0,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        eps: float = 1e-6,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(d_model)
        self.rotary = options.boolean("rotary", rotary)
        self.n_heads, self.head_dim = options.heads(d_model, n_heads, rotary=self.rotary, default_head_dim=64)
        self.mini_batch_size = options.positive_int("mini_batch_size", mini_batch_size)
        self.base_lr = options.number("base_lr", base_lr, minimum=0, strict=True)
        self.rotary_base = options.number("rotary_base", rotary_base, minimum=1, strict=True)
        self.eps = options.number("eps", eps, minimum=0, strict=True)
        norm_eps = options.number("norm_eps", norm_eps, minimum=0, strict=True)
        H, Fd, b = self.n_heads, self.head_dim, self.mini_batch_size

        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.lr_weight = nn.Parameter(torch.empty(H, d_model))  # [H, D]: theta
        self.lr_bias = nn.Parameter(torch.zeros(H))  # [H]
        self.eta_offset = nn.Parameter(torch.zeros(b))  # [b]: learnable offset of 1 / (i + 1)
        self.W_init = nn.Parameter(torch.empty(H, Fd, Fd))  # [H, F, F]
        self.b_init = nn.Parameter(torch.zeros(H, Fd))  # [H, F]
        self.ln_weight = nn.Parameter(torch.ones(H, Fd))  # [H, F]
        self.ln_bias = nn.Parameter(torch.zeros(H, Fd))  # [H, F]
        self.post_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w in (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.o_proj.weight):
            nn.init.normal_(w, std=0.02)
        nn.init.normal_(self.lr_weight, std=0.02)
        nn.init.normal_(self.W_init, std=0.02)
        for p in (self.lr_bias, self.eta_offset, self.b_init, self.ln_bias):
            p.zero_()
        self.ln_weight.fill_(1.0)
        self.post_norm.reset_parameters()

    # ------------------------------------------------------------------ shared pieces
    def _params(self, dtype: torch.dtype) -> TTTParams:
        idx = torch.arange(1, self.mini_batch_size + 1, device=self.eta_offset.device, dtype=dtype)
        eta = torch.clamp(1.0 / idx + self.eta_offset.to(dtype), min=0.0)  # [b]
        cast = (p.to(dtype) for p in (self.W_init, self.b_init, self.ln_weight, self.ln_bias))
        return TTTParams(*cast, eta)

    def _inputs(self, x: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        """q, k, v ``[B, H, ..., F]`` and lr ``[B, H, ...]`` for ``x: [B, ..., D]``; ``positions``
        (in the mini-batch, shaped like ``x[..., 0]``) rotate q and k."""
        heads = (self.n_heads, self.head_dim)
        q, k, v = (p(x).to(dtype).unflatten(-1, heads).movedim(-2, 1) for p in (self.q_proj, self.k_proj, self.v_proj))
        lr_logit = torch.einsum("...d,hd->...h", x, self.lr_weight.to(x.dtype)).to(dtype) + self.lr_bias.to(dtype)
        lr = (self.base_lr / self.head_dim) * torch.sigmoid(lr_logit).movedim(-1, 1)  # [B, H, ...]
        if self.rotary:
            theta = rotary_inv_freq(self.head_dim, self.rotary_base, device=x.device, dtype=dtype)
            angles = (positions.to(dtype).unsqueeze(-1) * theta).unsqueeze(1)  # [B, 1, ..., F/2]
            q, k = rotate_pairs(q, angles), rotate_pairs(k, angles)
        return q, k, v, lr

    def _post_norm(self, z: torch.Tensor) -> torch.Tensor:
        """The post-norm in ``z``'s (the state's) precision."""
        w, b = self.post_norm.weight.to(z.dtype), self.post_norm.bias.to(z.dtype)
        return F.layer_norm(z, (self.d_model,), w, b, self.post_norm.eps)

    # ------------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor, state: TTTState, mode: str) -> tuple[torch.Tensor, TTTState]:
        B, T, _ = x.shape
        dtype = state.dW.dtype
        positions = (state.pos.long()[:, None] + torch.arange(T, device=x.device)) % self.mini_batch_size  # [B, T]
        q, k, v, lr = self._inputs(x, positions, dtype)
        with full_precision(x):
            form = ttt_linear_chunk if mode == "chunk" else ttt_linear_recurrent
            z, state = form(q, k, v, lr, self._params(dtype), state, self.eps)  # z: [B, H, T, F]
            y = self._post_norm(z.transpose(1, 2).reshape(B, T, self.d_model))
        return self.o_proj(y.to(x.dtype)), state

    def _step(self, x_t: torch.Tensor, state: TTTState) -> tuple[torch.Tensor, TTTState]:
        B = x_t.shape[0]
        dtype = state.dW.dtype
        q, k, v, lr = self._inputs(x_t, state.pos.long(), dtype)
        with full_precision(x_t):
            z, state = ttt_linear_step(q, k, v, lr, self._params(dtype), state, self.eps)  # z: [B, H, F]
            y = self._post_norm(z.reshape(B, self.d_model))
        return self.o_proj(y.to(x_t.dtype)), state

    def init_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> TTTState:
        kw = self._state_factory(device, dtype)
        H, Fd = self.n_heads, self.head_dim
        return TTTState(
            dW=torch.zeros(batch_size, H, Fd, Fd, **kw),
            db=torch.zeros(batch_size, H, Fd, **kw),
            G=torch.zeros(batch_size, H, Fd, Fd, **kw),
            h=torch.zeros(batch_size, H, Fd, **kw),
            pos=torch.zeros(batch_size, **kw),
        )

    def state_size(self, context_len: int) -> int:
        H, Fd = self.n_heads, self.head_dim
        return 2 * H * Fd * Fd + 2 * H * Fd + 1

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"mini_batch_size={self.mini_batch_size}, rotary={self.rotary}"
        )
