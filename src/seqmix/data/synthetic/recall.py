"""Recall tasks: multi-query associative recall (Zoology) and induction heads (Olsson et al.; Mamba)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from seqmix.data.synthetic.base import IGNORE, EvalSetting, SyntheticTask, TaskBatch, TaskConfig
from seqmix.data.synthetic.sampling import distinct, randint, weighted_distinct

__all__ = ["MQARConfig", "MQAR", "InductionConfig", "Induction"]


@dataclass
class MQARConfig(TaskConfig):
    """Multi-query associative recall, laid out as Zoology's ``multiquery_ar`` generator."""

    _task: ClassVar[str] = "mqar"
    n_pairs: int = 8  # K key-value pairs at the start of the sequence; each key is queried once later
    length: int = 64  # total tokens T: 2K for the pairs, then the query region (keys at even offsets)
    vocab_size: int = 128  # keys from [0, V//2), values from [V//2, V); unqueried slots hold random ids other than this sequence's keys
    power_a: float = 0.01  # query gap g (in slot pairs) drawn with p(g) ∝ g^(a-1): Zoology's 0.01 crowds queries near the pairs; 1.0 = uniform
    eval_n_pairs: tuple = ()  # held-out settings with other K at the same length (the trained K is always one)

    def __post_init__(self) -> None:
        self._int("n_pairs")
        self._int("length", 4)
        self._int("vocab_size", 2)
        self._float("power_a", 1e-6, hint="1.0 places queries uniformly")
        self._ints("eval_n_pairs")
        for k in (self.n_pairs, *self.eval_n_pairs):
            self._check_fits(k, "" if k == self.n_pairs else "eval_n_pairs: ")

    def _check_fits(self, k: int, where: str) -> None:
        if 4 * k > self.length:
            self._fail(f"{where}n_pairs={k} needs length >= 4 * n_pairs = {4 * k} (K pairs and K queries, two tokens "
                       f"each), got length={self.length}")
        if k > self.vocab_size // 2:
            self._fail(f"{where}n_pairs={k} needs vocab_size >= 2 * n_pairs = {2 * k} (distinct keys from the lower half "
                       f"of the ids, distinct values from the upper half), got vocab_size={self.vocab_size}")


class MQAR(SyntheticTask):
    """K key-value pairs, then K queries of the keys among noise; the value is scored at each query.

    Layout (Zoology, Arora et al. 2023): ``k1 v1 k2 v2 ... kK vK`` then a query region whose slot
    pairs (even offset, odd offset) are noise except K slots that hold one key each, the slot ``g``
    drawn without replacement with probability ∝ g^(a-1), g = 1..(T - 2K)/2 (a = ``power_a``). The
    target at a queried key's position is its value; every other position is unscored. One deviation
    from Zoology: noise never repeats one of the sequence's keys (see ``_draw``).
    """

    name = "mqar"
    source = "Arora et al. 2023, Zoology (arXiv:2312.04927)"
    summary = "recall the value paired with each queried key"
    config_class = MQARConfig
    fixed_fields = ("vocab_size",)

    @property
    def n_answers(self) -> int:
        return self.config.vocab_size - self.config.vocab_size // 2

    def seq_len(self, config: Optional[MQARConfig] = None) -> int:
        return (config or self.config).length

    def eval_settings(self) -> list[EvalSetting]:
        ks = sorted({self.config.n_pairs, *self.config.eval_n_pairs})
        return [EvalSetting(f"K={k}", {"n_pairs": k}, float(k)) for k in ks]

    def _draw(self, cfg: MQARConfig, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        B, K, T, V = batch_size, cfg.n_pairs, cfg.length, cfg.vocab_size
        half = V // 2
        # 1. K distinct keys and K distinct values per sequence, keys and values from disjoint ranges.
        keys = distinct(B, K, half, gen)  # [B, K]
        values = half + distinct(B, K, V - half, gen)  # [B, K]
        # 2. Noise everywhere, then the pairs at the front. The noise avoids this sequence's keys, so a
        #    key's only occurrences are its pair and its query: at Zoology's vocabulary of 8192 a collision
        #    is rare, at the small vocabularies a CPU run affords it would mislabel a visible share.
        noise = randint(0, V - K, (B, T), gen)  # [B, T] an index among the V - K non-key ids
        skips = keys.sort(dim=1).values - torch.arange(K)  # [B, K] non-key ids below the j-th smallest key
        inputs = noise + (skips[:, None, :] <= noise[..., None]).sum(-1)  # [B, T] skip over the keys
        inputs[:, 0:2 * K:2] = keys
        inputs[:, 1:2 * K:2] = values
        # 3. Query slots: the j-th slot drawn (power law, without replacement) holds key j; since keys are
        #    in random order, which key lands where is random too.
        slots = (T - 2 * K) // 2
        weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (cfg.power_a - 1)  # [slots]
        positions = 2 * K + 2 * weighted_distinct(B, K, weights, gen)  # [B, K]
        inputs.scatter_(1, positions, keys)
        targets = torch.full((B, T), IGNORE, dtype=torch.long)  # [B, T]
        targets.scatter_(1, positions, values)
        return TaskBatch(inputs, targets, targets != IGNORE,
                         {"seq_len": T, "length": T, "n_pairs": K, "query_positions": positions})


@dataclass
class InductionConfig(TaskConfig):
    """Induction heads as in Mamba's extrapolation test: one trigger, its follower, the trigger again."""

    _task: ClassVar[str] = "induction"
    length: int = 64  # training sequence length L (Mamba trains at 256)
    vocab_size: int = 16  # ids 0..V-2 are ordinary tokens, V-1 is the trigger (Mamba: 16)
    eval_lengths: Optional[tuple] = None  # held-out lengths; None = (L, 2L, 4L, 8L)

    def __post_init__(self) -> None:
        self._int("length", 3, hint="the trigger, its follower and the final trigger")
        self._int("vocab_size", 3)
        self._ints("eval_lengths", 3, optional=True, nonempty=True)


class Induction(SyntheticTask):
    """Random tokens with one trigger token followed by a target; the trigger ends the sequence.

    ``inputs[p] = trigger``, ``inputs[p + 1] = answer`` for a uniform ``p`` in [0, T - 3], and
    ``inputs[T - 1] = trigger``; the answer is scored at the last position only. The trigger appears
    nowhere else. Train at ``length``; the held-out settings test at longer lengths.
    """

    name = "induction"
    source = "Olsson et al. 2022; Gu & Dao 2023 (Mamba, Table 11)"
    summary = "after the repeated trigger, output the token that followed its first occurrence"
    config_class = InductionConfig
    fixed_fields = ("vocab_size",)

    @property
    def n_answers(self) -> int:
        return self.config.vocab_size - 1

    def seq_len(self, config: Optional[InductionConfig] = None) -> int:
        return (config or self.config).length

    def eval_settings(self) -> list[EvalSetting]:
        L = self.config.length
        lengths = self.config.eval_lengths or (L, 2 * L, 4 * L, 8 * L)
        return [EvalSetting(f"L={n}", {"length": n}, float(n)) for n in lengths]

    def _draw(self, cfg: InductionConfig, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        B, T, trigger = batch_size, cfg.length, cfg.vocab_size - 1
        inputs = randint(0, trigger, (B, T), gen)  # [B, T] ordinary tokens only
        where = randint(0, T - 2, (B,), gen)  # [B] first trigger, its follower lies before the last position
        rows = torch.arange(B)
        inputs[rows, where] = trigger
        inputs[:, -1] = trigger
        targets = torch.full((B, T), IGNORE, dtype=torch.long)  # [B, T]
        targets[:, -1] = inputs[rows, where + 1]
        return TaskBatch(inputs, targets, targets != IGNORE, {"seq_len": T, "length": T, "trigger_position": where})
