"""``seqmix bench`` and ``seqmix compare``: run a grid of suite cells, then print and write the report.

``seqmix bench`` runs any grid (tasks with parameters x mixers/variants x widths x seeds) with a step
budget per cell and an optional wall-clock cap. ``seqmix compare`` is the quick default: one
representative per family on three tasks that separate them, every cell capped by its share of the
time left of a total budget, followed by a short speed measurement (``seqmix.bench.speed``).
Both append to ``OUT/results.jsonl`` (rerunning resumes) and write ``OUT/report.md`` and
``OUT/report.html``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from seqmix.bench.cells import Cell
from seqmix.bench.findings import evaluate_findings
from seqmix.bench.grid import default_workers, run_grid
from seqmix.bench.results import load_records
from seqmix.bench.specs import parse_ints, parse_mixers, parse_tasks
from seqmix.errors import UserError
from seqmix.mixers.registry import REGISTRY

__all__ = ["bench_command", "compare_command", "COMPARE_MIXERS", "COMPARE_TASKS", "BENCH_TASKS"]

# one registered representative per family, in the order the report shows them
COMPARE_MIXERS = ["attention", "linear_attention", "retnet", "gla", "mamba", "lru", "lstm", "mingru"]
# small settings that a CPU learns within a compare budget and that still separate the families:
# recall (mqar), content-dependent filtering (selective_copy), state tracking beyond the training length (parity)
COMPARE_TASKS = ["mqar:n_pairs=4:length=32:vocab_size=64", "selective_copy:length=32:n_tokens=4", "parity"]
BENCH_TASKS = ["mqar", "selective_copy", "parity"]
SPEED_RESERVE_S = 45.0  # what compare keeps back from its total for the speed measurement and the report
CELL_OVERHEAD_S = 4.0  # per cell: building the model, evaluation, process start-up (measured: 2-4 s)


def _grid(task_specs: list[tuple[str, dict[str, Any]]], mixers: list[str], d_models: list[int], n_layers: int,
          seeds: int, **cell_fields: Any) -> list[Cell]:
    return [Cell(task=name, variant=mixer, task_params=params, d_model=d, n_layers=n_layers, seed=seed, **cell_fields)
            for name, params in task_specs for d in d_models for mixer in mixers for seed in range(seeds)]


def _finish(records: list[dict[str, Any]], out: Path, title: str, command: str, speed: Optional[dict] = None,
            notes: Optional[list[str]] = None) -> dict[str, Any]:
    from seqmix.bench.suite_report import write_report

    findings = evaluate_findings(records)
    paths = write_report(records, findings, out, title=title, command=command, speed=speed, notes=notes)
    _print_summary(records, findings, speed)
    print(f"report: {paths['html']} (and {paths['markdown'].name}); results: {out / 'results.jsonl'}", flush=True)
    return {"records": records, "findings": [(f.id, v.status, v.detail) for f, v in findings],
            "report": str(paths["html"])}


def _print_summary(records: list[dict[str, Any]], findings: list, speed: Optional[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from seqmix.bench.suite_report import results_table, speed_entries

    console = Console(width=max(Console().width, 150))
    table = results_table(records)
    console.print("primary metric, mean over each task's test settings:", highlight=False)
    grid = Table()
    grid.add_column("mixer")
    for column in table.columns:
        grid.add_column(column, justify="right")
    for row in table.rows:
        grid.add_row(row, *[table.cell_text(row, c) for c in table.columns])
    console.print(grid)
    entries = [e for e in speed_entries(speed) if not e.get("error")]
    if entries:
        st = Table(title="speed (forward+backward throughput; one decoding step)")
        for head in ("mixer", "tokens/s", "step µs", "state floats"):
            st.add_column(head, justify="left" if head == "mixer" else "right")
        for e in entries:
            st.add_row(e["label"], f"{e['tokens_per_s']:,.0f}" if e["tokens_per_s"] else "-",
                       f"{e['step_s'] * 1e6:,.0f}" if e["step_s"] else "-",
                       f"{e['state_size']:,}" if e["state_size"] is not None else "-")
        console.print(st)
    ft = Table(title="findings")
    for head in ("finding", "verdict", "numbers"):
        ft.add_column(head, overflow="fold")
    colour = {"reproduced": "green", "not reproduced": "red", "not measured": "dim"}
    for f, v in findings:
        ft.add_row(f.title, f"[{colour[v.status]}]{v.status}[/]", v.detail)
    console.print(ft)


def bench_command(
    tasks: Union[str, list[str]] = "mqar,selective_copy,parity",
    mixers: Union[str, list[str]] = "attention,mamba,lstm",
    d_model: Union[int, str, list[int]] = 64,
    n_layers: int = 2,
    seeds: int = 1,
    steps: Optional[int] = None,
    budget_seconds: Optional[float] = None,
    batch_size: Optional[int] = None,
    lr: Optional[float] = None,
    eval_samples: int = 256,
    workers: Optional[int] = None,
    threads: int = 1,
    out: str = "runs/bench",
) -> dict[str, Any]:
    """Train and test one small model per (task, mixer, d_model, seed) cell; write the results and a report.

    Results go to OUT/results.jsonl, one line per finished cell; rerunning the same command skips the
    cells already there, so an interrupted grid resumes. The report (OUT/report.md, OUT/report.html)
    covers every cell in OUT/results.jsonl -- so several bench commands into one OUT (different
    mixers per task) build one report -- and marks the literature's findings reproduced or not.

    Args:
        tasks: task specs, comma-separated or a YAML list: "mqar", "mqar:n_pairs=4,8,16",
            "mqar:n_pairs=4,8:length=64,128" (every combination), "passkey:eval_lengths=[64,256]",
            or "all". A comma followed by a task name starts the next task.
        mixers: mixer or variant labels, comma-separated or a YAML list: registry names, "<mixer>-neg"
            (eigenvalues in [-1, 1]), "attention-abs" (sinusoidal absolute positions), "all" (every
            registered mixer) or "variants" (every mixer and variant).
        d_model: model width(s): 64 or "64,128".
        n_layers: blocks per model (mixer + SwiGLU MLP each).
        seeds: seeds per cell (0, 1, ...); the report averages them.
        steps: optimizer steps per cell (default: per task, see seqmix.bench.cells.TASK_TRAINING).
        budget_seconds: also stop a cell's training after this many seconds (its steps are recorded).
        batch_size: sequences per step (default: per task).
        lr: peak learning rate (default: per task).
        eval_samples: held-out sequences per test setting.
        workers: cells run at once, each in its own process (default: up to 2, one per core).
        threads: torch threads per worker.
        out: output directory (results.jsonl, report.md, report.html, plots).
    """
    specs = parse_tasks(tasks, BENCH_TASKS)
    labels = parse_mixers(mixers, ["attention", "mamba", "lstm"])
    dims = parse_ints("d_model", d_model)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UserError(f"--seeds must be a positive int, got {seeds!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"--threads must be a positive int, got {threads!r}")
    cells = _grid(specs, labels, dims, n_layers, seeds, max_steps=steps, budget_seconds=budget_seconds,
                  batch_size=batch_size, lr=lr, eval_samples=eval_samples)
    out_dir = Path(out)
    n_workers = workers or default_workers()
    print(f"seqmix bench: {len(cells)} cells ({len(specs)} task settings x {len(labels)} mixers x "
          f"{len(dims)} widths x {seeds} seeds), {n_workers} worker(s) x {threads} thread(s); results in "
          f"{out_dir / 'results.jsonl'}", flush=True)
    run_grid(cells, out_dir / "results.jsonl", workers=n_workers, threads=threads)
    # the report covers every cell in the results file: several bench runs into one OUT add up
    records, _ = load_records(out_dir / "results.jsonl")
    return _finish(records, out_dir, "seqmix bench", _command_line())


def compare_command(
    mixers: Union[str, list[str]] = "default",
    tasks: Union[str, list[str]] = "default",
    d_model: int = 64,
    n_layers: int = 2,
    total_seconds: float = 540.0,
    speed: bool = True,
    workers: Optional[int] = None,
    out: str = "runs/compare",
) -> dict[str, Any]:
    """Which mixer can recall, copy, track state? A quick grid and a speed check, within a time budget.

    By default one representative per family (attention, linear_attention, retnet, gla, mamba, lru,
    lstm, mingru) on mqar, selective_copy and parity at small sizes, then each mixer's training
    throughput and decoding cost. Every mixer trains the same number of steps per task, but each cell
    is capped by its share of the time left of --total_seconds, so the whole run ends within about
    that time on any machine (a slower machine trains fewer steps; the steps are recorded). Prints
    the table and the findings; writes OUT/report.html (self-contained) and OUT/report.md.

    Args:
        mixers: "default", "all" (every registered mixer), or labels as for seqmix bench.
        tasks: "default", "all" (every task, default parameters), or task specs as for seqmix bench.
        d_model: model width.
        n_layers: blocks per model.
        total_seconds: wall-clock budget of the whole command (training cells + speed + report).
        speed: also measure each mixer's fwd+bwd throughput and step latency.
        workers: cells run at once (default: up to 2, one per core).
        out: output directory.
    """
    started = time.perf_counter()
    specs = parse_tasks(tasks, COMPARE_TASKS)
    labels = parse_mixers(mixers, [m for m in COMPARE_MIXERS if m in REGISTRY])
    n_workers = workers or default_workers()
    total = float(total_seconds)
    n_cells = len(specs) * len(labels)
    reserve = SPEED_RESERVE_S if speed else 10.0
    rounds = -(-n_cells // n_workers)  # cells each worker runs one after another
    if total - reserve < rounds * (CELL_OVERHEAD_S + 2.0):
        raise UserError(f"--total_seconds {total:g} is too short for {n_cells} cells on {n_workers} worker(s); "
                        f"allow at least {reserve + rounds * (CELL_OVERHEAD_S + 2.0):.0f} s")
    # every cell trains its task's steps (the same for every mixer), capped by its share of the time left
    cells = _grid(specs, labels, [d_model], n_layers, 1)
    out_dir = Path(out)
    print(f"seqmix compare: {len(labels)} mixers x {len(specs)} tasks = {n_cells} cells on {n_workers} worker(s); "
          f"total budget {total:.0f} s", flush=True)
    records = run_grid(cells, out_dir / "results.jsonl", workers=n_workers, threads=1,
                       deadline_seconds=total - reserve - (time.perf_counter() - started),
                       overhead_seconds=CELL_OVERHEAD_S)
    speed_result = None
    if speed:
        speed_result = _quick_speed(labels, d_model, out_dir)
    capped = sum(1 for r in records if r.get("stopped_by") == "time limit")
    notes = [f"d_model={d_model}, {n_layers} layers; each cell trains its task's steps, capped by its share of the "
             f"{total:.0f} s budget ({capped} of {len(records)} cells were cut short by the cap; their steps are "
             f"listed below); whole run {time.perf_counter() - started:.0f} s"]
    return _finish(records, out_dir, "seqmix compare", _command_line(), speed_result, notes)


def _quick_speed(labels: list[str], d_model: int, out_dir: Path) -> Optional[dict[str, Any]]:
    """fwd+bwd throughput at T=512 and step latency after 64 and 2048 tokens, for the registered mixers."""
    import json

    from seqmix.bench.speed import run_speed
    from seqmix.bench.variants import resolve_variant

    mixers = list(dict.fromkeys(resolve_variant(label).mixer for label in labels))
    print(f"measuring speed: {', '.join(mixers)}", flush=True)
    result = run_speed(mixers, seq_lens=(512,), context_lens=(64, 2048), batch_size=4, d_model=d_model,
                       repeats=3, steps=20, ceiling_size=512, ceiling_seconds=0.05)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=2))
    return result


def _command_line() -> str:
    return "seqmix " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("seqmix") else ""
