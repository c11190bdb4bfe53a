"""Task kind ``classify``: sequence classification on ListOps with a ``SequenceClassifier`` over any mixer.

Data: the fixed 8000/1000/1000 split of ListOps (``seqmix.data.listops``), a fixed 18-token
vocabulary (so nothing is saved beside the weights). Training batches are length-bucketed and
right-padded, with the true lengths passed to the model; micro-batch i is a pure function of
(seed, rank, i): epoch ``i // batches_per_epoch`` is shuffled by ``numpy.random.default_rng([seed,
epoch])`` and process r takes its batches r, r + world, ... of it. ``data.max_len`` skips longer
TRAINING examples (evaluation always covers the whole split). Metrics: accuracy and mean
cross-entropy over the whole split, with the majority-class accuracy (the most frequent training
label) beside them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from seqmix import options
from seqmix.errors import UserError
from seqmix.models.config import ClassifierConfig
from seqmix.train.distributed import all_reduce_sum
from seqmix.train.config import FromData
from seqmix.train.kinds import BuildContext, Built, EvalContext, TaskKind

__all__ = ["KIND", "ClassifyModelConfig", "ClassifyDataConfig", "ClassifyTask"]


@dataclass
class ClassifyModelConfig(FromData, ClassifierConfig):
    """The ``SequenceClassifier`` (``seqmix.models.ClassifierConfig``); sizes 0 are taken from the data."""

    vocab_size: int = 0  # token ids the embedding accepts; 0 = the data's vocabulary (ListOps: 18)
    n_classes: int = 0  # output classes; 0 = the data's (ListOps: 10)

    from_data: ClassVar[tuple[str, ...]] = ("vocab_size", "n_classes")
    builds: ClassVar[type] = ClassifierConfig


@dataclass
class ClassifyDataConfig:
    """ListOps data ('label<TAB>expression' lines) and how it is batched."""

    path: Optional[str] = None  # the ListOps file; None = ../shared/data/listops/test_d20s.tsv (or $SEQMIX_DATA/listops/...)
    keep_parens: bool = False  # keep the '(' ')' of the binarized trees as tokens (the paper's sequence models drop them)
    max_len: Optional[int] = None  # training examples with more tokens are skipped (None = keep all); evaluation keeps all
    batch_size: int = 32  # examples per training micro-batch (bucketed by length)
    eval_batch_size: int = 128  # at most this many examples per evaluation batch
    eval_max_tokens: int = 32768  # and at most this many padded tokens (batch x longest length) per evaluation batch

    def __post_init__(self) -> None:
        try:
            options.boolean("data.keep_parens", self.keep_parens)
            for name in ("batch_size", "eval_batch_size", "eval_max_tokens"):
                options.positive_int(f"data.{name}", getattr(self, name))
            if self.max_len is not None:
                options.positive_int("data.max_len", self.max_len)
        except ValueError as exc:
            raise UserError(str(exc)) from None


@dataclass
class ClassifyBatch:
    tokens: torch.Tensor  # [B, T] right-padded
    lengths: torch.Tensor  # [B]
    labels: torch.Tensor  # [B]


class ClassifyTask:
    """Batches, loss and whole-split evaluation for the ``Trainer`` (see seqmix.train.trainer)."""

    def __init__(self, train: tuple[list[np.ndarray], np.ndarray], valid: tuple[list[np.ndarray], np.ndarray],
                 cfg: ClassifyDataConfig, *, seed: int, rank: int = 0, world_size: int = 1,
                 device: Any = "cpu") -> None:
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.device = torch.device(device)
        seqs, labels = train
        keep = [i for i, s in enumerate(seqs) if cfg.max_len is None or len(s) <= cfg.max_len]
        self.skipped = len(seqs) - len(keep)
        self.train_seqs, self.train_labels = [seqs[i] for i in keep], labels[keep]
        self.valid_seqs, self.valid_labels = valid
        if not self.train_seqs:
            raise UserError(f"data.max_len {cfg.max_len} skips every training example; raise it")
        n_batches = -(-len(self.train_seqs) // cfg.batch_size)
        self.batches_per_epoch = n_batches // world_size
        if self.batches_per_epoch < 1:
            raise UserError(f"{len(self.train_seqs)} training examples make {n_batches} batch(es) of "
                            f"data.batch_size {cfg.batch_size}, fewer than the {world_size} processes")
        self._lengths = np.asarray([len(s) for s in self.train_seqs])
        self._epoch: Optional[int] = None
        self._epoch_batches: list[np.ndarray] = []

    # ------------------------------------------------------------------ training
    def batch(self, index: int) -> ClassifyBatch:
        """Micro-batch ``index`` of this process (a pure function of seed, rank and index)."""
        from seqmix.data.listops import bucket_batches

        epoch, j = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_batches = bucket_batches(self._lengths, self.cfg.batch_size, rng)
            self._epoch = epoch
        idx = self._epoch_batches[j * self.world_size + self.rank]
        return self._collate([self.train_seqs[i] for i in idx], self.train_labels[idx])

    def _collate(self, seqs: list[np.ndarray], labels: np.ndarray) -> ClassifyBatch:
        from seqmix.data.listops import pad_batch

        tokens, lengths = pad_batch(seqs)
        return ClassifyBatch(tokens.to(self.device), lengths.to(self.device),
                             torch.as_tensor(labels, dtype=torch.long).to(self.device))

    unit = "examples"  # n_items of a batch (the trainer logs examples and examples_per_s)

    def loss(self, model: torch.nn.Module, batch: ClassifyBatch) -> tuple[torch.Tensor, int]:
        logits = model(batch.tokens, batch.lengths)  # [B, n_classes]
        return F.cross_entropy(logits.float(), batch.labels), int(batch.labels.numel())

    def rank_state(self) -> dict[str, torch.Tensor]:
        return {}  # nothing is carried between batches

    def load_rank_state(self, tensors: Optional[dict[str, torch.Tensor]]) -> None:
        return None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, autocast: Any = None) -> dict[str, float]:
        return evaluate_split(model, self.valid_seqs, self.valid_labels, self.cfg, self.device, autocast,
                              self.rank, self.world_size, majority=majority_class(self.train_labels))


def majority_class(labels: np.ndarray) -> int:
    return int(np.bincount(labels).argmax())


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, seqs: list[np.ndarray], labels: np.ndarray, cfg: ClassifyDataConfig,
                   device: torch.device, autocast: Any = None, rank: int = 0, world_size: int = 1,
                   majority: Optional[int] = None) -> dict[str, float]:
    """Loss and accuracy over every example (batches sorted by length; processes take every world-th)."""
    from seqmix.data.listops import length_sorted_batches, pad_batch

    ctx = autocast if autocast is not None else contextlib.nullcontext
    nll, correct = 0.0, 0.0
    batches = length_sorted_batches([len(s) for s in seqs], cfg.eval_batch_size, cfg.eval_max_tokens)
    with ctx():
        for idx in batches[rank::world_size]:
            tokens, lengths = pad_batch([seqs[i] for i in idx])
            target = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
            logits = model(tokens.to(device), lengths.to(device)).float()  # [b, n_classes]
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += float((logits.argmax(-1) == target).sum())
    nll, correct = all_reduce_sum([nll, correct], device)
    n = len(seqs)
    out = {"loss": nll / n, "accuracy": correct / n, "examples": n}
    if majority is not None:
        out["majority_accuracy"] = float(np.mean(labels == majority))
    return out


def _load(cfg: ClassifyDataConfig, path: Optional[str] = None):
    from seqmix.data.listops import split_listops

    return split_listops(path if path is not None else cfg.path)


def build(ctx: BuildContext) -> Built:
    from seqmix.data.listops import N_CLASSES, VOCAB
    from seqmix.models import SequenceClassifier

    config, data = ctx.config, ctx.config.data
    # 1. data: the fixed split, encoded
    splits = _load(data)
    train = (splits.encoded("train", data.keep_parens), splits.labels["train"])
    valid = (splits.encoded("valid", data.keep_parens), splits.labels["valid"])
    # 2. the model
    model_cfg = config.model.resolve(len(VOCAB), N_CLASSES)
    model = ctx.model(SequenceClassifier, model_cfg)
    # 3. the task
    task = ClassifyTask(train, valid, data, seed=config.trainer.seed, rank=ctx.rank, world_size=ctx.world_size,
                        device=ctx.device)
    n = sum(p.numel() for p in model.parameters())
    flags = [f for f, on in (("bidirectional", model_cfg.bidirectional), ("dense", model_cfg.dense)) if on]
    describe = (f"model: {model_cfg.n_layers} layers {model_cfg.pattern} d_model {model_cfg.d_model}"
                f"{' ' + ' '.join(flags) if flags else ''}, pooling {model_cfg.pooling}, {n:,} parameters; "
                f"data: ListOps {len(task.train_seqs):,} training / {len(valid[0]):,} validation examples"
                f"{f' ({task.skipped} longer than max_len skipped)' if task.skipped else ''}, mean length "
                f"{np.mean(task._lengths):.1f} tokens, vocabulary {len(VOCAB)}")
    return Built(model=model, task=task, describe=describe, record={"data_sha256": splits.sha256})


def evaluate(ctx: EvalContext) -> dict:
    from seqmix.models import SequenceClassifier

    data = ctx.data_config()
    model = ctx.load(SequenceClassifier)
    splits = _load(data, ctx.data)
    seqs, labels = splits.encoded(ctx.split, data.keep_parens), splits.labels[ctx.split]
    autocast = ctx.autocast()
    metrics = evaluate_split(model, seqs, labels, data, ctx.device, autocast,
                             majority=majority_class(splits.labels["train"]))
    return {**metrics, "data_sha256": splits.sha256}


def summary(m: dict) -> str:
    n = int(m["examples"])
    text = f"accuracy {m['accuracy']:.4f} ({round(m['accuracy'] * n):,}/{n:,} examples), loss {m['loss']:.4f}"
    if "majority_accuracy" in m:
        text += f"; majority class {m['majority_accuracy']:.4f}"
    return text


KIND = TaskKind(
    name="classify",
    description="sequence classification: ListOps with a SequenceClassifier over any mixer (accuracy)",
    model_config=ClassifyModelConfig,
    data_config=ClassifyDataConfig,
    build=build,
    evaluate=evaluate,
    summary=summary,
)
