"""The training loop, independent of what is trained.

``Trainer(model, task, optim, trainer_cfg).fit()`` trains any ``nn.Module`` on any *task* that offers

    batch(i) -> batch                       micro-batch i of this process (a pure function of i)
    loss(model, batch) -> (loss, n_items)   mean loss of the batch (a 0-dim tensor) and its size
    evaluate(model, autocast) -> dict       metrics over the whole validation set, "loss" among them
    rank_state() -> dict[str, Tensor]       per-process state to checkpoint (e.g. a carried RNN state)
    load_rank_state(tensors or None)
    unit (optional attribute)               what n_items counts, for logs and the progress bar
                                            ("tokens" when absent; "examples", "windows", ...)

(``seqmix.train.data.LMTask`` is the language-modelling one). One optimizer step (numbered below)
accumulates ``grad_accum`` micro-batches, clips the global gradient norm (Pascanu et al. 2013, "On the
difficulty of training recurrent neural networks", arXiv:1211.5063), sets the scheduled learning rate
and steps the optimizer. Under ``torchrun`` the model is wrapped in DistributedDataParallel and only
rank 0 writes. Training stops at ``max_steps``, at ``time_budget_s`` of training time (evaluation and
checkpoint time excluded), or on Ctrl-C: the first Ctrl-C finishes the current step, then the loop
writes ``last/`` and returns; a KeyboardInterrupt raised between steps (a second Ctrl-C, a callback)
also writes ``last/`` before returning. Only an interrupt inside the optimizer update itself is
re-raised without a checkpoint, since the weights may then be half-updated.

Resuming (``fit(resume=LoadedCheckpoint)``) restores the optimizer, step, training time, best
validation loss, all RNG states and the task's per-process state; the model must already hold the
checkpoint's weights (build it with ``from_pretrained``). Data order is a function of the step, so
N steps straight and k steps + resume + N - k steps give identical losses.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from seqmix.errors import UserError
from seqmix.train import checkpoint as ckpt
from seqmix.train.config import OptimConfig, TrainerConfig
from seqmix.train.distributed import DistInfo, all_reduce_sum, gather_objects
from seqmix.train.metrics import MetricsLogger, ProgressDisplay, format_duration
from seqmix.train.schedule import build_optimizer, learning_rate

__all__ = ["Trainer", "TrainResult", "weights_digest"]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in ``parameters()`` order (equal digests = equal weights)."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total (including those before a resume)
    losses: list[float] = field(default_factory=list)  # training loss of every step this call ran
    evals: list[dict] = field(default_factory=list)  # every evaluation this call ran, with its step
    final_eval: Optional[dict] = None  # the last evaluation (None when interrupted)
    interrupted: bool = False  # stopped by Ctrl-C / KeyboardInterrupt
    stopped_by: str = "max_steps"  # "max_steps", "time_budget" or "interrupt"
    train_seconds: float = 0.0  # training time in total (evaluation and checkpoints excluded)
    checkpoint: Optional[Path] = None  # the last/ directory written (rank 0)


def _is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from torch.compile's machinery (Dynamo or Inductor), not from the model."""
    return any(cls.__module__.startswith(("torch._dynamo", "torch._inductor")) for cls in type(error).__mro__)


class Trainer:
    """A reusable training loop; see the module docstring for the task protocol."""

    def __init__(
        self,
        model: nn.Module,
        task: Any,
        optim: OptimConfig,
        cfg: TrainerConfig,
        *,
        device: Any = "cpu",
        dist_info: DistInfo = DistInfo(),
        record: Optional[dict] = None,
        extra_writer: Optional[Callable[[Path], None]] = None,
        callbacks: tuple[Callable[["Trainer", dict], None], ...] = (),
        handle_sigint: bool = True,
    ) -> None:
        self.model, self.task, self.optim_cfg, self.cfg = model, task, optim, cfg
        self.device = torch.device(device)
        self.dist = dist_info
        self.record = record or {}  # JSON stored in every checkpoint (e.g. the full training config)
        self.extra_writer = extra_writer
        self.callbacks = callbacks
        self.handle_sigint = handle_sigint
        self.out_dir = Path(cfg.out_dir)
        self.optimizer = build_optimizer(model, optim)
        self.train_model: nn.Module = model
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(model, device_ids=ids)
        self._eager_model = self.train_model
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.step = 0
        self.train_seconds = 0.0
        self.tokens_seen = 0
        self.best_val: Optional[float] = None
        self._stop_requested = False
        self._in_update = False

    # ------------------------------------------------------------------ precision
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ resume
    def restore(self, loaded: ckpt.LoadedCheckpoint) -> None:
        """Continue from ``loaded`` (the model already holds its weights)."""
        s = loaded.state
        opt_state = loaded.optimizer_state_dict()
        if opt_state is not None:
            try:
                self.optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise UserError(f"checkpoint {loaded.path}: its optimizer state does not fit this model/optimizer "
                                f"({' '.join(str(exc).split())})") from None
        self.step = int(s["step"])
        self.train_seconds = float(s.get("train_seconds", 0.0))
        self.tokens_seen = int(s.get("tokens_seen", 0))
        self.best_val = s.get("best_val_loss")
        ckpt.restore_rng(s["rng"])
        tensors = loaded.rank_tensors(self.dist.rank) if s.get("world_size", 1) == self.dist.world_size else None
        if tensors is not None:
            ckpt.restore_rank_rng(tensors)
        else:  # written by another number of processes: fresh per-rank randomness, no carried state
            torch.manual_seed(self.cfg.seed + 7919 * self.dist.rank + self.step)
        self.task.load_rank_state(tensors)

    # ------------------------------------------------------------------ checkpoint
    def save(self, name: str = "last", collective: bool = True) -> Optional[Path]:
        """Write ``out_dir/name`` (rank 0); with ``collective`` every rank contributes its RNG/task state."""
        mine = {**ckpt.rank_rng_tensors(), **self.task.rank_state()}
        per_rank = gather_objects(mine) if collective else [mine]
        if not self.dist.is_main:
            return None
        state = {"step": self.step, "train_seconds": self.train_seconds, "tokens_seen": self.tokens_seen,
                 "best_val_loss": self.best_val, "world_size": self.dist.world_size if collective else 1,
                 **self.record}
        return ckpt.write_checkpoint(self.out_dir / name, model=self.model, optimizer=self.optimizer,
                                     state=state, rank_tensors=per_rank, extra=self.extra_writer)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        self.model.eval()
        try:
            metrics = self.task.evaluate(self.model, autocast=self.autocast)
        finally:
            self.model.train()
        return metrics

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: Optional[ckpt.LoadedCheckpoint] = None) -> TrainResult:
        if resume is not None:
            self.restore(resume)
        cfg = self.cfg
        logger = MetricsLogger(self.out_dir, cfg.tensorboard, fresh=resume is None) if self.dist.is_main else None
        unit = getattr(self.task, "unit", "tokens")  # what n_items counts: tokens, examples, windows, ...
        display = ProgressDisplay(cfg.max_steps, self.step, enabled=cfg.progress, silent=not self.dist.is_main)
        result = TrainResult(step=self.step)
        previous_handler = self._install_sigint()
        last_saved = last_eval = -1
        completed = False
        self.model.train()
        window_t, window_tokens = time.perf_counter(), 0
        try:
            try:
                while True:
                    # 1. agree on stopping: rank 0's clock, any rank's Ctrl-C
                    secs, stop = all_reduce_sum([self.train_seconds if self.dist.is_main else 0.0,
                                                 float(self._stop_requested)], self.device)
                    if stop:
                        result.interrupted, result.stopped_by = True, "interrupt"
                        break
                    if self.step >= cfg.max_steps:
                        break
                    if cfg.time_budget_s is not None and secs >= cfg.time_budget_s:
                        result.stopped_by = "time_budget"
                        break
                    # 2. one optimizer step (numbered steps in _train_step); only its time is training time
                    t0 = time.perf_counter()
                    loss, n_items, lr, grad_norm = self._train_step(secs)
                    self.train_seconds += time.perf_counter() - t0
                    self.tokens_seen += n_items * self.dist.world_size
                    window_tokens += n_items * self.dist.world_size
                    result.losses.append(loss)
                    if all_reduce_sum([float(not math.isfinite(loss))], self.device)[0]:  # before any save
                        raise UserError(f"training diverged: the loss is not finite at step {self.step}; lower "
                                        "optim.lr or raise optim.warmup_steps (the last checkpoint is kept)")
                    record = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
                    for callback in self.callbacks:
                        callback(self, record)
                    # 3. bookkeeping: logs, progress, evaluation, checkpoint
                    if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                        now = time.perf_counter()
                        tok_s = window_tokens / max(now - window_t, 1e-9)
                        window_t, window_tokens = now, 0
                        if logger:
                            logger.log("train", self.step, loss=loss, lr=lr, grad_norm=grad_norm,
                                       **{unit: self.tokens_seen, f"{unit}_per_s": round(tok_s, 1)},
                                       train_seconds=round(self.train_seconds, 3))
                        display.update(self.step, f"loss {loss:.4f}  lr {lr:.2e}  {tok_s:,.0f} {unit}/s  "
                                                  f"eta {format_duration(self._eta())}")
                    if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step < cfg.max_steps:
                        self._evaluate_and_log(result, logger, display)
                        last_eval = self.step
                    if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                        result.checkpoint = self.save("last")
                        last_saved = self.step
            except KeyboardInterrupt:
                if self._in_update:  # weights may be half-updated: keep the previous checkpoint
                    raise
                result.interrupted, result.stopped_by = True, "interrupt"
                display.close()
                display.message(f"interrupted at step {self.step}: writing {self.out_dir / 'last'}")
                # a collective would hang if the other ranks are elsewhere: rank 0 writes alone
                result.checkpoint = self.save("last", collective=False) or result.checkpoint
                last_saved = self.step
            finally:
                self._restore_sigint(previous_handler)
            # 4. the end: evaluate on the whole validation split and write last/ (unless just done)
            display.close()
            if result.interrupted and last_saved != self.step:
                display.message(f"interrupted at step {self.step}: writing {self.out_dir / 'last'}")
            if not result.interrupted and last_eval != self.step:
                self._evaluate_and_log(result, logger, display)
            if last_saved != self.step:
                result.checkpoint = self.save("last") or result.checkpoint
            completed = True
        finally:
            display.close()
            extra = {}
            if completed and self.dist.enabled and not result.interrupted:  # DDP keeps replicas equal; check
                digests = gather_objects(weights_digest(self.model))
                extra["rank_weights_sha256"] = digests
                if len(set(digests)) > 1:
                    display.message("warning: the processes hold different weights at the end of training")
            if logger:
                stopped = result.stopped_by if completed else "error"
                logger.log("event", self.step, event=f"stopped:{stopped}",
                           train_seconds=round(self.train_seconds, 3), **extra)
                logger.close()
        result.step, result.train_seconds = self.step, self.train_seconds
        if result.evals and not result.interrupted:
            result.final_eval = result.evals[-1]
        return result

    def _train_step(self, train_seconds: float) -> tuple[float, int, float, float]:
        """One optimizer step; returns (mean loss, items seen by this process, lr, gradient norm).

        With ``trainer.compile``, a compilation failure (it surfaces in the first forward or backward)
        switches to the eager model and redoes the step from cleared gradients.
        """
        try:
            return self._step_once(train_seconds)
        except Exception as error:  # noqa: BLE001 - only compiler failures are handled, the rest re-raised
            if self.train_model is self._eager_model or not _is_compile_failure(error):
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            warnings.warn(f"torch.compile failed ({first_line[:200]}); training continues without it", stacklevel=2)
            self.train_model = self._eager_model
            self.optimizer.zero_grad(set_to_none=True)
            return self._step_once(train_seconds)

    def _step_once(self, train_seconds: float) -> tuple[float, int, float, float]:
        cfg, accum = self.cfg, self.cfg.grad_accum
        # 1. the scheduled learning rate (a function of the step and of rank 0's training time)
        lr = learning_rate(self.optim_cfg, self.step, cfg.max_steps, train_seconds, cfg.time_budget_s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # 2. forward/backward over grad_accum micro-batches; DDP syncs gradients on the last one only
        total = torch.zeros((), device=self.device)
        n_items = 0
        for micro in range(accum):
            batch = self.task.batch(self.step * accum + micro)
            sync = micro == accum - 1 or not self.dist.enabled
            with (contextlib.nullcontext() if sync else self._eager_model.no_sync()):  # type: ignore[operator]
                with self.autocast():
                    loss, n = self.task.loss(self.train_model, batch)
                (loss / accum).backward()
            total += loss.detach().float()
            n_items += n
        # 3. clip, update, clear
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self._in_update = True
        self.optimizer.step()
        self.step += 1
        self._in_update = False
        self.optimizer.zero_grad(set_to_none=True)
        return float(total) / accum, n_items, lr, grad_norm

    def _evaluate_and_log(self, result: TrainResult, logger: Optional[MetricsLogger], display: ProgressDisplay) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        seconds = time.perf_counter() - t0
        entry = {"step": self.step, **metrics, "eval_seconds": round(seconds, 3),
                 "train_seconds": round(self.train_seconds, 3)}
        result.evals.append(entry)
        improved = self.best_val is None or metrics["loss"] < self.best_val
        if improved:
            self.best_val = metrics["loss"]
        if logger:
            logger.log("eval", self.step, **{k: v for k, v in entry.items() if k != "step"})
        detail = (f", ppl {metrics['ppl']:.2f}, {metrics['bits_per_token']:.3f} bits/token"
                  if "ppl" in metrics and "bits_per_token" in metrics else "")  # other task kinds report other metrics
        display.message(f"step {self.step}: val loss {metrics['loss']:.4f}{detail} "
                        f"(train time {format_duration(self.train_seconds)}, eval {seconds:.1f}s)")
        if improved and self.cfg.keep_best:
            self.save("best")

    def _eta(self) -> float:
        done = max(self.step, 1)
        by_steps = (self.cfg.max_steps - self.step) * self.train_seconds / done if self.train_seconds else 0.0
        if self.cfg.time_budget_s is not None:
            return min(by_steps, max(self.cfg.time_budget_s - self.train_seconds, 0.0))
        return by_steps

    # ------------------------------------------------------------------ Ctrl-C
    def _install_sigint(self) -> Any:
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            self._stop_requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

        return signal.signal(signal.SIGINT, handler)

    def _restore_sigint(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
