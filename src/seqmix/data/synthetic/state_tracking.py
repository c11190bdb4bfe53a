"""State tracking on regular languages: parity, cycle navigation, sum mod p, arithmetic mod p.

Deletang et al. 2023 ("Neural Networks and the Chomsky Hierarchy") train on lengths up to 40 and
test on longer strings; Fan et al. 2024 and Grazzi et al. 2025 use the same tasks to separate linear
RNNs whose transitions can flip sign from those whose decays lie in [0, 1]. Every task here reads
``length`` symbols, then an ``=`` marker at which the answer is scored; training draws one length per
batch (so a batch has one T) from [min_length, max_length] unless ``length`` fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from seqmix.data.synthetic.base import IGNORE, EvalSetting, SyntheticTask, TaskBatch, TaskConfig
from seqmix.data.synthetic.sampling import randint

__all__ = [
    "RegularConfig", "ParityConfig", "Parity", "CycleNavConfig", "CycleNav", "SumModConfig", "SumMod",
    "ModArithConfig", "ModArith", "evaluate_mod_arith",
]

SCORES = ("final", "every")


@dataclass
class RegularConfig(TaskConfig):
    """Lengths shared by the state-tracking tasks (in symbols; the sequence adds the ``=`` marker)."""

    min_length: int = 3  # shortest training string (Deletang et al.: 1)
    max_length: int = 40  # longest training string (Deletang et al.: 40)
    length: Optional[int] = None  # a fixed string length (the held-out settings set it); None = one uniform draw per batch
    eval_lengths: tuple = (64, 128, 256)  # held-out string lengths, besides the training range

    def __post_init__(self) -> None:
        self._int("min_length")
        self._int("max_length")
        self._int("length", optional=True)
        self._ints("eval_lengths")
        if self.max_length < self.min_length:
            self._fail(f"max_length={self.max_length} must be >= min_length={self.min_length}")


class _StateTracking(SyntheticTask):
    """Shared drawing: ``symbols.. =``; subclasses draw the symbols and compute the answers."""

    eq: int  # the id of the "=" marker (set per task)

    def seq_len(self, config: Optional[RegularConfig] = None) -> int:
        cfg = config or self.config
        return (cfg.length or cfg.max_length) + 1

    def eval_settings(self) -> list[EvalSetting]:
        cfg = self.config
        if cfg.length is None:
            train = EvalSetting(f"L={cfg.min_length}-{cfg.max_length}", {"length": None},
                                (cfg.min_length + cfg.max_length) / 2)
        else:
            train = EvalSetting(f"L={cfg.length}", {"length": cfg.length}, float(cfg.length))
        return [train] + [EvalSetting(f"L={n}", {"length": n}, float(n)) for n in cfg.eval_lengths if n != cfg.length]

    def _length(self, cfg: RegularConfig, gen: torch.Generator) -> int:
        if cfg.length is not None:
            return cfg.length
        return int(randint(cfg.min_length, cfg.max_length + 1, (1,), gen))

    def _symbols(self, cfg, batch_size: int, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # [B, n] input ids

    def _answers(self, cfg, symbols: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # [B, n] answer id after each prefix, or [B] for the whole string only

    def _draw(self, cfg, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        n = self._length(cfg, gen)
        symbols = self._symbols(cfg, batch_size, n, gen)  # [B, n]
        answers = self._answers(cfg, symbols)
        final = answers if answers.dim() == 1 else answers[:, -1]  # [B]
        inputs = torch.cat([symbols, torch.full((batch_size, 1), self.eq, dtype=torch.long)], dim=1)  # [B, n + 1]
        targets = torch.full_like(inputs, IGNORE)  # [B, n + 1]
        targets[:, -1] = final
        if getattr(cfg, "score", "final") == "every":
            targets[:, :-1] = answers
        return TaskBatch(inputs, targets, targets != IGNORE, {"seq_len": n + 1, "length": n})


# -- parity ---------------------------------------------------------------------------------------


@dataclass
class ParityConfig(RegularConfig):
    _task: ClassVar[str] = "parity"
    score: str = "final"  # "final": the parity at "=" only (Deletang et al.); "every": also after each prefix

    def __post_init__(self) -> None:
        super().__post_init__()
        self._choice("score", SCORES)


class Parity(_StateTracking):
    """Bits (ids 0, 1), then ``=`` (id 2); the answer is the parity: id 1 if the number of ones is odd."""

    name = "parity"
    source = "Deletang et al. 2023 (Chomsky hierarchy); Grazzi et al. 2025"
    summary = "parity of the bits, answered after '='"
    config_class = ParityConfig
    eq = 2
    vocab_size = 3
    n_answers = 2

    def _symbols(self, cfg, batch_size, n, gen):
        return randint(0, 2, (batch_size, n), gen)

    def _answers(self, cfg, symbols):
        return symbols.cumsum(1) % 2


# -- cycle navigation -----------------------------------------------------------------------------


@dataclass
class CycleNavConfig(RegularConfig):
    _task: ClassVar[str] = "cycle_nav"
    cycle_length: int = 5  # positions on the cycle (Deletang et al.: 5)
    score: str = "final"  # "final": the position at "=" only; "every": also after each move

    def __post_init__(self) -> None:
        super().__post_init__()
        self._int("cycle_length", 2)
        self._choice("score", SCORES)


class CycleNav(_StateTracking):
    """Moves on a cycle from position 0: id 0 = -1, id 1 = stay, id 2 = +1 (Deletang's ``action - 1``).

    ``=`` is id 3; position ``p`` is answered as id ``4 + p``.
    """

    name = "cycle_nav"
    source = "Deletang et al. 2023 (Chomsky hierarchy)"
    summary = "final position on a cycle after moves +1, -1, stay"
    config_class = CycleNavConfig
    fixed_fields = ("cycle_length",)
    eq = 3

    @property
    def vocab_size(self) -> int:
        return 4 + self.config.cycle_length

    @property
    def n_answers(self) -> int:
        return self.config.cycle_length

    def _symbols(self, cfg, batch_size, n, gen):
        return randint(0, 3, (batch_size, n), gen)

    def _answers(self, cfg, symbols):
        return 4 + (symbols - 1).cumsum(1) % cfg.cycle_length


# -- sum mod p ------------------------------------------------------------------------------------


@dataclass
class SumModConfig(RegularConfig):
    _task: ClassVar[str] = "sum_mod"
    modulus: int = 5  # digits are 0..modulus-1; the answer is their sum mod modulus
    score: str = "final"  # "final": the sum at "=" only; "every": the running sum after every digit too

    def __post_init__(self) -> None:
        super().__post_init__()
        self._int("modulus", 2)
        self._choice("score", SCORES)


class SumMod(_StateTracking):
    """Digits (ids 0..p-1), then ``=`` (id p); the answer is the sum mod p, as the digit id."""

    name = "sum_mod"
    source = "Fan et al. 2024 (regular languages with linear RNNs); Deletang et al. 2023"
    summary = "running sum of digits mod p"
    config_class = SumModConfig
    fixed_fields = ("modulus",)

    @property
    def eq(self) -> int:
        return self.config.modulus

    @property
    def vocab_size(self) -> int:
        return self.config.modulus + 1

    @property
    def n_answers(self) -> int:
        return self.config.modulus

    def _symbols(self, cfg, batch_size, n, gen):
        return randint(0, cfg.modulus, (batch_size, n), gen)

    def _answers(self, cfg, symbols):
        return symbols.cumsum(1) % cfg.modulus


# -- arithmetic mod p without brackets ------------------------------------------------------------

PLUS, MINUS, TIMES = 0, 1, 2  # operator offsets after the digits


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


@dataclass
class ModArithConfig(RegularConfig):
    _task: ClassVar[str] = "mod_arith"
    modulus: int = 5  # a prime p: numbers are 0..p-1, the answer is the value mod p
    eval_lengths: tuple = (63, 127, 255)  # held-out expression lengths (odd: number, operator, ..., number)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._int("modulus", 2)
        if not _is_prime(self.modulus):
            self._fail(f"modulus must be a prime (products use discrete logarithms mod p), got {self.modulus}")
        for what, n in [("length", self.length)] + [("eval_lengths", n) for n in self.eval_lengths]:
            if n is not None and n % 2 == 0:
                self._fail(f"{what} must hold odd lengths (an expression alternates number, operator, ..., number), got {n}")
        if self.min_length == self.max_length and self.min_length % 2 == 0:
            self._fail(f"min_length = max_length = {self.min_length} leaves no odd length to draw")


def evaluate_mod_arith(numbers: torch.Tensor, ops: torch.Tensor, modulus: int) -> torch.Tensor:
    """Value mod p of ``n0 o1 n1 ... o_m n_m`` with the usual precedence (``*`` before ``+``, ``-``).

    ``numbers`` [B, m + 1] in 0..p-1, ``ops`` [B, m] in {PLUS, MINUS, TIMES}; returns [B]. This is the
    rule of Deletang et al.'s generator: "1 + 2 * 3 = 2", "1 - 1 - 1 = 4" (mod 5).

    1. A number after ``-`` enters negated (a - b * c = a + (-b) * c).
    2. ``+`` and ``-`` start a new product term; ``*`` continues the current one.
    3. Each term's product mod p: 0 if a factor is 0, else g^(sum of discrete logs) for a primitive
       root g -- sums, so one ``scatter_add`` per batch instead of a loop over tokens.
    4. The answer is the sum of the terms mod p.
    """
    B, n = numbers.shape
    p = modulus
    g = next(c for c in range(1, p) if len({pow(c, e, p) for e in range(p - 1)}) == p - 1)
    dev = numbers.device
    power = torch.tensor([pow(g, e, p) for e in range(p - 1)], device=dev)  # [p - 1]
    dlog = torch.zeros(p, dtype=torch.long, device=dev)  # [p], dlog[0] unused
    dlog[power] = torch.arange(p - 1, device=dev)
    first = torch.ones(B, 1, dtype=torch.bool, device=dev)
    negated = torch.cat([~first, ops == MINUS], dim=1)  # [B, n]
    signed = torch.where(negated, (-numbers) % p, numbers)  # [B, n]
    term = torch.cat([first, ops != TIMES], dim=1).long().cumsum(1) - 1  # [B, n] term of each number
    zeros = torch.zeros(B, n, dtype=torch.long, device=dev).scatter_add_(1, term, (signed == 0).long())  # [B, n terms]
    logs = torch.zeros(B, n, dtype=torch.long, device=dev).scatter_add_(1, term, dlog[signed])  # [B, n terms]
    value = torch.where(zeros > 0, 0, power[logs % (p - 1)])  # [B, n terms]
    exists = torch.arange(n, device=dev) <= term[:, -1:]  # [B, n terms]: the rest are empty slots
    return (value * exists).sum(1) % p


class ModArith(_StateTracking):
    """Expression ``n o n o ... n`` (digits 0..p-1, ``+ - *`` = ids p, p+1, p+2), ``=`` (id p+3), value mod p.

    Lengths count expression tokens and are odd: training draws a uniform odd length in
    [min_length, max_length] (Deletang et al. lower an even length by one, which also lands on the odd
    ones), and explicit lengths must be odd. Numbers and operators are uniform.
    """

    name = "mod_arith"
    source = "Deletang et al. 2023 (Chomsky hierarchy, modular arithmetic (simple))"
    summary = "value mod p of an expression with + - * and no brackets, usual precedence"
    config_class = ModArithConfig
    fixed_fields = ("modulus",)

    @property
    def eq(self) -> int:
        return self.config.modulus + 3

    @property
    def vocab_size(self) -> int:
        return self.config.modulus + 4

    @property
    def n_answers(self) -> int:
        return self.config.modulus

    def seq_len(self, config: Optional[ModArithConfig] = None) -> int:
        cfg = config or self.config
        n = cfg.length or cfg.max_length
        return n - (1 - n % 2) + 1

    def _length(self, cfg, gen):
        if cfg.length is not None:
            return cfg.length
        odd = range(cfg.min_length | 1, cfg.max_length + 1, 2)  # the odd lengths of the training range
        return odd[int(randint(0, len(odd), (1,), gen))]

    def _symbols(self, cfg, batch_size, n, gen):
        m = n // 2  # operators
        p = cfg.modulus
        tokens = torch.empty(batch_size, n, dtype=torch.long)  # [B, n]
        tokens[:, 0::2] = randint(0, p, (batch_size, m + 1), gen)
        tokens[:, 1::2] = p + randint(0, 3, (batch_size, m), gen)
        return tokens

    def _answers(self, cfg, symbols):
        p = cfg.modulus
        return evaluate_mod_arith(symbols[:, 0::2], symbols[:, 1::2] - p, p)
