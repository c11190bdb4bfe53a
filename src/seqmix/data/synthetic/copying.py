"""Selective copying (Gu & Dao 2023, Mamba; the S4 repository's copying generator; MAD, Poli et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from seqmix.data.synthetic.base import IGNORE, EvalSetting, SyntheticTask, TaskBatch, TaskConfig
from seqmix.data.synthetic.sampling import distinct, randint

__all__ = ["SelectiveCopyConfig", "SelectiveCopy"]


@dataclass
class SelectiveCopyConfig(TaskConfig):
    """Data tokens scattered among noise, then one marker per token to copy."""

    _task: ClassVar[str] = "selective_copy"
    length: int = 64  # total tokens T: a region of T - n_tokens positions, then n_tokens markers (Mamba: 4096)
    n_tokens: int = 8  # data tokens to copy, in order (Mamba: 16)
    vocab_size: int = 16  # id 0 = noise, 1..V-2 = data, V-1 = marker (Mamba: 16)
    eval_lengths: tuple = ()  # held-out lengths besides the training length

    def __post_init__(self) -> None:
        self._int("n_tokens")
        self._int("length", 2)
        self._int("vocab_size", 3, hint="noise, marker and at least one data token")
        self._ints("eval_lengths", 2)
        for length in (self.length, *self.eval_lengths):
            if length < 2 * self.n_tokens:
                self._fail(f"length={length} cannot hold n_tokens={self.n_tokens}: the region before the markers has "
                           f"length - n_tokens positions for n_tokens data tokens, so length >= {2 * self.n_tokens}")


class SelectiveCopy(SyntheticTask):
    """Copy the data tokens, in order, at the markers that end the sequence.

    Layout: the first ``R = T - n`` positions are noise (id 0) except ``n`` data tokens (uniform in
    1..V-2, repeats allowed) at sorted random positions; positions R..T-1 hold the marker (V-1). The
    target at marker ``i`` is the ``i``-th data token; nothing else is scored. A time-invariant
    mixer cannot know where the data lies, which is the point of the task.
    """

    name = "selective_copy"
    source = "Gu & Dao 2023 (Mamba, Table 1); Poli et al. 2024 (MAD)"
    summary = "copy the data tokens scattered among noise, in order, after the markers"
    config_class = SelectiveCopyConfig
    fixed_fields = ("vocab_size",)

    @property
    def n_answers(self) -> int:
        return self.config.vocab_size - 2

    def seq_len(self, config: Optional[SelectiveCopyConfig] = None) -> int:
        return (config or self.config).length

    def eval_settings(self) -> list[EvalSetting]:
        lengths = sorted({self.config.length, *self.config.eval_lengths})
        return [EvalSetting(f"L={n}", {"length": n}, float(n)) for n in lengths]

    def _draw(self, cfg: SelectiveCopyConfig, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        B, T, n, V = batch_size, cfg.length, cfg.n_tokens, cfg.vocab_size
        region = T - n
        data = randint(1, V - 1, (B, n), gen)  # [B, n]
        positions = distinct(B, n, region, gen).sort(dim=1).values  # [B, n] where the data sits, in order
        inputs = torch.zeros(B, T, dtype=torch.long)  # [B, T] noise
        inputs.scatter_(1, positions, data)
        inputs[:, region:] = V - 1
        targets = torch.full((B, T), IGNORE, dtype=torch.long)  # [B, T]
        targets[:, region:] = data
        return TaskBatch(inputs, targets, targets != IGNORE,
                         {"seq_len": T, "length": T, "n_tokens": n, "data_positions": positions})
