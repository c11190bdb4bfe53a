"""Set disjointness (Arora et al. 2024, Just Read Twice): the one element two sets share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from seqmix.data.synthetic.base import IGNORE, EvalSetting, SyntheticTask, TaskBatch, TaskConfig
from seqmix.data.synthetic.sampling import distinct, randint, shuffle_rows, uniform

__all__ = ["ORDERS", "SetDisjointConfig", "SetDisjoint"]

ORDERS = ("short_first", "long_first", "mixed")


@dataclass
class SetDisjointConfig(TaskConfig):
    """A short and a long set of distinct elements that share exactly one element."""

    _task: ClassVar[str] = "set_disjoint"
    short_size: int = 4  # elements in the short set
    long_size: int = 16  # elements in the long set
    vocab_size: int = 64  # elements 0..V-3, V-2 = separator, V-1 = query marker
    order: str = "mixed"  # "short_first", "long_first" or "mixed" (each sequence picks one order with probability 1/2)

    def __post_init__(self) -> None:
        self._int("short_size")
        self._int("long_size")
        self._int("vocab_size", 3)
        self._choice("order", ORDERS)
        if self.short_size > self.long_size:
            self._fail(f"short_size={self.short_size} must be <= long_size={self.long_size}")
        need = self.short_size + self.long_size - 1
        if need > self.vocab_size - 2:
            self._fail(f"short_size={self.short_size} and long_size={self.long_size} need "
                       f"short_size + long_size - 1 = {need} distinct elements, but vocab_size={self.vocab_size} "
                       f"has vocab_size - 2 = {self.vocab_size - 2}; raise vocab_size to >= {need + 2}")


class SetDisjoint(SyntheticTask):
    """``A <sep> B <query>`` with ``|A ∩ B| = 1``; the shared element is scored at the query marker.

    The short and the long set are drawn together as ``short + long - 1`` distinct elements; the
    shared element is a uniform member of the short set and sits at a uniform position of the long
    set. A recurrent model that reads the short set first only has to hold that set (Just Read
    Twice's argument); train with ``order="mixed"``, and the held-out settings test each order.
    """

    name = "set_disjoint"
    source = "Arora et al. 2024, Just Read Twice (arXiv:2407.05483)"
    summary = "output the one element the two sets share"
    config_class = SetDisjointConfig
    fixed_fields = ("vocab_size",)

    @property
    def n_answers(self) -> int:
        return self.config.vocab_size - 2

    def seq_len(self, config: Optional[SetDisjointConfig] = None) -> int:
        cfg = config or self.config
        return cfg.short_size + cfg.long_size + 2

    def eval_settings(self) -> list[EvalSetting]:
        return [EvalSetting(order, {"order": order}, None) for order in ORDERS]

    def _draw(self, cfg: SetDisjointConfig, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        B, S, L, V = batch_size, cfg.short_size, cfg.long_size, cfg.vocab_size
        sep, query = V - 2, V - 1
        # 1. S + L - 1 distinct elements: the short set, then the long set's L - 1 own elements.
        elements = distinct(B, S + L - 1, V - 2, gen)  # [B, S + L - 1]
        short = elements[:, :S]  # [B, S]
        shared = short.gather(1, randint(0, S, (B, 1), gen))  # [B, 1]
        long = shuffle_rows(torch.cat([shared, elements[:, S:]], dim=1), gen)  # [B, L]
        # 2. Both orders, then pick one per sequence (the lengths agree, so the batch has one T).
        col = lambda token: torch.full((B, 1), token, dtype=torch.long)  # noqa: E731
        short_first_seq = torch.cat([short, col(sep), long, col(query)], dim=1)  # [B, T]
        long_first_seq = torch.cat([long, col(sep), short, col(query)], dim=1)  # [B, T]
        if cfg.order == "mixed":
            short_first = uniform((B,), gen) < 0.5  # [B]
        else:
            short_first = torch.full((B,), cfg.order == "short_first")
        inputs = torch.where(short_first[:, None], short_first_seq, long_first_seq)
        T = S + L + 2
        targets = torch.full((B, T), IGNORE, dtype=torch.long)  # [B, T]
        targets[:, -1] = shared[:, 0]
        return TaskBatch(inputs, targets, targets != IGNORE,
                         {"seq_len": T, "length": T, "order": cfg.order, "short_first": short_first})
