"""Task kind ``seq2seq``: sentence-pair transduction with a ``Seq2Seq`` encoder-decoder over any mixers.

Data (``seqmix.data.seq2seq_data``): SCAN (Lake & Baroni 2018) or Multi30k English -> German (Elliott
et al. 2016); a pair tokenizer fitted to the training split only and saved with every checkpoint.

Training is teacher forcing: the decoder reads ``BOS y_1 .. y_n`` and is trained to emit
``y_1 .. y_n EOS``, with token-level cross-entropy (optionally label-smoothed, Szegedy et al. 2016)
averaged over real target tokens. Micro-batch ``i`` is a pure function of (seed, rank, i): epoch
``i // batches_per_epoch`` is cut by ``make_batches`` -- similar-length pairs per batch (``bucket``) or
padded random batches -- from a generator seeded by (seed, epoch), and process r takes batches
r, r + world, ... of it. ``data.max_src_len`` / ``max_tgt_len`` skip longer TRAINING pairs only.

Evaluation during training (the ``Trainer``'s, on the whole validation split, teacher-forced, cheap):
the plain cross-entropy (``loss``, nats per target token, EOS included), ``ppl``, ``token_accuracy``
and ``sequence_accuracy`` -- the fraction of pairs whose every target token (EOS included) is the
argmax over the tokens decoding may emit. That is exactly the fraction greedy decoding gets right
token for token, since greedy decoding then reads the reference as its own output.

``seqmix eval`` decodes the whole split (greedy, or beam search with ``data.beam_size`` > 1, see
``seqmix.seq2seq_decoding``) and reports the community's metric beside the teacher-forced ones: exact
match of the decoded action sequence (SCAN), or sacrebleu corpus BLEU of the detokenised output against
the raw references (Multi30k).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from seqmix import options
from seqmix.errors import UserError
from seqmix.models.seq2seq_config import DecoderStackConfig, EncoderStackConfig, Seq2SeqConfig
from seqmix.train.distributed import all_reduce_sum
from seqmix.train.kinds import BuildContext, Built, EvalContext, TaskKind

__all__ = ["KIND", "Seq2SeqModelConfig", "Seq2SeqDataConfig", "Seq2SeqTask", "teacher_forced_metrics", "decode_split"]

DATASETS = ("scan", "multi30k")


@dataclass
class _RecipeEncoder(EncoderStackConfig):
    """The encoder stack of a recipe's ``model:`` section."""

    prefix: ClassVar[str] = "model.encoder."


@dataclass
class _RecipeDecoder(DecoderStackConfig):
    """The decoder stack of a recipe's ``model:`` section."""

    prefix: ClassVar[str] = "model.decoder."


@dataclass
class Seq2SeqModelConfig(Seq2SeqConfig):
    """The ``Seq2Seq`` encoder-decoder (``seqmix.models.Seq2SeqConfig``); vocabulary sizes 0 come from the tokenizer."""

    encoder: _RecipeEncoder = field(default_factory=lambda: _RecipeEncoder(d_model=256, n_layers=3))  # the encoder stack (d_model, n_layers, pattern, mixer_options, mlp, mlp_ratio, dropout, norm_eps); attention is built non-causal, causal mixers are made bidirectional
    decoder: _RecipeDecoder = field(default_factory=lambda: _RecipeDecoder(d_model=256, n_layers=3))  # the decoder stack (same fields); its mixers must be causal

    prefix: ClassVar[str] = "model."
    encoder_class: ClassVar[type] = _RecipeEncoder
    decoder_class: ClassVar[type] = _RecipeDecoder


@dataclass
class Seq2SeqDataConfig:
    """Sentence pairs, their tokenizer, batching, the training loss and the decoding of ``seqmix eval``."""

    dataset: str = "scan"  # "scan" (command -> actions) or "multi30k" (English -> German)
    split_name: str = "simple"  # SCAN: simple, length, add_jump or add_turn_left; Multi30k: its test set (simple = test_2016_flickr)
    root: Optional[str] = None  # folder holding scan/ and multi30k/ (None: $SEQMIX_DATA, else the shared/data folder beside the checkout)
    tokenizer: str = "word"  # "word" (whitespace words, SCAN), "bpe" (byte-level BPE, joint vocabulary) or "byte" (UTF-8 bytes)
    vocab_size: int = 8000  # largest vocabulary per side, specials included (word and bpe)
    batch_size: int = 64  # sentence pairs per training micro-batch
    bucket: bool = True  # batches of similar-length pairs (False: padded random batches)
    max_src_len: Optional[int] = None  # training pairs with a longer source (in tokens) are skipped (None: keep all)
    max_tgt_len: Optional[int] = None  # training pairs with a longer target (in tokens) are skipped (None: keep all)
    label_smoothing: float = 0.0  # training loss only: weight of the uniform distribution in the target (Szegedy et al. 2016)
    eval_batch_size: int = 256  # sentence pairs per evaluation / decoding batch
    beam_size: int = 1  # seqmix eval: 1 = greedy decoding, more = beam search
    length_penalty: float = 0.6  # beam search: alpha of GNMT's ((5 + |Y|) / 6) ** alpha
    max_decode_len: int = 0  # most tokens decoded per sentence, EOS included (0 = twice the longest training target + 10)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UserError(f"data.dataset must be one of {', '.join(map(repr, DATASETS))}, got {self.dataset!r}")
        from seqmix.data.seq2seq_data import PAIR_TOKENIZER_KINDS

        if self.tokenizer not in PAIR_TOKENIZER_KINDS:
            raise UserError(f"data.tokenizer must be one of {', '.join(map(repr, PAIR_TOKENIZER_KINDS))}, "
                            f"got {self.tokenizer!r}")
        try:
            for name in ("vocab_size", "batch_size", "eval_batch_size", "beam_size"):
                options.positive_int(f"data.{name}", getattr(self, name))
            for name in ("max_src_len", "max_tgt_len"):
                if getattr(self, name) is not None:
                    options.positive_int(f"data.{name}", getattr(self, name))
            options.boolean("data.bucket", self.bucket)
            self.label_smoothing = options.number("data.label_smoothing", self.label_smoothing, minimum=0)
            self.length_penalty = options.number("data.length_penalty", self.length_penalty, minimum=0)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.label_smoothing >= 1:
            raise UserError(f"data.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not isinstance(self.max_decode_len, int) or isinstance(self.max_decode_len, bool) or self.max_decode_len < 0:
            raise UserError(f"data.max_decode_len must be an int >= 0 (0 = from the training targets), "
                            f"got {self.max_decode_len!r}")


class Seq2SeqTask:
    """Batches, loss and teacher-forced evaluation for the ``Trainer`` (see seqmix.train.trainer)."""

    def __init__(self, train_ids: list, valid_ids: list, tokenizer: Any, cfg: Seq2SeqDataConfig, *, seed: int,
                 rank: int = 0, world_size: int = 1, device: Any = "cpu") -> None:
        self.cfg, self.tok, self.seed, self.rank, self.world_size = cfg, tokenizer, seed, rank, world_size
        self.device = torch.device(device)
        keep = [p for p in train_ids if len(p[0]) >= 1 and (cfg.max_src_len is None or len(p[0]) <= cfg.max_src_len)
                and (cfg.max_tgt_len is None or len(p[1]) <= cfg.max_tgt_len)]
        self.skipped = len(train_ids) - len(keep)
        self.train_ids, self.valid_ids = keep, valid_ids
        if not keep:
            raise UserError("data.max_src_len / data.max_tgt_len skip every training pair; raise them")
        n_batches = -(-len(keep) // cfg.batch_size)
        self.batches_per_epoch = n_batches // world_size
        if self.batches_per_epoch < 1:
            raise UserError(f"{len(keep)} training pairs make {n_batches} batch(es) of data.batch_size "
                            f"{cfg.batch_size}, fewer than the {world_size} processes")
        self._epoch: Optional[int] = None
        self._batches: list = []

    # ------------------------------------------------------------------ training
    def batch(self, index: int) -> Any:
        """Micro-batch ``index`` of this process (a pure function of seed, rank and index)."""
        from seqmix.data.seq2seq_data import make_batches

        epoch, j = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            self._batches = make_batches(self.train_ids, self.cfg.batch_size, seed, bucket=self.cfg.bucket,
                                         pad_id=self.tok.pad_id)
            self._epoch = epoch
        return self._batches[j * self.world_size + self.rank].to(self.device)

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean token-level cross-entropy (label-smoothed if configured) and the number of target tokens."""
        tgt_in, tgt_out = batch.decoder_io(self.tok.bos_id, self.tok.eos_id, self.tok.pad_id)  # [B, T + 1] each
        logits = model(batch.src, tgt_in, batch.src_lengths.clamp(min=1))  # [B, T + 1, V]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt_out.reshape(-1),
                               ignore_index=self.tok.pad_id, label_smoothing=self.cfg.label_smoothing)
        return loss, int((tgt_out != self.tok.pad_id).sum())

    def rank_state(self) -> dict[str, torch.Tensor]:
        return {}  # nothing is carried between batches

    def load_rank_state(self, tensors: Optional[dict[str, torch.Tensor]]) -> None:
        return None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: torch.nn.Module, autocast: Any = None) -> dict[str, float]:
        return teacher_forced_metrics(model, self.valid_ids, self.tok, self.cfg.eval_batch_size, self.device,
                                      autocast, self.rank, self.world_size)


def _sorted_batches(pairs_ids: list, batch_size: int, pad_id: int) -> list:
    """Every pair once, in batches of similar length (sorted, not shuffled)."""
    from seqmix.data.seq2seq_data import make_batches

    return make_batches(pairs_ids, batch_size, 0, bucket=True, shuffle=False, pad_id=pad_id)


def _banned(tok: Any) -> list[int]:
    """Ids decoding never emits: padding and BOS (never a target)."""
    return sorted({tok.pad_id, tok.bos_id} - {tok.eos_id})


@torch.no_grad()
def teacher_forced_metrics(model: torch.nn.Module, pairs_ids: list, tok: Any, batch_size: int, device: torch.device,
                           autocast: Any = None, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Loss, perplexity, token and sequence accuracy over every pair (see the module docstring)."""
    ctx = autocast if autocast is not None else contextlib.nullcontext
    nll = correct = tokens = seq_correct = 0.0
    banned = _banned(tok)
    with ctx():
        for batch in _sorted_batches(pairs_ids, batch_size, tok.pad_id)[rank::world_size]:
            batch = batch.to(device)
            tgt_in, tgt_out = batch.decoder_io(tok.bos_id, tok.eos_id, tok.pad_id)  # [b, T + 1]
            logits = model(batch.src, tgt_in, batch.src_lengths.clamp(min=1)).float()  # [b, T + 1, V]
            real = tgt_out != tok.pad_id  # [b, T + 1]
            nll += float(F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=tok.pad_id, reduction="sum"))
            logits[..., banned] = float("-inf")
            hit = (logits.argmax(dim=-1) == tgt_out) & real  # [b, T + 1]
            correct += float(hit.sum())
            tokens += float(real.sum())
            seq_correct += float((hit | ~real).all(dim=1).sum())
    nll, correct, tokens, seq_correct = all_reduce_sum([nll, correct, tokens, seq_correct], device)
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "token_accuracy": correct / max(tokens, 1.0),
            "sequence_accuracy": seq_correct / len(pairs_ids), "tokens": int(tokens), "examples": len(pairs_ids)}


@torch.no_grad()
def decode_split(model: torch.nn.Module, pairs_ids: list, tok: Any, *, batch_size: int, max_len: int,
                 beam_size: int = 1, alpha: float = 0.0, device: Any = "cpu", autocast: Any = None) -> list[list[int]]:
    """Decoded target ids of every pair's source, in the order of ``pairs_ids``."""
    from seqmix.seq2seq_decoding import decode

    ctx = autocast if autocast is not None else contextlib.nullcontext
    out: list[list[int]] = [[] for _ in pairs_ids]
    with ctx():
        for batch in _sorted_batches(pairs_ids, batch_size, tok.pad_id):
            batch = batch.to(device)
            hyps = decode(model, batch.src, batch.src_lengths.clamp(min=1), bos_id=tok.bos_id, eos_id=tok.eos_id,
                          max_len=max_len, beam_size=beam_size, alpha=alpha, banned_ids=_banned(tok))
            for i, h in zip(batch.indices.tolist(), hyps):
                out[i] = h.tokens
    return out


def _decode_len(cfg: Seq2SeqDataConfig, train_ids: list) -> int:
    return cfg.max_decode_len or 2 * max(len(t) for _, t in train_ids) + 10


def _load(cfg: Seq2SeqDataConfig, root: Optional[str] = None) -> dict:
    from seqmix.data.seq2seq_data import load_pairs

    return load_pairs(cfg.dataset, root if root is not None else cfg.root, cfg.split_name)


def build(ctx: BuildContext) -> Built:
    from seqmix.data.seq2seq_data import PairTokenizer, build_pair_tokenizer, encode_pairs
    from seqmix.models.seq2seq import Seq2Seq

    config, data = ctx.config, ctx.config.data
    # 1. pairs, and the tokenizer fitted to the training split (a resumed run keeps the checkpoint's)
    splits = _load(data)
    if ctx.loaded is not None:
        tok = PairTokenizer.load(ctx.loaded.path)
    else:
        tok = build_pair_tokenizer(data.tokenizer, splits["train"], data.vocab_size)
    if config.model.share_embeddings and not tok.shared:
        raise UserError(f"model.share_embeddings needs one vocabulary for both sides, but the {tok.kind} tokenizer "
                        "keeps two; use data.tokenizer bpe or byte, or model.share_embeddings false")
    train_ids, valid_ids = encode_pairs(tok, splits["train"]), encode_pairs(tok, splits["valid"])
    # 2. the model
    model_cfg = config.model.resolve(tok.src_vocab_size, tok.tgt_vocab_size)
    model = ctx.model(Seq2Seq, model_cfg)
    # 3. the task
    task = Seq2SeqTask(train_ids, valid_ids, tok, data, seed=config.trainer.seed, rank=ctx.rank,
                       world_size=ctx.world_size, device=ctx.device)
    enc, dec = model_cfg.encoder, model_cfg.decoder
    describe = (f"model: encoder {enc.n_layers} x {enc.pattern} d_model {enc.d_model}"
                f"{' (bidirectional)' if model_cfg.bidirectional_encoder else ''}, decoder {dec.n_layers} x "
                f"{dec.pattern} d_model {dec.d_model}, {model_cfg.cross_attention} cross-attention, "
                f"{model.num_parameters():,} parameters; data: {data.dataset} ({data.split_name}) "
                f"{len(task.train_ids):,} training / {len(valid_ids):,} validation pairs"
                f"{f' ({task.skipped} over max length skipped)' if task.skipped else ''}, {tok.kind} vocabulary "
                f"{tok.src_vocab_size} -> {tok.tgt_vocab_size}")
    return Built(model=model, task=task, save_extra=tok.save, describe=describe, record={"tokenizer_kind": tok.kind})


def evaluate(ctx: EvalContext) -> dict:
    """Decode the whole split of a checkpoint: exact match (SCAN) or BLEU (Multi30k), plus teacher-forced metrics."""
    from seqmix.data.seq2seq_data import PairTokenizer, corpus_bleu, encode_pairs, exact_match
    from seqmix.models.seq2seq import Seq2Seq

    data = ctx.data_config()
    model = ctx.load(Seq2Seq)
    tok = PairTokenizer.load(ctx.directory)
    splits = _load(data, ctx.data)
    pairs = splits[ctx.split]
    pairs_ids = encode_pairs(tok, pairs)
    autocast = ctx.autocast()
    metrics = teacher_forced_metrics(model, pairs_ids, tok, data.eval_batch_size, ctx.device, autocast)
    t0 = time.perf_counter()
    max_len = _decode_len(data, encode_pairs(tok, splits["train"]))
    decoded = decode_split(model, pairs_ids, tok, batch_size=data.eval_batch_size, max_len=max_len,
                           beam_size=data.beam_size, alpha=data.length_penalty, device=ctx.device, autocast=autocast)
    seconds = time.perf_counter() - t0
    hyps, refs = [tok.decode_tgt(ids) for ids in decoded], [t for _, t in pairs]
    metrics.update(exact_match=exact_match(hyps, refs), decode_seconds=round(seconds, 2), max_decode_len=max_len,
                   decoding="greedy" if data.beam_size == 1 else f"beam {data.beam_size}, alpha {data.length_penalty:g}",
                   dataset=f"{data.dataset}/{data.split_name}")
    if data.dataset == "multi30k":
        metrics["bleu"] = corpus_bleu(hyps, refs)
    return metrics


def summary(m: dict) -> str:
    """One line: the decoded metric when there is one (``seqmix eval``), else the teacher-forced ones."""
    n = int(m["examples"])
    tail = f"teacher-forced token accuracy {m['token_accuracy']:.4f}, loss {m['loss']:.4f} nats/token"
    if "bleu" in m:
        return f"BLEU {m['bleu']:.2f} ({n:,} sentences, {m['decoding']}); {tail}"
    if "exact_match" in m:
        return f"exact match {m['exact_match']:.4f} ({round(m['exact_match'] * n):,}/{n:,} examples, {m['decoding']}); {tail}"
    return f"sequence accuracy {m['sequence_accuracy']:.4f} (teacher-forced, {n:,} examples), {tail}"


KIND = TaskKind(
    name="seq2seq",
    description="sequence to sequence: SCAN or Multi30k En-De with a Seq2Seq encoder-decoder (exact match, BLEU)",
    model_config=Seq2SeqModelConfig,
    data_config=Seq2SeqDataConfig,
    build=build,
    evaluate=evaluate,
    summary=summary,
)
