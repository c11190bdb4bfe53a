"""Passkey retrieval: a short key hidden at depth d of a long filler context (state capacity).

Mohtashami & Jaggi 2023 hid a number in repeated filler text; Chen et al. 2024 (Stuffed Mamba) use
the test to show that a fixed-size state stops retrieving once the context outgrows what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from seqmix.data.synthetic.base import IGNORE, EvalSetting, SyntheticTask, TaskBatch, TaskConfig
from seqmix.data.synthetic.sampling import randint, uniform

__all__ = ["PasskeyConfig", "Passkey", "KEY_MARK", "QUERY_MARK", "FIRST_FILLER"]

DIGITS = 10  # ids 0-9 are the key's digits
KEY_MARK, QUERY_MARK, FIRST_FILLER = 10, 11, 12
FILLERS = ("random", "repeat")


@dataclass
class PasskeyConfig(TaskConfig):
    """Filler, a marked key of a few digits at depth d, and a query that asks for the key."""

    _task: ClassVar[str] = "passkey"
    length: int = 128  # total tokens T (filler, the key block, the query block)
    n_digits: int = 4  # digits of the key, each uniform in 0-9
    vocab_size: int = 32  # 0-9 digits, 10 key marker, 11 query marker, 12..V-1 filler
    depth: Optional[float] = None  # fraction of the filler before the key (0 = first, 1 = just before the query); None = uniform per sequence
    filler: str = "random"  # "random": iid filler ids; "repeat": the filler ids in a fixed cycle, like the repeated sentence of the original test
    eval_lengths: tuple = (64, 128, 256, 512, 1024)  # held-out context lengths
    eval_depths: tuple = (0.0, 0.5, 1.0)  # held-out depths, each tested at every length

    def __post_init__(self) -> None:
        self._int("n_digits")
        self._int("length", 1)
        self._int("vocab_size", FIRST_FILLER + 1, hint="10 digits, two markers and at least one filler id")
        self._float("depth", 0.0, 1.0, optional=True)
        self._choice("filler", FILLERS)
        self._ints("eval_lengths", nonempty=True)
        self._floats("eval_depths", 0.0, 1.0)
        need = 2 * self.n_digits + 1
        for length in (self.length, *self.eval_lengths):
            if length < need:
                self._fail(f"length={length} cannot hold n_digits={self.n_digits}: the key block (marker + digits) and "
                           f"the query block (marker + n_digits - 1 fed-back digits) need length >= {need}")


class Passkey(SyntheticTask):
    """``filler.. <key> d1..dk filler.. <query> d1..d(k-1)``; digit ``i`` is scored where it is due.

    With ``F = T - 2k - 1`` filler tokens, the key block starts after ``round(depth * F)`` of them.
    After the query marker the key is produced with teacher forcing: the target at the query marker
    is d1 and the target at fed-back digit ``i`` is d(i+1), as a language model would be asked.
    """

    name = "passkey"
    source = "Mohtashami & Jaggi 2023; Chen et al. 2024, Stuffed Mamba (arXiv:2410.07145)"
    summary = "retrieve the key digits hidden at depth d of a context of length L"
    config_class = PasskeyConfig
    fixed_fields = ("vocab_size",)

    @property
    def n_answers(self) -> int:
        return DIGITS

    def seq_len(self, config: Optional[PasskeyConfig] = None) -> int:
        return (config or self.config).length

    def eval_settings(self) -> list[EvalSetting]:
        return [EvalSetting(f"L={n},depth={d:.2f}", {"length": n, "depth": d}, float(n))
                for n in self.config.eval_lengths for d in self.config.eval_depths]

    def _draw(self, cfg: PasskeyConfig, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        B, T, k, V = batch_size, cfg.length, cfg.n_digits, cfg.vocab_size
        n_filler = T - 2 * k - 1
        depth = uniform((B,), gen) if cfg.depth is None else torch.full((B,), cfg.depth)  # [B]
        start = torch.round(depth * n_filler).long()  # [B] filler tokens before the key block
        # 1. Filler at every position; "repeat" counts filler tokens so the cycle runs on across the key.
        pos = torch.arange(T)  # [T]
        if cfg.filler == "random":
            inputs = randint(FIRST_FILLER, V, (B, T), gen)  # [B, T]
        else:
            filler_index = torch.where(pos < start[:, None], pos, pos - (k + 1)).clamp(min=0)  # [B, T]
            inputs = FIRST_FILLER + filler_index % (V - FIRST_FILLER)
        # 2. The key block: marker then digits, at filler offset `start`.
        digits = randint(0, DIGITS, (B, k), gen)  # [B, k]
        block = torch.cat([torch.full((B, 1), KEY_MARK), digits], dim=1)  # [B, k + 1]
        inputs.scatter_(1, start[:, None] + torch.arange(k + 1), block)
        # 3. The query block at the end: marker, then the first k - 1 digits fed back.
        q = n_filler + k + 1
        inputs[:, q] = QUERY_MARK
        inputs[:, q + 1:] = digits[:, :-1]
        targets = torch.full((B, T), IGNORE, dtype=torch.long)  # [B, T]
        targets[:, q:] = digits
        return TaskBatch(inputs, targets, targets != IGNORE,
                         {"seq_len": T, "length": T, "depth": depth, "key_position": start})
