"""Run a grid of suite cells: skip the finished ones, spread the rest over worker processes.

Small models on a CPU use one core poorly when given two threads (the matrices are too small for the
threads to share the work well), so the grid runs ``workers`` cells at once, each in its own process
with ``threads`` torch threads. Only the parent writes the results file, one line per finished cell,
in the order the cells finish, so an interrupted grid loses at most the cells that were running.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from seqmix.bench.cells import Cell, cell_label, run_cell
from seqmix.bench.results import ResultsFile
from seqmix.bench.timing import num_threads

__all__ = ["run_grid", "default_workers", "summary_line"]


def default_workers() -> int:
    """One worker per core the process may use, at most 2 (the suite's cells are small)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not every platform has sched_getaffinity
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(cell_fields: dict[str, Any], time_limit: Optional[float]) -> dict[str, Any]:
    return run_cell(Cell(**cell_fields), time_limit)


def summary_line(record: dict[str, Any]) -> str:
    """``acc 0.98 (412 steps, 20.1 s)`` or the error, for the progress output."""
    if record.get("error"):
        return f"error: {record['error']}"
    metric = record["task"]["primary_metric"]
    primary = record.get("primary")
    value = "-" if primary is None else f"{primary:.3f}"
    loss = record.get("train_loss")
    loss_text = "-" if loss is None else f"{loss:.3f}"
    flag = " DIVERGED" if record.get("diverged") else ""
    return (f"{metric} {value} | train loss {loss_text}, {record['steps']} steps "
            f"({record['stopped_by']}), {record['seconds']:.1f} s{flag}")


def run_grid(
    cells: list[Cell],
    results_path: Union[str, Path],
    workers: int = 1,
    threads: int = 1,
    progress: Optional[Callable[[str], None]] = print,
    deadline_seconds: Optional[float] = None,
    overhead_seconds: float = 4.0,
) -> list[dict[str, Any]]:
    """Run every cell not yet in the results file; returns the records of all ``cells`` (old and new).

    Steps:
    1. load the results file; cells whose key is there without an error are done (a cell that failed
       is retried, since a failure may have been fixed);
    2. run the others, ``workers`` at a time (1: in this process), appending each record as it ends;
       with ``deadline_seconds``, each cell's training is capped when it starts at its share of the
       time left, ``left * workers / cells_left - overhead_seconds``, so cells that finish their
       steps early leave more time to the later ones, and the grid ends near the deadline;
    3. return the records in the order of ``cells``.
    """
    say = progress or (lambda _msg: None)
    results = ResultsFile(results_path)
    if results.unreadable_lines:
        say(f"note: skipped {results.unreadable_lines} unreadable line(s) in {results_path} (a torn write?)")
    todo = [c for c in cells if not (c.key in results and not results.get(c.key).get("error"))]  # type: ignore[union-attr]
    done_before = len(cells) - len(todo)
    if done_before:
        say(f"{done_before} of {len(cells)} cells already in {results_path}; running {len(todo)}")
    total = len(todo)
    started = time.perf_counter()

    def time_limit(index: int) -> Optional[float]:
        if deadline_seconds is None:
            return None
        left = deadline_seconds - (time.perf_counter() - started)
        return max(1.0, left * min(workers, total - index) / (total - index) - overhead_seconds)

    def finished(i: int, cell: Cell, record: dict[str, Any]) -> None:
        results.append(record)
        say(f"[{i}/{total}] {cell_label(cell)}: {summary_line(record)}")

    if workers <= 1 or total <= 1:
        with num_threads(threads):
            for i, cell in enumerate(todo):
                finished(i + 1, cell, run_cell(cell, time_limit(i)))
    else:
        import multiprocessing

        # spawn: a fresh interpreter per worker; fork would copy the parent's torch thread pools
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            pending: dict[Future, Cell] = {}
            submitted = count = 0
            while submitted < total or pending:
                while submitted < total and len(pending) < workers:  # submit lazily: the limit is set at start
                    cell = todo[submitted]
                    pending[pool.submit(_run_in_worker, cell.as_dict(), time_limit(submitted))] = cell
                    submitted += 1
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    cell = pending.pop(future)
                    count += 1
                    finished(count, cell, future.result())
    if total:
        say(f"ran {total} cell(s) in {time.perf_counter() - started:.0f} s")
    records = {r["key"]: r for r in results.records}
    return [records[c.key] for c in cells if c.key in records]
