"""The contract every synthetic diagnostic task keeps: a batch, a held-out setting, a task.

A task draws whole batches from a ``torch.Generator`` seeded by (task, seed, split, resolved config),
so a draw never depends on the global RNG and the same request always gives the same tensors. Token
tasks are scored position by position: ``targets[b, t]`` is the id the model should output *at*
position ``t`` after reading ``inputs[b, :t + 1]`` (no extra shift), ``IGNORE`` where nothing is
scored. Vector tasks (in-context regression) override ``loss`` and ``score``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F

from seqmix.errors import UserError

__all__ = ["IGNORE", "SPLITS", "TaskBatch", "EvalSetting", "TaskConfig", "SyntheticTask"]

IGNORE = -100  # target id of unscored positions (torch's cross-entropy default ignore_index)
SPLITS = ("train", "valid", "test")


@dataclass
class TaskBatch:
    """One draw: inputs, targets and the positions that are scored."""

    inputs: torch.Tensor  # [B, T] int64 token ids, or [B, T, d_in] float32
    targets: torch.Tensor  # [B, T] int64 (IGNORE where unscored), or [B, T, d_out] float32
    mask: torch.Tensor  # [B, T] bool, True at scored positions
    info: dict = field(default_factory=dict)  # facts about the draw ("seq_len", "length", task-specific)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def to(self, device: Any) -> "TaskBatch":
        """The same batch on ``device`` (tensors in ``info`` move too)."""
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return TaskBatch(move(self.inputs), move(self.targets), move(self.mask),
                         {k: move(v) for k, v in self.info.items()})


@dataclass(frozen=True)
class EvalSetting:
    """One held-out test distribution: a name for reports, the overrides for ``sample``, a plot axis."""

    name: str  # "L=256", "short_first", "L=512,depth=0.50"
    params: dict = field(hash=False)  # keyword overrides given to sample(), e.g. {"length": 256}
    x: Optional[float] = None  # numeric axis for plots (usually the test length); None if not numeric


@dataclass
class TaskConfig:
    """Base of every task's parameters; the helpers validate one field in place, naming it on failure."""

    _task: ClassVar[str] = "task"

    def _fail(self, message: str) -> None:
        raise UserError(f"{self._task}: {message}")

    def _int(self, name: str, minimum: int = 1, maximum: Optional[int] = None, *, optional: bool = False,
             hint: str = "") -> None:
        value = getattr(self, name)
        if optional and value is None:
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            allowed = f"an int in [{minimum}, {maximum}]" if maximum is not None else f"an int >= {minimum}"
            allowed += " or None" if optional else ""
            raise UserError(f"{self._task}.{name} must be {allowed}{f' ({hint})' if hint else ''}, got {value!r}")

    def _float(self, name: str, low: float, high: float = float("inf"), *, optional: bool = False,
               hint: str = "") -> None:
        value = getattr(self, name)
        if optional and value is None:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        if not ok:
            span = f"a number >= {low:g}" if high == float("inf") else f"a number in [{low:g}, {high:g}]"
            span += " or None" if optional else ""
            raise UserError(f"{self._task}.{name} must be {span}{f' ({hint})' if hint else ''}, got {value!r}")
        setattr(self, name, float(value))

    def _choice(self, name: str, allowed: tuple) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise UserError(f"{self._task}.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")

    def _ints(self, name: str, minimum: int = 1, *, optional: bool = False, nonempty: bool = False) -> None:
        """A tuple of ints >= minimum (lists from YAML/CLI become tuples)."""
        value = getattr(self, name)
        if optional and value is None:
            return
        ok = isinstance(value, (list, tuple)) and (len(value) > 0 or not nonempty)
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
        if not ok:
            what = "a non-empty list" if nonempty else "a list"
            raise UserError(f"{self._task}.{name} must be {what} of ints >= {minimum}"
                            f"{' or None' if optional else ''}, got {value!r}")
        setattr(self, name, tuple(value))

    def _floats(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in value)
        if not ok:
            raise UserError(f"{self._task}.{name} must be a non-empty list of numbers in [{low:g}, {high:g}], got {value!r}")
        setattr(self, name, tuple(float(v) for v in value))


def make_config(config_class: type, params: dict, task: str) -> Any:
    """Build ``config_class(**params)``, naming an unknown parameter and listing the known ones."""
    known = [f.name for f in dataclasses.fields(config_class)]
    for key in params:
        if key not in known:
            raise UserError(f"task {task!r} has no parameter {key!r}; its parameters are: {', '.join(known)}")
    return config_class(**params)


class SyntheticTask:
    """A seeded generator of batches plus its loss, score and held-out settings.

    Subclasses set the class attributes, a ``config_class`` and implement ``_draw`` (one batch from a
    resolved config and a generator), ``seq_len`` (the sequence length a config gives; the longest
    one when lengths are drawn), ``eval_settings`` and, for token tasks, ``vocab_size`` and
    ``n_answers`` (the number of ids a target can take; chance = 1 / n_answers).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "tokens"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = ""  # the paper the task follows, for reports
    summary: ClassVar[str] = ""  # one line: what is scored
    config_class: ClassVar[type] = TaskConfig
    fixed_fields: ClassVar[tuple[str, ...]] = ()  # fields that size the model: sample() may not override them
    d_in: int = 0
    d_out: int = 0

    def __init__(self, config: Any = None, **params: Any) -> None:
        if config is not None and params:
            raise UserError(f"task {self.name!r}: give either a config or parameters, not both")
        if config is None:
            config = make_config(self.config_class, params, self.name)
        elif not isinstance(config, self.config_class):
            raise UserError(f"task {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # -- sizes --------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_answers(self) -> int:
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """Expected accuracy of guessing uniformly among the ids a target can take."""
        return 1.0 / self.n_answers

    def seq_len(self, config: Any = None) -> int:
        raise NotImplementedError

    @property
    def train_length(self) -> int:
        """The longest training sequence (size position embeddings at least this long)."""
        return self.seq_len(self.config)

    @property
    def max_eval_length(self) -> int:
        """The longest sequence any of ``eval_settings`` draws."""
        return max(self.seq_len(self.resolve(**s.params)) for s in self.eval_settings())

    def describe(self) -> dict[str, Any]:
        """Plain facts for reports and result files."""
        return {"task": self.name, "kind": self.kind, "source": self.source, "summary": self.summary,
                "vocab_size": self.vocab_size, "d_in": self.d_in, "d_out": self.d_out,
                "primary_metric": self.primary_metric, "higher_is_better": self.higher_is_better,
                "chance": self.chance, "train_length": self.train_length,
                "config": dataclasses.asdict(self.config)}

    # -- drawing ------------------------------------------------------------------------------------

    def resolve(self, **overrides: Any) -> Any:
        """The config with ``overrides`` applied and validated (sample() draws from this)."""
        if not overrides:
            return self.config
        for key in overrides:
            if key in self.fixed_fields and overrides[key] != getattr(self.config, key):
                raise UserError(f"task {self.name!r}: {key} sizes the model and cannot change per sample; "
                                f"build another task with build_task({self.name!r}, {key}=...)")
        params = {**dataclasses.asdict(self.config), **overrides}
        return make_config(self.config_class, params, self.name)

    def sample(self, batch_size: int, seed: int, *, split: str = "train", **overrides: Any) -> TaskBatch:
        """A batch, deterministic in (seed, split, overrides) and independent of the global RNG."""
        try:
            batch_size = operator.index(batch_size)
            seed = operator.index(seed)
        except TypeError:
            raise UserError(f"batch_size and seed must be ints, got {batch_size!r} and {seed!r}") from None
        if batch_size < 1:
            raise UserError(f"batch_size must be an int >= 1, got {batch_size}")
        if split not in SPLITS:
            raise UserError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        config = self.resolve(**overrides)
        return self._draw(config, batch_size, self._generator(config, seed, split), split)

    def _generator(self, config: Any, seed: int, split: str) -> torch.Generator:
        # Hash the *resolved* config: the same distribution gives the same draw however it was asked for.
        key = json.dumps([self.name, seed, split, dataclasses.asdict(config)], sort_keys=True, default=str)
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        gen = torch.Generator()
        gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
        return gen

    def _draw(self, config: Any, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        raise NotImplementedError

    def eval_settings(self) -> list[EvalSetting]:
        raise NotImplementedError

    # -- loss and score (token tasks) ---------------------------------------------------------------

    def _check_output(self, output: torch.Tensor, batch: TaskBatch) -> None:
        width = self.vocab_size if self.kind == "tokens" else self.d_out
        want = (*batch.mask.shape, width)
        if tuple(output.shape) != want:
            what = "logits" if self.kind == "tokens" else "predictions"
            raise UserError(f"task {self.name!r} expects {what} of shape {list(want)}, got {list(output.shape)}")

    def loss(self, output: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Mean cross-entropy over the scored positions; ``output`` holds logits [B, T, vocab_size]."""
        self._check_output(output, batch)
        mask = batch.mask.to(output.device)
        # Only the scored positions enter the softmax: most positions of most tasks are unscored.
        return F.cross_entropy(output[mask].float(), batch.targets.to(output.device)[mask])

    @torch.no_grad()
    def score(self, output: torch.Tensor, batch: TaskBatch) -> dict[str, float]:
        """Accuracy over scored positions (argmax), whole-sequence accuracy and the loss."""
        self._check_output(output, batch)
        targets, mask = batch.targets.to(output.device), batch.mask.to(output.device)
        hit = (output.argmax(-1) == targets) & mask  # [B, T]
        return {
            "accuracy": (hit.sum() / mask.sum().clamp(min=1)).item(),
            "sequence_accuracy": (hit | ~mask).all(-1).float().mean().item(),
            "loss": self.loss(output, batch).item(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
