"""Task kind ``lm``: next-token prediction on a text corpus (the default of ``seqmix train``).

The corpus is read and the tokenizer fitted (or, resuming, reloaded from the checkpoint), the
``LanguageModel`` built, and ``seqmix.train.data.LMTask`` draws the windows and evaluates the whole
validation split. The tokenizer is saved with every checkpoint, so ``seqmix eval`` and
``seqmix generate`` need nothing but the directory.
"""

from __future__ import annotations

import dataclasses

import torch

from seqmix.errors import UserError
from seqmix.train.config import DataConfig, LMModelConfig
from seqmix.train.data import LMTask, load_lm_data
from seqmix.train.kinds import BuildContext, Built, EvalContext, TaskKind
from seqmix.train.run import state_grows

__all__ = ["KIND"]


def _grows(model_cfg, name: str) -> bool:
    from seqmix.mixers.registry import build_mixer

    with torch.device("meta"):
        mixer = build_mixer(name, model_cfg.d_model, **model_cfg.options_for(name))
    return state_grows(mixer)


def build(ctx: BuildContext) -> Built:
    from seqmix.data.tokenizers import load_tokenizer, save_tokenizer
    from seqmix.models import LanguageModel

    config = ctx.config
    # 1. data and tokenizer (a resumed run keeps the checkpoint's vocabulary)
    tokenizer = load_tokenizer(ctx.loaded.path) if ctx.loaded else None
    tokenizer, train_ids, val_ids = load_lm_data(config.data, tokenizer)
    # 2. the model
    model_cfg = config.model.resolve(tokenizer.vocab_size)
    model = ctx.model(LanguageModel, model_cfg)
    if config.data.stateful and state_grows(model):
        growing = sorted({n for n in model_cfg.layer_mixers() if _grows(model_cfg, n)})
        raise UserError(f"data.stateful carries the state across a whole stream, but mixer(s) {', '.join(growing)} "
                        "keep a state that grows with every token; use recurrent mixers or data.stateful false")
    # 3. the task (seeded per rank by the caller)
    task = LMTask(train_ids, val_ids, config.data, seed=config.trainer.seed, rank=ctx.rank,
                  world_size=ctx.world_size, device=ctx.device)
    n = sum(p.numel() for p in model.parameters())
    describe = (f"model: {model_cfg.n_layers} layers {model_cfg.pattern} d_model {model_cfg.d_model}, "
                f"{n:,} parameters; data: {train_ids.numel():,} training / {val_ids.numel():,} "
                f"validation tokens, vocabulary {tokenizer.vocab_size}")
    return Built(model=model, task=task, save_extra=lambda d: save_tokenizer(tokenizer, d), describe=describe,
                 record={"tokenizer_kind": tokenizer.kind})


def evaluate(ctx: EvalContext) -> dict:
    from seqmix.data.tokenizers import load_tokenizer
    from seqmix.models import LanguageModel

    model = ctx.load(LanguageModel)
    tokenizer = load_tokenizer(ctx.directory)
    data = dataclasses.asdict(ctx.config.data)
    data["tokenizer"] = tokenizer.kind
    if ctx.data is not None:
        data["corpus"] = ctx.data
    if ctx.seq_len is not None:
        data["seq_len"] = ctx.seq_len
    if ctx.batch_size is not None:
        data["eval_batch_size"] = ctx.batch_size
    data_cfg = DataConfig(**data)
    _, train_ids, val_ids = load_lm_data(data_cfg, tokenizer, split=ctx.split)
    task = LMTask(train_ids, val_ids, data_cfg, seed=0, device=ctx.device)
    autocast = ctx.autocast()
    return {**task.evaluate(model, autocast=autocast), "tokenizer": tokenizer.kind}


def summary(m: dict) -> str:
    unit = {"char": "char", "byte": "byte", "word": "word"}.get(m.get("tokenizer"), "token")
    text = f"loss {m['loss']:.4f} nats/{unit}, perplexity {m['ppl']:.2f}, {m['bits_per_token']:.4f} bits/{unit}"
    return text + (f" over {int(m['tokens']):,} tokens" if "tokens" in m else "")


KIND = TaskKind(
    name="lm",
    description="language modelling: next-token prediction on a text corpus",
    model_config=LMModelConfig,
    data_config=DataConfig,
    build=build,
    evaluate=evaluate,
    summary=summary,
    eval_options=("batch_size", "data", "seq_len"),
)
