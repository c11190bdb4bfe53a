"""Mixer variants of the diagnostic suite: a registered mixer plus options, shown under one label.

Every registered mixer is a variant under its own name (default options). Two kinds of variant are
added because findings of the literature need them:

* ``<mixer>-neg`` for every mixer with a ``negative_eigenvalues`` option: the state-transition
  eigenvalues range over [-1, 1] instead of [0, 1] (Grazzi et al. 2024, "Unlocking State-Tracking in
  Linear RNNs Through Negative Eigenvalues", arXiv:2411.12537), which lets a linear RNN flip a sign per
  token -- exactly what parity needs.
* ``attention-abs``: softmax attention without rotary positions, with fixed sinusoidal absolute
  positions added to the input embedding instead (Vaswani et al. 2017, section 3.5). This is the
  "MHA-Absolute" model of Mamba's length-extrapolation test (Gu & Dao 2023, Table 11), which fails
  beyond its training length because it has never seen the larger position codes.

``AbsolutePositions`` wraps a model's input layer; it supports whole-sequence ``forward`` only, which
is all the suite needs (a single token carries no position, so ``step`` is refused).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from seqmix.errors import UserError
from seqmix.mixers.registry import REGISTRY, mixer_options

__all__ = ["Variant", "list_variants", "resolve_variant", "AbsolutePositions", "sinusoidal_positions"]


@dataclass(frozen=True)
class Variant:
    """A mixer and its options under one label."""

    label: str  # the name shown in tables and plots, and used on the command line
    mixer: str  # the registered mixer
    options: dict[str, Any] = field(default_factory=dict, hash=False)  # build_mixer options
    absolute_positions: bool = False  # add sinusoidal absolute positions to the input embedding
    note: str = ""  # one line for the report

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "mixer": self.mixer, "options": dict(self.options),
                "absolute_positions": self.absolute_positions}


def list_variants() -> dict[str, Variant]:
    """Every known variant, by label: the registered mixers, then ``-neg`` variants, then ``attention-abs``."""
    variants = {name: Variant(name, name) for name in REGISTRY}
    for name in REGISTRY:
        if "negative_eigenvalues" in mixer_options(name):
            variants[f"{name}-neg"] = Variant(
                f"{name}-neg", name, {"negative_eigenvalues": True},
                note="state-transition eigenvalues in [-1, 1] (Grazzi et al. 2024)")
    if "attention" in REGISTRY:
        variants["attention-abs"] = Variant(
            "attention-abs", "attention", {"rotary": False}, absolute_positions=True,
            note="no rotary; sinusoidal absolute positions added to the embedding (Vaswani et al. 2017)")
    return variants


def resolve_variant(label: str) -> Variant:
    """The variant called ``label``; an unknown label is a ``UserError`` that lists the known ones."""
    variants = list_variants()
    if label in variants:
        return variants[label]
    close = difflib.get_close_matches(str(label), variants, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"unknown mixer or variant {label!r}{hint}; known: {', '.join(variants)}")


def sinusoidal_positions(length: int, d_model: int, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """``P[t, 2i] = sin(t / 10000^(2i/D))``, ``P[t, 2i+1] = cos(t / 10000^(2i/D))``: ``[length, d_model]``."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # [T, 1]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / d_model))  # [ceil(D/2)]
    angles = position * inv_freq  # [T, ceil(D/2)]
    table = torch.zeros(length, d_model, device=device, dtype=torch.float32)  # [T, D]
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.to(dtype or torch.float32)


class AbsolutePositions(nn.Module):
    """An input layer (token embedding or input projection) followed by ``+ scale * P[t]``.

    The table is scaled to the RMS of the wrapped layer's initial output rows, so that at the start
    of training position and content weigh alike in the first block's RMSNorm (an unscaled table of
    RMS 0.71 would drown embeddings initialised at 0.02).
    """

    def __init__(self, inner: nn.Module, d_model: int, scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.d_model = d_model
        self.scale = float(scale)

    @property
    def weight(self) -> torch.Tensor:  # LanguageModel.num_parameters reads embed.weight
        return self.inner.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        if h.ndim != 3:
            raise UserError("absolute positions need whole sequences ([B, T] tokens or [B, T, d_in] inputs); "
                            "a single step carries no position")
        table = sinusoidal_positions(h.shape[1], self.d_model, device=h.device, dtype=h.dtype)  # [T, D]
        return h + self.scale * table


def add_absolute_positions(model: nn.Module, attribute: str) -> nn.Module:
    """Wrap ``model.<attribute>`` (its input layer) in ``AbsolutePositions``; returns ``model``."""
    inner = getattr(model, attribute)
    d_model = model.config.d_model
    with torch.no_grad():
        weight = inner.weight
        rms = float(weight.float().pow(2).mean().sqrt()) if weight.numel() else 1.0
        if isinstance(inner, nn.Linear):  # an input projection: rows of W x have RMS ~ rms(W) sqrt(d_in)
            rms *= math.sqrt(weight.shape[1])
    # the sinusoid table has RMS 1/sqrt(2) per element
    setattr(model, attribute, AbsolutePositions(inner, d_model, scale=rms * math.sqrt(2.0)))
    return model
