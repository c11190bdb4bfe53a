"""Vectorised draws shared by the task generators (every one takes an explicit ``torch.Generator``)."""

from __future__ import annotations

import torch

__all__ = ["randint", "uniform", "distinct", "weighted_distinct", "shuffle_rows"]


def randint(low: int, high: int, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """Uniform int64 in [low, high)."""
    return torch.randint(low, high, shape, generator=gen)


def uniform(shape: tuple, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen)


def distinct(rows: int, k: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` distinct values of ``range(n)`` per row, in random order: [rows, k] int64."""
    return torch.rand(rows, n, generator=gen).argsort(dim=1)[:, :k]


def weighted_distinct(rows: int, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices per row drawn without replacement with probabilities ∝ ``weights`` [n].

    Gumbel-top-k: the k largest of log w_i + Gumbel noise are, in descending order, a draw of
    sequential sampling without replacement (the Plackett-Luce model), as ``numpy.random.choice(...,
    replace=False, p=...)`` samples, but for a whole batch at once. Returns [rows, k] in draw order.
    """
    u = torch.rand(rows, weights.numel(), generator=gen, dtype=torch.float64).clamp_(min=1e-300)
    scores = weights.double().log() - (-u.log()).log()  # [rows, n]
    return scores.topk(k, dim=1).indices


def shuffle_rows(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each row of ``x`` [rows, n] permuted independently."""
    order = torch.rand(x.shape, generator=gen).argsort(dim=1)
    return x.gather(1, order)
