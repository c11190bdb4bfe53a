"""Terminal output of ``seqmix speed``: a progress line while it runs, then two tables."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

__all__ = ["print_tables", "progress_reporter"]


@contextlib.contextmanager
def progress_reporter(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yields ``say(message)``, which shows what is being measured on one transient status line."""
    if not enabled:
        yield lambda _message: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:  # no live display in a log file or a pipe
        yield lambda message: None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(f"measuring: {message}")


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.1f}"


def _us(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.0f}"


def print_tables(result: dict[str, Any], written: Optional[list[str]] = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    cfg, machine, ceiling = result["config"], result["machine"], result["ceiling"]
    T_max, c_min, c_max = cfg["seq_lens"][-1], cfg["context_lens"][0], cfg["context_lens"][-1]
    rates = ", ".join(f"{k} {v:.0f}" for k, v in ceiling["gflops"].items())
    best = "not measured" if ceiling["best_gflops"] is None else f"{ceiling['best_gflops']:.0f} GFLOP/s"
    console.print(
        f"torch {machine['torch']} on {machine['cpu']} ({machine['device']}, {machine['threads']} threads); "
        f"{cfg['dtype']}, B={cfg['batch_size']}, d_model={cfg['d_model']}; matmul ceiling {best} "
        f"(best of {rates or 'none'}; {ceiling['size']}^3 products)", highlight=False
    )

    train = Table(title=f"forward+backward, median of {cfg['repeats']} interleaved rounds (ms ± IQR)")
    train.add_column("mixer")
    train.add_column("mode")
    for T in cfg["seq_lens"]:
        train.add_column(f"T={T}", justify="right")
    for head in (f"tok/s @{T_max}", f"peak MiB @{T_max}", f"GFLOP/s @{T_max}", "% ceiling"):
        train.add_column(head, justify="right")
    decode = Table(title=f"decoding: one step, batch {cfg['step_batch_size']}, median of {cfg['steps']} calls (µs)")
    decode.add_column("mixer")
    for c in cfg["context_lens"]:
        decode.add_column(f"ctx={c}", justify="right")
    decode.add_column(f"ratio {c_max}/{c_min}", justify="right")
    decode.add_column(f"state floats @{c_max}", justify="right")
    decode.add_column("bounded", justify="center")

    errors: list[str] = []
    for m in result["mixers"]:
        if m["error"]:
            errors.append(f"{m['name']}: {m['error']}")
            train.add_row(m["name"], "error", *["-"] * (len(cfg["seq_lens"]) + 4))
            decode.add_row(m["name"], *["-"] * (len(cfg["context_lens"]) + 3))
            continue
        cells = {c["seq_len"]: c for c in m["fwd_bwd"]}
        row = []
        for T in cfg["seq_lens"]:
            c = cells[T]
            if c["error"]:
                errors.append(f"{m['name']} T={T}: {c['error']}")
                row.append("error")
            else:
                row.append(f"{_ms(c['median_s'])} ±{_ms(c['iqr_s'])}")
        last = cells[T_max]
        ok = not last["error"]
        row += [
            f"{last['tokens_per_s']:,.0f}" if ok else "-",
            f"{last['peak_bytes'] / 2**20:,.1f}" if ok else "-",
            f"{last['gflops_per_s']:.1f}" if ok else "-",
            f"{100 * last['ceiling_fraction']:.1f}" if ok and last.get("ceiling_fraction") is not None else "-",
        ]
        train.add_row(m["name"], m["mode"], *row)

        steps = {s["context"]: s for s in m["step"]}
        drow = []
        for ctx in cfg["context_lens"]:
            s = steps[ctx]
            if s["error"]:
                errors.append(f"{m['name']} step ctx={ctx}: {s['error']}")
            drow.append("error" if s["error"] else _us(s["median_s"]))
        first, final = steps[c_min], steps[c_max]
        ratio = "-" if first["error"] or final["error"] else f"{final['median_s'] / first['median_s']:.2f}"
        size = final.get("state_size")
        bounded = {True: "yes", False: "no", None: "-"}[m.get("bounded_state")]
        decode.add_row(m["name"], *drow, ratio, "-" if size is None else f"{size:,}", bounded)

    console.print(train)
    console.print(decode)
    for line in errors:
        console.print(f"[red]error[/red] {line}", highlight=False)
    if written:
        console.print("wrote " + ", ".join(written))
