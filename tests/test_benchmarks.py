"""The benchmark scripts keep running (smoke runs at toy sizes; the figures themselves are not checked)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.skipif(not BENCHMARKS.exists(), reason="benchmarks/ not beside tests/")


def test_speed_script_is_the_speed_command(tmp_path, monkeypatch, capsys):
    out = tmp_path / "speed"
    argv = ["speed.py", "--quick", "true", "--mixers", "lstm", "--threads", "1", "--plot", "false",
            "--progress", "false", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "speed.py"), run_name="__main__")
    result = json.loads(out.with_suffix(".json").read_text())
    assert [m["name"] for m in result["mixers"]] == ["lstm"]
    assert all(c["median_s"] > 0 for c in result["mixers"][0]["fwd_bwd"])
    assert "lstm" in capsys.readouterr().out


def test_peers_quick_run_skips_missing_peers_cleanly(tmp_path, monkeypatch, capsys):
    for hidden in ("mambapy", "mambapy.mamba", "transformers", "xlstm"):  # as if not installed
        monkeypatch.setitem(sys.modules, hidden, None)
    peers = runpy.run_path(str(BENCHMARKS / "peers.py"), run_name="seqmix_peers_test")
    out = tmp_path / "peers.json"
    result = peers["main"](["--quick", "--repeats", "1", "--steps", "3", "--threads", "1",
                            "--mixers", "lstm,mamba,no_such_mixer", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert {r["a_label"] for r in rows} == {"lstm", "mamba"}  # unknown names simply match no row
    for r in rows:
        assert r["status"] in ("met", "NOT met", "n/a") or r["status"].startswith("skip: "), r
        if "mambapy" in r["b_label"]:
            assert r["status"].startswith("skip: mambapy is not installed"), r
        if "transformers" in r["b_label"]:
            assert r["status"].startswith("skip: transformers is not installed"), r
    measured = [r for r in rows if r["b_label"] in ("torch.nn.LSTM", "nn.LSTM one token")]
    assert len(measured) == 2
    for r in measured:
        assert r["status"] in ("met", "NOT met") and r["ratio"] > 0
        assert r["ratio"] == pytest.approx(r["b_value"] / r["a_value"])
    printed = capsys.readouterr().out
    assert "torch.nn.LSTM" in printed and "skip: mambapy" in printed


def test_peers_kernel_rows_time_every_seqmix_op(monkeypatch):
    """The "kernel only" rows: each chunkwise op runs on the peer's shapes whether or not the peer
    (fla, mlstm_kernels) is installed; a missing peer makes its rows skips, never errors."""
    monkeypatch.setitem(sys.modules, "mlstm_kernels.torch", None)  # as if not installed
    peers = runpy.run_path(str(BENCHMARKS / "peers.py"), run_name="seqmix_peers_test")
    result = peers["main"](["--quick", "--repeats", "1", "--threads", "1", "--filter", " op"])
    rows = result["rows"]
    ops = {r["a_label"] for r in rows if "xlstm's shapes" in r["section"]}
    assert ops == {f"{name} op" for name in peers["KERNEL_OPS"] if name != "hgrn2"}
    assert {r["a_label"] for r in rows if "fla's inputs" in r["section"]} == {
        "gla op", "retnet op", "deltanet op", "linear_attention op"}
    for r in rows:
        assert r["status"] in ("met", "NOT met") or r["status"].startswith("skip: "), r
        assert r["a"] in result["timings"] and result["timings"][r["a"]]["median_s"] > 0, r
        if "xlstm's shapes" in r["section"]:
            assert r["status"].startswith("skip: mlstm_kernels is not installed"), r
