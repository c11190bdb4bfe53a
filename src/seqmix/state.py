"""Helpers for mixer states: a tensor or a (named) tuple/list of states, batch dimension first.

States are plain data on purpose (see DESIGN.md): these helpers let generic code — the equivalence
harness, a generator, a trainer doing truncated BPTT — detach, count, move and slice any mixer's state
without knowing its structure.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch

State = Union[torch.Tensor, tuple, list, None]

__all__ = ["State", "map_state", "state_tensors", "state_numel", "detach_state", "state_batch_size"]


def map_state(fn: Callable[[torch.Tensor], Any], state: State) -> State:
    """Apply ``fn`` to every tensor of ``state``, keeping its structure (named tuples included)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(map_state(fn, s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s) for s in state)
    raise TypeError(f"a mixer state holds tensors and (named) tuples/lists of them, got {type(state).__name__}")


def state_tensors(state: State) -> list[torch.Tensor]:
    """All tensors of ``state`` in a fixed depth-first order."""
    out: list[torch.Tensor] = []
    map_state(out.append, state)
    return out


def state_numel(state: State) -> int:
    """Total number of elements held by ``state`` (all sequences of the batch together)."""
    return sum(t.numel() for t in state_tensors(state))


def detach_state(state: State) -> State:
    """Cut the autograd graph behind ``state`` (truncated backprop through time)."""
    return map_state(torch.Tensor.detach, state)


def state_batch_size(state: State) -> int:
    """The batch size shared by every tensor of ``state``; raises if they disagree."""
    sizes = {t.shape[0] for t in state_tensors(state)}
    if len(sizes) != 1:
        raise ValueError(f"state tensors disagree on the batch dimension: sizes {sorted(sizes)}")
    return sizes.pop()
