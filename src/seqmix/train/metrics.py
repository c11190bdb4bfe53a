"""Metrics: one JSON object per line in ``metrics.jsonl``, TensorBoard scalars when available, and a
progress display with tokens/s and the time left.

Each JSONL record has ``kind`` ("train", "eval" or "event"), ``step`` and plain numbers, so a plot or a
later issue's report reads it with ``json.loads`` per line. A resumed run appends to the same file; if
it resumes from a step earlier than the last one logged, the later records appear twice and the newer
ones (further down) are those of the run that went on.
"""

from __future__ import annotations

import json
import sys
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "ProgressDisplay", "format_duration"]


class MetricsLogger:
    """Append-only JSONL file (+ TensorBoard when ``torch.utils.tensorboard`` imports and is wanted).

    ``fresh``: a new run in this folder (not a resumed one) starts both logs afresh, so the records of a
    run it replaces (``--trainer.overwrite``) and that run's ``seqmix eval`` lines do not linger.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = True, fresh: bool = False) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        if fresh:
            shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
        self._file = open(self.path, "w" if fresh else "a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # noqa: BLE001 -- tensorboard is optional; JSONL always works
                SummaryWriter = None  # type: ignore[assignment,misc]
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressDisplay:
    """A rich progress bar on a terminal; elsewhere a plain line at most every ``every_s`` seconds.

    ``enabled`` switches the bar/lines off; ``message`` (evaluations, checkpoints) prints unless
    ``silent`` (the processes other than rank 0).
    """

    def __init__(self, total_steps: int, start_step: int, enabled: bool, every_s: float = 30.0,
                 silent: bool = False) -> None:
        from rich.console import Console

        self.enabled = enabled and not silent
        self.silent = silent
        self.every_s = every_s
        self._last_print = time.monotonic()
        self._progress: Any = None
        self._console = Console(file=sys.stdout)
        if self.enabled and self._console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), console=self._console, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def update(self, step: int, info: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif time.monotonic() - self._last_print >= self.every_s:
            self._last_print = time.monotonic()
            self._console.print(f"step {step} {info}", highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        if self.silent:
            return
        console = self._progress.console if self._progress is not None else self._console
        console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
