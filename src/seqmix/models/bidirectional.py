"""Bidirectional use of any causal mixer: a second, independent mixer reads the sequence backwards.

    y = f(x) + R(g(R(x)))

where ``f`` and ``g`` are two mixers of the same kind with separate weights and ``R`` reverses each
sequence in time -- within its own length when ``lengths`` is given, so right padding never reaches
the real tokens of the backward pass. This is the classic bidirectional RNN (Schuster & Paliwal 1997,
"Bidirectional Recurrent Neural Networks", IEEE Trans. Signal Processing) with the two directions
summed rather than concatenated, so the width stays ``d_model`` and the module drops into a ``Block``
in place of a causal mixer (Vision Mamba, Zhu et al. 2024, arXiv:2401.09417, also sums its two
directions). Every output position sees the whole sequence, so there is no ``step`` and no carried
state.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from seqmix.mixers.registry import build_mixer

__all__ = ["Bidirectional", "reverse_within_lengths"]


def reverse_within_lengths(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Reverse ``x: [B, T, ...]`` in time; with ``lengths: [B]`` only the first ``lengths[b]`` steps of
    sequence ``b`` are reversed and the padding stays in place. The map is its own inverse."""
    if lengths is None:
        return x.flip(1)
    T = x.shape[1]
    t = torch.arange(T, device=x.device)  # [T]
    lengths = lengths.to(x.device).view(-1, 1)  # [B, 1]
    index = torch.where(t < lengths, lengths - 1 - t, t)  # [B, T]
    index = index.view(*index.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, index)


class Bidirectional(nn.Module):
    """Sum of a forward mixer and a backward mixer run on the time-reversed sequence.

    Args:
        forward_mixer: mixer applied left to right.
        backward_mixer: mixer of the same width applied right to left (separate weights).
    Use ``Bidirectional.build(name, d_model, **options)`` to make both from the registry.
    """

    causal = False

    def __init__(self, forward_mixer: nn.Module, backward_mixer: nn.Module) -> None:
        super().__init__()
        if forward_mixer.d_model != backward_mixer.d_model:
            raise ValueError(
                f"both directions need the same d_model, got {forward_mixer.d_model} and {backward_mixer.d_model}"
            )
        self.d_model = forward_mixer.d_model
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer

    @classmethod
    def build(cls, name: str, d_model: int, **options: Any) -> "Bidirectional":
        """Two independently initialised registry mixers ``name``."""
        return cls(build_mixer(name, d_model, **options), build_mixer(name, d_model, **options))

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.forward_mixer.modes)

    def forward(
        self,
        x: torch.Tensor,
        state: None = None,
        *,
        mode: Optional[str] = None,
        lengths: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, None]:
        """``x: [B, T, D]`` -> ``(y: [B, T, D], None)``; ``lengths: [B]`` marks right padding."""
        if state is not None:
            raise ValueError("a Bidirectional mixer sees the whole sequence at once and takes no state; pass state=None")
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.shape != (x.shape[0],) or bool(((lengths < 1) | (lengths > x.shape[1])).any()):
                raise ValueError(
                    f"lengths must hold one length in [1, {x.shape[1]}] per sequence (shape ({x.shape[0]},)), "
                    f"got {lengths.tolist()}"
                )
        y_fwd, _ = self.forward_mixer(x, mode=mode)
        y_bwd, _ = self.backward_mixer(reverse_within_lengths(x, lengths), mode=mode)
        return y_fwd + reverse_within_lengths(y_bwd, lengths), None

    def step(self, x_t: torch.Tensor, state: Any = None) -> Any:
        raise RuntimeError("a Bidirectional mixer reads the sequence backwards too, so it has no step form")

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> None:
        return None

    def state_size(self, context_len: int) -> int:
        return 0
