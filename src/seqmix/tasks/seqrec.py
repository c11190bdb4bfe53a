"""Task kind ``seqrec``: sequential recommendation on a ``user item`` file, leave-one-out.

Data and split: ``seqmix.data.seqrec`` (SASRec's format and leave-one-out split; users with fewer than
3 interactions only train). Model: ``seqmix.models.Recommender`` with ``objective`` causal (SASRec) or
cloze (BERT4Rec), any mixer.

Training examples (one per training user, the most recent ``max_len`` items of the training sequence):

* causal: inputs ``s_1 .. s_{L-1}``, targets ``s_2 .. s_L`` (the next item at every position);
* cloze: every item replaced by [mask] with probability ``mask_prob`` (at least one per sequence: the
  last when the draw masks none); the targets are the masked items.

Losses: ``bce`` is SASRec's: per target, -log sigmoid(s+) - log(1 - sigmoid(s-)) with one negative
drawn uniformly from the items outside the user's training sequence; ``ce`` is the cross-entropy of a
softmax over the whole catalogue (BERT4Rec's loss; with ~24k items it costs one [P, D] x [D, N]
product). Micro-batch ``i`` is a pure function of (seed, rank, i): an epoch is a seeded permutation of
the training users cut into batches of ``batch_size``; with ``bucket`` the users are first sorted by
length (ties in the permutation's order), so a batch holds similar lengths and little padding, and the
batches are shuffled.

Evaluation (whole split, every user with >= 3 interactions): the history (training sequence, plus the
validation item for ``test``; the last ``max_len`` items, ``max_len - 1`` and a trailing [mask] for
cloze) is encoded and its last position scores the items. Reported: HR@k, NDCG@k (k = 1, 5, 10) and
MRR against 100 sampled negatives (``sampled_*``; fixed by ``eval_seed``, see ``seqmix.data.seqrec``)
and against the full catalogue minus the history (``full_*``), ties pessimistic; ``loss`` is the
cross-entropy of the target under a softmax over the whole catalogue (the trainer keeps ``best/`` by it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from seqmix import options
from seqmix.data.seqrec import EvalSplit, Interactions, eval_split, read_interactions
from seqmix.errors import UserError
from seqmix.models.recommender import Recommender, RecommenderConfig
from seqmix.tasks.ranking import KS, full_rank, pessimistic_rank, rank_sums
from seqmix.train.distributed import all_reduce_sum
from seqmix.train.config import FromData
from seqmix.train.kinds import BuildContext, Built, EvalContext, TaskKind

__all__ = ["KIND", "SeqRecModelConfig", "SeqRecDataConfig", "SeqRecTask", "RecBatch", "LOSSES"]

LOSSES = ("bce", "ce")


@dataclass
class SeqRecModelConfig(FromData, RecommenderConfig):
    """The recommender (``seqmix.models.RecommenderConfig``); ``n_items`` 0 means: from the data."""

    d_model: int = 64  # width of the residual stream (SASRec: 50)
    n_layers: int = 2  # number of blocks (SASRec: 2)
    dropout: float = 0.2  # dropout on the item embeddings and on each residual branch
    n_items: int = 0  # catalogue size; 0 = the number of distinct items in data.path

    from_data: ClassVar[tuple[str, ...]] = ("n_items",)
    builds: ClassVar[type] = RecommenderConfig


@dataclass
class SeqRecDataConfig:
    """The interactions, how training examples are drawn, and the evaluation protocol."""

    path: Optional[str] = None  # 'user item' file (time-ordered per user); None = SASRec's Video.txt in ../shared/data/seqrec/sasrec_video
    max_len: int = 50  # the most recent items a sequence keeps (SASRec: 50 on the sparse Amazon data)
    batch_size: int = 128  # users per micro-batch on each process
    eval_batch_size: int = 512  # users per evaluation batch
    loss: str = "ce"  # "ce" (softmax over the whole catalogue) or "bce" (SASRec: one sampled negative per target)
    mask_prob: float = 0.2  # cloze only: probability that an item is replaced by [mask]
    bucket: bool = True  # batch users of similar length together (less padding; the data order stays seeded)
    n_negatives: int = 100  # sampled evaluation: negatives per user
    eval_seed: int = 0  # seed of the sampled negatives (keep it fixed to compare runs and models)

    def __post_init__(self) -> None:
        try:
            for name in ("max_len", "batch_size", "eval_batch_size", "n_negatives"):
                options.positive_int(f"data.{name}", getattr(self, name))
            options.boolean("data.bucket", self.bucket)
            self.mask_prob = options.number("data.mask_prob", self.mask_prob, minimum=0, strict=True)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.loss not in LOSSES:
            raise UserError(f"data.loss must be one of {', '.join(map(repr, LOSSES))}, got {self.loss!r}")
        if self.mask_prob > 1:
            raise UserError(f"data.mask_prob must be in (0, 1], got {self.mask_prob!r}")
        if self.max_len < 2:
            raise UserError(f"data.max_len must be at least 2 (a history and a target), got {self.max_len!r}")
        if not isinstance(self.eval_seed, int) or isinstance(self.eval_seed, bool) or self.eval_seed < 0:
            raise UserError(f"data.eval_seed must be an int >= 0, got {self.eval_seed!r}")
        if self.path is not None and not isinstance(self.path, str):
            raise UserError(f"data.path must be a file path or null, got {self.path!r}")


@dataclass
class RecBatch:
    items: torch.Tensor  # [B, T] inputs, right-padded with 0 (cloze: some replaced by [mask])
    lengths: torch.Tensor  # [B] real positions per row
    targets: torch.Tensor  # [B, T] the item each position must score, 0 = no target there
    negatives: Optional[torch.Tensor] = None  # [B, T] bce: one sampled negative per target


def _pad(rows: list[np.ndarray], width: Optional[int] = None) -> np.ndarray:
    """Right-pad integer rows with 0 to ``[len(rows), width]``."""
    width = width or max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _exact_lengths(model: torch.nn.Module) -> bool:
    """Whether the model has a mixer built non-causal (it would attend over padding): batch equal lengths."""
    from seqmix.models.bidirectional import Bidirectional

    inner = getattr(model, "module", model)
    return any(not getattr(b.mixer, "causal", True) and not isinstance(b.mixer, Bidirectional) for b in inner.blocks)


def _groups(lengths: np.ndarray, size: int, exact: bool) -> list[np.ndarray]:
    """Cut positions ``0..len-1`` (already in the wanted order) into groups of at most ``size``;
    with ``exact``, a group never mixes two lengths."""
    if not exact:
        return [np.arange(a, min(a + size, len(lengths))) for a in range(0, len(lengths), size)]
    out = []
    bounds = np.flatnonzero(np.diff(lengths)) + 1
    for run in np.split(np.arange(len(lengths)), bounds):
        out.extend(run[a: a + size] for a in range(0, len(run), size))
    return out


class SeqRecTask:
    """Batches, loss and whole-split ranking evaluation; see the module docstring."""

    def __init__(self, data: Interactions, cfg: SeqRecDataConfig, *, cloze: bool, seed: int, rank: int = 0,
                 world_size: int = 1, device: Any = "cpu", exact_lengths: bool = False,
                 valid: Optional[EvalSplit] = None) -> None:
        self.data, self.cfg, self.cloze, self.seed = data, cfg, cloze, seed
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.exact = exact_lengths
        self.mask_id = data.n_items + 1
        # 1. one training sequence per user: the most recent max_len items (max_len + 1 for causal:
        #    max_len inputs and their next items); causal needs two items, cloze one
        keep = cfg.max_len if cloze else cfg.max_len + 1
        self.train_users = np.array([u for u, s in enumerate(data.train) if len(s) >= (1 if cloze else 2)], np.int64)
        self.seqs = [data.train[u][-keep:] for u in self.train_users]
        self.lengths = np.array([len(s) for s in self.seqs], np.int64)
        if len(self.train_users) < world_size:
            raise UserError(f"{len(self.train_users)} user(s) have training sequences, fewer than the "
                            f"{world_size} processes; use more data")
        self.batches_per_epoch = max(1, len(self._epoch(0)) // world_size)
        self._epoch_cache: tuple[int, list[np.ndarray]] = (-1, [])
        self.valid = valid  # built on first evaluation (drawing the negatives takes a few seconds)

    # ------------------------------------------------------------------ training
    def _epoch(self, epoch: int) -> list[np.ndarray]:
        """The batches (arrays of indices into ``self.seqs``) of ``epoch``, in training order."""
        rng = np.random.default_rng([self.seed, 17, epoch])
        order = rng.permutation(len(self.seqs))
        if self.cfg.bucket or self.exact:
            order = order[np.argsort(self.lengths[order], kind="stable")]
        groups = [order[g] for g in _groups(self.lengths[order], self.cfg.batch_size, self.exact)]
        if self.cfg.bucket or self.exact:
            groups = [groups[i] for i in rng.permutation(len(groups))]  # sorted batches, shuffled
        return groups

    def batch(self, index: int) -> RecBatch:
        """Micro-batch ``index`` of this process (a pure function of seed, rank and index)."""
        epoch, j = divmod(index, self.batches_per_epoch)
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, self._epoch(epoch))
        chosen = self._epoch_cache[1][j * self.world_size + self.rank]
        seqs = [self.seqs[i] for i in chosen]
        rng = np.random.default_rng([self.seed, self.rank, index])
        if self.cloze:
            items = _pad(seqs)  # [B, T]
            lengths = np.array([len(s) for s in seqs])
            real = items > 0
            masked = (rng.random(items.shape) < self.cfg.mask_prob) & real  # [B, T]
            none = ~masked.any(1)
            masked[np.flatnonzero(none), lengths[none] - 1] = True  # at least one target per sequence
            targets = np.where(masked, items, 0)
            items = np.where(masked, self.mask_id, items)
        else:
            full = _pad(seqs)  # [B, T + 1]
            items, targets = full[:, :-1], full[:, 1:]
            lengths = np.array([len(s) - 1 for s in seqs])
            targets = targets[:, : lengths.max()]
            items = np.where(targets > 0, items[:, : lengths.max()], 0)  # a row's last item is only a target
        negatives = None
        if self.cfg.loss == "bce":
            history = _pad([self.data.train[self.train_users[i]] for i in chosen])  # [B, H] the users' items
            negatives = self._negatives(rng, history, targets.shape)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        return RecBatch(items=t(items), lengths=t(lengths), targets=t(targets),
                        negatives=None if negatives is None else t(negatives))

    def _negatives(self, rng: np.random.Generator, history: np.ndarray, shape: tuple) -> np.ndarray:
        """One uniform item per position outside the row's training sequence (SASRec's sampler)."""
        neg = rng.integers(1, self.data.n_items + 1, size=shape)  # [B, T]
        for _ in range(100):
            clash = (neg[:, :, None] == history[:, None, :]).any(-1)  # [B, T]
            if not clash.any():
                return neg
            neg[clash] = rng.integers(1, self.data.n_items + 1, size=int(clash.sum()))
        raise UserError("could not draw negatives outside a user's history; the catalogue is too small for loss bce")

    unit = "targets"  # n_items of a batch: scored next-item (or masked-item) positions

    def loss(self, model: torch.nn.Module, batch: RecBatch) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets and their count."""
        inner = getattr(model, "module", getattr(model, "_orig_mod", model))
        z = model(batch.items, batch.lengths)  # [B, T, D]
        where = batch.targets > 0
        z, targets = z[where], batch.targets[where]  # [P, D], [P]
        if self.cfg.loss == "ce":
            logits = inner.score(z)  # [P, N]
            loss = F.cross_entropy(logits, targets - 1)
        else:
            scores = inner.score(z, torch.stack([targets, batch.negatives[where]], dim=-1))  # [P, 2]
            labels = torch.zeros_like(scores)
            labels[:, 0] = 1.0
            loss = F.binary_cross_entropy_with_logits(scores, labels, reduction="sum") / scores.shape[0]
        return loss, int(targets.numel())

    def rank_state(self) -> dict[str, torch.Tensor]:
        return {}  # batches are a pure function of the step: nothing to carry

    def load_rank_state(self, tensors: Optional[dict[str, torch.Tensor]]) -> None:
        pass

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: torch.nn.Module, autocast: Any = None) -> dict[str, float]:
        """Ranking metrics on the validation split (the negatives are drawn once, on first use)."""
        if self.valid is None:
            self.valid = eval_split(self.data, "valid", self.cfg.n_negatives, self.cfg.eval_seed)
        return evaluate_split(model, self.valid, self.data, self.cfg, cloze=self.cloze, exact=self.exact,
                              autocast=autocast, device=self.device, rank=self.rank, world_size=self.world_size)


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, split: EvalSplit, data: Interactions, cfg: SeqRecDataConfig, *,
                   cloze: bool, exact: bool = False, autocast: Any = None, device: Any = "cpu", rank: int = 0,
                   world_size: int = 1) -> dict[str, float]:
    """HR/NDCG@{1,5,10} and MRR (sampled and full catalogue) and the catalogue cross-entropy of ``split``.

    Steps: 1. each history is cut to what the model sees and sorted by length (little padding);
    2. per batch the last real position scores every item; 3. the target's rank among the sampled
    negatives and among all items outside the history; 4. sums over users, reduced over processes.
    """
    inner = getattr(model, "module", getattr(model, "_orig_mod", model))
    ctx = autocast if autocast is not None else contextlib.nullcontext
    keep = cfg.max_len - 1 if cloze else cfg.max_len
    # 1. inputs (cloze: the history then [mask]) in length order
    inputs = [np.append(h[-keep:], data.n_items + 1) if cloze else h[-keep:] for h in split.histories]
    lengths = np.array([len(x) for x in inputs], np.int64)
    order = np.argsort(lengths, kind="stable")
    groups = _groups(lengths[order], cfg.eval_batch_size, exact)[rank::world_size]
    sums: dict[str, float] = {}
    nll, users = 0.0, 0
    for g in groups:
        idx = order[g]
        items = torch.from_numpy(_pad([inputs[i] for i in idx])).to(device)  # [b, T]
        lens = torch.from_numpy(lengths[idx]).to(device)  # [b]
        targets = torch.from_numpy(split.targets[idx] - 1).to(device)  # [b] columns of the catalogue
        # 2. the representation at the last real position scores the catalogue
        with ctx():
            z = model(items, lens)  # [b, T, D]
        z_last = z[torch.arange(len(idx), device=device), lens - 1].float()  # [b, D]
        scores = inner.score(z_last)  # [b, N]
        nll += float(F.cross_entropy(scores, targets, reduction="sum"))
        # 3. ranks: sampled negatives, then the catalogue without the history
        negatives = torch.from_numpy(split.negatives[idx] - 1).to(device)  # [b, n_neg]
        target_scores = scores.gather(1, targets[:, None])[:, 0]  # [b]
        ranks_s = pessimistic_rank(target_scores, scores.gather(1, negatives))
        history = torch.from_numpy(_pad([split.histories[i] for i in idx]) - 1).to(device)  # [b, H], -1 pads
        ranks_f = full_rank(scores, targets, exclude=history)
        for key, value in {**rank_sums(ranks_s, KS, "sampled_"), **rank_sums(ranks_f, KS, "full_")}.items():
            sums[key] = sums.get(key, 0.0) + value
        users += len(idx)
    # 4. means over every user of every process
    keys = sorted({**rank_sums(torch.zeros(0), KS, "sampled_"), **rank_sums(torch.zeros(0), KS, "full_")})
    totals = all_reduce_sum([nll, float(users)] + [sums.get(k, 0.0) for k in keys], torch.device(device))
    n = max(totals[1], 1.0)
    out = {"loss": totals[0] / n, **{k: v / n for k, v in zip(keys, totals[2:])}, "users": int(totals[1])}
    out["n_negatives"] = int(split.negatives.shape[1])
    return out


# ---------------------------------------------------------------------- the kind
def build(ctx: BuildContext) -> Built:
    config = ctx.config
    data = read_interactions(config.data.path)
    model_cfg = config.model.resolve(data.n_items)
    model = ctx.model(Recommender, model_cfg)
    task = SeqRecTask(data, config.data, cloze=model_cfg.objective == "cloze", seed=config.trainer.seed,
                      rank=ctx.rank, world_size=ctx.world_size, device=ctx.device, exact_lengths=_exact_lengths(model))
    n = sum(p.numel() for p in model.parameters())
    describe = (f"model: {model_cfg.objective} recommender, {model_cfg.n_layers} layers {model_cfg.pattern} "
                f"d_model {model_cfg.d_model}, {n:,} parameters; data: {data.n_users:,} users "
                f"({len(data.evaluated()):,} evaluated), {data.n_items:,} items, "
                f"{sum(len(s) for s in data.train):,} training interactions; loss {config.data.loss}, "
                f"{task.batches_per_epoch} batches per epoch")
    return Built(model=model, task=task, describe=describe,
                 record={"seqrec": {"n_items": data.n_items, "n_users": data.n_users, "data_sha256": data.sha256}})


def evaluate(ctx: EvalContext) -> dict:
    from seqmix.train import checkpoint as ckpt

    model = ctx.load(Recommender)
    cfg = ctx.data_config(path=ctx.data)
    data = read_interactions(cfg.path)
    if data.n_items != model.n_items:
        raise UserError(f"the checkpoint scores {model.n_items} items but {cfg.path or 'the default Video.txt'} "
                        f"has {data.n_items}; evaluate on the data it was trained on")
    split = eval_split(data, ctx.split, cfg.n_negatives, cfg.eval_seed)
    autocast = ctx.autocast()
    metrics = evaluate_split(model, split, data, cfg, cloze=model.cloze, exact=_exact_lengths(model),
                             autocast=autocast, device=ctx.device)
    trained_on = ckpt.read_json(ctx.directory / "trainer.json").get("seqrec", {}) if (ctx.directory / "trainer.json").exists() else {}
    metrics["same_data_as_training"] = trained_on.get("data_sha256") == data.sha256 if trained_on else None
    return metrics


def summary(m: dict) -> str:
    return (f"HR@10 {m['sampled_hr@10']:.4f}, NDCG@10 {m['sampled_ndcg@10']:.4f} against {m.get('n_negatives', 100)} "
            f"sampled negatives; HR@10 {m['full_hr@10']:.4f}, NDCG@10 {m['full_ndcg@10']:.4f}, MRR {m['full_mrr']:.4f} "
            f"over the full catalogue (history excluded); {int(m['users']):,} users, catalogue loss {m['loss']:.4f}")


KIND = TaskKind(
    name="seqrec",
    description="sequential recommendation: next item (SASRec-style) or cloze (BERT4Rec-style), leave-one-out HR/NDCG",
    model_config=SeqRecModelConfig,
    data_config=SeqRecDataConfig,
    build=build,
    evaluate=evaluate,
    summary=summary,
    eval_options=("batch_size", "data"),
)
