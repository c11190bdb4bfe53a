"""Rotary embeddings make query-key products depend only on the relative position."""

from __future__ import annotations

import pytest
import torch

from seqmix.modules.rotary import apply_rotary, rotary_inv_freq, rotate_pairs


def test_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    inv_freq = rotary_inv_freq(8, dtype=torch.float64)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(n: float, m: float) -> torch.Tensor:
        qn = apply_rotary(q, torch.tensor([n]), inv_freq)
        km = apply_rotary(k, torch.tensor([m]), inv_freq)
        return (qn * km).sum()

    assert torch.allclose(score(5, 2), score(103, 100), atol=1e-12)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-6)


def test_rotation_preserves_norm_and_inverts():
    x = torch.randn(3, 10, dtype=torch.float64)
    angles = torch.randn(3, 5, dtype=torch.float64)
    y = rotate_pairs(x, angles)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    assert torch.allclose(rotate_pairs(y, -angles), x, atol=1e-12)


def test_odd_head_dim_is_rejected():
    with pytest.raises(ValueError, match="even head dimension"):
        rotary_inv_freq(7)
