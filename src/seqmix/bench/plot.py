"""The PNG of ``seqmix speed``: fwd+bwd time vs. sequence length and step latency vs. context, log-log."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

__all__ = ["plot_speed"]

_MARKERS = "osD^v<>pXh*P"


def plot_speed(result: dict[str, Any], path: Union[str, Path]) -> Path:
    """Draw two log-log panels from a ``run_speed`` result and save them as a PNG at ``path``.

    Each mixer keeps one colour and marker in both panels; the legend sits below the panels in columns,
    so it never hides a curve. Dotted grey lines of slope 1 (and 2 on the left) show what linear and
    quadratic growth look like.
    """
    # a bare Figure on the Agg canvas: no display, and pyplot's global backend state stays untouched
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = result["config"]
    mixers = [m for m in result["mixers"] if not m["error"]]
    cmap = colormaps["tab20" if len(mixers) > 10 else "tab10"]
    legend_rows = -(-len(mixers) // 5)
    height = 5.0 + 0.26 * legend_rows  # the legend gets its own strip below the panels
    fig = Figure(figsize=(13, height))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    handles = []
    for i, m in enumerate(mixers):
        style = dict(color=cmap(i % cmap.N), marker=_MARKERS[i % len(_MARKERS)], markersize=6, linewidth=1.6)
        fb = [(c["seq_len"], c["median_s"] * 1e3) for c in m["fwd_bwd"] if not c["error"]]
        st = [(s["context"], s["median_s"] * 1e6) for s in m["step"] if not s["error"]]
        line = None
        if fb:
            (line,) = left.plot(*zip(*fb), label=f"{m['name']} ({m['mode']})", **style)
        if st:
            (line2,) = right.plot(*zip(*st), label=f"{m['name']} ({m['mode']})", **style)
            line = line or line2
        if line is not None:
            handles.append(line)

    for ax, xs in ((left, cfg["seq_lens"]), (right, cfg["context_lens"])):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
    _reference_slopes(left, cfg["seq_lens"], mixers)
    left.set_xlabel("sequence length T (tokens)")
    left.set_ylabel("forward + backward time (ms)")
    left.set_title(f"Training: B={cfg['batch_size']}, d_model={cfg['d_model']}, {cfg['dtype']}")
    right.set_xlabel("context length before the step (tokens)")
    right.set_ylabel("latency of one step (µs)")
    right.set_title(f"Decoding: one token, batch {cfg['step_batch_size']}")
    machine = result["machine"]
    fig.suptitle(f"seqmix speed — {machine['cpu']}, {machine['device']}, {machine['threads']} threads, "
                 f"torch {machine['torch']}", fontsize=11)
    if handles:
        fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="lower center",
                   ncol=min(5, len(handles)), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, (0.26 * legend_rows + 0.05) / height, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _reference_slopes(ax: Any, seq_lens: list[int], mixers: list[dict[str, Any]]) -> None:
    """Grey guides through the smallest measured time at the first length: slope 1 (linear), 2 (quadratic)."""
    firsts = [c["median_s"] * 1e3 for m in mixers for c in m["fwd_bwd"]
              if not c["error"] and c["seq_len"] == seq_lens[0]]
    if not firsts or len(seq_lens) < 2:
        return
    x0, x1, y0 = seq_lens[0], seq_lens[-1], min(firsts)
    ax.plot([x0, x1], [y0, y0 * x1 / x0], ":", color="grey", linewidth=1, label="_linear")
    ax.plot([x0, x1], [y0, y0 * (x1 / x0) ** 2], ":", color="grey", linewidth=1, label="_quadratic")
    ax.annotate("∝ T", (x1, y0 * x1 / x0), fontsize=8, color="grey", ha="right", va="top")
    ax.annotate("∝ T²", (x1, y0 * (x1 / x0) ** 2), fontsize=8, color="grey", ha="right", va="top")
