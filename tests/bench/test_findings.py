"""Findings logic on hand-made cell records, and the report files built from them."""

from __future__ import annotations

import base64
import re

import pytest

from seqmix.bench.findings import FINDINGS, evaluate_findings
from seqmix.bench.suite_report import results_table, write_report


def record(task: str, variant: str, settings: dict[str, tuple[int, float]], *, d_model: int = 64, train_length: int = 64,
           bounded: bool = True, config: dict | None = None, state: int = 1000, seed: int = 0,
           metric: str = "accuracy", chance: float = 0.1) -> dict:
    """A record as run_cell writes it; ``settings``: name -> (test length, primary metric)."""
    rows = [{"name": n, "x": float(length), "params": {}, "length": length, "metrics": {metric: v},
             "state_size": state if bounded else state * length} for n, (length, v) in settings.items()]
    return {
        "key": f"{task}/{variant}/{d_model}/{config}/{seed}", "error": None,
        "cell": {"task": task, "variant": variant, "task_params": dict(config or {}), "d_model": d_model,
                 "n_layers": 2, "seed": seed, "lr": 1e-3},
        "task": {"name": task, "kind": "tokens", "primary_metric": metric, "higher_is_better": True, "chance": chance,
                 "train_length": train_length, "config": dict(config or {})},
        "settings": rows, "primary": sum(v for _, v in settings.values()) / len(settings),
        "state_bounded": bounded, "train_state_size": state, "parameters": 1234, "steps": 10,
        "stopped_by": "steps", "train_seconds": 1.0, "train_loss": 0.5, "seconds": 1.2,
    }


def mqar(variant, d, k, acc, bounded=True):
    return record("mqar", variant, {f"K={k}": (64, acc)}, d_model=d, bounded=bounded, config={"n_pairs": k})


def verdicts(records):
    return {f.id: v for f, v in evaluate_findings(records)}


def test_every_finding_states_source_and_thresholds():
    assert len(FINDINGS) >= 6
    for f in FINDINGS:
        assert f.source and re.search(r"\d\.\d\d", f.expected), f"{f.id} must state its thresholds"


def test_nothing_measured_is_not_measured():
    assert {v.status for v in verdicts([]).values()} == {"not measured"}


# ------------------------------------------------------------------ 1. MQAR
def zoology(mamba_small_k16=0.4, mamba_big_k16=0.95, attention_k16=0.99):
    return [mqar("attention", 64, 4, 1.0, bounded=False), mqar("attention", 64, 16, attention_k16, bounded=False),
            mqar("attention", 128, 4, 1.0, bounded=False), mqar("attention", 128, 16, 1.0, bounded=False),
            mqar("mamba", 64, 4, 0.95), mqar("mamba", 64, 16, mamba_small_k16),
            mqar("mamba", 128, 4, 1.0), mqar("mamba", 128, 16, mamba_big_k16),
            mqar("lstm", 64, 4, 0.2), mqar("lstm", 64, 16, 0.1)]  # never learned: left out, not counted


def test_mqar_reproduced():
    v = verdicts(zoology())["mqar_state"]
    assert v.status == "reproduced", v.detail
    assert "mamba 0.95->0.40" in v.detail and "lstm 0.20" in v.detail and "mamba 0.40->0.95" in v.detail
    assert v.numbers["mamba d64 K=16"] == 0.4


def test_mqar_not_reproduced_when_attention_fails_or_state_does_not_help():
    assert verdicts(zoology(attention_k16=0.7))["mqar_state"].status == "not reproduced"
    assert verdicts(zoology(mamba_big_k16=0.45))["mqar_state"].status == "not reproduced"
    assert verdicts(zoology(mamba_small_k16=0.9))["mqar_state"].status == "not reproduced"


def test_mqar_one_width_is_not_measured():
    only_64 = [r for r in zoology() if r["cell"]["d_model"] == 64]
    v = verdicts(only_64)["mqar_state"]
    assert v.status == "not measured" and "at >= 2 values of d_model" in v.detail


def test_seeds_are_averaged():
    recs = zoology() + [dict(mqar("mamba", 64, 16, 0.0), key="seed1", cell={**mqar("mamba", 64, 16, 0)["cell"], "seed": 1})]
    assert verdicts(recs)["mqar_state"].numbers["mamba d64 K=16"] == pytest.approx(0.2)


# ------------------------------------------------------------------ 2. selective copying
def copying(s4d):
    return [record("selective_copy", v, {"L=64": (64, a)}) for v, a in
            [("mamba", 0.97), ("lstm", 0.93), ("s4d", s4d), ("attention", 1.0)]]


def test_selective_copy():
    assert verdicts(copying(0.18))["selective_copy"].status == "reproduced"
    v = verdicts(copying(0.7))["selective_copy"]
    assert v.status == "not reproduced" and "s4d d64 0.70" in v.detail
    assert verdicts(copying(0.18)[:2])["selective_copy"].status == "not measured"


# ------------------------------------------------------------------ 3. parity
def parity(lstm=1.0, neg=0.95):
    def rec(variant, ood):
        return record("parity", variant, {"L=3-40": (41, 1.0), "L=64": (65, ood), "L=256": (257, ood)},
                      train_length=41, chance=0.5)
    return [rec("lstm", lstm), rec("attention", 0.52), rec("mamba", 0.5), rec("mamba-neg", neg)]


def test_parity():
    v = verdicts(parity())["parity"]
    assert v.status == "reproduced" and "mamba 0.50 -> mamba-neg 0.95" in v.detail
    assert verdicts(parity(neg=0.55))["parity"].status == "not reproduced"
    assert verdicts(parity(lstm=0.6))["parity"].status == "not reproduced"
    assert verdicts(parity()[:3])["parity"].status == "not measured"  # no -neg variant


# ------------------------------------------------------------------ 4. set disjointness
def sets(attention_gap=0.0):
    def rec(variant, sf, lf, bounded=True):
        return record("set_disjoint", variant, {"short_first": (22, sf), "long_first": (22, lf), "mixed": (22, 0)},
                      bounded=bounded)
    return [rec("mamba", 0.8, 0.5), rec("gla", 0.7, 0.6), rec("lstm", 0.4, 0.42),
            rec("attention", 0.9, 0.9 - attention_gap, bounded=False)]


def test_set_disjoint():
    v = verdicts(sets())["set_disjoint"]
    assert v.status == "reproduced" and "2/3 better short-first" in v.detail
    assert verdicts(sets(attention_gap=0.2))["set_disjoint"].status == "not reproduced"


# ------------------------------------------------------------------ 5. induction
def induction(abs_long=0.1, abs_inside=1.0):
    def rec(variant, inside, longer):
        return record("induction", variant, {"L=64": (64, inside), "L=128": (128, longer), "L=512": (512, longer)})
    return [rec("mamba", 1.0, 0.99), rec("attention-abs", abs_inside, abs_long)]


def test_induction():
    assert verdicts(induction())["induction_extrapolation"].status == "reproduced"
    assert verdicts(induction(abs_long=0.8))["induction_extrapolation"].status == "not reproduced"
    # attention-abs that never learned the task cannot show the pattern
    assert verdicts(induction(abs_inside=0.3))["induction_extrapolation"].status == "not reproduced"
    assert verdicts(induction()[:1])["induction_extrapolation"].status == "not measured"


# ------------------------------------------------------------------ 6. passkey
def passkey(drop=0.5):
    def rec(variant, accs, bounded=True):
        settings = {f"L={n},depth={d}": (n, a) for n, a in zip((64, 256, 1024), accs) for d in ("0.00", "1.00")}
        return record("passkey", variant, settings, train_length=128, bounded=bounded)
    return [rec("mamba", (1.0, 0.9, 1.0 - drop)), rec("lstm", (0.6, 0.3, 0.1)), rec("gla", (0.9, 0.9, 0.85)),
            rec("mingru", (0.2, 0.1, 0.1)), rec("attention", (1.0, 1.0, 1.0), bounded=False)]


def test_passkey():
    v = verdicts(passkey())["passkey_state"]
    assert v.status == "reproduced" and "2/3 drop" in v.detail and "attention" not in v.detail
    assert "left out, below 0.50 already in the shortest context: mingru d64 0.20" in v.detail
    assert verdicts(passkey(drop=0.0))["passkey_state"].status == "not reproduced"


# ------------------------------------------------------------------ report files
def test_report_files(tmp_path):
    records = zoology() + copying(0.18) + parity() + induction() + passkey()
    records.append({**mqar("gla", 64, 4, 0.0), "key": "broken", "error": "RuntimeError: boom", "settings": None})
    paths = write_report(records, evaluate_findings(records), tmp_path, command="seqmix bench --tasks all",
                         notes=["a note"])
    md = paths["markdown"].read_text()
    for section in ("## Results", "## Findings", "## Plots", "## Cells"):
        assert section in md
    assert "**reproduced**" in md and "**not measured**" in md and "RuntimeError: boom" in md
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![" in md and "(heatmap.png)" in md and "(lengths.png)" in md and "(state.png)" in md
    page = paths["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # heat map, state size, lengths (no speed without a speed result)
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "<script" not in page and 'src="http' not in page and "<link" not in page  # self-contained
    assert page.count('class="reproduced"') >= 1


def test_results_table_averages_seeds_and_marks_errors():
    recs = [mqar("mamba", 64, 4, 0.5), dict(mqar("mamba", 64, 4, 1.0), key="s1"),
            {**mqar("gla", 64, 4, 0.0), "key": "e", "error": "boom", "settings": None}]
    table = results_table(recs)
    assert table.rows == ["mamba", "gla"] and table.columns == ["mqar(n_pairs=4)"]
    assert table.cell_text("mamba", "mqar(n_pairs=4)") == "0.75"
    assert table.cell_text("gla", "mqar(n_pairs=4)") == "error"
    # skill: (0.75 - chance 0.1) / (1 - 0.1)
    assert table.skills[("mamba", "mqar(n_pairs=4)")] == pytest.approx(0.65 / 0.9)
