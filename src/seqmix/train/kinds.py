"""Task kinds: what ``seqmix train`` can train and ``seqmix eval`` can score.

A recipe's top-level ``task:`` key (default ``lm``) picks a kind; the kind's dataclasses type the
recipe's ``model:`` and ``data:`` sections, while ``optim:`` and ``trainer:`` are shared. Everything
else is generic and lives in ``seqmix.train.run``: resuming, seeds, threads, device, the ``Trainer``,
checkpoints, metrics, Ctrl-C. A kind only says how to build its model and task from a config
(``build``), how to score a checkpoint on a whole split (``evaluate``) and how to print the result
(``summary``). Each kind lives in ``seqmix.tasks.<module>`` as ``KIND`` and is imported on first use,
so a kind's optional dependencies cost nothing to the others.
"""

from __future__ import annotations

import dataclasses

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from seqmix.errors import UserError

__all__ = ["TaskKind", "BuildContext", "Built", "EvalContext", "get_kind", "kind_names", "KIND_MODULES"]

# kind name -> module holding ``KIND``
KIND_MODULES = {
    "lm": "seqmix.tasks.lm",
    "seq2seq": "seqmix.tasks.seq2seq",
    "seqrec": "seqmix.tasks.seqrec",
    "classify": "seqmix.tasks.classify",
    "forecast": "seqmix.tasks.forecast",
}


@dataclass(frozen=True)
class TaskKind:
    name: str  # the value of the recipe's top-level ``task:`` key
    description: str  # one line for ``seqmix train --help``
    model_config: type  # dataclass of the ``model:`` section; every field has a default
    data_config: type  # dataclass of the ``data:`` section; every field has a default
    build: Callable[["BuildContext"], "Built"]
    evaluate: Callable[["EvalContext"], dict]
    summary: Callable[[dict], str]  # a metrics dict -> one line for the terminal
    eval_options: tuple[str, ...] = ("batch_size", "data")  # the ``seqmix eval`` overrides this kind reads


@dataclass
class BuildContext:
    config: Any  # the TrainConfig: .task, .model, .data, .optim, .trainer (all validated)
    loaded: Any  # a LoadedCheckpoint when resuming (``loaded.path`` is its directory), else None
    device: torch.device
    rank: int = 0
    world_size: int = 1

    def model(self, model_class: type, model_config: Any) -> nn.Module:
        """The model on the device: the checkpoint's weights when resuming (its config must equal
        ``model_config``), else freshly initialised (the same on every rank: seeds are set before)."""
        if self.loaded is None:
            return model_class(model_config).to(self.device)
        model = model_class.from_pretrained(self.loaded.path)
        saved, wanted = model.config.to_dict(), model_config.to_dict()
        diff = [f"{k}: checkpoint {saved.get(k)!r}, config {wanted.get(k)!r}"
                for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
        if diff:
            raise UserError(f"checkpoint {self.loaded.path} was trained with another model config ({'; '.join(diff)}); "
                            "resume with the config it was trained with, or start a new run in another trainer.out_dir")
        return model.to(self.device)


@dataclass
class Built:
    model: nn.Module  # a PretrainedMixin model (save_pretrained / from_pretrained)
    task: Any  # the Trainer's task protocol (see seqmix.train.trainer)
    save_extra: Optional[Callable[[Path], None]] = None  # writes vocabulary/tokenizer files into a checkpoint
    describe: str = ""  # one line printed when training starts
    record: dict = field(default_factory=dict)  # extra JSON stored in every checkpoint's trainer.json


@dataclass
class EvalContext:
    directory: Path  # the checkpoint directory
    config: Any  # the TrainConfig stored with the checkpoint
    split: str  # "valid" or "test"
    device: torch.device
    batch_size: Optional[int] = None  # override of the evaluation batch size
    data: Optional[str] = None  # override of the data location
    seq_len: Optional[int] = None  # language models: override of the evaluation window

    def load(self, model_class: Any) -> Any:
        """The checkpoint's model of ``model_class``, on the evaluation device, in eval mode."""
        return model_class.from_pretrained(self.directory).to(self.device).eval()

    def data_config(self, **overrides: Any) -> Any:
        """The run's data config with the evaluation overrides applied (``--batch_size`` sets
        ``eval_batch_size``) and any task-specific ``overrides`` (field=value, None = keep)."""
        if self.batch_size is not None:
            overrides.setdefault("eval_batch_size", self.batch_size)
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self.config.data, **changes) if changes else self.config.data

    def autocast(self) -> Optional[Callable[[], Any]]:
        """A factory of the training run's autocast context (bf16 runs), or None (fp32): evaluation
        computes in the precision the model was trained in."""
        if self.config.trainer.precision != "bf16":
            return None
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)


def kind_names() -> list[str]:
    return list(KIND_MODULES)


def get_kind(name: Any) -> TaskKind:
    """The kind called ``name``; an unknown name lists the known ones."""
    if name not in KIND_MODULES:
        raise UserError(f"unknown task {name!r}; the tasks are: {', '.join(KIND_MODULES)}")
    module = importlib.import_module(KIND_MODULES[name])
    kind = getattr(module, "KIND", None)
    if not isinstance(kind, TaskKind) or kind.name != name:
        raise RuntimeError(f"{KIND_MODULES[name]} must define KIND = TaskKind(name={name!r}, ...)")
    from seqmix.train.config import document_fields

    document_fields(kind.model_config)  # so `seqmix train --help` shows each field's comment
    document_fields(kind.data_config)
    return kind
