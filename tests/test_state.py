"""State helpers work on tensors and (named) tuples of them."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from seqmix.state import detach_state, map_state, state_batch_size, state_numel, state_tensors


class Pair(NamedTuple):
    h: torch.Tensor
    c: torch.Tensor


def test_map_keeps_structure_and_names():
    s = (Pair(torch.ones(2, 3), torch.zeros(2, 4)), torch.ones(2, 5))
    doubled = map_state(lambda t: t * 2, s)
    assert isinstance(doubled[0], Pair) and doubled[0].h.sum() == 12
    assert state_numel(s) == 24
    assert [t.shape[1] for t in state_tensors(s)] == [3, 4, 5]
    assert state_batch_size(s) == 2


def test_detach_cuts_the_graph():
    x = torch.ones(2, 3, requires_grad=True)
    s = detach_state(Pair(x * 2, x * 3))
    assert not s.h.requires_grad and not s.c.requires_grad


def test_bad_state_is_named():
    with pytest.raises(TypeError, match="dict"):
        state_numel({"h": torch.ones(1)})
    with pytest.raises(ValueError, match="batch dimension"):
        state_batch_size((torch.ones(2, 1), torch.ones(3, 1)))
