"""One cell of the diagnostic suite: train a small model on one synthetic task, then test it.

A cell is (task + task parameters, mixer variant, d_model, n_layers, seed, budget). ``run_cell``:

1. builds the task (``seqmix.data.synthetic.build_task``) and the model: a ``LanguageModel`` for token
   tasks, a ``SequenceRegressor`` for vector tasks, with the variant's mixer in every layer;
2. trains it with AdamW (weight decay on matrices only), a linear warmup and a cosine decay, on fresh
   batches ``task.sample(batch_size, seed=data_seed(step), split="train")`` -- every step sees new
   data, so there is no overfitting to measure, only learning -- until ``max_steps`` or the wall-clock
   ``budget_seconds``, whichever comes first (the cosine follows whichever is further along);
3. evaluates every ``task.eval_settings()`` on ``eval_samples`` held-out sequences
   (``split="test"``, seeds 0, 1, ... so every model of a grid sees the same test set);
4. returns one JSON-able record: the metrics per setting, the final training loss, steps, seconds,
   tokens/s, parameters and the model's state size at each test length.

With a step budget only, a cell is deterministic for its seed on CPU; with a wall-clock budget the
number of steps depends on the machine (it is recorded). Training defaults per task (steps, batch,
learning rate) live in ``TASK_TRAINING``; they were chosen so that the cells the literature calls easy
are really learned at the sizes used here (see the README's "Diagnostic suite").
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from seqmix import options
from seqmix.bench.variants import Variant, add_absolute_positions, resolve_variant
from seqmix.errors import UserError

__all__ = ["Cell", "TaskTraining", "TASK_TRAINING", "run_cell", "build_model", "cell_label"]


@dataclass(frozen=True)
class TaskTraining:
    """How long and how hard a cell of one task trains, unless the cell overrides it."""

    max_steps: int = 600  # optimizer steps
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # peak learning rate
    warmup_steps: int = 30  # linear warmup
    train_params: tuple[tuple[str, Any], ...] = ()  # task parameters for training batches only (test keeps the task's)


DEFAULT_TRAINING = TaskTraining()
# Measured on this project's 2-core CPU box (d_model=64, 2 layers, one thread); the comments say what was
# seen. Entries without a comment are starting points that were not tuned.
TASK_TRAINING: dict[str, TaskTraining] = {
    # attention: 0.80 on mqar(n_pairs=4, length=32) after 800 steps at 2e-3; at 3e-3 it stalled at 0.29
    "mqar": TaskTraining(max_steps=800, batch_size=32, lr=2e-3),
    # selective_copy(n_tokens=4): lstm 0.96 after 773 steps at 3e-3; at 1e-2 gla stayed at chance (0.07)
    "selective_copy": TaskTraining(max_steps=1000, batch_size=32, lr=3e-3),
    # induction(length=32): attention-abs 1.00 at L after 600 steps at 1e-3 and 2e-3, chance at 1e-2
    "induction": TaskTraining(max_steps=600, batch_size=64, lr=2e-3),
    # state tracking: trained on the answer after every prefix (dense supervision), tested on the final
    # answer as Deletang et al. score it; with the final answer alone nothing learned parity in 1000 steps.
    # lstm, mamba-neg and deltanet-neg solved parity up to length 256 after 250-400 steps at 1e-2 (not at 5e-3)
    "parity": TaskTraining(max_steps=400, batch_size=32, lr=1e-2, train_params=(("score", "every"),)),
    "cycle_nav": TaskTraining(max_steps=600, batch_size=32, lr=1e-2, train_params=(("score", "every"),)),
    "sum_mod": TaskTraining(max_steps=600, batch_size=32, lr=1e-2, train_params=(("score", "every"),)),
    "mod_arith": TaskTraining(max_steps=1000, batch_size=32, lr=3e-3),
    # attention: 1.00 in both orders after 1000 steps at 3e-3
    "set_disjoint": TaskTraining(max_steps=1000, batch_size=32, lr=3e-3),
    "icl_regression": TaskTraining(max_steps=600, batch_size=32, lr=1e-3),
    # passkey(length=64): attention 0.91 at L after 594 steps at 2e-3; lstm and gla at chance after 500-800
    "passkey": TaskTraining(max_steps=1500, batch_size=32, lr=2e-3),
}
EVAL_BATCH = 32  # sequences per evaluation batch
EVAL_TOKENS_PER_BATCH = 32768  # ... and at most about this many tokens (memory at long lengths)


@dataclass
class Cell:
    """What one cell trains and tests; ``None`` fields take the task's ``TASK_TRAINING`` default."""

    task: str  # a name from seqmix.data.synthetic.TASKS
    variant: str  # a mixer or variant label (seqmix.bench.variants.list_variants)
    task_params: dict[str, Any] = field(default_factory=dict)  # task parameters, e.g. {"n_pairs": 8}
    d_model: int = 64  # model width
    n_layers: int = 2  # blocks (each: the variant's mixer, then a SwiGLU MLP)
    seed: int = 0  # seeds initialisation and the training data
    max_steps: Optional[int] = None  # optimizer steps (None: the task's default)
    budget_seconds: Optional[float] = None  # stop training after this many seconds (None: steps only)
    batch_size: Optional[int] = None  # sequences per step (None: the task's default)
    lr: Optional[float] = None  # peak learning rate (None: the task's default)
    eval_samples: int = 256  # held-out sequences per evaluation setting
    train_params: Optional[dict[str, Any]] = None  # task parameters for training batches only (None: the task's default)

    def __post_init__(self) -> None:
        try:
            options.positive_int("d_model", self.d_model)
            options.positive_int("n_layers", self.n_layers)
            options.positive_int("eval_samples", self.eval_samples)
            if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
                raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
            for name in ("max_steps", "batch_size"):
                if getattr(self, name) is not None:
                    options.positive_int(name, getattr(self, name))
            if self.budget_seconds is not None:
                self.budget_seconds = options.number("budget_seconds", self.budget_seconds, minimum=0, strict=True)
            if self.lr is not None:
                self.lr = options.number("lr", self.lr, minimum=0, strict=True)
        except ValueError as exc:
            raise UserError(f"cell {self.task}/{self.variant}: {exc}") from None
        if not isinstance(self.task_params, dict):
            raise UserError(f"task_params must be a dict of task parameters, got {self.task_params!r}")
        resolve_variant(self.variant)  # an unknown label fails here, naming the known ones
        defaults = TASK_TRAINING.get(self.task, DEFAULT_TRAINING)
        self.max_steps = self.max_steps or defaults.max_steps
        self.batch_size = self.batch_size or defaults.batch_size
        self.lr = self.lr or defaults.lr
        if self.train_params is None:  # a parameter the user set for the task wins over a training aid
            self.train_params = {k: v for k, v in defaults.train_params if k not in self.task_params}
        if not isinstance(self.train_params, dict):
            raise UserError(f"train_params must be a dict of task parameters, got {self.train_params!r}")

    @property
    def key(self) -> str:
        """A stable identity: every field, with task parameters sorted (the results file's key)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cell_label(cell: Cell) -> str:
    """``mqar(n_pairs=8) | mamba d64x2``: the line that names a cell in progress output."""
    params = ",".join(f"{k}={v}" for k, v in sorted(cell.task_params.items()))
    return f"{cell.task}({params}) | {cell.variant} d{cell.d_model}x{cell.n_layers} s{cell.seed}"


# ------------------------------------------------------------------ model
def build_model(task: Any, variant: Variant, d_model: int, n_layers: int) -> nn.Module:
    """The model of one cell: every layer is the variant's mixer, followed by a SwiGLU MLP."""
    mixer_options = {variant.mixer: dict(variant.options)} if variant.options else {}
    if task.kind == "tokens":
        from seqmix.models import LanguageModel, ModelConfig

        model = LanguageModel(ModelConfig(vocab_size=task.vocab_size, d_model=d_model, n_layers=n_layers,
                                          pattern=[variant.mixer], mixer_options=mixer_options))
        input_layer = "embed"
    elif task.kind == "vectors":
        from seqmix.models.config import RegressorConfig
        from seqmix.models.regressor import SequenceRegressor

        model = SequenceRegressor(RegressorConfig(d_in=task.d_in, d_out=task.d_out, d_model=d_model,
                                                  n_layers=n_layers, pattern=[variant.mixer],
                                                  mixer_options=mixer_options))
        input_layer = "input"
    else:
        raise UserError(f"task kind must be 'tokens' or 'vectors', got {task.kind!r}")
    if variant.absolute_positions:
        add_absolute_positions(model, input_layer)
    return model


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ------------------------------------------------------------------ training
def _lr(step: int, max_steps: int, warmup: int, peak: float, progress_time: float) -> float:
    """Linear warmup, then cosine to peak/10 over the further of step progress and time progress."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = max((step - warmup) / max(1, max_steps - warmup), progress_time)
    progress = min(max(progress, 0.0), 1.0)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def data_seed(cell_seed: int, step: int) -> int:
    """The training batch of ``step``: distinct per cell seed, so two seeds see different data."""
    return cell_seed * 1_000_003 + step


def _train(model: nn.Module, task: Any, cell: Cell, time_limit: Optional[float] = None) -> dict[str, Any]:
    """Step 2 of ``run_cell``; ``time_limit`` (seconds) is a cap from outside the cell (a grid's deadline)."""
    from seqmix.train.config import OptimConfig
    from seqmix.train.schedule import build_optimizer

    assert cell.max_steps is not None and cell.batch_size is not None and cell.lr is not None
    assert cell.train_params is not None
    warmup = min(TASK_TRAINING.get(cell.task, DEFAULT_TRAINING).warmup_steps, max(1, cell.max_steps // 10))
    optimizer = build_optimizer(model, OptimConfig(lr=cell.lr, min_lr=cell.lr / 10, warmup_steps=warmup,
                                                   weight_decay=0.1, beta2=0.99))
    limits = [t for t in (cell.budget_seconds, time_limit) if t is not None]
    limit = min(limits) if limits else None
    model.train()
    losses: list[float] = []
    tokens = 0
    diverged = False
    start = time.perf_counter()
    steps = 0
    for step in range(cell.max_steps):
        elapsed = time.perf_counter() - start
        if limit is not None and elapsed >= limit:
            break
        lr = _lr(step, cell.max_steps, warmup, cell.lr, elapsed / limit if limit else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = task.sample(cell.batch_size, seed=data_seed(cell.seed, step), split="train", **cell.train_params)
        output, _ = model(batch.inputs)
        loss = task.loss(output, batch)
        if not math.isfinite(loss.item()):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        tokens += batch.inputs.shape[0] * batch.inputs.shape[1]
        steps = step + 1
    seconds = time.perf_counter() - start
    tail = losses[-20:]
    return {
        "steps": steps,
        "train_seconds": seconds,
        "train_loss": sum(tail) / len(tail) if tail else None,  # mean of the last 20 steps
        "first_loss": losses[0] if losses else None,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "diverged": diverged,
        "stopped_by": "diverged" if diverged else ("steps" if steps >= cell.max_steps else (
            "budget" if cell.budget_seconds is not None and limit == cell.budget_seconds else "time limit")),
        "time_limit": time_limit,
    }


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def _evaluate(model: nn.Module, task: Any, cell: Cell) -> list[dict[str, Any]]:
    """Every eval setting on ``cell.eval_samples`` held-out sequences, metrics weighted by batch size."""
    model.eval()
    settings = []
    for setting in task.eval_settings():
        probe = task.sample(1, seed=0, split="test", **setting.params)
        length = int(probe.inputs.shape[1])
        # small batches: a setting that draws its length per batch (parity's "L=3-40") then covers many lengths
        per_batch = max(1, min(EVAL_BATCH, cell.eval_samples, EVAL_TOKENS_PER_BATCH // max(1, length)))
        sums: dict[str, float] = {}
        done = index = 0
        while done < cell.eval_samples:
            n = min(per_batch, cell.eval_samples - done)
            batch = task.sample(n, seed=index, split="test", **setting.params)
            output, _ = model(batch.inputs)
            scores = task.score(output, batch)
            if "loss" not in scores:
                scores["loss"] = float(task.loss(output, batch))
            for name, value in scores.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            done += n
            index += 1
        metrics = {name: total / done for name, total in sums.items()}
        settings.append({
            "name": setting.name,
            "x": setting.x,
            "params": dict(setting.params),
            "length": length,
            "metrics": metrics,
            "state_size": _state_size(model, length),
        })
    return settings


def _state_size(model: nn.Module, length: int) -> Optional[int]:
    try:
        return int(model.state_size(length))
    except Exception:  # noqa: BLE001 - a model without the method (none in seqmix) reports nothing
        return None


# ------------------------------------------------------------------ the cell
def run_cell(cell: Cell, time_limit: Optional[float] = None) -> dict[str, Any]:
    """Train and test one cell; returns its record (see the module docstring). Errors become a record.

    ``time_limit`` caps the training seconds without being part of the cell's identity: a grid with a
    deadline gives each cell what is left of it (the record says ``stopped_by: "time limit"``).
    """
    from seqmix.bench.timing import reason
    from seqmix.data.synthetic import build_task

    variant = resolve_variant(cell.variant)
    record: dict[str, Any] = {"key": cell.key, "cell": cell.as_dict(), "variant": variant.as_dict(),
                              "error": None, "torch": torch.__version__, "threads": torch.get_num_threads()}
    start = time.perf_counter()
    try:
        task = build_task(cell.task, **cell.task_params)
        record["task"] = {"name": cell.task, "kind": task.kind, "primary_metric": task.primary_metric,
                          "higher_is_better": task.higher_is_better, "chance": task.chance,
                          "train_length": task.train_length, "config": _jsonable(task.config)}
        torch.manual_seed(cell.seed)
        model = build_model(task, variant, cell.d_model, cell.n_layers)
        record["parameters"] = _parameters(model)
        length = _train_length(task)
        record["train_state_size"] = _state_size(model, length)
        # a fixed-size state: the same after twice the context (attention's cache grows)
        record["state_bounded"] = record["train_state_size"] == _state_size(model, 2 * length)
        record.update(_train(model, task, cell, time_limit))
        record["settings"] = _evaluate(model, task, cell)
        primary = [s["metrics"].get(task.primary_metric) for s in record["settings"]]
        primary = [p for p in primary if p is not None]
        record["primary"] = sum(primary) / len(primary) if primary else None
    except UserError:
        raise  # a bad task parameter or option: the user fixes it, the grid does not go on silently
    except Exception as error:  # noqa: BLE001 - one failing mixer is reported, the grid goes on
        record["error"] = reason(error)
    record["seconds"] = time.perf_counter() - start
    return record


def _train_length(task: Any) -> int:
    length = task.train_length
    if isinstance(length, (tuple, list)):  # a range of training lengths: the state after the longest
        return int(max(length))
    return int(length)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))
