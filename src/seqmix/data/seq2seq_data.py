"""Data for the encoder-decoder tasks: sentence pairs, pair tokenizers, length-bucketed batches, metrics.

Typical use (SCAN; Multi30k is the same with ``"multi30k"`` and ``kind="bpe"`` or ``"byte"``)::

    splits = load_pairs("scan", split_name="length")          # {"train", "valid", "test"} -> [(src, tgt)]
    tok = build_pair_tokenizer("word", splits["train"])        # fitted to the training split only
    train_ids = encode_pairs(tok, splits["train"])             # [(src ids, tgt ids)], no BOS/EOS
    for epoch in range(n_epochs):
        for batch in make_batches(train_ids, batch_size=64, seed=seed + epoch, pad_id=tok.pad_id):
            tgt_in, tgt_out = batch.decoder_io(tok.bos_id, tok.eos_id, tok.pad_id)   # [B, T + 1] each
            ...
    hyps = [tok.decode_tgt(ids) for ids in predictions]
    exact_match(hyps, refs), corpus_bleu(hyps, refs)

* ``load_pairs(dataset, root, split_name)`` -- ``dataset`` "scan" (``split_name`` "simple", "length",
  "add_jump", "add_turn_left"; validation = a fixed, seeded 10% of the training file, see
  ``seqmix.data.scan``) or "multi30k" (English -> German, raw cased text; ``split_name`` picks the test
  set: "test_2016_flickr", also meant by the default "simple", or "test_2017_flickr", "test_2017_mscoco").
  ``root`` None means ``$SEQMIX_DATA`` if set, else ``<checkout>/../shared/data``.
* ``make_batches(pairs_ids, batch_size, seed, bucket=True, *, shuffle=True, pad_id=0, pool_batches=50)``
  -> ``list[PairBatch]``; each ``PairBatch`` holds ``src [B, S]``, ``src_lengths [B]``, ``tgt [B, T]``,
  ``tgt_lengths [B]`` (padded with ``pad_id``, no BOS/EOS) and ``indices [B]``, the positions in
  ``pairs_ids`` (to put predictions back in reference order). Deterministic for a seed:

  1. shuffle the pair order with ``numpy.random.default_rng(seed)`` (``shuffle=False``: keep it);
  2. with ``bucket``, cut that order into pools of ``pool_batches * batch_size`` pairs (one pool of
     everything when not shuffling) and sort each pool by (source length, target length), so pairs of
     similar length share a batch and padding stays small while batches still differ between epochs;
  3. cut into batches of ``batch_size`` (the last one may be smaller);
  4. when shuffling, shuffle the order of the batches with the same generator, so an epoch does not
     run from short to long sentences.

* ``exact_match`` -- fraction of hypotheses equal to their reference after whitespace normalisation.
* ``corpus_bleu`` -- sacrebleu's corpus BLEU (default 13a tokenizer, exponential smoothing), 0..100,
  one reference per hypothesis. Give it detokenised text: the raw references and ``decode_tgt`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from seqmix.data.multi30k import MULTI30K_TEST_SETS, load_multi30k
from seqmix.data.pair_tokenizer import PAIR_TOKENIZER_KINDS, PairTokenizer, build_pair_tokenizer
from seqmix.data.scan import SCAN_SPLITS, load_scan
from seqmix.data.paths import DATA_ENV, shared_data_root
from seqmix.errors import UserError

__all__ = [
    "SEQ2SEQ_DATASETS",
    "PAIR_TOKENIZER_KINDS",
    "PairBatch",
    "PairTokenizer",
    "build_pair_tokenizer",
    "corpus_bleu",
    "default_data_root",
    "encode_pairs",
    "exact_match",
    "load_pairs",
    "make_batches",
]

SEQ2SEQ_DATASETS = ("scan", "multi30k")
Pairs = list[tuple[str, str]]
default_data_root = shared_data_root  # the shared data folder (seqmix.data.paths)


def load_pairs(dataset: str, root: Optional[Union[str, Path]] = None, split_name: str = "simple") -> dict[str, Pairs]:
    """``{"train", "valid", "test"}`` -> ``(source, target)`` text pairs of ``dataset`` (see the module docstring)."""
    base = default_data_root() if root is None else Path(root).expanduser()
    if dataset == "scan":
        return load_scan(base, split_name)
    if dataset == "multi30k":
        if split_name != "simple" and split_name not in MULTI30K_TEST_SETS:
            raise UserError(
                f"multi30k split_name {split_name!r} is unknown; choose a test set: {', '.join(MULTI30K_TEST_SETS)} "
                "(the default 'simple' means test_2016_flickr)"
            )
        return load_multi30k(base, test_set="test_2016_flickr" if split_name == "simple" else split_name)
    raise UserError(
        f"dataset {dataset!r} is unknown; choose one of {', '.join(SEQ2SEQ_DATASETS)} "
        f"(scan split_name: {', '.join(SCAN_SPLITS)})"
    )


def encode_pairs(tokenizer: PairTokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """``(encode_src(source), encode_tgt(target))`` for each pair, no BOS/EOS."""
    return [(tokenizer.encode_src(s), tokenizer.encode_tgt(t)) for s, t in pairs]


@dataclass
class PairBatch:
    """One padded batch of id pairs (see ``make_batches``)."""

    src: torch.Tensor  # [B, S] source ids, padded
    src_lengths: torch.Tensor  # [B]
    tgt: torch.Tensor  # [B, T] target ids without BOS/EOS, padded
    tgt_lengths: torch.Tensor  # [B]
    indices: torch.Tensor  # [B] positions in the list given to make_batches

    @property
    def src_mask(self) -> torch.Tensor:
        """``[B, S]`` bool, True at real (non-padding) source positions."""
        positions = torch.arange(self.src.shape[1], device=self.src.device)
        return positions[None, :] < self.src_lengths[:, None]

    def decoder_io(self, bos_id: int, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forcing ``(tgt_in, tgt_out)``, each ``[B, T + 1]``: ``BOS y`` and ``y EOS``, padded with ``pad_id``."""
        batch, length = self.tgt.shape
        device = self.tgt.device
        positions = torch.arange(length + 1, device=device)[None, :]  # [1, T + 1]
        lengths = self.tgt_lengths[:, None]  # [B, 1]
        bos = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)  # [B, 1]
        end = torch.full((batch, 1), pad_id, dtype=torch.long, device=device)  # [B, 1]
        # masks, not the batch's own padding, decide what is padding: pad_id may differ from make_batches'
        tgt_in = torch.cat([bos, self.tgt], dim=1).masked_fill(positions > lengths, pad_id)  # [B, T + 1]
        tgt_out = torch.cat([self.tgt, end], dim=1).masked_fill(positions > lengths, pad_id)  # [B, T + 1]
        tgt_out = tgt_out.masked_fill(positions == lengths, eos_id)
        return tgt_in, tgt_out

    def to(self, device: Union[str, torch.device]) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.src, self.src_lengths, self.tgt, self.tgt_lengths, self.indices)))

    def __len__(self) -> int:
        return int(self.src.shape[0])


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)  # [B]
    width = max(1, int(lengths.max()))  # at least one column, so an all-empty batch still has a shape to mask
    # one flat copy into the padded array: far faster than a tensor per row
    out = np.full((len(rows), width), pad_id, dtype=np.int64)  # [B, L]
    out[np.arange(width)[None, :] < lengths[:, None]] = np.fromiter(
        (i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum())
    )
    return torch.from_numpy(out), torch.from_numpy(lengths)


def make_batches(
    pairs_ids: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    seed: int = 0,
    bucket: bool = True,
    *,
    shuffle: bool = True,
    pad_id: int = 0,
    pool_batches: int = 50,
) -> list[PairBatch]:
    """Padded, length-bucketed batches of ``pairs_ids``, deterministic for ``seed`` (steps in the module docstring)."""
    for name, value in (("batch_size", batch_size), ("pool_batches", pool_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive int, got {value!r}")
    n = len(pairs_ids)
    if n == 0:
        return []
    # 1. the pair order
    rng = np.random.default_rng(seed)
    order = rng.permutation(n).tolist() if shuffle else list(range(n))
    # 2. sort by length inside pools
    if bucket:
        pool = pool_batches * batch_size if shuffle else n
        key = lambda i: (len(pairs_ids[i][0]), len(pairs_ids[i][1]))  # noqa: E731
        order = [i for start in range(0, n, pool) for i in sorted(order[start : start + pool], key=key)]
    # 3. batches
    groups = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    # 4. batch order
    if shuffle:
        groups = [groups[j] for j in rng.permutation(len(groups)).tolist()]
    batches = []
    for group in groups:
        src, src_lengths = _pad([list(pairs_ids[i][0]) for i in group], pad_id)
        tgt, tgt_lengths = _pad([list(pairs_ids[i][1]) for i in group], pad_id)
        batches.append(PairBatch(src, src_lengths, tgt, tgt_lengths, torch.tensor(group, dtype=torch.long)))
    return batches


def _check_lists(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses but {len(references)} references; they must pair up")
    if not hypotheses:
        raise ValueError("no hypotheses to score")


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction (0..1) of hypotheses equal to their reference once runs of whitespace become one space."""
    _check_lists(hypotheses, references)
    hits = sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references))
    return hits / len(hypotheses)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (13a tokenizer, default smoothing), 0..100, one reference per hypothesis."""
    _check_lists(hypotheses, references)
    try:
        import sacrebleu
    except ImportError:
        raise UserError("BLEU needs the sacrebleu package: pip install 'sacrebleu>=2.3'") from None
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
