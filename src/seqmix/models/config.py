"""Typed model configurations, validated as soon as they are built.

A bad value fails in ``__post_init__`` with a ``UserError`` (a ``ValueError``) that names the field,
the value and what is allowed -- an unknown mixer in ``pattern`` lists the registered ones, an unknown
mixer option lists that mixer's options, and a mixer option the mixer rejects (``n_heads`` not
dividing ``d_model``...) is caught by building every mixer once on the meta device (no memory, no
compute). ``to_dict``/``from_dict`` give the plain-JSON form stored next to saved weights.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from seqmix import options
from seqmix.errors import UserError
from seqmix.mixers.registry import REGISTRY, build_mixer, mixer_options

__all__ = ["PlainData", "StackConfig", "BackboneConfig", "RegressorConfig", "ModelConfig", "ClassifierConfig", "MLP_KINDS", "POOLINGS"]

MLP_KINDS = ("swiglu", "none")
POOLINGS = ("last", "mean")
C = TypeVar("C", bound="PlainData")


def _field_error(field_name: str, exc: Exception) -> UserError:
    return UserError(f"{field_name}: {exc}")


@dataclass
class PlainData:
    """Mixin of the model configs: a plain-data form (``to_dict``/``from_dict``) that checkpoints store.

    A dataclass without fields, so that jsonargparse still reads its subclasses as plain dataclasses.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from ``to_dict``'s output; an unknown key is an error that lists the allowed ones."""
        if not isinstance(data, dict):
            raise UserError(f"a {cls.__name__} must be a JSON object/dict, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise UserError(f"unknown {cls.__name__} key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
        if missing:
            raise UserError(f"{cls.__name__} is missing required key(s): {', '.join(missing)}")
        return cls(**data)


@dataclass
class StackConfig(PlainData):
    """A stack of blocks: the fields every model built from blocks shares (token or vector inputs)."""

    d_model: int = 256  # width of the residual stream
    n_layers: int = 4  # number of blocks
    pattern: list[str] = field(default_factory=lambda: ["attention"])  # mixer names, cycled over the layers
    mixer_options: dict[str, dict] = field(default_factory=dict)  # mixer name -> options for build_mixer
    mlp: str = "swiglu"  # channel mixer after each token mixer: "swiglu" or "none"
    mlp_ratio: float = 4.0  # SwiGLU hidden width = round(mlp_ratio * 2/3 * d_model)
    dropout: float = 0.0  # dropout on the embeddings and on each residual branch
    norm_eps: float = 1e-5  # RMSNorm epsilon

    def __post_init__(self) -> None:
        try:
            options.positive_int("d_model", self.d_model)
            options.positive_int("n_layers", self.n_layers)
            self.mlp_ratio = options.number("mlp_ratio", self.mlp_ratio, minimum=0, strict=True)
            self.dropout = options.number("dropout", self.dropout, minimum=0)
            self.norm_eps = options.number("norm_eps", self.norm_eps, minimum=0, strict=True)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.dropout >= 1:
            raise UserError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.mlp not in MLP_KINDS:
            raise UserError(f"mlp must be one of {', '.join(map(repr, MLP_KINDS))}, got {self.mlp!r}")
        self._check_pattern()
        self._check_mixer_options()

    # ------------------------------------------------------------------ mixers
    def _check_pattern(self) -> None:
        if isinstance(self.pattern, str):  # a single name is a pattern of one
            self.pattern = [self.pattern]
        if not isinstance(self.pattern, (list, tuple)) or not self.pattern:
            raise UserError(f"pattern must be a non-empty list of mixer names, got {self.pattern!r}")
        self.pattern = list(self.pattern)
        for name in self.pattern:
            if not isinstance(name, str) or name not in REGISTRY:
                raise UserError(f"pattern: {_unknown_mixer(name)}")

    def _check_mixer_options(self) -> None:
        if not isinstance(self.mixer_options, dict):
            raise UserError(f"mixer_options must map mixer names to option dicts, got {self.mixer_options!r}")
        for name, opts in self.mixer_options.items():
            if name not in REGISTRY:
                raise UserError(f"mixer_options: {_unknown_mixer(name)}")
            if not isinstance(opts, dict):
                raise UserError(f"mixer_options.{name} must be a dict of options, got {opts!r}")
            allowed = mixer_options(name)
            unknown = sorted(set(opts) - set(allowed))
            if unknown:
                listing = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items()) or "none"
                raise UserError(f"mixer_options.{name}: unknown option(s) {', '.join(unknown)}; allowed: {listing}")
        # build each mixer of the pattern once without memory: rejected values fail now, not at model build
        for name in dict.fromkeys(self.pattern):
            try:
                with torch.device("meta"):
                    build_mixer(name, self.d_model, **self.options_for(name))
            except (ValueError, TypeError) as exc:
                raise _field_error(f"mixer_options.{name} (d_model={self.d_model})", exc) from None
            except Exception:  # noqa: BLE001 -- an init the meta device cannot run; the real build checks
                pass

    def options_for(self, name: str) -> dict[str, Any]:
        """The options passed to ``build_mixer`` for mixer ``name``."""
        return dict(self.mixer_options.get(name, {}))

    def layer_mixers(self) -> list[str]:
        """The mixer name of every layer: ``pattern`` cycled over ``n_layers``."""
        return [self.pattern[i % len(self.pattern)] for i in range(self.n_layers)]



@dataclass
class BackboneConfig(StackConfig):
    """A stack of blocks over a token vocabulary (language model, classifier)."""

    vocab_size: int = 0  # number of token ids the embedding accepts (required: a positive int)

    def __post_init__(self) -> None:
        try:
            options.positive_int("vocab_size", self.vocab_size)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        super().__post_init__()


@dataclass
class RegressorConfig(StackConfig):
    """Configuration of a ``SequenceRegressor`` (vectors in, vectors out, one per position)."""

    d_in: int = 1  # features per input position
    d_out: int = 1  # features predicted per position

    def __post_init__(self) -> None:
        try:
            options.positive_int("d_in", self.d_in)
            options.positive_int("d_out", self.d_out)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        super().__post_init__()


@dataclass
class ModelConfig(BackboneConfig):
    """Configuration of a ``LanguageModel``."""

    tie_embeddings: bool = True  # the output head reuses the embedding matrix (Press & Wolf 2017)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.tie_embeddings, bool):
            raise UserError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")


@dataclass
class ClassifierConfig(BackboneConfig):
    """Configuration of a ``SequenceClassifier``."""

    n_classes: int = 2  # number of output classes
    pooling: str = "last"  # "last": the last (non-padding) position; "mean": the mean over positions
    bidirectional: bool = False  # also run every causal mixer over the reversed sequence (see Bidirectional)
    dense: bool = False  # layer l reads a linear map of [embeddings; outputs of layers 1..l-1] (Ding et al. 2018)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            options.positive_int("n_classes", self.n_classes)
            options.boolean("bidirectional", self.bidirectional)
            options.boolean("dense", self.dense)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {self.pooling!r}")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _unknown_mixer(name: Any) -> str:
    close = difflib.get_close_matches(str(name), REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown mixer {name!r}{hint}; registered mixers: {', '.join(REGISTRY)}"
