"""Training and evaluation runs end to end, for every task kind: what ``seqmix train`` and
``seqmix eval`` call.

``train(config)`` sets up processes, device, threads and seeds, asks the config's task kind
(``seqmix.train.kinds``) to build the model and the task, and hands both to the generic ``Trainer``.
Checkpoints go to ``<trainer.out_dir>/last`` (and ``best``); each holds the model, the kind's extra
files (tokenizer, vocabulary) and the whole training config with its ``task``, so ``seqmix eval`` /
``seqmix generate`` need nothing but the directory.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from seqmix.errors import UserError
from seqmix.train import checkpoint as ckpt
from seqmix.train.config import TrainConfig
from seqmix.train.distributed import setup, teardown
from seqmix.train.kinds import BuildContext, EvalContext, get_kind
from seqmix.train.trainer import Trainer, TrainResult

__all__ = ["train", "train_language_model", "evaluate_checkpoint", "load_model_and_tokenizer", "find_checkpoint",
           "state_grows", "read_training_config"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory for ``path``: itself, or ``path/last`` when given a run directory."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists() and (path / "last").is_dir():
        return path / "last"
    return ckpt.resolve_checkpoint(path)


def load_model_and_tokenizer(checkpoint: str | Path, device: Any = "cpu") -> tuple[Any, Any, Path]:
    """``(LanguageModel, tokenizer, directory)`` from a checkpoint or ``save_pretrained`` directory."""
    from seqmix.data.tokenizers import load_tokenizer
    from seqmix.models import LanguageModel

    directory = find_checkpoint(checkpoint)
    model = LanguageModel.from_pretrained(directory, map_location=device)
    return model, load_tokenizer(directory), directory


def state_grows(module: Any) -> bool:
    """Whether ``module``'s state keeps growing with the context (a KV cache) rather than staying bounded
    (a recurrence, or a sliding window once full): compared at two long contexts."""
    return module.state_size(1 << 21) != module.state_size(1 << 20)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    callbacks: tuple[Callable[[Trainer, dict], None], ...] = (),
    handle_sigint: bool = True,
) -> TrainResult:
    """Train (or with ``resume``, continue) the run described by ``config``, whatever its task kind."""
    kind = get_kind(config.task)
    tcfg = config.trainer
    out = Path(tcfg.out_dir)
    last = out / "last"
    # 1. what to start from: a fresh run must not silently replace a checkpoint; resume needs one
    loaded = None
    if resume:
        if not (last.is_dir() or (out / ".last.old").is_dir()):
            raise UserError(f"--resume: there is no checkpoint to continue in {last}; train without --resume first")
        loaded = ckpt.read_checkpoint(last)
        saved_task = loaded.state.get("config", {}).get("task", "lm")
        if saved_task != config.task:
            raise UserError(f"checkpoint {loaded.path} is a {saved_task!r} run, the config says task {config.task!r}")
    elif last.exists() and not tcfg.overwrite:
        raise UserError(f"{out} already holds a checkpoint ({last}); pass --resume to continue it, "
                        "--trainer.overwrite true to replace it, or choose another --trainer.out_dir")
    # 2. processes, device, threads, seeds
    info, device = setup(tcfg.device)
    try:
        if tcfg.threads is not None:
            torch.set_num_threads(tcfg.threads)
        _seed_everything(tcfg.seed)
        # 3. the kind builds data, model and task (the model the same on every rank)
        built = kind.build(BuildContext(config=config, loaded=loaded, device=device, rank=info.rank,
                                        world_size=info.world_size))
        built.model.to(device)
        torch.manual_seed(tcfg.seed + 7919 * info.rank)  # dropout differs between ranks
        # 4. train
        record = {"config": config.to_dict(), **built.record}
        trainer = Trainer(built.model, built.task, config.optim, tcfg, device=device, dist_info=info, record=record,
                          extra_writer=built.save_extra, callbacks=callbacks, handle_sigint=handle_sigint)
        if info.is_main:
            line = f"task {kind.name}; {built.describe}; {info.world_size} process(es) on {device}"
            print(line + (f"; resuming at step {loaded.state['step']}" if loaded else ""), flush=True)
        return trainer.fit(resume=loaded)
    finally:
        teardown()


def train_language_model(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """``train`` for a language-model config (the name kept from before task kinds)."""
    if config.task != "lm":
        raise UserError(f"train_language_model trains task 'lm', the config says {config.task!r}; use train()")
    return train(config, **kwargs)


def read_training_config(directory: Path) -> TrainConfig:
    """The training config stored in a checkpoint's trainer.json (a language model's defaults if absent)."""
    path = directory / "trainer.json"
    saved = ckpt.read_json(path).get("config") if path.exists() else None
    if not saved:
        return TrainConfig()
    return TrainConfig.from_dict(saved)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "valid",
    device: str = "auto",
    batch_size: Optional[int] = None,
    data: Optional[str] = None,
    seq_len: Optional[int] = None,
    corpus: Optional[str] = None,
) -> dict:
    """Metrics of a checkpoint over the whole validation (or test) split, by its task kind.

    ``data`` (``corpus`` is its old name) points at other data, ``batch_size`` and ``seq_len``
    override the evaluation batch and window where the kind reads them (``TaskKind.eval_options``).
    """
    if split not in ("valid", "test"):
        raise UserError(f"split must be 'valid' or 'test', got {split!r}")
    data = corpus if data is None else data
    directory = find_checkpoint(checkpoint)
    config = read_training_config(directory)
    kind = get_kind(config.task)
    given = {"batch_size": batch_size, "data": data, "seq_len": seq_len}
    unused = [name for name, value in given.items() if value is not None and name not in kind.eval_options]
    if unused:
        raise UserError(f"task {kind.name!r} does not take {', '.join(unused)} at evaluation; it takes "
                        f"{', '.join(kind.eval_options) or 'no overrides'}")
    info, dev = setup(device)
    try:
        metrics = kind.evaluate(EvalContext(directory=directory, config=config, split=split, device=dev, **given))
    finally:
        teardown()
    return {**metrics, "task": kind.name, "checkpoint": str(directory), "split": split}
