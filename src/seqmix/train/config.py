"""Typed training configuration: a task kind and four sections (model, data, optim, trainer), each a dataclass.

Every section is validated in ``__post_init__``; a bad value raises ``UserError`` naming the dotted
field (``optim.lr``), the value and what is allowed. jsonargparse reads the sections from a YAML file
and dotted flags (``seqmix train --config configs/shakespeare_char.yaml --optim.lr 3e-3``); library
users build them directly (``TrainConfig(model=LMModelConfig(d_model=128), ...)``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from seqmix import options
from seqmix.errors import UserError
from seqmix.models.config import ModelConfig, PlainData

__all__ = ["FromData", "LMModelConfig", "DataConfig", "OptimConfig", "TrainerConfig", "TrainConfig", "TOKENIZERS", "document_fields", "sections_for"]

TOKENIZERS = ("char", "byte", "word")


def _check(section: str, fn, name: str, value: Any, **kwargs: Any) -> Any:
    """Run one ``seqmix.options`` validator and prefix its message with the section."""
    try:
        return fn(f"{section}.{name}", value, **kwargs)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _choice(section: str, name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise UserError(f"{section}.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


@dataclass
class FromData:
    """Mixin for a recipe's model section whose sizes may be 0, meaning "take it from the data".

    A subclass of a model config (``class LMModelConfig(FromData, ModelConfig)``) names those fields in
    ``from_data`` and the config it builds in ``builds``. Validation runs the model config's own checks
    with placeholder sizes of 1 for the fields still 0; ``resolve(*sizes)`` fills them in (in
    ``from_data`` order) and returns the model config, refusing a size set in the recipe that
    disagrees with the data. (A dataclass without fields, so that jsonargparse still reads its
    subclasses as plain dataclasses.)
    """

    from_data: ClassVar[tuple[str, ...]] = ()
    builds: ClassVar[type[PlainData]]
    source: ClassVar[str] = "the data"  # where the sizes come from, for messages

    def __post_init__(self) -> None:
        empty = [name for name in self.from_data if getattr(self, name) == 0]
        for name in empty:
            setattr(self, name, 1)
        try:
            super().__post_init__()  # type: ignore[misc]
        except ValueError as exc:
            raise UserError(f"model.{exc}") from None
        finally:
            for name in empty:
                setattr(self, name, 0)

    def resolve(self, *sizes: int) -> Any:
        """The ``builds`` config of the model to make, with the data's sizes filled in."""
        values = dict(zip(self.from_data, sizes, strict=True))
        for name, value in values.items():
            if getattr(self, name) not in (0, value):
                raise UserError(f"model.{name} is {getattr(self, name)} but {self.source} has {value}; set "
                                f"model.{name} to 0 (take it from {self.source}) or to {value}")
        return self.builds.from_dict({**dataclasses.asdict(self), **values})  # type: ignore[call-overload]


@dataclass
class LMModelConfig(FromData, ModelConfig):
    """The language model (``seqmix.models.ModelConfig``); ``vocab_size`` 0 means: the tokenizer's size."""

    vocab_size: int = 0  # number of token ids; 0 = taken from the tokenizer fitted on the corpus

    from_data: ClassVar[tuple[str, ...]] = ("vocab_size",)
    builds: ClassVar[type] = ModelConfig
    source: ClassVar[str] = "the tokenizer"


@dataclass
class DataConfig:
    """Where the tokens come from and how they are cut into batches."""

    corpus: Optional[str] = None  # UTF-8 text file (split train/validation by val_fraction), a directory with ptb.{train,valid,test}.txt, or None = the shipped tiny Shakespeare
    tokenizer: str = "char"  # "char" (characters of the corpus), "byte" (256 byte values) or "word" (whitespace words, newline = <eos>)
    max_vocab: Optional[int] = None  # word tokenizer only: keep the most frequent words, the rest become <unk>
    val_fraction: float = 0.1  # the last fraction of a single-file corpus held out for validation
    seq_len: int = 256  # tokens per training window (the model sees seq_len inputs and predicts seq_len targets)
    batch_size: int = 32  # windows per micro-batch on each process
    stateful: bool = False  # Zaremba-style: batch_size contiguous streams, consecutive windows, the detached state carried across windows
    eval_batch_size: int = 32  # windows (or streams, when stateful) per evaluation batch

    def __post_init__(self) -> None:
        _choice("data", "tokenizer", self.tokenizer, TOKENIZERS)
        if self.max_vocab is not None:
            _check("data", options.positive_int, "max_vocab", self.max_vocab)
        self.val_fraction = _check("data", options.number, "val_fraction", self.val_fraction, minimum=0, strict=True)
        if self.val_fraction >= 1:
            raise UserError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("seq_len", "batch_size", "eval_batch_size"):
            _check("data", options.positive_int, name, getattr(self, name))
        _check("data", options.boolean, "stateful", self.stateful)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "adamw"  # "adamw" (decoupled weight decay) or "sgd" (with optional momentum, as in Zaremba et al. 2014)
    lr: float = 3e-3  # peak learning rate, reached after warmup_steps
    min_lr: float = 3e-4  # the cosine schedule ends here
    schedule: str = "cosine"  # "cosine" (linear warmup, cosine decay to min_lr) or "constant" (linear warmup, then lr)
    decay_by: str = "steps"  # cosine progress measured in "steps" (over trainer.max_steps) or "time" (over trainer.time_budget_s)
    warmup_steps: int = 100  # linear warmup from 0 to lr over this many optimizer steps
    weight_decay: float = 0.1  # AdamW/SGD weight decay on matrices only (not on norms, biases, embeddings)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.99  # AdamW second-moment decay (0.99 suits small models and short runs)
    eps: float = 1e-8  # AdamW epsilon
    momentum: float = 0.0  # SGD momentum
    grad_clip: float = 1.0  # clip the global gradient norm to this value (Pascanu et al. 2013); 0 = no clipping

    def __post_init__(self) -> None:
        _choice("optim", "name", self.name, ("adamw", "sgd"))
        _choice("optim", "schedule", self.schedule, ("cosine", "constant"))
        _choice("optim", "decay_by", self.decay_by, ("steps", "time"))
        self.lr = _check("optim", options.number, "lr", self.lr, minimum=0, strict=True)
        self.min_lr = _check("optim", options.number, "min_lr", self.min_lr, minimum=0)
        if self.min_lr > self.lr:
            raise UserError(f"optim.min_lr ({self.min_lr:g}) must not exceed optim.lr ({self.lr:g})")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        self.weight_decay = _check("optim", options.number, "weight_decay", self.weight_decay, minimum=0)
        for name in ("beta1", "beta2", "momentum"):
            value = _check("optim", options.number, name, getattr(self, name), minimum=0)
            if value >= 1:
                raise UserError(f"optim.{name} must be in [0, 1), got {value!r}")
            setattr(self, name, value)
        self.eps = _check("optim", options.number, "eps", self.eps, minimum=0, strict=True)
        self.grad_clip = _check("optim", options.number, "grad_clip", self.grad_clip, minimum=0)


@dataclass
class TrainerConfig:
    """The training loop: length, precision, evaluation, logging, checkpoints."""

    out_dir: str = "runs/default"  # checkpoints (last/, best/), metrics.jsonl and TensorBoard logs go here
    max_steps: int = 5000  # optimizer steps to run (training also stops at time_budget_s)
    time_budget_s: Optional[float] = None  # stop after this many seconds of training (evaluation excluded), then evaluate and checkpoint
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum * processes)
    precision: str = "fp32"  # "fp32" or "bf16" (bfloat16 autocast on CPU and GPU; weights and optimizer stay fp32)
    compile: bool = False  # torch.compile the training forward/backward (evaluation stays eager); falls back to eager with a warning when compilation fails, e.g. without a C++ compiler
    eval_interval: int = 500  # evaluate on the whole validation split every this many steps (0 = only at the end)
    log_interval: int = 10  # write training metrics every this many steps
    checkpoint_interval: int = 500  # write last/ every this many steps (0 = only at the end and on Ctrl-C)
    keep_best: bool = True  # also keep best/, the checkpoint with the lowest validation loss
    seed: int = 1337  # seeds initialisation, dropout and the data order
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    threads: Optional[int] = None  # torch CPU threads per process (None = PyTorch's default)
    progress: bool = True  # show a progress bar with tokens/s and ETA (rank 0, when stdout is a terminal)
    tensorboard: bool = True  # also write TensorBoard scalars when torch.utils.tensorboard imports
    overwrite: bool = False  # start afresh even if out_dir already holds a checkpoint (it is replaced)

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "log_interval"):
            _check("trainer", options.positive_int, name, getattr(self, name))
        for name in ("eval_interval", "checkpoint_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"trainer.{name} must be an int >= 0, got {value!r}")
        if self.time_budget_s is not None:
            self.time_budget_s = _check("trainer", options.number, "time_budget_s", self.time_budget_s,
                                        minimum=0, strict=True)
        _choice("trainer", "precision", self.precision, ("fp32", "bf16"))
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise UserError(f"trainer.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.threads is not None:
            _check("trainer", options.positive_int, "threads", self.threads)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"trainer.seed must be an int >= 0, got {self.seed!r}")
        for name in ("compile", "keep_best", "progress", "tensorboard", "overwrite"):
            _check("trainer", options.boolean, name, getattr(self, name))
        if not self.out_dir:
            raise UserError("trainer.out_dir must be a directory path, got an empty string")


SECTIONS = {"model": LMModelConfig, "data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig}  # task "lm"


def sections_for(task: str = "lm") -> dict[str, type]:
    """The section classes of a recipe for ``task``: the kind's model and data, the shared optim and trainer."""
    if task == "lm":
        return SECTIONS
    from seqmix.train.kinds import get_kind

    kind = get_kind(task)
    return {"model": kind.model_config, "data": kind.data_config, "optim": OptimConfig, "trainer": TrainerConfig}


@dataclass
class TrainConfig:
    """A whole training run: the task kind and four sections; checks the rules that span sections.

    ``model`` and ``data`` are the kind's own dataclasses (``LMModelConfig``/``DataConfig`` for the
    default ``task: lm``); ``None`` or a dict is turned into them.
    """

    model: Any = None
    data: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    task: str = "lm"  # what is trained: lm, seq2seq, seqrec, classify or forecast (seqmix.train.kinds)

    def __post_init__(self) -> None:
        sections = sections_for(self.task)
        for name, cls in sections.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, cls())
            elif isinstance(value, dict):
                setattr(self, name, section_from_dict(name, value, self.task))
            elif not isinstance(value, cls):
                raise UserError(f"{name} of task {self.task!r} must be a {cls.__name__} or a dict, got {type(value).__name__}")
        if self.optim.decay_by == "time" and self.trainer.time_budget_s is None:
            raise UserError("optim.decay_by 'time' needs trainer.time_budget_s (the horizon of the cosine)")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """From ``to_dict``'s output (e.g. a checkpoint's trainer.json); unknown keys name the allowed ones."""
        if not isinstance(data, dict):
            raise UserError(f"a training config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        task = data.pop("task", "lm")  # checkpoints written before task kinds are language models
        sections = sections_for(task)
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise UserError(f"unknown config section(s) {', '.join(unknown)}; allowed: task, {', '.join(sections)}")
        return cls(task=task, **{name: section_from_dict(name, value, task) for name, value in data.items()})


def section_from_dict(name: str, data: Any, task: str = "lm") -> Any:
    """Build section ``name`` of a ``task`` recipe from a dict, naming unknown keys and the allowed ones."""
    cls = sections_for(task)[name]
    if not isinstance(data, dict):
        raise UserError(f"config section {name!r} must be a mapping, got {type(data).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                        f"allowed keys in {name!r}: {', '.join(allowed)}")
    return cls(**data)


def document_fields(cls: type) -> type:
    """Append an ``Args:`` section built from the fields' one-line comments to ``cls.__doc__``.

    The comment beside each field is its only description; jsonargparse reads ``Args:`` sections, so
    ``seqmix train --help`` shows the same line without a second copy to keep in sync.
    """
    if cls.__dict__.get("_fields_documented"):
        return cls
    cls._fields_documented = True
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = re.match(r"\s{4}(\w+)\s*:[^#]*#\s*(.+)$", line)
            if match and match.group(1) in names:
                comments[match.group(1)] = match.group(2).strip()
    lines = [f"        {f.name}: {comments[f.name]}" for f in dataclasses.fields(cls) if f.name in comments]
    if lines:
        cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n\n    Args:\n" + "\n".join(lines) + "\n"
    return cls


for _cls in SECTIONS.values():
    document_fields(_cls)


def section_keys(name: str, task: str = "lm") -> list[str]:
    """The field names of section ``name`` of a ``task`` recipe (for error messages)."""
    return [f.name for f in dataclasses.fields(sections_for(task)[name])]
