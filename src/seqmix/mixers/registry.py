"""The mixer registry: one table from a mixer's name to its class, family and source paper.

Registering a mixer here is all it takes for ``seqmix list``, ``build_mixer`` and the shared
equivalence harness (``tests/test_mixer_contract.py``) to cover it. Classes are imported lazily so
that one broken module cannot hide the others.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from seqmix.mixers.base import Mixer

__all__ = ["MixerSpec", "REGISTRY", "register", "get_spec", "list_mixers", "build_mixer", "mixer_options"]


@dataclass(frozen=True)
class MixerSpec:
    """One registry entry."""

    name: str  # the name users pass to build_mixer and the CLI
    target: str  # "module.path:ClassName" of the Mixer subclass
    family: str  # the family the literature puts it in
    paper: str  # the source paper, short form "Authors Year, Title"
    test_options: dict[str, Any] = field(default_factory=dict)  # small sizes for the harness
    test_variants: tuple[dict[str, Any], ...] = ()  # further option sets the harness also checks

    @property
    def cls(self) -> type[Mixer]:
        module_name, _, class_name = self.target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"registry entry {self.name!r} points at {self.target}, which is not a Mixer")
        return cls

    @property
    def modes(self) -> tuple[str, ...]:
        return self.cls.modes


REGISTRY: dict[str, MixerSpec] = {}


def register(spec: MixerSpec) -> MixerSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"mixer {spec.name!r} is already registered (by {REGISTRY[spec.name].target})")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> MixerSpec:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown mixer {name!r}.{hint} Known mixers: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_mixers() -> list[MixerSpec]:
    """All registered mixers, in registration order."""
    return list(REGISTRY.values())


def mixer_options(name: str) -> dict[str, Any]:
    """The constructor options of mixer ``name`` (besides ``d_model``) and their defaults."""
    params = inspect.signature(get_spec(name).cls.__init__).parameters
    return {p.name: p.default for p in params.values() if p.name not in ("self", "d_model")}


def build_mixer(name: str, d_model: int, **options: Any) -> Mixer:
    """A ready mixer module ``name`` of width ``d_model``; ``options`` override its defaults."""
    accepted = mixer_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise TypeError(f"mixer {name!r} has no option(s) {', '.join(unknown)}; its options (defaults): {listing}")
    return get_spec(name).cls(d_model=d_model, **options)


# --------------------------------------------------------------------------- the table
_SMALL_HEADS = {"n_heads": 2}

register(MixerSpec(
    name="attention",
    target="seqmix.mixers.attention:Attention",
    family="softmax attention",
    paper="Vaswani et al. 2017, Attention Is All You Need",
    test_options=_SMALL_HEADS,
    test_variants=({"rotary": False}, {"n_heads": 1, "bias": True}),
))
register(MixerSpec(
    name="linear_attention",
    target="seqmix.mixers.linear_attention:LinearAttention",
    family="linear attention",
    paper="Katharopoulos et al. 2020, Transformers are RNNs",
    test_options={**_SMALL_HEADS, "chunk_size": 16},
    test_variants=({"normalize": False}, {"chunk_size": 5}),
))
register(MixerSpec(
    name="retnet",
    target="seqmix.mixers.retnet:RetNet",
    family="linear attention (fixed decay)",
    paper="Sun et al. 2023, Retentive Network",
    test_options={**_SMALL_HEADS, "chunk_size": 16},
    test_variants=({"rotary": False}, {"value_factor": 1, "n_heads": 4, "chunk_size": 7}),
))
register(MixerSpec(
    name="lstm",
    target="seqmix.mixers.lstm:LSTM",
    family="nonlinear RNN",
    paper="Hochreiter & Schmidhuber 1997, Long Short-Term Memory",
    test_variants=({"d_hidden": 11}, {"out_proj": True}),
))
register(MixerSpec(
    name="mingru",
    target="seqmix.mixers.mingru:MinGRU",
    family="minimal RNN",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    test_options={"chunk_size": 16},
    test_variants=({"expansion": 1, "bias": False, "chunk_size": 4},),
))
register(MixerSpec(
    name="mamba",
    target="seqmix.mixers.mamba:Mamba",
    family="selective state-space model",
    paper="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    test_options={"d_state": 4, "chunk_size": 16},
    test_variants=(
        {"d_conv": 1},
        {"d_conv": 2, "expand": 1, "dt_rank": 3, "chunk_size": 8},
        {"negative_eigenvalues": True},
    ),
))

# ---- zoo A: diagonal recurrences, SSMs and convolutions (owner: zoo helper A)
register(MixerSpec(
    name="minlstm",
    target="seqmix.mixers.minlstm:MinLSTM",
    family="minimal RNN",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    test_options={"chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"expansion": 1, "bias": False, "chunk_size": 4}),
))
register(MixerSpec(
    name="rglru",
    target="seqmix.mixers.rglru:RGLRU",
    family="gated linear recurrence",
    paper="De et al. 2024, Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models",
    test_options={"chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"d_rnn": 20, "n_heads": 4, "d_conv": 2, "chunk_size": 8}),
))
register(MixerSpec(
    name="hgrn",
    target="seqmix.mixers.hgrn:HGRN",
    family="gated linear recurrence",
    paper="Qin et al. 2023, Hierarchically Gated Recurrent Neural Network for Sequence Modeling",
    test_options={"layer_idx": 1, "n_layers": 2, "chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"layer_idx": 0, "expand_ratio": 2, "chunk_size": 8}),
))
register(MixerSpec(
    name="lru",
    target="seqmix.mixers.lru:LRU",
    family="diagonal linear recurrence (complex)",
    paper="Orvieto et al. 2023, Resurrecting Recurrent Neural Networks for Long Sequences",
    test_options={"d_state": 8, "chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"d_state": 5, "r_min": 0.0, "max_phase": 0.3, "chunk_size": 4}),
))
register(MixerSpec(
    name="s4d",
    target="seqmix.mixers.s4d:S4D",
    family="diagonal state-space model (LTI)",
    paper="Gu et al. 2022, On the Parameterization and Initialization of Diagonal State Space Models",
    test_options={"d_state": 4, "chunk_size": 16},
    test_variants=({"init": "inv", "d_state": 6, "chunk_size": 5}, {"dt_min": 0.5, "dt_max": 2.0}),
))
register(MixerSpec(
    name="lmu",
    target="seqmix.mixers.lmu:LMU",
    family="Legendre memory (LTI)",
    paper="Voelker et al. 2019, Legendre Memory Units; Liu et al. 2024, LMUFormer",
    test_options={"order": 6, "theta": 12.0, "memory_d": 2},
    test_variants=({"order": 1, "theta": 3.0, "memory_d": 1, "d_hidden": 7}, {"order": 12, "theta": 50.0}),
))
# ---- end zoo A

# ---- zoo B: key-wise gated linear attention (owner: zoo helper B)
register(MixerSpec(
    name="gla",
    target="seqmix.mixers.gla:GLA",
    family="gated linear attention (key-wise decay)",
    paper="Yang et al. 2024, Gated Linear Attention Transformers with Hardware-Efficient Training",
    test_options={**_SMALL_HEADS, "chunk_size": 16, "gate_rank": 4},
    test_variants=(
        {"negative_eigenvalues": True},
        {"n_heads": 1, "expand_k": 1, "expand_v": 0.5, "chunk_size": 5},
        {"gate_normalizer": 0.05, "chunk_size": 64},  # decays near 0: exercises the op's exact sub-chunk path
    ),
))
register(MixerSpec(
    name="hgrn2",
    target="seqmix.mixers.hgrn2:HGRN2",
    family="gated linear RNN (state expansion)",
    paper="Qin et al. 2024, HGRN2: Gated Linear RNNs with State Expansion",
    test_options={**_SMALL_HEADS, "chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"lower_bound": 0.5, "n_heads": 1, "chunk_size": 5}),
))
register(MixerSpec(
    name="gateloop",
    target="seqmix.mixers.gateloop:GateLoop",
    family="linear recurrence (data-controlled transitions)",
    paper="Katsch 2023, GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    test_options={**_SMALL_HEADS, "chunk_size": 16},
    test_variants=({"complex": True}, {"negative_eigenvalues": True}, {"complex": True, "n_heads": 4, "chunk_size": 7}),
))
register(MixerSpec(
    name="rwkv4",
    target="seqmix.mixers.rwkv4:RWKV4",
    family="RWKV (per-channel decay)",
    paper="Peng et al. 2023, RWKV: Reinventing RNNs for the Transformer Era",
    test_options={"chunk_size": 16},
    test_variants=({"layer_idx": 2, "n_layers": 4, "chunk_size": 4},),
))
register(MixerSpec(
    name="rwkv6",
    target="seqmix.mixers.rwkv6:RWKV6",
    family="RWKV (matrix state, data-dependent decay)",
    paper="Peng et al. 2024, Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence",
    test_options={**_SMALL_HEADS, "mix_rank": 4, "decay_rank": 8, "chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"layer_idx": 3, "n_layers": 4, "n_heads": 1, "chunk_size": 5}),
))
# ---- end zoo B

# ---- zoo C: scalar-decay, matrix-memory and delta-rule mixers (owner: zoo helper C)
register(MixerSpec(
    name="mamba2",
    target="seqmix.mixers.mamba2:Mamba2",
    family="state-space duality (scalar-decay linear attention)",
    paper="Dao & Gu 2024, Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
    "Structured State Space Duality",
    test_options={"d_state": 4, "n_heads": 2, "chunk_size": 16},
    test_variants=(
        {"negative_eigenvalues": True},
        {"negative_eigenvalues": True, "dt_min": 0.5, "dt_max": 2.0, "chunk_size": 5},
        {"d_conv": 1, "expand": 1, "n_heads": 4, "chunk_size": 7},
    ),
))
register(MixerSpec(
    name="mlstm",
    target="seqmix.mixers.mlstm:MLSTM",
    family="matrix-memory LSTM (xLSTM)",
    paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory",
    test_options={"n_heads": 2, "chunk_size": 16},
    test_variants=({"forget_gate": "exp", "chunk_size": 5}, {"d_conv": 1, "qkv_block_size": 8, "n_heads": 4}),
))
register(MixerSpec(
    name="deltanet",
    target="seqmix.mixers.deltanet:DeltaNet",
    family="delta-rule linear attention",
    paper="Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length "
    "(Schlag et al. 2021, Linear Transformers Are Secretly Fast Weight Programmers)",
    test_options={"n_heads": 2, "chunk_size": 16},
    test_variants=({"negative_eigenvalues": True}, {"negative_eigenvalues": True, "d_conv": 1, "chunk_size": 5}),
))
register(MixerSpec(
    name="ttt_linear",
    target="seqmix.mixers.ttt_linear:TTTLinear",
    family="test-time training",
    paper="Sun et al. 2024, Learning to (Learn at Test Time): RNNs with Expressive Hidden States",
    test_options={"n_heads": 2, "mini_batch_size": 4},
    test_variants=({"mini_batch_size": 16}, {"mini_batch_size": 1, "rotary": False}, {"mini_batch_size": 5}),
))
# ---- end zoo C

# ---- zoo D: nonlinear RNNs and attention variants (owner: zoo helper D)
register(MixerSpec(
    name="elman",
    target="seqmix.mixers.elman:Elman",
    family="nonlinear RNN",
    paper="Elman 1990, Finding Structure in Time",
    test_variants=({"d_hidden": 11}, {"out_proj": True}),
))
register(MixerSpec(
    name="gru",
    target="seqmix.mixers.gru:GRU",
    family="nonlinear RNN",
    paper="Cho et al. 2014, Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
    test_variants=({"d_hidden": 11}, {"out_proj": True}),
))
register(MixerSpec(
    name="slstm",
    target="seqmix.mixers.slstm:SLSTM",
    family="nonlinear RNN (exponential gating)",
    paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory",
    # a non-zero recurrent matrix, so that the harness exercises the h -> gates feedback
    test_options={"recurrent_init": "uniform"},
    test_variants=({"recurrent_init": "zeros"}, {"d_conv": 0, "n_heads": 2}, {"d_conv": 2, "n_heads": 1}),
))
register(MixerSpec(
    name="fox",
    target="seqmix.mixers.fox:ForgettingAttention",
    family="softmax attention (forget gate)",
    paper="Lin et al. 2025, Forgetting Transformer: Softmax Attention with a Forget Gate",
    test_options=_SMALL_HEADS,
    test_variants=({"rotary": True}, {"n_heads": 1, "bias": True}),
))
register(MixerSpec(
    name="swa",
    target="seqmix.mixers.swa:SlidingWindowAttention",
    family="softmax attention (sliding window)",
    paper="Beltagy et al. 2020, Longformer: The Long-Document Transformer",
    # window 5 << T = 63: the harness sees the window slide, the ring fill and stay full
    test_options={**_SMALL_HEADS, "window": 5, "chunk_size": 16},
    test_variants=({"rotary": False, "chunk_size": 3}, {"window": 40, "chunk_size": 7}, {"window": 2, "n_heads": 1}),
))
register(MixerSpec(
    name="aaren",
    target="seqmix.mixers.aaren:Aaren",
    family="softmax attention as an RNN (learned query, prefix scan)",
    paper="Feng et al. 2024, Attention as an RNN",
    test_options={**_SMALL_HEADS, "chunk_size": 16},
    test_variants=({"chunk_size": 5, "bias": True}, {"n_heads": 1, "chunk_size": 64}),
))
register(MixerSpec(
    name="gated_conv",
    target="seqmix.mixers.gated_conv:GatedConv",
    family="gated convolution",
    paper="Dauphin et al. 2017, Language Modeling with Gated Convolutional Networks",
    test_variants=({"kernel_size": 1}, {"kernel_size": 7, "bias": False}),
))
# ---- end zoo D
