"""The benchmark scripts keep running (a smoke run at toy sizes; the figures are not checked)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from seqmix import list_mixers

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.mark.skipif(not SPEED.exists(), reason="benchmarks/ not beside tests/")
def test_speed_script_runs_at_toy_sizes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "speed.json"
    argv = ["speed.py", "--d-model", "16", "--lengths", "8", "20", "--contexts", "3", "--repeats", "1",
            "--steps", "2", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SPEED), run_name="__main__")
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [r["mixer"] for r in results] == [s.name for s in list_mixers()]
    for r in results:
        assert r["mixer"] in printed
        assert all(v > 0 for v in r["fwd_bwd_s"].values()) and all(v > 0 for v in r["step_s"].values())
