"""Plots of the diagnostic suite, each returned as PNG bytes (matplotlib's Agg canvas, no pyplot state).

* ``heatmap``: mixers x tasks, coloured by skill (0 = chance, 1 = perfect), the metric printed in each cell;
* ``score_vs_state``: per task, the primary metric against the state a model holds after its training
  length (log scale) -- the recall/memory trade-off of Zoology's plots;
* ``score_vs_length``: per extrapolation task, the primary metric against the test length, with the
  training length marked;
* ``speed``: training throughput (fwd+bwd tokens/s) and decode cost (step latency vs. state size).
"""

from __future__ import annotations

import io
from typing import Any, Optional

__all__ = ["heatmap", "score_vs_state", "score_vs_length", "speed", "skill", "colours"]

_MARKERS = "osD^v<>pXh*P"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def colours(labels: list[str]) -> dict[str, tuple[Any, str, str]]:
    """One (colour, marker, line style) per label, the same in every plot of a report."""
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(labels) > 10 else "tab10"]
    return {label: (cmap(i % cmap.N), _MARKERS[i % len(_MARKERS)], "-") for i, label in enumerate(labels)}


def skill(value: Optional[float], chance: Optional[float], higher_is_better: bool) -> Optional[float]:
    """Map a metric to [0, 1]: 0 at chance (or the trivial baseline's error), 1 at a perfect score."""
    if value is None or chance is None:
        return None
    best = 1.0 if higher_is_better else 0.0
    if best == chance:
        return None
    return min(1.0, max(0.0, (value - chance) / (best - chance)))


def heatmap(rows: list[str], columns: list[str], values: dict[tuple[str, str], float],
            skills: dict[tuple[str, str], Optional[float]], title: str) -> bytes:
    """A mixers x tasks grid; empty where a cell was not measured (or failed)."""
    import numpy as np

    grid = np.full((len(rows), len(columns)), np.nan)
    for (r, c), s in skills.items():
        if s is not None and r in rows and c in columns:
            grid[rows.index(r), columns.index(c)] = s
    # "mqar(length=32,n_pairs=4)" -> "mqar\nlength=32\nn_pairs=4": one parameter per line, unrotated
    ticks = [c.replace("(", "\n", 1).rstrip(")").replace(",", "\n") if "(" in c else c for c in columns]
    lines = max(t.count("\n") + 1 for t in ticks)
    width = max(len(part) for t in ticks for part in t.split("\n"))
    fig = _figure(2.0 + max(1.1, 0.085 * width) * len(columns), 1.0 + 0.42 * len(rows) + 0.16 * lines)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=9)
    for (r, c), v in values.items():
        if r in rows and c in columns and v is not None:
            s = skills.get((r, c))
            ax.text(columns.index(c), rows.index(r), f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if s is not None and s > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="skill (0 = chance, 1 = perfect)", fraction=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _grid(n: int, cols: int = 3, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig = _figure(width * cols, height * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend(fig: Any, handles: list[Any], rows_of_plots: int) -> None:
    if handles:
        fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="lower center",
                   ncol=min(6, len(handles)), frameon=False, fontsize=8)
        fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(handles) // 6) / max(1, rows_of_plots), 1, 1))


def _plot_series(ax: Any, series: dict[str, list[tuple[float, float]]], style: dict[str, tuple[Any, str, str]],
                 seen: dict[str, Any], **line_style: Any) -> None:
    """One line per label (points sorted by x) in the label's colour, marker and dash; the first line of
    each label goes into ``seen`` for the shared legend."""
    for label, points in series.items():
        colour, marker, dash = style[label]
        points = sorted(points)
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=colour,
                          linestyle=dash, label=label, **line_style)
        seen.setdefault(label, line)


def score_vs_state(panels: dict[str, dict[str, list[tuple[float, float]]]], metric_names: dict[str, str],
                   style: dict[str, tuple[Any, str, str]]) -> bytes:
    """``panels[task][label] = [(state_size, score), ...]`` -> one log-x scatter per task."""
    from matplotlib.ticker import NullFormatter

    fig, axes = _grid(len(panels))
    seen: dict[str, Any] = {}
    for ax, (task, series) in zip(axes, panels.items()):
        _plot_series(ax, series, style, seen, linewidth=1, markersize=6)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # "2x10^3 3x10^3 ..." labels collide on a short axis
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("state floats per sequence (after the training length)", fontsize=8)
        ax.set_ylabel(metric_names.get(task, "score"), fontsize=8)
        ax.grid(True, alpha=0.3)
    _legend(fig, list(seen.values()), len(axes))
    return _png(fig)


def score_vs_length(panels: dict[str, dict[str, list[tuple[float, float]]]], train_x: dict[str, Optional[float]],
                    metric_names: dict[str, str], chance: dict[str, Optional[float]],
                    style: dict[str, tuple[Any, str, str]]) -> bytes:
    """``panels[task][label] = [(test_length, score), ...]`` -> one line plot per extrapolation task."""
    fig, axes = _grid(len(panels))
    seen: dict[str, Any] = {}
    for ax, (task, series) in zip(axes, panels.items()):
        _plot_series(ax, series, style, seen, linewidth=1.4, markersize=5)
        if train_x.get(task) is not None:
            ax.axvline(train_x[task], color="grey", linestyle="--", linewidth=1)
            ax.annotate("train", (train_x[task], 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        color="grey", ha="right", va="top", rotation=90)
        if chance.get(task) is not None:
            ax.axhline(chance[task], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("test length (tokens)", fontsize=8)
        ax.set_ylabel(metric_names.get(task, "score"), fontsize=8)
        ax.grid(True, alpha=0.3)
    _legend(fig, list(seen.values()), len(axes))
    return _png(fig)


def speed(entries: list[dict[str, Any]], style: dict[str, tuple[Any, str, str]]) -> bytes:
    """``entries``: {label, tokens_per_s, step_s, state_size} -> a bar chart and a log-log scatter."""
    fig = _figure(13, 4.6)
    left, right = fig.subplots(1, 2)
    entries = [e for e in entries if e.get("tokens_per_s")]
    entries.sort(key=lambda e: -e["tokens_per_s"])
    labels = [e["label"] for e in entries]
    left.barh(range(len(entries)), [e["tokens_per_s"] for e in entries],
              color=[style.get(label, ("C0", "o", "-"))[0] for label in labels])
    left.set_yticks(range(len(entries)))
    left.set_yticklabels(labels, fontsize=9)
    left.invert_yaxis()
    left.set_xlabel("training throughput, forward + backward (tokens/s)", fontsize=9)
    if entries and entries[0].get("seq_len"):
        left.set_title(f"one mixer layer, sequences of {entries[0]['seq_len']} tokens", fontsize=10)
    left.grid(True, axis="x", alpha=0.3)
    for e in entries:
        if e.get("step_s") and e.get("state_size"):
            colour, marker, _ = style.get(e["label"], ("C0", "o", "-"))
            right.scatter(e["state_size"], e["step_s"] * 1e6, color=colour, marker=marker, s=50)
            right.annotate(e["label"], (e["state_size"], e["step_s"] * 1e6), fontsize=8,
                           xytext=(4, 3), textcoords="offset points")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("state floats per sequence (after the longest context)", fontsize=9)
    right.set_ylabel("latency of one decoding step (µs)", fontsize=9)
    contexts = {e.get("context") for e in entries if e.get("context")}
    if len(contexts) == 1:
        right.set_title(f"one decoding step after {contexts.pop()} tokens of context", fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
