"""The ``seqmix train``, ``seqmix eval`` and ``seqmix generate`` commands (typed, for jsonargparse).

Each is a thin function over the library: ``seqmix.train.run.train``, ``evaluate_checkpoint`` and
``seqmix.generation.generate``. Every flag can come from a YAML file (``--config FILE``) and dotted
flags override it (``--optim.lr 3e-3``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import torch

from seqmix.errors import UserError
from seqmix.train.config import DataConfig, LMModelConfig, OptimConfig, TrainConfig, TrainerConfig

__all__ = ["train_command", "train_command_for", "task_from_argv", "eval_command", "generate_command", "explain_argument_error", "INTERRUPTED_EXIT_CODE"]

INTERRUPTED_EXIT_CODE = 130  # the shell's convention for a run stopped by Ctrl-C (the checkpoint is written)


def train_command(
    model: LMModelConfig = LMModelConfig(),
    data: DataConfig = DataConfig(),
    optim: OptimConfig = OptimConfig(),
    trainer: TrainerConfig = TrainerConfig(),
    resume: bool = False,
    task: str = "lm",
) -> None:
    """Train a model; checkpoints go to trainer.out_dir/last (and best).

    Args:
        model: the model: width, depth, mixer pattern, per-mixer options (see seqmix list).
        data: the data and how it is batched.
        optim: optimizer, learning-rate schedule, weight decay, gradient clipping.
        trainer: steps, time budget, precision, evaluation/checkpoint intervals, output directory.
        resume: continue the run in trainer.out_dir from its last checkpoint.
        task: what is trained: lm (default), seq2seq, seqrec, classify or forecast; it decides what
            the model and data sections hold (seqmix train --task NAME --help lists them).
    """
    from seqmix.train.kinds import get_kind
    from seqmix.train.metrics import format_duration
    from seqmix.train.run import train

    result = train(TrainConfig(task=task, model=model, data=data, optim=optim, trainer=trainer), resume=resume)
    where = result.checkpoint or f"{trainer.out_dir}/last"
    if result.interrupted:
        if _is_main_process():
            print(f"interrupted at step {result.step}; checkpoint {where}; continue with --resume true", flush=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
    if not _is_main_process():  # under torchrun, rank 0 reports for everyone
        return
    ev = result.final_eval or {}
    summary = f"done: {result.step} steps ({result.stopped_by}), training time {format_duration(result.train_seconds)}"
    if ev:
        summary += f"; validation {get_kind(task).summary(ev)}"
    print(f"{summary}; checkpoint {where}", flush=True)


def train_command_for(task: str):
    """``train_command`` with the ``model`` and ``data`` parameters typed by task kind ``task``, so that
    jsonargparse validates and documents that kind's sections (``--model.d_model``, ``--help``)."""
    from seqmix.train.kinds import get_kind

    if task == "lm":
        return train_command
    kind = get_kind(task)

    def command(model=None, data=None, optim: OptimConfig = OptimConfig(), trainer: TrainerConfig = TrainerConfig(),
                resume: bool = False, task: str = task) -> None:
        if task != kind.name:
            raise UserError(f"task {task!r} given after the {kind.name!r} recipe was read; give one task")
        train_command(model, data, optim, trainer, resume, task)

    command.__defaults__ = (kind.model_config(), kind.data_config(), OptimConfig(), TrainerConfig(), False, task)
    command.__annotations__ = {"model": kind.model_config, "data": kind.data_config, "optim": OptimConfig,
                               "trainer": TrainerConfig, "resume": bool, "task": str, "return": None}
    command.__doc__ = train_command.__doc__.replace("Train a model;", f"Train a model for task {task} ({kind.description});")
    command.__name__ = command.__qualname__ = "train_command"
    return command


def task_from_argv(argv: list[str]) -> str:
    """The task a ``seqmix train`` command line asks for: ``--task NAME``, else the ``task:`` key of its
    ``--config`` files (the last one that has it), else ``lm``."""
    task = None
    for i, arg in enumerate(argv):
        value = None
        if arg in ("--task", "--config") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("--task=", "--config=")):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        if arg.startswith("--task"):
            return value
        task = _task_of_config(value) or task
    return task or "lm"


def _task_of_config(path: str) -> Optional[str]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse reports the unreadable file itself
    task = content.get("task") if isinstance(content, dict) else None
    return task if isinstance(task, str) else None


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def eval_command(
    checkpoint: str,
    split: str = "valid",
    data: Optional[str] = None,
    batch_size: Optional[int] = None,
    seq_len: Optional[int] = None,
    device: str = "auto",
    format: str = "text",
    threads: Optional[int] = None,
) -> None:
    """Evaluate a checkpoint on a whole split with its task's metrics; they are also appended to the
    run's metrics.jsonl.

    Args:
        checkpoint: a checkpoint directory (runs/NAME/last) or a run directory (runs/NAME).
        split: "valid" or "test".
        data: other data for the same task (language models: a text file or Penn Treebank directory).
        batch_size: evaluation batch size (default: the training config's).
        seq_len: language models: evaluation window length (default: the training seq_len).
        device: "auto", "cpu", "cuda" or "cuda:N".
        format: "text" for people, "json" for programs.
        threads: torch CPU threads (None = PyTorch's default).
    """
    from seqmix.train.kinds import get_kind
    from seqmix.train.run import evaluate_checkpoint

    _set_threads(threads)
    if format not in ("text", "json"):
        raise UserError(f"format must be 'text' or 'json', got {format!r}")
    m = evaluate_checkpoint(checkpoint, split=split, data=data, batch_size=batch_size, seq_len=seq_len, device=device)
    if _is_main_process():
        _append_eval_record(m)
    if format == "json":
        print(json.dumps(m))
        return
    name = "validation" if split == "valid" else "test"
    print(f"{m['checkpoint']}: {name} {get_kind(m['task']).summary(m)}")


def _append_eval_record(metrics: dict) -> None:
    """Append the evaluation to metrics.jsonl of the run the checkpoint belongs to (kind "checkpoint_eval")."""
    import time
    from pathlib import Path

    directory = Path(metrics["checkpoint"])
    run = directory.parent if directory.name in ("last", "best", ".last.old", ".best.old") else directory
    record = {"kind": "checkpoint_eval", "time": round(time.time(), 3), **metrics}
    try:
        with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:  # a read-only checkpoint still gets evaluated
        print(f"warning: could not append to {run / 'metrics.jsonl'}: {exc}", file=sys.stderr)


def generate_command(
    checkpoint: str,
    prompt: str = "\n",
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    stop: Optional[str] = None,
    num_samples: int = 1,
    seed: Optional[int] = None,
    device: str = "auto",
    max_context: Optional[int] = None,
    threads: Optional[int] = None,
) -> None:
    """Continue a prompt with a trained model, printing the text as it is generated.

    Args:
        checkpoint: a checkpoint directory (runs/NAME/last) or a run directory (runs/NAME).
        prompt: the text to continue (every character must be in the model's vocabulary).
        max_new_tokens: tokens to generate after the prompt.
        temperature: sampling temperature; 0 = greedy.
        top_k: sample among the k most likely tokens only.
        top_p: sample from the smallest set of tokens whose probability reaches top_p (nucleus).
        stop: stop a sample when it emits this token (text that encodes to exactly one token).
        num_samples: independent samples, generated as one batch (streamed when 1).
        seed: seed of the sampler, for reproducible samples.
        device: "auto", "cpu", "cuda" or "cuda:N".
        max_context: for models whose state grows (softmax attention), the longest context they are
            given: past it, generation restarts from the last max_context/2 tokens, so positions never
            exceed those seen in training. Default: the checkpoint's training seq_len; 0 = no limit.
            Recurrent models and sliding windows keep their O(1) state and ignore it.
        threads: torch CPU threads (None = PyTorch's default; 1 is often fastest for small models).
    """
    from seqmix.train.distributed import setup
    from seqmix.train.run import load_model_and_tokenizer, state_grows

    if not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"num_samples must be a positive int, got {num_samples!r}")
    if not prompt:
        raise UserError("the prompt is empty; give at least one token of text to continue (e.g. --prompt 'ROMEO:')")
    _set_threads(threads)
    _, dev = setup(device)
    model, tokenizer, directory = load_model_and_tokenizer(checkpoint, device=dev)
    if max_context is None:
        max_context = _training_seq_len(directory)
    if not isinstance(max_context, int) or max_context < 0 or max_context == 1:
        raise UserError(f"max_context must be 0 (no limit) or an int >= 2, got {max_context!r}")
    if not state_grows(model):  # a bounded state (recurrence, sliding window) needs no window
        max_context = 0
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as exc:
        raise UserError(f"prompt: {exc}") from None
    if not ids:
        raise UserError(f"the prompt {prompt!r} encodes to no tokens; give some text to continue")
    stop_token = None
    if stop is not None:
        try:
            stop_ids = tokenizer.encode(stop)
        except ValueError as exc:
            raise UserError(f"stop: {exc}") from None
        if len(stop_ids) != 1:
            raise UserError(f"stop must be text that encodes to exactly one token, {stop!r} gives {len(stop_ids)}")
        stop_token = stop_ids[0]
    generator = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
    tokens = torch.tensor([ids] * num_samples, dtype=torch.long, device=dev)  # [S, T]
    stream = _Streamer(tokenizer, ids) if num_samples == 1 else None
    if stream:
        stream.write(prompt)
    try:
        out = _generate_windowed(model, tokens, max_new_tokens, max_context, temperature=temperature, top_k=top_k,
                                 top_p=top_p, stop_token=stop_token, generator=generator,
                                 callback=stream.callback if stream else None)
    except (ValueError, TypeError) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    if stream:
        stream.finish()
        return
    for i, row in enumerate(out.tolist()):
        print(f"--- sample {i + 1}")
        print(tokenizer.decode(row), flush=True)


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise UserError(f"threads must be a positive int, got {threads!r}")
        torch.set_num_threads(threads)


def _training_seq_len(directory) -> int:
    from seqmix.train.checkpoint import read_json

    path = directory / "trainer.json"
    if not path.is_file():
        return 0
    return int(read_json(path).get("config", {}).get("data", {}).get("seq_len", 0) or 0)


def _generate_windowed(model, tokens: torch.Tensor, max_new_tokens: int, max_context: int, *,
                       stop_token: Optional[int], **sampling) -> torch.Tensor:
    """``seqmix.generation.generate`` over a context of at most ``max_context`` tokens (0: unlimited).

    1. generate from the last ``max_context`` tokens until the context is full;
    2. keep the last ``max_context // 2`` tokens, prefill them again and go on (a sequence that has
       emitted ``stop_token`` keeps emitting it, as in one ``generate`` call).
    """
    from seqmix.generation import generate

    if not max_context:
        return generate(model, tokens, max_new_tokens, stop_token=stop_token, **sampling)
    out, context = tokens, tokens[:, -max_context:]
    stopped = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)  # [B]
    remaining = max_new_tokens
    while remaining > 0:
        if context.shape[1] >= max_context:
            context = context[:, -(max_context // 2):]
        n = min(remaining, max_context - context.shape[1])
        new = generate(model, context, n, stop_token=stop_token, **sampling)[:, context.shape[1]:]  # [B, <= n]
        if stop_token is not None:
            new = torch.where(stopped[:, None], torch.full_like(new, stop_token), new)
            stopped |= (new == stop_token).any(dim=1)
        out, context = torch.cat([out, new], dim=1), torch.cat([context, new], dim=1)
        remaining -= n
        if new.shape[1] < n or (stop_token is not None and bool(stopped.all())):
            break
    return out


class _Streamer:
    """Prints the decoded text as tokens arrive; holds back a trailing partial UTF-8 character."""

    def __init__(self, tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.shown = tokenizer.decode(self.ids)

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def callback(self, i: int, token: torch.Tensor) -> None:
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a byte sequence still incomplete
            return
        if text.startswith(self.shown):
            self.write(text[len(self.shown):])
        self.shown = text

    def finish(self) -> None:
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.shown):
            self.write(text[len(self.shown):])
        self.write("\n")


def explain_argument_error(message: str, task: str = "lm") -> str:
    """One line for a jsonargparse error; an unknown key of a ``task`` recipe also lists the allowed ones."""
    import re

    from seqmix.train.config import SECTIONS, section_keys

    text = " ".join(str(message).split())
    match = re.search(r"does not accept option '([\w.]+)'", text) or re.search(r"unrecognized arguments: --([\w.]+)", text)
    if not match:
        return text
    key = match.group(1)
    section, _, rest = key.partition(".")
    if section in SECTIONS and rest:
        return f"unknown config key {key!r}; allowed keys in {section!r}: {', '.join(section_keys(section, task))}"
    if section not in SECTIONS and "Subcommand 'train'" in text:
        return (f"unknown config key {key!r}: {section!r} is not a section of the training config; "
                f"its sections are {', '.join(SECTIONS)} (and the keys task and resume)")
    return text
