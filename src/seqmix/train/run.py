"""Language-model runs end to end: what ``seqmix train`` and ``seqmix eval`` call.

``train_language_model(config)`` reads the corpus, fits (or, resuming, reloads) the tokenizer, builds
the model, and hands model + ``LMTask`` to the generic ``Trainer``. Checkpoints go to
``<trainer.out_dir>/last`` (and ``best``); each holds the model, the tokenizer and the whole training
config, so ``seqmix eval`` / ``seqmix generate`` need nothing but the directory.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from seqmix.errors import UserError
from seqmix.train import checkpoint as ckpt
from seqmix.train.config import DataConfig, TrainConfig
from seqmix.train.data import LMTask, load_lm_data
from seqmix.train.distributed import setup, teardown
from seqmix.train.trainer import Trainer, TrainResult

__all__ = ["train_language_model", "evaluate_checkpoint", "load_model_and_tokenizer", "find_checkpoint", "state_grows"]


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


def _check_same_model(saved: Any, wanted: Any, where: Path) -> None:
    a, b = saved.to_dict(), wanted.to_dict()
    diff = [f"{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        raise UserError(f"checkpoint {where} was trained with another model config ({'; '.join(diff)}); "
                        "resume with the config it was trained with, or start a new run in another trainer.out_dir")


def train_language_model(
    config: TrainConfig,
    *,
    resume: bool = False,
    callbacks: tuple[Callable[[Trainer, dict], None], ...] = (),
    handle_sigint: bool = True,
) -> TrainResult:
    """Train (or with ``resume``, continue) the language model described by ``config``."""
    from seqmix.data.tokenizers import load_tokenizer, save_tokenizer
    from seqmix.models import LanguageModel

    tcfg = config.trainer
    out = Path(tcfg.out_dir)
    last = out / "last"
    # 1. what to start from: a fresh run must not silently replace a checkpoint; resume needs one
    loaded = None
    if resume:
        if not (last.is_dir() or (out / ".last.old").is_dir()):
            raise UserError(f"--resume: there is no checkpoint to continue in {last}; train without --resume first")
        loaded = ckpt.read_checkpoint(last)
    elif last.exists() and not tcfg.overwrite:
        raise UserError(f"{out} already holds a checkpoint ({last}); pass --resume to continue it, "
                        "--trainer.overwrite true to replace it, or choose another --trainer.out_dir")
    # 2. processes, device, threads, seeds
    info, device = setup(tcfg.device)
    try:
        if tcfg.threads is not None:
            torch.set_num_threads(tcfg.threads)
        _seed_everything(tcfg.seed)
        # 3. data and tokenizer (a resumed run keeps the checkpoint's vocabulary)
        tokenizer = load_tokenizer(loaded.path) if loaded else None
        tokenizer, train_ids, val_ids = load_lm_data(config.data, tokenizer)
        # 4. the model: from the checkpoint's weights, or freshly initialised (the same on every rank)
        model_cfg = config.model.resolve(tokenizer.vocab_size)
        if loaded:
            model = LanguageModel.from_pretrained(loaded.path)
            _check_same_model(model.config, model_cfg, loaded.path)
        else:
            model = LanguageModel(model_cfg)
        model.to(device)
        if config.data.stateful and state_grows(model):
            growing = sorted({n for n in model_cfg.layer_mixers() if _grows(model_cfg, n)})
            raise UserError(f"data.stateful carries the state across a whole stream, but mixer(s) {', '.join(growing)} "
                            "keep a state that grows with every token; use recurrent mixers or data.stateful false")
        torch.manual_seed(tcfg.seed + 7919 * info.rank)  # dropout differs between ranks
        task = LMTask(train_ids, val_ids, config.data, seed=tcfg.seed, rank=info.rank,
                      world_size=info.world_size, device=device)
        # 5. train
        record = {"config": config.to_dict(), "tokenizer_kind": tokenizer.kind}
        trainer = Trainer(model, task, config.optim, tcfg, device=device, dist_info=info, record=record,
                          extra_writer=lambda d: save_tokenizer(tokenizer, d), callbacks=callbacks,
                          handle_sigint=handle_sigint)
        if info.is_main:
            n = sum(p.numel() for p in model.parameters())
            trainer_msg = (f"model: {model_cfg.n_layers} layers {model_cfg.pattern} d_model {model_cfg.d_model}, "
                           f"{n:,} parameters; data: {train_ids.numel():,} training / {val_ids.numel():,} "
                           f"validation tokens, vocabulary {tokenizer.vocab_size}; "
                           f"{info.world_size} process(es) on {device}")
            print(trainer_msg + (f"; resuming at step {loaded.state['step']}" if loaded else ""), flush=True)
        return trainer.fit(resume=loaded)
    finally:
        teardown()


def _grows(model_cfg: Any, name: str) -> bool:
    from seqmix.mixers.registry import build_mixer

    with torch.device("meta"):
        mixer = build_mixer(name, model_cfg.d_model, **model_cfg.options_for(name))
    return state_grows(mixer)


def state_grows(module: Any) -> bool:
    """Whether ``module``'s state keeps growing with the context (a KV cache) rather than staying bounded
    (a recurrence, or a sliding window once full): compared at two long contexts."""
    return module.state_size(1 << 21) != module.state_size(1 << 20)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    corpus: Optional[str] = None,
    seq_len: Optional[int] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    precision: Optional[str] = None,
    split: str = "valid",
) -> dict:
    """Metrics of a checkpoint over the whole validation (or test) split of its (or another) corpus."""
    model, tokenizer, directory = load_model_and_tokenizer(checkpoint)
    saved = ckpt.read_json(directory / "trainer.json").get("config", {}) if (directory / "trainer.json").exists() else {}
    data = dict(saved.get("data", {}))
    data["tokenizer"] = tokenizer.kind
    if corpus is not None:
        data["corpus"] = corpus
    if seq_len is not None:
        data["seq_len"] = seq_len
    if batch_size is not None:
        data["eval_batch_size"] = batch_size
    known = {f.name for f in dataclasses.fields(DataConfig)}
    data_cfg = DataConfig(**{k: v for k, v in data.items() if k in known})
    precision = precision or saved.get("trainer", {}).get("precision", "fp32")
    info, dev = setup(device)
    try:
        _, train_ids, val_ids = load_lm_data(data_cfg, tokenizer, split=split)
        model.to(dev).eval()
        task = LMTask(train_ids, val_ids, data_cfg, seed=0, rank=info.rank, world_size=info.world_size, device=dev)
        autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else None
        metrics = task.evaluate(model, autocast=autocast)
    finally:
        teardown()
    return {**metrics, "checkpoint": str(directory), "tokenizer": tokenizer.kind, "split": split}
