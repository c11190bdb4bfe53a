"""The residual block every seqmix model is built from (pre-norm, as in GPT-2 and LLaMA).

    h = x + Dropout(Mixer(RMSNorm(x)))
    y = h + Dropout(SwiGLU(RMSNorm(h)))        (the second line is skipped with mlp="none")

The token mixer is any registered mixer (or any module that follows the mixer contract, such as
``Bidirectional``); the block forwards its state, so ``forward`` with a carried state and ``step``
compute exactly what the mixer's forms compute, and a model made of blocks inherits the contract.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from seqmix.errors import UserError
from seqmix.mixers.registry import build_mixer
from seqmix.modules.mlp import SwiGLU, swiglu_hidden
from seqmix.modules.norm import RMSNorm
from seqmix.state import State

__all__ = ["Block"]


class Block(nn.Module):
    """Pre-norm residual block: token mixer, then (optionally) a SwiGLU channel mixer.

    Args:
        d_model: residual width.
        mixer: a registered mixer name, or a ready module following the mixer contract.
        mixer_options: options for ``build_mixer`` when ``mixer`` is a name.
        mlp: "swiglu" or "none".
        mlp_ratio: SwiGLU hidden width is ``round(mlp_ratio * 2/3 * d_model)``.
        dropout: dropout probability on both residual branches.
        norm_eps: RMSNorm epsilon.
    """

    def __init__(
        self,
        d_model: int,
        mixer: Union[str, nn.Module],
        *,
        mixer_options: Optional[dict[str, Any]] = None,
        mlp: str = "swiglu",
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if mlp not in ("swiglu", "none"):
            raise UserError(f"mlp must be 'swiglu' or 'none', got {mlp!r}")
        self.mixer_norm = RMSNorm(d_model, norm_eps)
        self.mixer: nn.Module = build_mixer(mixer, d_model, **(mixer_options or {})) if isinstance(mixer, str) else mixer
        if getattr(self.mixer, "d_model", d_model) != d_model:
            raise ValueError(f"the mixer has d_model={self.mixer.d_model}, the block d_model={d_model}")
        self.mlp_norm: Optional[RMSNorm] = RMSNorm(d_model, norm_eps) if mlp == "swiglu" else None
        self.mlp: Optional[SwiGLU] = SwiGLU(d_model, swiglu_hidden(d_model, mlp_ratio)) if mlp == "swiglu" else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, **mixer_kwargs: Any) -> tuple[torch.Tensor, State]:
        """``x: [B, T, D]`` -> ``(y: [B, T, D], mixer state)``; ``mixer_kwargs`` go to the mixer (e.g. ``mode``)."""
        y, state = self.mixer(self.mixer_norm(x), state, **mixer_kwargs)
        return self._mlp(x + self.dropout(y)), state

    def step(self, x_t: torch.Tensor, state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        """One token ``x_t: [B, D]`` -> ``(y_t: [B, D], new state)``."""
        y_t, state = self.mixer.step(self.mixer_norm(x_t), state)
        return self._mlp(x_t + self.dropout(y_t)), state

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.mlp is None or self.mlp_norm is None:
            return h
        return h + self.dropout(self.mlp(self.mlp_norm(h)))

    def init_state(self, batch_size: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> State:
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def state_size(self, context_len: int) -> int:
        return self.mixer.state_size(context_len)
