"""Findings of the literature that the suite checks against its own measurements.

Each ``Finding`` names its source, states the expected pattern *with the thresholds used*, and has a
check that reads the measured cells and returns a ``Verdict``: "reproduced", "not reproduced" (a
measured part contradicts the pattern; the numbers say which) or "not measured" (cells it needs are
missing; the parts that were measured are still reported). The checks only read records, so they are
tested on hand-made records.

Scores are the task's primary metric. "In-distribution" means the test settings no longer than the
training length, "longer" the settings beyond it; several seeds of one cell are averaged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

__all__ = ["Finding", "Verdict", "FINDINGS", "Measured", "evaluate_findings",
           "INPUT_DEPENDENT", "TIME_INVARIANT", "NONNEGATIVE_DECAY"]

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"

# Selective copying (Mamba, section 3 and Table 1): a recurrence whose decay and input gates depend on
# the token can ignore noise tokens; a linear time-invariant one applies the same filter to every token.
INPUT_DEPENDENT = ("mamba", "mamba2", "gla", "mingru", "minlstm", "lstm", "gru", "hgrn", "hgrn2", "rglru",
                   "gateloop", "rwkv6", "mlstm", "slstm", "deltanet")
TIME_INVARIANT = ("s4d", "lru", "retnet", "lmu")
# Parity (Grazzi et al. 2024): linear RNNs whose state-transition eigenvalues lie in [0, 1] cannot flip a
# sign per token; the mixers with a negative_eigenvalues option, in their default setting, plus these.
NONNEGATIVE_DECAY = ("mingru", "retnet", "linear_attention")


@dataclass(frozen=True)
class Verdict:
    status: str  # "reproduced" | "not reproduced" | "not measured"
    detail: str  # the numbers behind the status, in words
    numbers: dict[str, Any] = field(default_factory=dict)  # the same numbers, for programs


@dataclass(frozen=True)
class Finding:
    id: str  # short handle, e.g. "mqar_state"
    title: str
    source: str
    expected: str  # the pattern, with every threshold the check uses
    check: Callable[["Measured"], Verdict]


# ------------------------------------------------------------------ reading records
class Measured:
    """The successful records of a grid, with the few ways findings read them."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.records = [r for r in records if not r.get("error") and r.get("settings")]

    def select(self, task: str, **config: Any) -> list[dict[str, Any]]:
        """Records of ``task`` whose resolved task config has the given values."""
        out = []
        for r in self.records:
            if r["cell"]["task"] != task:
                continue
            cfg = r.get("task", {}).get("config", {})
            if all(cfg.get(k) == v for k, v in config.items()):
                out.append(r)
        return out

    @staticmethod
    def variant(record: dict[str, Any]) -> str:
        return record["cell"]["variant"]

    @staticmethod
    def bounded(record: dict[str, Any]) -> bool:
        return bool(record.get("state_bounded"))

    @staticmethod
    def setting(record: dict[str, Any], name: str) -> Optional[float]:
        metric = record["task"]["primary_metric"]
        for s in record["settings"]:
            if s["name"] == name:
                return s["metrics"].get(metric)
        return None

    @staticmethod
    def split(record: dict[str, Any]) -> tuple[Optional[float], Optional[float]]:
        """Mean primary metric over the in-distribution settings and over the longer ones."""
        metric, limit = record["task"]["primary_metric"], record["task"]["train_length"]
        inside = [s["metrics"][metric] for s in record["settings"] if s["length"] <= limit]
        longer = [s["metrics"][metric] for s in record["settings"] if s["length"] > limit]
        return _mean(inside), _mean(longer)

    @staticmethod
    def by_length(record: dict[str, Any]) -> dict[int, float]:
        """Primary metric per test length (settings of one length, e.g. several depths, averaged)."""
        metric = record["task"]["primary_metric"]
        groups: dict[int, list[float]] = defaultdict(list)
        for s in record["settings"]:
            groups[s["length"]].append(s["metrics"][metric])
        return {length: sum(v) / len(v) for length, v in sorted(groups.items())}


def _mean(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _avg_seeds(records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any],
               value: Callable[[dict[str, Any]], Optional[float]]) -> dict[Any, float]:
    """``key(record) -> mean of value(record)`` over the records (seeds) sharing a key."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for r in records:
        v = value(r)
        if v is not None:
            groups[key(r)].append(v)
    return {k: sum(v) / len(v) for k, v in groups.items()}


def _f(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _combine(parts: list[tuple[str, Optional[bool], str]], numbers: dict[str, Any]) -> Verdict:
    """Parts (name, holds / None = not measured, text) -> one verdict; a failed part decides first."""
    detail = "; ".join(f"{name}: {text}" for name, _, text in parts)
    if any(ok is False for _, ok, _ in parts):
        return Verdict(NOT_REPRODUCED, detail, numbers)
    if any(ok is None for _, ok, _ in parts):
        return Verdict(NOT_MEASURED, detail, numbers)
    return Verdict(REPRODUCED, detail, numbers)


def _majority(flags: dict[str, bool]) -> Optional[bool]:
    return None if not flags else sum(flags.values()) * 2 >= len(flags)


# ------------------------------------------------------------------ 1. MQAR and state size
def _mqar(m: Measured) -> Verdict:
    recs = m.select("mqar")
    # score of each cell at the K it was trained on (a K=k setting always exists for the trained K)
    score = _avg_seeds(recs, lambda r: (m.variant(r), r["cell"]["d_model"], r["task"]["config"]["n_pairs"]),
                       lambda r: m.setting(r, f"K={r['task']['config']['n_pairs']}"))
    bounded = {m.variant(r) for r in recs if m.bounded(r)}
    ks = sorted({k for (_, _, k) in score})
    dims = sorted({d for (_, d, _) in score})
    numbers: dict[str, Any] = {f"{v} d{d} K={k}": s for (v, d, k), s in sorted(score.items())}
    parts: list[tuple[str, Optional[bool], str]] = []
    # A. attention >= 0.9 at every K and d_model tried
    att = {(d, k): s for (v, d, k), s in score.items() if v == "attention"}
    if len({k for _, k in att}) < 2:
        parts.append(("attention", None, "needs attention at >= 2 values of n_pairs"))
    else:
        worst = min(att.values())
        parts.append(("attention", worst >= 0.9, f"lowest accuracy over {len(att)} cells {_f(worst)} (>= 0.90 needed)"))
    # B. at the smallest d_model, fixed-state mixers lose >= 0.10 from the smallest to the largest K
    falls: dict[str, bool] = {}
    unlearned = []
    if len(ks) >= 2:
        d0 = dims[0]
        for v in sorted(bounded):
            lo, hi = score.get((v, d0, ks[0])), score.get((v, d0, ks[-1]))
            if lo is None or hi is None:
                continue
            if lo < 0.5:
                unlearned.append(f"{v} {_f(lo)}")
                continue
            falls[v] = hi <= lo - 0.10
    ok = _majority(falls)
    text = (", ".join(f"{v} {_f(score[(v, dims[0], ks[0])])}->{_f(score[(v, dims[0], ks[-1])])}" for v in falls)
            if falls else "needs fixed-state mixers at >= 2 values of n_pairs that learn the smallest (>= 0.5)")
    if falls:
        text = f"d_model={dims[0]}, K={ks[0]}->{ks[-1]}: " + text + f" ({sum(falls.values())}/{len(falls)} drop >= 0.10)"
    if unlearned:
        text += f"; left out, below 0.5 already at K={ks[0]}: {', '.join(unlearned)}"
    parts.append(("fixed state falls with K", ok, text))
    # C. at the largest K, fixed-state mixers gain >= 0.10 from the smallest to the largest d_model
    gains: dict[str, bool] = {}
    if len(ks) >= 2 and len(dims) >= 2:
        for v in sorted(bounded):
            lo, hi = score.get((v, dims[0], ks[-1])), score.get((v, dims[-1], ks[-1]))
            if lo is None or hi is None or lo >= 0.9:
                continue  # nothing to recover
            gains[v] = hi >= lo + 0.10
    text = (f"K={ks[-1]}, d_model {dims[0]}->{dims[-1]}: " + ", ".join(
        f"{v} {_f(score[(v, dims[0], ks[-1])])}->{_f(score[(v, dims[-1], ks[-1])])}" for v in gains)
        + f" ({sum(gains.values())}/{len(gains)} gain >= 0.10)") if gains else \
        "needs fixed-state mixers below 0.9 at the largest K, at >= 2 values of d_model"
    parts.append(("recovers with d_model", _majority(gains), text))
    return _combine(parts, numbers)


# ------------------------------------------------------------------ 2. selective copying
def _selective_copy(m: Measured) -> Verdict:
    recs = m.select("selective_copy")
    score = _avg_seeds(recs, lambda r: (m.variant(r), r["cell"]["d_model"]), lambda r: m.split(r)[0])
    dep = {k: s for k, s in score.items() if k[0] in INPUT_DEPENDENT}
    inv = {k: s for k, s in score.items() if k[0] in TIME_INVARIANT}
    name = lambda k: f"{k[0]} d{k[1]}"  # noqa: E731
    numbers = {name(k): s for k, s in sorted(score.items())}
    parts: list[tuple[str, Optional[bool], str]] = []
    if dep:
        parts.append(("input-dependent", all(s >= 0.9 for s in dep.values()),
                      ", ".join(f"{name(k)} {_f(s)}" for k, s in sorted(dep.items())) + " (each >= 0.90 needed)"))
    else:
        parts.append(("input-dependent", None, f"none of {', '.join(INPUT_DEPENDENT[:4])}... measured"))
    if inv:
        parts.append(("time-invariant", all(s <= 0.5 for s in inv.values()),
                      ", ".join(f"{name(k)} {_f(s)}" for k, s in sorted(inv.items())) + " (each <= 0.50 needed)"))
    else:
        parts.append(("time-invariant", None, f"none of {', '.join(TIME_INVARIANT)} measured"))
    return _combine(parts, numbers)


# ------------------------------------------------------------------ 3. parity
def _parity(m: Measured) -> Verdict:
    from seqmix.bench.variants import list_variants

    recs = m.select("parity")
    longer = _avg_seeds(recs, lambda r: m.variant(r), lambda r: m.split(r)[1])
    numbers = {v: s for v, s in sorted(longer.items())}
    variants = list_variants()
    parts: list[tuple[str, Optional[bool], str]] = []
    if "lstm" in longer:
        parts.append(("lstm", longer["lstm"] >= 0.9, f"{_f(longer['lstm'])} on longer inputs (>= 0.90 needed)"))
    else:
        parts.append(("lstm", None, "lstm not measured"))
    nonneg = {v: s for v, s in longer.items()
              if v == "attention" or v in NONNEGATIVE_DECAY or f"{v}-neg" in variants}
    if "attention" in nonneg and len(nonneg) >= 2:
        parts.append(("near chance", all(s <= 0.6 for s in nonneg.values()),
                      ", ".join(f"{v} {_f(s)}" for v, s in sorted(nonneg.items())) + " (each <= 0.60 needed)"))
    else:
        parts.append(("near chance", None, "needs attention and a decay-in-[0, 1] linear RNN"))
    pairs = {v: (longer[v[:-4]], s) for v, s in longer.items() if v.endswith("-neg") and v[:-4] in longer}
    if pairs:
        parts.append(("[-1, 1] improves", all(neg >= base + 0.1 for base, neg in pairs.values()),
                      ", ".join(f"{v[:-4]} {_f(b)} -> {v} {_f(n)}" for v, (b, n) in sorted(pairs.items()))
                      + " (each +0.10 needed)"))
    else:
        parts.append(("[-1, 1] improves", None, "needs a mixer and its -neg variant"))
    return _combine(parts, numbers)


# ------------------------------------------------------------------ 4. set disjointness
def _set_disjoint(m: Measured) -> Verdict:
    recs = m.select("set_disjoint")
    gap = _avg_seeds(recs, lambda r: m.variant(r), lambda r: _gap(m, r))
    sf = _avg_seeds(recs, lambda r: m.variant(r), lambda r: m.setting(r, "short_first"))
    lf = _avg_seeds(recs, lambda r: m.variant(r), lambda r: m.setting(r, "long_first"))
    bounded = {m.variant(r) for r in recs if m.bounded(r)}
    numbers = {v: {"short_first": sf.get(v), "long_first": lf.get(v)} for v in sorted(gap)}
    text = lambda v: f"{v} {_f(sf.get(v))}/{_f(lf.get(v))}"  # noqa: E731
    parts: list[tuple[str, Optional[bool], str]] = []
    rec_flags = {v: g >= 0.05 for v, g in gap.items() if v in bounded}
    parts.append(("recurrent", _majority(rec_flags),
                  (", ".join(text(v) for v in sorted(rec_flags)) + f" short-first/long-first "
                   f"({sum(rec_flags.values())}/{len(rec_flags)} better short-first by >= 0.05; most needed)")
                  if rec_flags else "no fixed-state mixer measured"))
    if "attention" in gap:
        parts.append(("attention", abs(gap["attention"]) <= 0.05, f"{text('attention')} (|difference| <= 0.05 needed)"))
    else:
        parts.append(("attention", None, "attention not measured"))
    return _combine(parts, numbers)


def _gap(m: Measured, r: dict[str, Any]) -> Optional[float]:
    a, b = m.setting(r, "short_first"), m.setting(r, "long_first")
    return None if a is None or b is None else a - b


# ------------------------------------------------------------------ 5. induction heads
def _induction(m: Measured) -> Verdict:
    recs = m.select("induction")
    inside = _avg_seeds(recs, lambda r: m.variant(r), lambda r: m.split(r)[0])
    longer = _avg_seeds(recs, lambda r: m.variant(r), lambda r: m.split(r)[1])
    numbers = {v: {"in_distribution": inside.get(v), "longer": longer.get(v)} for v in sorted(inside)}
    parts: list[tuple[str, Optional[bool], str]] = []
    if "mamba" in longer:
        ok = inside["mamba"] >= 0.9 and longer["mamba"] >= 0.9
        parts.append(("mamba", ok, f"{_f(inside['mamba'])} at the training length, {_f(longer['mamba'])} longer "
                                   "(both >= 0.90 needed)"))
    else:
        parts.append(("mamba", None, "mamba not measured"))
    if "attention-abs" in longer:
        learned = inside["attention-abs"] >= 0.9
        ok = learned and longer["attention-abs"] <= 0.5
        parts.append(("attention-abs", ok, f"{_f(inside['attention-abs'])} at the training length (>= 0.90 needed), "
                                           f"{_f(longer['attention-abs'])} longer (<= 0.50 needed)"))
    else:
        parts.append(("attention-abs", None, "attention-abs not measured"))
    return _combine(parts, numbers)


# ------------------------------------------------------------------ 6. passkey and state size
def _passkey(m: Measured) -> Verdict:
    recs = [r for r in m.select("passkey") if m.bounded(r)]
    curves = _avg_seeds_curves(m, recs)
    numbers = {v: c for v, c in sorted(curves.items())}
    flags: dict[str, bool] = {}
    texts, unlearned = [], []
    for v, curve in sorted(curves.items()):
        if len(curve) < 2:
            continue
        lengths = sorted(curve)
        first, last = curve[lengths[0]], curve[lengths[-1]]
        if first < 0.5:  # never learned to retrieve, even in the shortest context: cannot show a fall-off
            unlearned.append(f"{v} {_f(first)}")
            continue
        flags[v] = last <= first - 0.2
        texts.append(f"{v} {_f(first)} (L={lengths[0]}) -> {_f(last)} (L={lengths[-1]})")
    text = ("; ".join(texts) + f" ({sum(flags.values())}/{len(flags)} drop >= 0.20; most needed)" if flags else
            "needs fixed-state mixers tested at >= 2 context lengths that retrieve in the shortest (>= 0.50)")
    if unlearned:
        text += f"; left out, below 0.50 already in the shortest context: {', '.join(unlearned)}"
    return _combine([("fixed state falls with L", _majority(flags), text)], numbers)


def _avg_seeds_curves(m: Measured, recs: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    groups: dict[str, list[dict[int, float]]] = defaultdict(list)
    for r in recs:
        groups[f"{m.variant(r)} d{r['cell']['d_model']}"].append(m.by_length(r))
    out = {}
    for label, curves in groups.items():
        lengths = set.intersection(*(set(c) for c in curves))
        out[label] = {n: sum(c[n] for c in curves) / len(curves) for n in sorted(lengths)}
    return out


FINDINGS: list[Finding] = [
    Finding("mqar_state", "Recall needs state: MQAR accuracy vs. number of pairs and width",
            "Arora et al. 2023, Zoology (arXiv:2312.04927), Figure 2",
            "Attention reaches >= 0.90 accuracy at every n_pairs (K) and d_model tried. At the smallest d_model, "
            "most fixed-state mixers that learn the smallest K (>= 0.50) lose >= 0.10 from the smallest to the "
            "largest K; at the largest K, most fixed-state mixers below 0.90 gain >= 0.10 from the smallest to "
            "the largest d_model.", _mqar),
    Finding("selective_copy", "Selective copying needs input-dependent gates",
            "Gu & Dao 2023, Mamba (arXiv:2312.00752), Table 1: S4 18.3% vs. S6 97.0%",
            f"Every measured input-dependent mixer ({', '.join(INPUT_DEPENDENT)}) reaches >= 0.90 accuracy at the "
            f"training length; every measured time-invariant one ({', '.join(TIME_INVARIANT)}) stays <= 0.50.",
            _selective_copy),
    Finding("parity", "Parity: nonlinear RNNs and negative eigenvalues track state",
            "Deletang et al. 2023 (arXiv:2207.02098), Table 2; Grazzi et al. 2024 (arXiv:2411.12537)",
            "On strings longer than in training: lstm >= 0.90 accuracy; attention and every measured linear RNN "
            f"with decays in [0, 1] (the default of mixers with a -neg variant, and {', '.join(NONNEGATIVE_DECAY)}) "
            "<= 0.60 (chance 0.50); each measured -neg variant (eigenvalues in [-1, 1]) >= its [0, 1] "
            "counterpart + 0.10.", _parity),
    Finding("set_disjoint", "Set disjointness: recurrent models prefer the short set first",
            "Arora et al. 2024, Just Read Twice (arXiv:2407.05483)",
            "Trained on both orders: most measured fixed-state mixers score >= 0.05 higher when the short set "
            "comes first than when the long set does; attention's two scores differ by <= 0.05.", _set_disjoint),
    Finding("induction_extrapolation", "Induction heads: Mamba extrapolates, absolute positions do not",
            "Gu & Dao 2023, Mamba (arXiv:2312.00752), Table 11",
            "Trained at length L, tested at L..8L: mamba >= 0.90 accuracy both at L and on the longer lengths "
            "(mean); attention-abs (sinusoidal absolute positions) >= 0.90 at L but <= 0.50 on the longer lengths.",
            _induction),
    Finding("passkey_state", "Passkey retrieval falls as the context outgrows a fixed state",
            "Mohtashami & Jaggi 2023; Chen et al. 2024, Stuffed Mamba (arXiv:2410.07145)",
            "Tested at growing context lengths (mean over key depths): most measured fixed-state mixers that "
            "retrieve in the shortest context (>= 0.50) lose >= 0.20 accuracy from the shortest to the longest "
            "context.", _passkey),
]


def evaluate_findings(records: Iterable[dict[str, Any]]) -> list[tuple[Finding, Verdict]]:
    """Every finding with its verdict on ``records``."""
    measured = Measured(records)
    return [(f, f.check(measured)) for f in FINDINGS]
