"""The report of a suite run: Markdown (with PNGs beside it) and one self-contained HTML page.

The HTML page embeds its plots as base64 PNGs and its style inline -- no scripts, no external files --
so it can be mailed or archived as one file. Sections: the results table (mixers x tasks, the primary
metric), the findings with their verdicts, plots (heat map, score vs. state size, score vs. test
length for the extrapolation tasks, and with ``seqmix compare`` training speed and decode cost), then
one row per cell with everything measured.
"""

from __future__ import annotations

import base64
import datetime
import html
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from seqmix.bench import suite_plots
from seqmix.bench.findings import Finding, Verdict

__all__ = ["ResultsTable", "results_table", "write_report", "speed_entries"]


class ResultsTable:
    """Rows (variants, with width/depth when a grid has several), columns (tasks with their parameters)."""

    def __init__(self, rows: list[str], columns: list[str], values: dict[tuple[str, str], float],
                 skills: dict[tuple[str, str], Optional[float]], metrics: dict[str, str],
                 errors: dict[tuple[str, str], str]) -> None:
        self.rows, self.columns, self.values, self.skills = rows, columns, values, skills
        self.metrics, self.errors = metrics, errors

    def cell_text(self, row: str, column: str) -> str:
        if (row, column) in self.values:
            return f"{self.values[(row, column)]:.2f}"
        return "error" if (row, column) in self.errors else "-"


def column_label(record: dict[str, Any]) -> str:
    params = record["cell"]["task_params"]
    inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    return f"{record['cell']['task']}({inner})" if inner else record["cell"]["task"]


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(map(str, value)) + "]"
    return str(value)


def _row_labeller(records: list[dict[str, Any]]):
    dims = {r["cell"]["d_model"] for r in records}
    depths = {r["cell"]["n_layers"] for r in records}

    def label(r: dict[str, Any]) -> str:
        text = r["cell"]["variant"]
        if len(dims) > 1:
            text += f" d{r['cell']['d_model']}"
        if len(depths) > 1:
            text += f" x{r['cell']['n_layers']}"
        return text
    return label


def results_table(records: list[dict[str, Any]]) -> ResultsTable:
    """Mean primary metric (over the task's test settings, then over seeds) per row and column."""
    row_of = _row_labeller(records)
    rows: list[str] = []
    columns: list[str] = []
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    info: dict[str, dict[str, Any]] = {}
    errors: dict[tuple[str, str], str] = {}
    for r in records:
        row, col = row_of(r), column_label(r)
        rows.append(row) if row not in rows else None
        columns.append(col) if col not in columns else None
        if r.get("error"):
            errors[(row, col)] = r["error"]
            continue
        info[col] = r["task"]
        if r.get("primary") is not None:
            sums[(row, col)].append(r["primary"])
    values = {k: sum(v) / len(v) for k, v in sums.items()}
    skills = {k: suite_plots.skill(v, info[k[1]]["chance"], info[k[1]]["higher_is_better"]) for k, v in values.items()}
    metrics = {c: info[c]["primary_metric"] for c in info}
    return ResultsTable(rows, columns, values, skills, metrics, errors)


def speed_entries(speed: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """From a ``run_speed`` result: per mixer, fwd+bwd tokens/s at the longest length and the step cost."""
    entries = []
    for m in (speed or {}).get("mixers", []):
        if m.get("error"):
            entries.append({"label": m["name"], "error": m["error"]})
            continue
        fb = [c for c in m["fwd_bwd"] if not c.get("error")]
        st = [s for s in m["step"] if not s.get("error")]
        entries.append({
            "label": m["name"],
            "tokens_per_s": fb[-1]["tokens_per_s"] if fb else None,
            "seq_len": fb[-1]["seq_len"] if fb else None,
            "step_s": st[-1]["median_s"] if st else None,
            "context": st[-1]["context"] if st else None,
            "state_size": st[-1].get("state_size") if st else None,
            "bounded": m.get("bounded_state"),
        })
    return entries


# ------------------------------------------------------------------ plots
def _plots(records: list[dict[str, Any]], table: ResultsTable, speed: Optional[dict[str, Any]]) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG bytes) of every plot the records allow."""
    ok = [r for r in records if not r.get("error") and r.get("settings")]
    row_of = _row_labeller(records)
    # one colour and marker per variant everywhere; several widths of a variant differ by line style
    variants = list(dict.fromkeys([r["cell"]["variant"] for r in records] + [e["label"] for e in speed_entries(speed)]))
    vstyle = suite_plots.colours(variants)
    widths = sorted({r["cell"]["d_model"] for r in records})
    dashes = ["-", "--", ":", "-."]
    style = dict(vstyle)
    for r in records:
        colour, marker, _ = vstyle[r["cell"]["variant"]]
        style[row_of(r)] = (colour, marker, dashes[widths.index(r["cell"]["d_model"]) % len(dashes)])
    plots: list[tuple[str, str, bytes]] = []
    if table.values:
        plots.append(("heatmap.png", "Mixers x tasks: the primary metric in each cell, coloured by skill "
                      "(0 = chance, 1 = perfect; lower-is-better metrics are mapped the same way).",
                      suite_plots.heatmap(table.rows, table.columns, table.values, table.skills,
                                          "primary metric, mean over the task's test settings")))
    # score vs. state size: one panel per column, one series per variant (several widths -> a line)
    state: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        if r.get("train_state_size") and r.get("primary") is not None:
            state[column_label(r)][r["cell"]["variant"]].append((r["train_state_size"], r["primary"]))
    if state:
        plots.append(("state.png", "Score vs. the state each model holds after its training length "
                      "(log scale; attention's cache grows with the context, the others are fixed).",
                      suite_plots.score_vs_state({k: dict(v) for k, v in state.items()}, table.metrics, vstyle)))
    # score vs. test length: tasks tested beyond their training length
    lengths: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    train_x: dict[str, Optional[float]] = {}
    chance: dict[str, Optional[float]] = {}
    for r in ok:
        from seqmix.bench.findings import Measured

        curve = Measured.by_length(r)
        if len(curve) < 2 or max(curve) <= r["task"]["train_length"]:
            continue
        col = column_label(r)
        train_x[col], chance[col] = r["task"]["train_length"], r["task"]["chance"]
        lengths[col][row_of(r)] = sorted(curve.items())  # a second seed overwrites: one curve per row
    if lengths:
        plots.append(("lengths.png", "Extrapolation: score vs. test length (dashed: the training length; "
                      "dotted: chance).",
                      suite_plots.score_vs_length({k: dict(v) for k, v in lengths.items()}, train_x,
                                                  table.metrics, chance, style)))
    entries = [e for e in speed_entries(speed) if not e.get("error")]
    if entries:
        plots.append(("speed.png", "Training throughput (forward + backward) and the cost of one decoding step "
                      "against the state it carries.", suite_plots.speed(entries, style)))
    return plots


# ------------------------------------------------------------------ writing
def write_report(records: list[dict[str, Any]], findings: list[tuple[Finding, Verdict]], out_dir: Path | str,
                 *, title: str = "seqmix diagnostic suite", command: str = "", speed: Optional[dict[str, Any]] = None,
                 notes: Optional[list[str]] = None) -> dict[str, Path]:
    """Write ``report.md`` (+ PNGs) and ``report.html`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(records)
    plots = _plots(records, table, speed)
    for name, _, png in plots:
        (out / name).write_bytes(png)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = _markdown(records, findings, table, plots, title, command, stamp, speed, notes or [])
    page = _html(records, findings, table, plots, title, command, stamp, speed, notes or [])
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(page, encoding="utf-8")
    return {"markdown": out / "report.md", "html": out / "report.html"}


HOW_TO_READ = ("Each cell trains one small model on one synthetic task and tests it on held-out sequences "
               "(often longer than in training). Scores are the task's primary metric (accuracy, or relative "
               "MSE for icl_regression, where lower is better), averaged over the task's test settings; the "
               "plots and the per-cell table break them down. A finding is marked reproduced only when every "
               "part of its stated pattern holds on the measured cells.")


def _cells_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    row_of = _row_labeller(records)
    rows = []
    for r in records:
        if r.get("error"):
            rows.append([column_label(r), row_of(r), "error", "-", "-", "-", "-", "-", "-", r["error"]])
            continue
        metric = r["task"]["primary_metric"]
        settings = ", ".join(f"{s['name']}: {s['metrics'].get(metric, float('nan')):.2f}" for s in r["settings"])
        loss = r.get("train_loss")
        rows.append([column_label(r), row_of(r), f"{r['primary']:.3f}" if r.get("primary") is not None else "-",
                     str(r["steps"]) + ("" if r["stopped_by"] == "steps" else f" ({r['stopped_by']})"),
                     f"{r['cell']['lr']:g}",
                     f"{r['train_seconds']:.0f}", "-" if loss is None else f"{loss:.3f}",
                     f"{r['parameters']:,}", f"{r['train_state_size']:,}" if r.get("train_state_size") else "-",
                     settings])
    return rows


CELL_HEAD = ["task", "mixer", "score", "steps", "lr", "train s", "train loss", "params", "state", "per test setting"]
SPEED_HEAD = ["mixer", "fwd+bwd tokens/s", "step latency (µs)", "state floats", "bounded"]


def _speed_rows(speed: Optional[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for e in speed_entries(speed):
        if e.get("error"):
            rows.append([e["label"], "error", "-", "-", e["error"]])
            continue
        rows.append([e["label"], "-" if not e["tokens_per_s"] else f"{e['tokens_per_s']:,.0f}",
                     "-" if not e["step_s"] else f"{e['step_s'] * 1e6:,.0f}",
                     "-" if e["state_size"] is None else f"{e['state_size']:,}",
                     {True: "yes", False: "no", None: "-"}[e["bounded"]]])
    return rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(records, findings, table, plots, title, command, stamp, speed, notes) -> str:
    parts = [f"# {title}", "", f"{stamp}" + (f" — `{command}`" if command else ""), "", HOW_TO_READ, ""]
    parts += [f"- {n}" for n in notes] + ([""] if notes else [])
    parts += ["## Results", ""]
    parts.append(_md_table(["mixer"] + table.columns,
                           [[row] + [table.cell_text(row, c) for c in table.columns] for row in table.rows]))
    parts += ["", "## Findings", ""]
    parts.append(_md_table(["finding", "source", "verdict", "numbers"],
                           [[f.title, f.source, f"**{v.status}**", v.detail] for f, v in findings]))
    parts += ["", "Expected patterns (with the thresholds the verdicts use):", ""]
    parts += [f"- **{f.title}**: {f.expected}" for f, _ in findings]
    if speed:
        parts += ["", "## Speed", "", _md_table(SPEED_HEAD, _speed_rows(speed))]
    parts += ["", "## Plots", ""]
    for name, caption, _ in plots:
        parts += [f"![{caption}]({name})", "", caption, ""]
    parts += ["## Cells", "", _md_table(CELL_HEAD, _cells_rows(records)), ""]
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.reproduced{background:#d8f5d0}.not-reproduced{background:#fbd5d0}.not-measured{background:#eee}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}
code{background:#f3f3f3;padding:1px 4px}"""


def _h_table(head: list[str], rows: list[list[str]], classes: Optional[list[list[str]]] = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cells = []
        for j, text in enumerate(row):
            cls = classes[i][j] if classes else ""
            cells.append(f"<td class=\"{cls}\">{html.escape(str(text))}</td>" if cls else f"<td>{html.escape(str(text))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _html(records, findings, table, plots, title, command, stamp, speed, notes) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(stamp)}" + (f" — <code>{e(command)}</code>" if command else "") + "</p>",
            f"<p>{e(HOW_TO_READ)}</p>"]
    if notes:
        body.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    rows = [[row] + [table.cell_text(row, c) for c in table.columns] for row in table.rows]
    body += ["<h2>Results</h2>", _h_table(["mixer"] + table.columns, rows,
                                          [[""] + ["num"] * len(table.columns) for _ in rows])]
    body.append("<h2>Findings</h2>")
    frows = [[f.title, f.source, v.status, v.detail] for f, v in findings]
    fcls = [["", "", v.status.replace(" ", "-"), ""] for _, v in findings]
    body.append(_h_table(["finding", "source", "verdict", "numbers"], frows, fcls))
    body.append("<p>Expected patterns (with the thresholds the verdicts use):</p><ul>"
                + "".join(f"<li><b>{e(f.title)}</b>: {e(f.expected)}</li>" for f, _ in findings) + "</ul>")
    if speed:
        body += ["<h2>Speed</h2>", _h_table(SPEED_HEAD, _speed_rows(speed))]
    body.append("<h2>Plots</h2>")
    for name, caption, png in plots:
        data = base64.b64encode(png).decode("ascii")
        body.append(f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{data}\">"
                    f"<figcaption>{e(caption)}</figcaption></figure>")
    body += ["<h2>Cells</h2>", _h_table(CELL_HEAD, _cells_rows(records))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
