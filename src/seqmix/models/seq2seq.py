"""An encoder-decoder over any registered mixers (Sutskever et al. 2014; Vaswani et al. 2017).

    m   = RMSNorm(EncoderBlocks(Dropout(E_src[src])))               [B, S, D_enc], the memory
    h_0 = Dropout(E_tgt[tgt])                                       [B, T, D_dec]
    h_l = DecoderBlock_l(h_{l-1}, m)                                l = 1..decoder.n_layers
    logits = RMSNorm(h_L) W^T                                       W = E_tgt when tie_embeddings
                                                                    (and E_src = E_tgt with share_embeddings)

A decoder block is a pre-norm residual block (like ``Block``) with a cross-attention sub-layer between
the token mixer and the MLP::

    h = x + Dropout(Mixer(RMSNorm(x)))                              causal; carries the mixer's state
    h = h + Dropout(CrossAttention(RMSNorm(h), m))                  "dot" or "additive" over the source
    y = h + Dropout(SwiGLU(RMSNorm(h)))                             skipped with mlp="none"

Encoder mixers see the whole source: one built non-causal by its options (``attention``, which the
encoder builds with ``causal: false`` unless told otherwise) attends with a key padding mask; a causal
one is wrapped in ``Bidirectional`` (a second mixer reads the source backwards within each sequence's
length) unless ``bidirectional_encoder`` is false. Either way right padding never reaches a real
source position, and cross-attention masks the padded positions out.

The classic RNN encoder-decoder with attention (Cho et al. 2014; Bahdanau et al. 2015) is a setting
of this model: ``gru``/``lstm`` patterns on both sides, a bidirectional encoder, ``mlp: none`` and
``cross_attention: additive``. Two differences from the paper, both to keep the decoder trainable in
one parallel (teacher-forced) pass: the bidirectional encoder sums its two directions rather than
concatenating them, and the attention query is the decoder layer's current output, not its previous
state, with the context added to the residual stream that the layers above read -- the placement of
Luong et al. 2015 and of GNMT (Wu et al. 2016), whose upper decoder layers see the context.

Decoding state (``Seq2SeqState``) is plain data: one mixer state per decoder layer (O(1) for a
recurrent mixer, a KV cache for attention) and one ``CrossMemory`` per layer -- the source keys and
values, computed once per sentence by ``start``. ``decode`` runs target tokens through the parallel
forms from a state, ``step`` one token; both give the same logits (the mixer contract plus
position-wise cross-attention). Initialisation follows ``LanguageModel`` (GPT-2 style on each side).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from seqmix.errors import UserError
from seqmix.mixers.attention import Attention
from seqmix.mixers.base import full_precision
from seqmix.mixers.registry import build_mixer
from seqmix.models.bidirectional import Bidirectional
from seqmix.models.cross_attention import CrossMemory, build_cross_attention
from seqmix.models.language_model import INIT_STD, build_blocks, check_tokens, depth_options, init_backbone_
from seqmix.models.pretrained import PretrainedMixin
from seqmix.models.seq2seq_config import Seq2SeqConfig, encoder_mixer_options
from seqmix.modules.mlp import SwiGLU, swiglu_hidden
from seqmix.modules.norm import RMSNorm
from seqmix.state import State

__all__ = ["Seq2Seq", "Seq2SeqState", "DecoderBlock", "PaddingMaskedAttention"]


class Seq2SeqState(NamedTuple):
    """Decoder state: what each layer carries from token to token, and the per-sentence source side."""

    layers: list  # one mixer state per decoder layer
    memory: list  # one CrossMemory per decoder layer (fixed for a sentence)


class PaddingMaskedAttention(nn.Module):
    """A non-causal ``Attention`` mixer applied with a key padding mask (``lengths``), for encoders.

    It uses the wrapped mixer's own projections and rotary positions, so its parameters and options are
    those of ``attention``; padding keys get no weight, so real positions never read the padding.
    """

    causal = False

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        if attention.causal:
            raise ValueError("PaddingMaskedAttention wraps a non-causal Attention (causal=False)")
        self.attention = attention
        self.d_model = attention.d_model

    def forward(self, x: torch.Tensor, state: None = None, *, mode: Optional[str] = None,
                lengths: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, None]:
        """``x: [B, S, D]`` -> ``(y: [B, S, D], None)``; ``lengths: [B]`` real tokens per sequence."""
        if state is not None:
            raise ValueError("an encoder attention sees the whole source at once and takes no state")
        if lengths is None:
            return self.attention(x, mode=mode)[0], None
        att = self.attention
        q, k, v = att._heads(x, att.state_dtype(x.dtype))  # [B, H, S, K] each
        q, k = att._rotate(q, k, 0)
        valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).view(-1, 1)  # [B, S]
        o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # [B, H, S, K]
        return att._merge(o), None


class DecoderBlock(nn.Module):
    """Pre-norm residual block: causal token mixer, cross-attention, then (optionally) SwiGLU."""

    def __init__(self, d_model: int, mixer: nn.Module, cross: nn.Module, *, mlp: str = "swiglu",
                 mlp_ratio: float = 4.0, dropout: float = 0.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer
        self.cross_norm = RMSNorm(d_model, norm_eps)
        self.cross = cross
        self.mlp_norm: Optional[RMSNorm] = RMSNorm(d_model, norm_eps) if mlp == "swiglu" else None
        self.mlp: Optional[SwiGLU] = SwiGLU(d_model, swiglu_hidden(d_model, mlp_ratio)) if mlp == "swiglu" else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: State, memory: CrossMemory) -> tuple[torch.Tensor, State]:
        """``x: [B, T, D]`` -> ``(y: [B, T, D], mixer state)``."""
        y, state = self.mixer(self.mixer_norm(x), state)
        h = x + self.dropout(y)
        h = h + self.dropout(self.cross(self.cross_norm(h), memory))
        return self._mlp(h), state

    def step(self, x_t: torch.Tensor, state: State, memory: CrossMemory) -> tuple[torch.Tensor, State]:
        """One token ``x_t: [B, D]`` -> ``(y_t: [B, D], new mixer state)``."""
        y_t, state = self.mixer.step(self.mixer_norm(x_t), state)
        h = x_t + self.dropout(y_t)
        h = h + self.dropout(self.cross.step(self.cross_norm(h), memory))
        return self._mlp(h), state

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.mlp is None or self.mlp_norm is None:
            return h
        return h + self.dropout(self.mlp(self.mlp_norm(h)))


class Seq2Seq(PretrainedMixin, nn.Module):
    """Source tokens ``[B, S]`` and target tokens ``[B, T]`` -> next-target logits ``[B, T, V_tgt]``."""

    config_class = Seq2SeqConfig
    format_name = "seqmix.Seq2Seq"

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"Seq2Seq takes a Seq2SeqConfig, got {type(config).__name__}")
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(config, name) < 1:
                raise UserError(f"{name} is {getattr(config, name)}; building a model needs the vocabulary size "
                                "(Seq2SeqConfig.resolve(src_vocab_size, tgt_vocab_size) fills it in from a tokenizer)")
        self.config = config
        enc, dec = config.encoder, config.decoder
        # 1. encoder: source embedding, blocks whose mixers see the whole source, final norm
        self.src_embed = nn.Embedding(config.src_vocab_size, enc.d_model)
        self.enc_blocks = build_blocks(enc, self._encoder_mixer)
        self.enc_norm = RMSNorm(enc.d_model, enc.norm_eps)
        # 2. decoder: target embedding, causal blocks with cross-attention, final norm, head
        self.tgt_embed = nn.Embedding(config.tgt_vocab_size, dec.d_model)
        self.dec_blocks = nn.ModuleList(self._decoder_block(i, name) for i, name in enumerate(dec.layer_mixers()))
        self.dec_norm = RMSNorm(dec.d_model, dec.norm_eps)
        self.head = nn.Linear(dec.d_model, config.tgt_vocab_size, bias=False)
        self.dropout_src, self.dropout_tgt = nn.Dropout(enc.dropout), nn.Dropout(dec.dropout)
        init_backbone_(self.src_embed, self.enc_blocks)
        init_backbone_(self.tgt_embed, self.dec_blocks)
        if config.tie_embeddings:
            self.head.weight = self.tgt_embed.weight
        else:
            nn.init.normal_(self.head.weight, std=INIT_STD)
        if config.share_embeddings:
            self.src_embed.weight = self.tgt_embed.weight

    def _encoder_mixer(self, name: str, d_model: int, opts: dict[str, Any]) -> nn.Module:
        opts = encoder_mixer_options(name, opts)
        mixer = build_mixer(name, d_model, **opts)
        if not getattr(mixer, "causal", True):
            return PaddingMaskedAttention(mixer) if isinstance(mixer, Attention) else mixer
        if self.config.bidirectional_encoder:
            return Bidirectional(mixer, build_mixer(name, d_model, **opts))
        return mixer

    def _decoder_block(self, layer_idx: int, name: str) -> DecoderBlock:
        cfg, dec = self.config, self.config.decoder
        opts = depth_options(name, layer_idx, dec.n_layers, dec.options_for(name))
        cross = build_cross_attention(cfg.cross_attention, dec.d_model, cfg.encoder.d_model, n_heads=cfg.cross_heads,
                                      attention_dim=cfg.additive_dim or None)
        return DecoderBlock(dec.d_model, build_mixer(name, dec.d_model, **opts), cross, mlp=dec.mlp,
                            mlp_ratio=dec.mlp_ratio, dropout=dec.dropout, norm_eps=dec.norm_eps)

    # ------------------------------------------------------------------ encoder
    def encode(self, src: torch.Tensor, src_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``src: [B, S]`` right-padded, ``src_lengths: [B]`` -> the memory ``[B, S, D_enc]``.

        Positions at or past a sequence's length hold values that nothing downstream reads.
        """
        check_tokens(src, self.config.src_vocab_size, 2, "[batch, source time]")
        lengths = self._check_lengths(src_lengths, src)
        h = self.dropout_src(self.src_embed(src))  # [B, S, D_enc]
        for block in self.enc_blocks:
            if isinstance(block.mixer, (Bidirectional, PaddingMaskedAttention)):
                h, _ = block(h, lengths=lengths)
            elif lengths is not None and not getattr(block.mixer, "causal", True):
                raise ValueError(f"the encoder mixer {type(block.mixer).__name__} is non-causal and cannot mask "
                                 "padding; give equal-length sources or use another mixer")
            else:
                h, _ = block(h)
        return self.enc_norm(h)

    def _check_lengths(self, src_lengths: Optional[torch.Tensor], src: torch.Tensor) -> Optional[torch.Tensor]:
        """The lengths as a tensor on ``src``'s device, or None when every sequence fills the batch."""
        if src_lengths is None:
            return None
        B, S = src.shape
        lengths = torch.as_tensor(src_lengths, device=src.device)
        if lengths.shape != (B,) or lengths.is_floating_point() or bool(((lengths < 1) | (lengths > S)).any()):
            raise ValueError(f"src_lengths must hold one integer in [1, {S}] per sequence (shape ({B},)), "
                             f"got {lengths.tolist()}")
        return None if bool((lengths == S).all()) else lengths

    # ------------------------------------------------------------------ decoder
    def start(self, memory: torch.Tensor, src_lengths: Optional[torch.Tensor] = None) -> Seq2SeqState:
        """The decoder state before the first target token: empty mixer states and, computed once here,
        the cross-attention keys/values of ``memory: [B, S, D_enc]`` for every decoder layer."""
        B, S, _ = memory.shape
        valid = None
        if src_lengths is not None:
            valid = torch.arange(S, device=memory.device) < torch.as_tensor(src_lengths, device=memory.device).view(-1, 1)
        cross = [block.cross.memory(memory, valid) for block in self.dec_blocks]
        dtype = memory.dtype if memory.is_floating_point() else None
        layers = [block.mixer.init_state(B, device=memory.device, dtype=_state_dtype(block.mixer, dtype))
                  for block in self.dec_blocks]
        return Seq2SeqState(layers, cross)

    def decode(self, tgt: torch.Tensor, state: Seq2SeqState) -> tuple[torch.Tensor, Seq2SeqState]:
        """Target tokens ``tgt: [B, T]`` from ``state`` -> ``(logits [B, T, V] float32, new state)``."""
        check_tokens(tgt, self.config.tgt_vocab_size, 2, "[batch, target time]")
        self._check_state(state)
        h = self.dropout_tgt(self.tgt_embed(tgt))  # [B, T, D_dec]
        layers = []
        for block, s, mem in zip(self.dec_blocks, state.layers, state.memory):
            h, s = block(h, s, mem)
            layers.append(s)
        return self._logits(h), Seq2SeqState(layers, state.memory)

    def step(self, token: torch.Tensor, state: Seq2SeqState) -> tuple[torch.Tensor, Seq2SeqState]:
        """One target token per sequence ``token: [B]`` -> ``(logits [B, V] float32, new state)``."""
        check_tokens(token, self.config.tgt_vocab_size, 1, "[batch]")
        self._check_state(state)
        h = self.dropout_tgt(self.tgt_embed(token))  # [B, D_dec]
        layers = []
        for block, s, mem in zip(self.dec_blocks, state.layers, state.memory):
            h, s = block.step(h, s, mem)
            layers.append(s)
        return self._logits(h), Seq2SeqState(layers, state.memory)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher forcing: ``src: [B, S]``, decoder inputs ``tgt: [B, T]`` (BOS first) -> ``[B, T, V]`` logits."""
        memory = self.encode(src, src_lengths)
        return self.decode(tgt, self.start(memory, src_lengths))[0]

    # ------------------------------------------------------------------ helpers
    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        with full_precision(h):  # float32 logits, as in LanguageModel
            h = h.to(torch.promote_types(self.head.weight.dtype, torch.float32))
            return nn.functional.linear(self.dec_norm(h), self.head.weight.to(h.dtype))

    def _check_state(self, state: Any) -> None:
        n = len(self.dec_blocks)
        if not isinstance(state, Seq2SeqState) or len(state.layers) != n or len(state.memory) != n:
            raise ValueError(f"state must be the Seq2SeqState of Seq2Seq.start (one entry per decoder layer, {n}), "
                             f"got {type(state).__name__}")

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied head counted once)."""
        return sum(p.numel() for p in self.parameters())


def _state_dtype(mixer: nn.Module, compute: Optional[torch.dtype]) -> Optional[torch.dtype]:
    if compute is None or not hasattr(mixer, "state_dtype"):
        return None
    return mixer.state_dtype(compute)
