"""Ranking metrics of one held-out item per user: HR@k, NDCG@k, MRR, from 0-based ranks.

With a single relevant item ranked ``r`` (0 = first), the metrics of that user are

    HR@k   = 1 if r < k else 0
    NDCG@k = 1 / log2(r + 2) if r < k else 0        (the ideal DCG of one relevant item is 1)
    MRR    = 1 / (r + 1)                             (no cutoff)

and a split reports their means over users. Ties are broken pessimistically: a candidate scored equal
to the target counts as ranked above it, so a model that gives every item the same score gets the
worst rank, never a lucky one (optimistic or random tie-breaking would reward constant scores).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

__all__ = ["pessimistic_rank", "full_rank", "rank_sums", "KS"]

KS = (1, 5, 10)  # the cutoffs reported (10 is the literature's; 1 and 5 come free)


def pessimistic_rank(target: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``target: [U]`` among ``others: [U, C]`` (the other candidates' scores): the
    number of others scored at least as high (all of them when the target's score is NaN, so a broken
    model never looks good). ``-inf`` marks an excluded candidate."""
    rank = (others >= target.unsqueeze(-1)).sum(-1)
    return torch.where(torch.isnan(target), torch.full_like(rank, others.shape[-1]), rank)


def full_rank(scores: torch.Tensor, targets: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """0-based rank of column ``targets[u]`` of ``scores: [U, N]`` among all other columns, pessimistic.

    ``exclude: [U, H]`` lists columns that take no part (e.g. the user's history; -1 pads the rows);
    the target's own column is never excluded, even when the target also occurs in the history.
    Steps (no copy of the [U, N] scores): 1. count every column scored at least as high as the target,
    minus the target itself; 2. subtract the excluded columns among them, each counted once.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets]  # [U]
    # 1. every column at least as high, the target's own column taken out
    rank = (scores >= target_scores.unsqueeze(-1)).sum(-1) - 1  # [U]
    worst = torch.isnan(target_scores)  # a NaN score ranks last, not first
    if exclude is None or exclude.numel() == 0:
        return torch.where(worst, torch.full_like(rank, scores.shape[-1] - 1), rank)
    # 2. excluded columns: real (>= 0), not the target, first occurrence of a repeated id
    ex, _ = exclude.sort(dim=-1)  # [U, H]
    repeat = torch.zeros_like(ex, dtype=torch.bool)
    repeat[:, 1:] = ex[:, 1:] == ex[:, :-1]
    valid = (ex >= 0) & (ex != targets.unsqueeze(-1)) & ~repeat
    above = scores.gather(1, ex.clamp(min=0)) >= target_scores.unsqueeze(-1)  # [U, H]
    rank = rank - (above & valid).sum(-1)
    return torch.where(worst, scores.shape[-1] - 1 - valid.sum(-1), rank)


def rank_sums(ranks: torch.Tensor, ks: Iterable[int] = KS, prefix: str = "") -> dict[str, float]:
    """Sums over users of HR@k, NDCG@k and MRR for ``ranks: [U]`` (0-based); divide by the user count."""
    r = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"{prefix}hr@{k}"] = float(hit.sum())
        out[f"{prefix}ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(r + 2), torch.zeros_like(r)).sum())
    out[f"{prefix}mrr"] = float((1.0 / (r + 1)).sum())
    return out

