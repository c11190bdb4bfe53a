"""Configuration of the encoder-decoder (``Seq2Seq``): two block stacks set independently.

The encoder and the decoder are each a ``StackConfig`` (width, depth, mixer pattern, mixer options,
MLP, dropout), so "deep encoder, shallow decoder" (Kasai et al. 2021, arXiv:2006.10369) or an LSTM
encoder under an attention decoder are plain settings. Sub-sections given as dicts (YAML, JSON) are
turned into ``StackConfig`` with errors that name ``encoder.<field>`` / ``decoder.<field>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from seqmix import options
from seqmix.errors import UserError
from seqmix.mixers.registry import build_mixer, mixer_options
from seqmix.models.config import PlainData, StackConfig

__all__ = ["Seq2SeqConfig", "EncoderStackConfig", "DecoderStackConfig", "CROSS_ATTENTION_KINDS", "encoder_mixer_options"]

CROSS_ATTENTION_KINDS = ("dot", "additive")


def encoder_mixer_options(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Options of an encoder mixer: a mixer that can be built non-causal (``causal`` option, e.g.
    attention) is, unless its options say otherwise -- an encoder reads the whole source at once."""
    if "causal" in mixer_options(name) and "causal" not in opts:
        return {**opts, "causal": False}
    return dict(opts)


@dataclass
class SideStackConfig(StackConfig):
    """A ``StackConfig`` whose errors name the side it configures (``prefix``), even when a config parser
    (jsonargparse, for ``--model.encoder.n_layers``) builds it on its own."""

    prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise UserError(f"{self.prefix}{exc}") from None


@dataclass
class EncoderStackConfig(SideStackConfig):
    """The encoder's ``StackConfig``; its errors name ``encoder.<field>``."""

    prefix: ClassVar[str] = "encoder."


@dataclass
class DecoderStackConfig(SideStackConfig):
    """The decoder's ``StackConfig``; its errors name ``decoder.<field>``."""

    prefix: ClassVar[str] = "decoder."


def _stack(cls: type, value: Any) -> StackConfig:
    """``value`` (a dict or any ``StackConfig``) as a ``cls``; unknown keys are named with the side's prefix."""
    if type(value) is cls:
        return value
    if isinstance(value, StackConfig):
        value = dataclasses.asdict(value)
    side = cls.prefix.rstrip(".")
    if not isinstance(value, dict):
        raise UserError(f"{side} must be a mapping of stack settings (d_model, n_layers, pattern, ...), got {value!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(f'{cls.prefix}{k}' for k in unknown)}; allowed keys in "
                        f"{side!r}: {', '.join(allowed)}")
    return cls(**value)


@dataclass
class Seq2SeqConfig(PlainData):
    """Configuration of a ``Seq2Seq`` encoder-decoder."""

    src_vocab_size: int = 0  # source token ids; 0 = taken from the tokenizer (a model needs a positive size)
    tgt_vocab_size: int = 0  # target token ids; 0 = taken from the tokenizer (a model needs a positive size)
    encoder: EncoderStackConfig = field(default_factory=lambda: EncoderStackConfig(d_model=256, n_layers=3))  # the encoder stack (d_model, n_layers, pattern, mixer_options, mlp, mlp_ratio, dropout, norm_eps)
    decoder: DecoderStackConfig = field(default_factory=lambda: DecoderStackConfig(d_model=256, n_layers=3))  # the decoder stack; its mixers must be causal
    bidirectional_encoder: bool = True  # wrap every causal encoder mixer in Bidirectional (a second mixer reads the source backwards)
    cross_attention: str = "dot"  # "dot" (multi-head scaled dot-product, Vaswani et al. 2017) or "additive" (v^T tanh(W q + U k), Bahdanau et al. 2015)
    cross_heads: Optional[int] = None  # heads of dot cross-attention; must divide decoder.d_model (None: heads of about 64 channels)
    additive_dim: int = 0  # width of additive attention's tanh layer (0 = decoder.d_model)
    tie_embeddings: bool = True  # the output head reuses the target embedding matrix (Press & Wolf 2017)
    share_embeddings: bool = False  # source and target embeddings are one matrix (a joint vocabulary, e.g. shared BPE; Vaswani et al. 2017)

    #: prefixed to the errors of this section (the training recipe's section name, e.g. "model.")
    prefix: ClassVar[str] = ""
    encoder_class: ClassVar[type] = EncoderStackConfig
    decoder_class: ClassVar[type] = DecoderStackConfig

    def __post_init__(self) -> None:
        self.encoder = _stack(self.encoder_class, self.encoder)
        self.decoder = _stack(self.decoder_class, self.decoder)
        try:
            self._check()
        except UserError as exc:
            raise UserError(f"{self.prefix}{exc}") from None

    def _check(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "additive_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"{name} must be an int >= 0 (0 = from the tokenizer), got {value!r}")
        for name in ("bidirectional_encoder", "tie_embeddings", "share_embeddings"):
            try:
                options.boolean(name, getattr(self, name))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        if self.share_embeddings:
            if self.encoder.d_model != self.decoder.d_model:
                raise UserError(f"share_embeddings needs encoder.d_model == decoder.d_model, got "
                                f"{self.encoder.d_model} and {self.decoder.d_model}")
            if 0 not in (self.src_vocab_size, self.tgt_vocab_size) and self.src_vocab_size != self.tgt_vocab_size:
                raise UserError(f"share_embeddings needs one vocabulary for both sides, got src_vocab_size "
                                f"{self.src_vocab_size} and tgt_vocab_size {self.tgt_vocab_size}")
        if self.cross_attention not in CROSS_ATTENTION_KINDS:
            raise UserError(f"cross_attention must be one of {', '.join(map(repr, CROSS_ATTENTION_KINDS))}, "
                            f"got {self.cross_attention!r}")
        if self.cross_attention == "dot":
            try:
                options.heads(self.decoder.d_model, self.cross_heads)
            except ValueError as exc:
                raise UserError(f"cross_heads: {exc}") from None
        elif self.cross_heads is not None:
            raise UserError(f"cross_heads applies to cross_attention 'dot' only (additive attention has one head), "
                            f"got cross_heads={self.cross_heads!r}")
        self._check_decoder_causal()

    def _check_decoder_causal(self) -> None:
        """The decoder generates left to right: a mixer built non-causal would see future targets."""
        for name in dict.fromkeys(self.decoder.pattern):
            try:
                with torch.device("meta"):
                    mixer = build_mixer(name, self.decoder.d_model, **self.decoder.options_for(name))
            except Exception:  # noqa: BLE001 -- StackConfig has already reported what it can check
                continue
            if not getattr(mixer, "causal", True):
                raise UserError(f"decoder.mixer_options.{name}: the decoder generates one token at a time, so its "
                                "mixers must be causal; remove causal: false")

    def resolve(self, src_vocab_size: int, tgt_vocab_size: int) -> "Seq2SeqConfig":
        """A plain ``Seq2SeqConfig`` with the tokenizer's vocabulary sizes filled in (a set size must agree)."""
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
            mine = getattr(self, name)
            if mine not in (0, value):
                raise UserError(f"{self.prefix}{name} is {mine} but the tokenizer has {value} tokens; set it to 0 "
                                "(use the tokenizer's size) or to the tokenizer's size")
        return Seq2SeqConfig.from_dict({**self.to_dict(), "src_vocab_size": src_vocab_size,
                                        "tgt_vocab_size": tgt_vocab_size})

