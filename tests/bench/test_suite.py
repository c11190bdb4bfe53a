"""The diagnostic suite: cells, the resumable results file, the grid, variants and the CLI lists."""

from __future__ import annotations

import json
import math

import pytest
import torch

from seqmix.bench import grid as grid_module
from seqmix.bench.cells import Cell, build_model, run_cell
from seqmix.bench.grid import run_grid
from seqmix.bench.results import ResultsFile, load_records
from seqmix.bench.specs import parse_ints, parse_mixers, parse_tasks
from seqmix.bench.variants import AbsolutePositions, list_variants, resolve_variant, sinusoidal_positions
from seqmix.data.synthetic import build_task
from seqmix.errors import UserError

# tiny cells: a few steps of a 1-layer, width-16 model on short sequences (well under a second each)
TINY = dict(d_model=16, n_layers=1, max_steps=3, batch_size=4, eval_samples=8)
MQAR = {"n_pairs": 2, "length": 16, "vocab_size": 16}
PARITY = {"max_length": 8, "eval_lengths": [12]}


def tiny_cells() -> list[Cell]:
    return [Cell("mqar", v, MQAR, **TINY) for v in ("attention", "lstm")] + [Cell("parity", "lstm", PARITY, **TINY)]


# ------------------------------------------------------------------ one cell
def test_run_cell_records_what_was_measured():
    record = run_cell(Cell("parity", "lstm", PARITY, **TINY))
    assert record["error"] is None
    assert record["steps"] == 3 and record["stopped_by"] == "steps"
    assert record["task"]["primary_metric"] == "accuracy" and record["task"]["chance"] == 0.5
    assert [s["name"] for s in record["settings"]] == ["L=3-8", "L=12"]
    assert record["settings"][1]["length"] == 13  # 12 bits and "="
    for s in record["settings"]:
        assert 0.0 <= s["metrics"]["accuracy"] <= 1.0
        # an LSTM keeps h and c per layer: 2 * d_model floats, whatever the length
        assert s["state_size"] == 2 * 16
    assert record["state_bounded"] is True
    assert record["primary"] == pytest.approx(sum(s["metrics"]["accuracy"] for s in record["settings"]) / 2)
    assert record["parameters"] > 0 and record["tokens_per_s"] > 0 and math.isfinite(record["train_loss"])
    json.dumps(record)  # a record is plain JSON


def test_run_cell_is_deterministic_for_a_seed():
    a = run_cell(Cell("mqar", "lstm", MQAR, **TINY))
    b = run_cell(Cell("mqar", "lstm", MQAR, **TINY))
    c = run_cell(Cell("mqar", "lstm", MQAR, seed=1, **TINY))
    assert a["train_loss"] == b["train_loss"] and a["settings"] == b["settings"]
    assert a["train_loss"] != c["train_loss"]


def test_attention_state_grows_and_is_not_bounded():
    record = run_cell(Cell("mqar", "attention", MQAR, **TINY))
    assert record["state_bounded"] is False
    assert record["train_state_size"] == 2 * 16 * 16  # keys and values, d_model each, per token, 16 tokens


def test_budget_seconds_stops_training():
    record = run_cell(Cell("mqar", "lstm", MQAR, **{**TINY, "max_steps": 100_000}, budget_seconds=0.3))
    assert record["stopped_by"] == "budget" and 0 < record["steps"] < 100_000


def test_vector_task_uses_a_regressor():
    record = run_cell(Cell("icl_regression", "lstm", {"n_dims": 2, "n_points": 5}, **TINY))
    assert record["error"] is None and record["task"]["primary_metric"] == "relative_mse"


def test_a_failing_mixer_is_a_record_not_a_crash(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("deliberately broken")
    monkeypatch.setattr("seqmix.bench.cells._train", broken)
    record = run_cell(Cell("mqar", "lstm", MQAR, **TINY))
    assert record["error"] == "RuntimeError: deliberately broken"


def test_cell_validation_names_the_field():
    with pytest.raises(UserError, match="d_model"):
        Cell("mqar", "lstm", d_model=0)
    with pytest.raises(UserError, match="unknown mixer or variant 'mambo'.*did you mean 'mamba'"):
        Cell("mqar", "mambo")
    # task defaults are resolved into the cell, so its key changes when a default does
    assert Cell("mqar", "lstm").max_steps is not None


# ------------------------------------------------------------------ variants
def test_variants_include_negative_eigenvalues_and_absolute_positions():
    variants = list_variants()
    assert variants["mamba-neg"].options == {"negative_eigenvalues": True}
    assert variants["attention-abs"].options == {"rotary": False} and variants["attention-abs"].absolute_positions
    task = build_task("mqar", **MQAR)
    model = build_model(task, resolve_variant("mamba-neg"), 16, 1)
    assert model.blocks[0].mixer.negative_eigenvalues is True


def test_sinusoidal_table_hand_values():
    table = sinusoidal_positions(3, 4)
    # P[t, 2i] = sin(t / 10000^(2i/4)), P[t, 2i+1] = cos(.)
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                             [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                             [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]])
    torch.testing.assert_close(table, expected)


def test_absolute_positions_make_the_model_position_aware():
    torch.manual_seed(0)
    task = build_task("mqar", **MQAR)
    model = build_model(task, resolve_variant("attention-abs"), 16, 1)
    assert isinstance(model.embed, AbsolutePositions) and model.head.weight is model.embed.weight
    tokens = torch.full((1, 6), 3)
    logits, _ = model(tokens)  # [1, 6, V]
    # the same token at every position: a position-blind model (no rotary, no positions) would give
    # the same logits at positions 0 and 5 after causal averaging over identical values
    assert not torch.allclose(logits[0, 0], logits[0, 5], atol=1e-4)
    with pytest.raises(UserError, match="single step"):
        model.step(torch.tensor([3]))


# ------------------------------------------------------------------ results file
def test_results_file_appends_and_reloads(tmp_path):
    path = tmp_path / "r.jsonl"
    results = ResultsFile(path)
    results.append({"key": "a", "x": 1})
    results.append({"key": "b", "x": 2})
    records, bad = load_records(path)
    assert [r["key"] for r in records] == ["a", "b"] and bad == 0
    assert "a" in ResultsFile(path)


def test_torn_last_line_is_ignored_and_never_corrupts_the_next_record(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsFile(path).append({"key": "a", "x": 1})
    with open(path, "ab") as f:
        f.write(b'{"key": "b", "x": 2')  # a crash in the middle of a write: no closing brace, no newline
    records, bad = load_records(path)
    assert [r["key"] for r in records] == ["a"] and bad == 1
    results = ResultsFile(path)
    assert results.unreadable_lines == 1
    results.append({"key": "c", "x": 3})
    records, bad = load_records(path)
    assert [r["key"] for r in records] == ["a", "c"] and bad == 1


# ------------------------------------------------------------------ grid
def test_grid_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    cells = tiny_cells()
    lines: list[str] = []
    records = run_grid(cells, path, workers=1, progress=lines.append)
    assert [r["key"] for r in records] == [c.key for c in cells]
    assert all(r["error"] is None for r in records)
    assert sum(1 for _ in open(path)) == 3
    assert any(line.startswith("[3/3] parity") for line in lines)

    def must_not_run(cell):
        raise AssertionError(f"resumed grid retrained {cell}")
    monkeypatch.setattr(grid_module, "run_cell", must_not_run)
    again = run_grid(cells, path, workers=1, progress=lines.append)
    assert again == records
    assert sum(1 for _ in open(path)) == 3
    assert "3 of 3 cells already in" in lines[-1]


def test_grid_retries_a_failed_cell(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    cell = tiny_cells()[1]
    ResultsFile(path).append({"key": cell.key, "error": "RuntimeError: earlier failure"})
    [record] = run_grid([cell], path, workers=1, progress=None)
    assert record["error"] is None


def test_grid_with_two_worker_processes(tmp_path):
    records = run_grid(tiny_cells()[:2], tmp_path / "r.jsonl", workers=2, progress=None)
    assert len(records) == 2 and all(r["error"] is None for r in records)
    assert all(r["threads"] == 1 for r in records)


# ------------------------------------------------------------------ CLI lists
def test_parse_tasks_grammar():
    assert parse_tasks("mqar:n_pairs=4,8,parity", []) == [("mqar", {"n_pairs": 4}), ("mqar", {"n_pairs": 8}),
                                                          ("parity", {})]
    assert parse_tasks("mqar:n_pairs=4,8:length=64,128", []) == [
        ("mqar", {"n_pairs": 4, "length": 64}), ("mqar", {"n_pairs": 4, "length": 128}),
        ("mqar", {"n_pairs": 8, "length": 64}), ("mqar", {"n_pairs": 8, "length": 128})]
    assert parse_tasks(["passkey:eval_lengths=[64,256]", "parity:score=every"], []) == [
        ("passkey", {"eval_lengths": [64, 256]}), ("parity", {"score": "every"})]
    assert parse_tasks("default", ["parity"]) == [("parity", {})]
    assert len(parse_tasks("all", [])) == 10


@pytest.mark.parametrize("spec, message", [
    ("mqr", "unknown task 'mqr' \\(did you mean 'mqar'\\?\\); known tasks: mqar"),
    ("mqar:pairs=4", "task 'mqar' has no parameter 'pairs'; its parameters are: n_pairs"),
    ("mqar:n_pairs", "must look like param=value"),
    ("mqar:n_pairs=0", "mqar.n_pairs must be"),
    ("all,parity", "'all' cannot be combined"),
])
def test_parse_tasks_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_tasks(spec, [])


def test_parse_mixers():
    assert parse_mixers("mamba,lstm, mamba-neg", []) == ["mamba", "lstm", "mamba-neg"]
    assert parse_mixers(["attention-abs", "gla"], []) == ["attention-abs", "gla"]
    assert "gru" in parse_mixers("all", []) and "mamba-neg" not in parse_mixers("all", [])
    assert "mamba-neg" in parse_mixers("variants", [])
    with pytest.raises(UserError, match="unknown mixer or variant 'lstn'.*did you mean 'lstm'"):
        parse_mixers("lstn", [])
    assert parse_ints("d_model", "64,128") == [64, 128]
    with pytest.raises(UserError, match="--d_model must be positive ints"):
        parse_ints("d_model", "64,x")


def test_cli_reports_unknown_names_in_one_line(capsys):
    from seqmix.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--tasks", "parity", "--mixers", "mamab"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown mixer or variant 'mamab' (did you mean 'mamba'?)") and err.count("\n") == 1


# ------------------------------------------------------------------ training aids, deadlines, the commands
def test_train_params_apply_to_training_only():
    cell = Cell("parity", "lstm", PARITY, **TINY)
    assert cell.train_params == {"score": "every"}  # dense supervision while training
    assert Cell("parity", "lstm", {**PARITY, "score": "final"}, **TINY).train_params == {}  # the user's choice wins
    record = run_cell(cell)
    assert record["task"]["config"]["score"] == "final"  # ... and the test scores the final answer only


def test_grid_deadline_caps_every_cell(tmp_path):
    cells = [Cell("mqar", v, MQAR, **{**TINY, "max_steps": 100_000}) for v in ("lstm", "attention")]
    records = run_grid(cells, tmp_path / "r.jsonl", workers=1, progress=None, deadline_seconds=2.4,
                       overhead_seconds=0.0)
    assert [r["stopped_by"] for r in records] == ["time limit", "time limit"]
    assert records[0]["time_limit"] == pytest.approx(1.2, abs=0.1)  # half the time left for the first of two
    assert all(r["train_seconds"] < r["time_limit"] + 0.3 for r in records)


def test_compare_end_to_end(tmp_path, capsys):
    from seqmix.bench.compare import compare_command

    out = tmp_path / "cmp"
    result = compare_command(mixers="lstm", tasks="parity:max_length=8:eval_lengths=[12]", d_model=16,
                             total_seconds=60, workers=1, out=str(out))
    printed = capsys.readouterr().out
    assert "[1/1] parity" in printed and "findings" in printed and "report:" in printed
    assert (out / "speed.json").exists() and (out / "results.jsonl").exists()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # heat map, state, lengths, speed
    assert dict((f, s) for f, s, _ in result["findings"])["parity"] == "not measured"
    with pytest.raises(UserError, match="too short"):
        compare_command(total_seconds=10, out=str(out))


def test_bench_report_covers_every_cell_of_the_results_file(tmp_path):
    from seqmix.bench.compare import bench_command

    common = dict(d_model=16, n_layers=1, steps=3, batch_size=4, eval_samples=8, workers=1, out=str(tmp_path))
    bench_command(tasks="parity:max_length=8:eval_lengths=[12]", mixers="lstm", **common)
    result = bench_command(tasks="mqar:n_pairs=2:length=16:vocab_size=16", mixers="attention", **common)
    assert len(result["records"]) == 2
    md = (tmp_path / "report.md").read_text()
    assert "parity" in md and "mqar(length=16,n_pairs=2,vocab_size=16)" in md
