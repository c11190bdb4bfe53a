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
    test_variants=({"d_conv": 1}, {"d_conv": 2, "expand": 1, "dt_rank": 3, "chunk_size": 8}),
))

# ---- zoo A: diagonal recurrences, SSMs and convolutions (owner: zoo helper A)
# ---- end zoo A

# ---- zoo B: key-wise gated linear attention (owner: zoo helper B)
# ---- end zoo B

# ---- zoo C: scalar-decay, matrix-memory and delta-rule mixers (owner: zoo helper C)
# ---- end zoo C

# ---- zoo D: nonlinear RNNs and attention variants (owner: zoo helper D)
# ---- end zoo D
