"""``seqmix speed`` and the measuring tools behind it: timing, FLOP counting, peak memory, the ceiling."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from seqmix.bench.flops import count_flops, matmul_ceiling
from seqmix.bench.memory import peak_memory
from seqmix.bench.speed import speed_command
from seqmix.bench.timing import Timing, time_calls, time_interleaved
from seqmix.cli import main
from seqmix.mixers.base import Mixer
from seqmix.mixers.registry import REGISTRY, MixerSpec


# --------------------------------------------------------------------------- a mixer that always fails
class Broken(Mixer):
    modes = ("parallel",)

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model)
        self.w = nn.Parameter(torch.zeros(d_model))

    def _forward(self, x, state, mode):
        raise RuntimeError("deliberately broken forward")

    def _step(self, x_t, state):
        raise RuntimeError("deliberately broken step")

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, **self._state_factory(device, dtype))

    def state_size(self, context_len):
        return self.d_model


@pytest.fixture
def broken_mixer(monkeypatch):
    module = types.ModuleType("seqmix_test_broken_mixer")
    module.Broken = Broken
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(REGISTRY, "broken", MixerSpec("broken", f"{module.__name__}:Broken", "test", "none"))
    return "broken"


# --------------------------------------------------------------------------- the command
def test_quick_run_writes_json_and_png_and_survives_failures(tmp_path, broken_mixer, capsys):
    out = tmp_path / "res" / "speed"
    result = speed_command(mixers="lstm,mingru,broken,no_such_mixer", quick=True, out=str(out), progress=False,
                           threads=1)  # one thread: no OpenMP spin-waiting on a busy test machine
    on_disk = json.loads((tmp_path / "res" / "speed.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert (tmp_path / "res" / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert {"torch", "threads", "cpu", "device"} <= set(on_disk["machine"])
    assert on_disk["ceiling"]["best_gflops"] > 0 and "torch.matmul" in on_disk["ceiling"]["gflops"]
    mixers = {m["name"]: m for m in on_disk["mixers"]}
    assert list(mixers) == ["lstm", "mingru", "broken", "no_such_mixer"]
    assert "unknown mixer" in mixers["no_such_mixer"]["error"]
    for name in ("lstm", "mingru"):
        m = mixers[name]
        assert m["error"] is None and m["mode"] and m["parameters"] > 0
        assert [c["seq_len"] for c in m["fwd_bwd"]] == on_disk["config"]["seq_lens"] == [32, 64]
        for c in m["fwd_bwd"]:
            assert c["error"] is None
            assert c["median_s"] > 0 and c["iqr_s"] >= 0
            assert c["tokens_per_s"] == pytest.approx(2 * c["seq_len"] / c["median_s"])
            assert c["peak_bytes"] > 0 and c["flops"] > 0 and 0 < c["ceiling_fraction"]
        for s in m["step"]:
            assert s["error"] is None and s["median_s"] > 0 and s["state_size"] > 0
        assert m["bounded_state"] is True
    # the broken mixer is reported per cell with the reason, and the others were still measured
    broken = mixers["broken"]
    assert broken["error"] is None
    assert all("deliberately broken forward" in c["error"] for c in broken["fwd_bwd"])
    assert all("deliberately broken" in s["error"] for s in broken["step"])
    printed = capsys.readouterr().out
    assert "lstm" in printed and "deliberately broken forward" in printed and "speed.png" in printed


def test_cli_rejects_bad_options_before_measuring(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["speed", "--seq_lens", "[0]", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "seq_lens" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


# --------------------------------------------------------------------------- FLOPs
def test_flops_of_a_matmul_are_2mnk():
    m, n, k = 7, 5, 3
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert count_flops(lambda: a @ b) == 2 * m * n * k
    x, w = torch.randn(2, m, k), torch.randn(2, k, n)
    assert count_flops(lambda: torch.bmm(x, w)) == 2 * 2 * m * n * k


def test_flops_of_the_fused_lstm_and_cpu_sdpa_are_counted():
    B, T, I, H = 2, 5, 6, 4
    lstm = nn.LSTM(I, H, batch_first=True)
    x = torch.randn(B, T, I, requires_grad=True)
    flops = count_flops(lambda: lstm(x)[0].sum().backward())
    assert flops == 3 * 2 * T * B * 4 * H * (I + H)  # forward + backward (2x), whichever kernel ran

    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    full = count_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q))
    causal = count_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert full == 2 * (2 * 1 * 2 * 8 * 8 * 4)  # QK^T and PV
    assert causal == pytest.approx(full * (8 * 9 / 2) / 64, abs=1)


def test_matmul_ceiling_reports_agreeing_paths():
    ceiling = matmul_ceiling(128, repeats=1, sample_seconds=0.005)
    assert ceiling.best > 0 and ceiling.best == max(ceiling.gflops.values())
    assert "torch.matmul" in ceiling.gflops
    assert set(ceiling.gflops).isdisjoint(ceiling.skipped)


# --------------------------------------------------------------------------- memory
def test_peak_memory_finds_a_known_allocation_within_1_kib():
    def allocate():
        a = torch.empty(2_500_000)  # 10 MB
        b = torch.empty(1_250_000)  # 5 MB, both alive: peak 15 MB
        del a
        c = torch.empty(1_000_000)  # 4 MB, after a is freed: 9 MB
        return b, c

    assert abs(peak_memory(allocate) - 15_000_000) <= 1024


def test_peak_memory_sees_the_backward_pass():
    class BigBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            scratch = torch.ones(3_000_000)  # 12 MB, only in backward
            return g * 2 + scratch[: g.numel()].view_as(g) * 0

    x = torch.randn(100, requires_grad=True)
    peak = peak_memory(lambda: BigBackward.apply(x).sum().backward())
    assert 12_000_000 <= peak <= 12_000_000 + 64 * 1024


# --------------------------------------------------------------------------- timing
def test_timing_statistics():
    t = Timing((4.0, 1.0, 3.0, 2.0, 100.0))
    assert t.median == 3.0 and t.q1 == 2.0 and t.q3 == 4.0 and t.iqr == 2.0
    assert Timing((0.5,)).iqr == 0.0
    with pytest.raises(ValueError):
        Timing(())


def test_interleaved_rounds_visit_every_candidate_and_isolate_failures():
    calls = []

    def boom():
        calls.append("boom")
        raise ValueError("no")

    cands = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "boom": boom}
    result = time_interleaved(cands, repeats=3, warmup=1)
    assert calls == ["a", "b", "boom", "a", "b", "a", "b", "a", "b"]  # warm-up, then rounds a b, a b, a b
    assert isinstance(result["boom"], ValueError)
    assert len(result["a"].samples) == len(result["b"].samples) == 3
    calls.clear()
    time_interleaved({"a": cands["a"], "b": cands["b"]}, repeats=2, warmup=0, interleave=False)
    assert calls == ["a", "a", "b", "b"]
    assert len(time_calls(lambda: None, calls=4, warmup=0).samples) == 4


def test_a_slow_candidate_is_timed_once():
    import time

    result = time_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.03)}, repeats=3, warmup=1,
                              slow_seconds=0.02)
    assert len(result["fast"].samples) == 3 and len(result["slow"].samples) == 1


def test_shuffled_rounds_vary_the_order_but_not_the_work():
    calls = []
    cands = {k: (lambda k=k: calls.append(k)) for k in "abcde"}
    result = time_interleaved(cands, repeats=4, warmup=0, shuffle=True)
    rounds = [calls[i:i + 5] for i in range(0, 20, 5)]
    assert all(sorted(r) == list("abcde") for r in rounds)  # every round visits every candidate once
    assert len({tuple(r) for r in rounds}) > 1  # in more than one order
    assert all(len(t.samples) == 4 for t in result.values())
