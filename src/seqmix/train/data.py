"""Language-modelling data for the trainer: a token stream cut into training windows.

Two ways to draw training windows ``[B, T + 1]`` (inputs are the first T tokens, targets the last T):

* random (default, as in nanoGPT): B windows at uniformly random offsets of the training stream;
* stateful (Zaremba et al. 2014, "Recurrent Neural Network Regularization", arXiv:1409.2329): the
  stream is cut into ``B x processes`` contiguous rows, each process takes its B rows and reads them in
  consecutive windows; the model's final state after one window is detached and becomes the initial
  state of the next (truncated backprop through time), and is reset to zero at the start of each epoch.

Micro-batch ``i`` of a process is a pure function of (seed, rank, i) — a random window's offsets come
from ``numpy.random.default_rng([seed, rank, i])``, a stateful window is the ``i mod n``-th of its rows —
so resuming needs only the step counter; the carried state is the one thing saved with the checkpoint.

Evaluation covers the WHOLE validation stream, every target exactly once: with random windows, the
stream is cut into consecutive windows of T tokens (the last one shorter), each starting from the zero
state, matching the context the model was trained with; with stateful training, into ``eval_batch_size``
contiguous rows read window by window with the state carried (the remainder tokens form one more row).
Reported: mean cross-entropy in nats per token, perplexity ``exp(loss)`` and bits per token
``loss / ln 2`` (bits per character for a character tokenizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from seqmix.errors import UserError
from seqmix.state import detach_state, map_state, state_tensors
from seqmix.train.config import DataConfig
from seqmix.train.distributed import all_reduce_sum

__all__ = ["LMBatch", "LMTask", "load_lm_data", "window_starts"]


@dataclass
class LMBatch:
    tokens: torch.Tensor  # [B, T + 1]
    reset: bool  # stateful: this window starts the rows again, so the carried state is dropped


def load_lm_data(cfg: DataConfig, tokenizer: Any = None, split: str = "valid") -> tuple[Any, torch.Tensor, torch.Tensor]:
    """``(tokenizer, train_ids, val_ids)`` for ``cfg``; ``tokenizer`` (from a checkpoint) is reused if given.

    A single file is split by ``val_fraction`` (validation = the last part); a directory must hold the
    Penn Treebank files (``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``), whose official split is
    used; ``split="test"`` returns the test file in place of the validation one (directories only).
    """
    if split not in ("valid", "test"):
        raise UserError(f"split must be 'valid' or 'test', got {split!r}")
    from seqmix.data import text as text_data
    from seqmix.data import tokenizers

    # 1. the text (load_text names the path and the problem for a missing/empty/non-UTF-8 file)
    #    (the byte tokenizer takes any bytes: they are read back through surrogate escapes)
    errors = "surrogateescape" if cfg.tokenizer == "byte" else "strict"
    if cfg.corpus is not None and not Path(cfg.corpus).expanduser().exists():
        raise UserError(f"data.corpus {cfg.corpus!r} does not exist; give a UTF-8 text file, a Penn Treebank "
                        "directory (ptb.train.txt, ptb.valid.txt, ptb.test.txt), or no corpus for the shipped "
                        "tiny Shakespeare")
    if cfg.corpus is not None and Path(cfg.corpus).expanduser().is_dir():
        paths = text_data.ptb_paths(cfg.corpus)
        train_text, val_text = text_data.load_text(paths["train"], errors), text_data.load_text(paths[split], errors)
    elif split == "test":
        raise UserError("a test split exists only for a corpus directory with ptb.test.txt; a single file "
                        "has a training and a validation part")
    else:
        train_text, val_text = text_data.load_text(cfg.corpus, errors), None
    # 2. the tokenizer: a character vocabulary covers the whole text (else validation could not be
    #    encoded); a word vocabulary is fitted on the training text only (unseen words become <unk>)
    if tokenizer is None:
        if cfg.tokenizer == "word":
            tokenizer = tokenizers.WordTokenizer.fit(train_text, max_vocab=cfg.max_vocab)
        else:
            fit_text = train_text if val_text is None else train_text + val_text
            tokenizer = tokenizers.build_tokenizer(cfg.tokenizer, fit_text)
    elif tokenizer.kind != cfg.tokenizer:
        raise UserError(f"data.tokenizer is {cfg.tokenizer!r} but the checkpoint's tokenizer is {tokenizer.kind!r}")
    # 3. ids, then the split
    train_ids = _encode(tokenizer, train_text, cfg.corpus)
    if val_text is None:
        train_ids, val_ids = text_data.split_stream(train_ids, cfg.val_fraction)
    else:
        val_ids = _encode(tokenizer, val_text, cfg.corpus)
    return tokenizer, train_ids, val_ids


def _encode(tokenizer: Any, text: str, where: Any) -> torch.Tensor:
    try:
        ids = tokenizer.encode(text)
    except ValueError as exc:
        raise UserError(f"corpus {where or '(the shipped tiny Shakespeare)'}: {exc}") from None
    return torch.tensor(ids, dtype=torch.long)  # [N]


def window_starts(n_targets: int, seq_len: int) -> list[tuple[int, int]]:
    """``(start, length)`` of consecutive windows covering ``n_targets`` targets once (last may be short)."""
    return [(s, min(seq_len, n_targets - s)) for s in range(0, n_targets, seq_len)]


class LMTask:
    """Batches, loss and whole-split evaluation of next-token prediction; see the module docstring.

    The trainer only calls ``batch(i)``, ``loss(model, batch)``, ``evaluate(model)`` and the
    ``rank_state``/``load_rank_state`` pair, so other tasks can implement the same five methods.
    """

    def __init__(self, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: DataConfig, *, seed: int,
                 rank: int = 0, world_size: int = 1, device: Any = "cpu") -> None:
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.device = torch.device(device)
        self.train_ids, self.val_ids = train_ids, val_ids
        T, B = cfg.seq_len, cfg.batch_size
        if val_ids.numel() < 2:
            raise UserError(f"the validation split has {val_ids.numel()} token(s); it needs at least 2 "
                            "(use a longer corpus or a larger data.val_fraction)")
        if cfg.stateful:
            # 1. rows: the stream cut into B * world_size contiguous rows, this process keeps its B
            n_rows = B * world_size
            row_len = train_ids.numel() // n_rows
            self.windows_per_epoch = (row_len - 1) // T
            if self.windows_per_epoch < 1:
                raise UserError(f"the training split ({train_ids.numel()} tokens) is too short for "
                                f"{n_rows} stateful rows of seq_len {T}; lower data.batch_size or data.seq_len")
            rows = train_ids[: n_rows * row_len].view(n_rows, row_len)  # [B * world, L]
            self.rows = rows[rank * B: (rank + 1) * B].contiguous()  # [B, L]
        elif train_ids.numel() < T + 1:
            raise UserError(f"the training split has {train_ids.numel()} tokens, fewer than data.seq_len + 1 = {T + 1}; "
                            "lower data.seq_len or use a longer corpus")
        self.carry: Any = None  # the detached state carried between stateful windows
        self._pending: Optional[list[torch.Tensor]] = None  # carried tensors restored from a checkpoint

    # ------------------------------------------------------------------ training
    def batch(self, index: int) -> LMBatch:
        """Micro-batch ``index`` of this process (a pure function of seed, rank and index)."""
        T, B = self.cfg.seq_len, self.cfg.batch_size
        if self.cfg.stateful:
            j = index % self.windows_per_epoch
            return LMBatch(self.rows[:, j * T: j * T + T + 1].to(self.device), reset=j == 0)
        rng = np.random.default_rng([self.seed, self.rank, index])
        starts = torch.from_numpy(rng.integers(0, self.train_ids.numel() - T, size=B))  # [B]
        idx = starts[:, None] + torch.arange(T + 1)  # [B, T + 1]
        return LMBatch(self.train_ids[idx].to(self.device), reset=False)

    def loss(self, model: torch.nn.Module, batch: LMBatch) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy of ``batch`` and the number of targets it holds."""
        inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
        state = None
        if self.cfg.stateful and not batch.reset:
            state = self._carried(model, inputs.shape[0])
        logits, new_state = model(inputs, state)  # [B, T, V]
        if self.cfg.stateful:
            self.carry = detach_state(new_state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return loss, targets.numel()

    def _carried(self, model: torch.nn.Module, batch_size: int) -> Any:
        if self._pending is not None:  # rebuild the structure of the saved state, then fill it
            template = getattr(model, "module", model).init_state(batch_size, device=self.device)
            tensors = iter(self._pending)
            self.carry = map_state(lambda t: next(tensors).to(device=self.device, dtype=t.dtype), template)
            self._pending = None
        return self.carry

    # ------------------------------------------------------------------ checkpoint
    def rank_state(self) -> dict[str, torch.Tensor]:
        """This process's carried state as named tensors (empty when nothing is carried)."""
        if self._pending is not None:
            return {f"carry.{i}": t for i, t in enumerate(self._pending)}
        if not self.cfg.stateful or self.carry is None:
            return {}
        return {f"carry.{i}": t for i, t in enumerate(state_tensors(self.carry))}

    def load_rank_state(self, tensors: Optional[dict[str, torch.Tensor]]) -> None:
        carried = sorted((k for k in (tensors or {}) if k.startswith("carry.")), key=lambda k: int(k.split(".")[1]))
        self.carry = None
        self._pending = [tensors[k] for k in carried] if carried else None  # type: ignore[index]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, autocast: Any = None) -> dict[str, float]:
        """Loss, perplexity and bits per token over the whole validation split (summed over processes)."""
        import contextlib

        ctx = autocast if autocast is not None else contextlib.nullcontext
        nll, count = 0.0, 0
        with ctx():
            for inputs, targets, state_from in self._eval_pieces():
                logits, state = model(inputs.to(self.device), state_from())
                nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             targets.to(self.device).reshape(-1), reduction="sum"))
                count += targets.numel()
                self._eval_state = state
        nll, count = all_reduce_sum([nll, float(count)], self.device)
        loss = nll / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2), "tokens": count}

    def _eval_pieces(self):
        """Yield ``(inputs, targets, state_fn)`` covering this process's share of the validation targets."""
        val, T = self.val_ids, self.cfg.seq_len
        n_targets = val.numel() - 1
        fresh = lambda: None  # noqa: E731
        carried = lambda: self._eval_state  # noqa: E731
        if not self.cfg.stateful:
            # consecutive windows; process r takes windows r, r + world, ...; batched by eval_batch_size
            windows = window_starts(n_targets, T)[self.rank:: self.world_size]
            full = [s for s, n in windows if n == T]
            for i in range(0, len(full), self.cfg.eval_batch_size):
                starts = torch.tensor(full[i: i + self.cfg.eval_batch_size])
                idx = starts[:, None] + torch.arange(T + 1)  # [b, T + 1]
                chunk = val[idx]
                yield chunk[:, :-1], chunk[:, 1:], fresh
            for s, n in windows:
                if n < T:
                    yield val[s: s + n][None], val[s + 1: s + n + 1][None], fresh
            return
        # stateful: eval_batch_size contiguous rows read in windows with the state carried
        n_rows = self.cfg.eval_batch_size
        row_len = n_targets // n_rows
        rows = [(r * row_len, row_len) for r in range(n_rows)] if row_len > 0 else []
        groups = [rows[self.rank:: self.world_size]]
        if self.rank == 0 and n_targets - n_rows * row_len > 0:  # the remainder: one more row
            groups.append([(n_rows * row_len, n_targets - n_rows * row_len)])
        for group in groups:
            if not group:
                continue
            length = group[0][1]
            starts = torch.tensor([s for s, _ in group])
            for j, (a, n) in enumerate(window_starts(length, T)):
                idx = starts[:, None] + a + torch.arange(n + 1)  # [rows, n + 1]
                chunk = val[idx]
                yield chunk[:, :-1], chunk[:, 1:], fresh if j == 0 else carried
