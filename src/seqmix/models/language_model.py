"""A decoder-only language model over any mix of registered mixers.

    h_0 = Dropout(E[tokens])                          E: [V, D] token embedding
    h_l = Block_l(h_{l-1}),  l = 1..n_layers           Block_l uses mixer pattern[(l-1) mod len(pattern)]
    logits = RMSNorm(h_L) W^T                          W = E when tie_embeddings (Press & Wolf 2017,
                                                       "Using the Output Embedding to Improve Language
                                                       Models", arXiv:1608.05859)

A hybrid is a pattern with several names, cycled over the layers: ``["rglru", "rglru", "swa"]`` is
Griffin's layout (De et al. 2024, arXiv:2402.19427); ``["mamba"] * 7 + ["attention"]`` puts one
attention layer among seven Mamba layers, Jamba's ratio (Lieber et al. 2024, arXiv:2403.19887).

The state is a list with one mixer state per layer. ``forward(tokens, state)`` continues from it
(prefill, streaming, stateful training with truncated backprop), ``step(token, state)`` consumes one
token; both inherit the mixers' contract, so ``step`` after ``forward`` reproduces ``forward`` on the
concatenation (tests/models/test_generation.py checks it).

Initialisation, after GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners") as nanoGPT does it: the embedding, the untied head and the SwiGLU input projections are
N(0, 0.02); the SwiGLU output projection, which writes into the residual stream, is
N(0, 0.02 / sqrt(2 n_layers)) so the residual variance does not grow with depth. Deviation: GPT-2 also
scales attention's output projection; here every mixer keeps the initialisation of its own paper
(gates and decays depend on it), so only the MLP branch is scaled. Norms start at gain 1.

Logits are float32: the final norm and the head run with autocast off, because the softmax over the
vocabulary is where bfloat16's 8-bit mantissa would show directly in the loss.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from seqmix.errors import UserError
from seqmix.mixers.base import full_precision
from seqmix.mixers.registry import mixer_options
from seqmix.models.block import Block
from seqmix.models.config import ModelConfig
from seqmix.models.pretrained import PretrainedMixin
from seqmix.modules.norm import RMSNorm

__all__ = ["LanguageModel", "build_blocks", "check_tokens", "init_backbone_"]

INIT_STD = 0.02


def check_tokens(tokens: Any, vocab_size: int, ndim: int, layout: str) -> None:
    """Fail with a clear message unless ``tokens`` is an integer tensor of ``ndim`` dims with ids < vocab_size."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be an integer tensor of shape {layout}, got {got}")
    if tokens.ndim != ndim or (ndim == 2 and tokens.shape[1] == 0):
        raise ValueError(f"tokens must have shape {layout} with at least one token, got shape {tuple(tokens.shape)}")
    # the value check is one device sync; under torch.compile it would break the graph, and the
    # embedding lookup still rejects an out-of-range id there
    if (tokens.device.type != "meta" and not torch.compiler.is_compiling()
            and bool(((tokens < 0) | (tokens >= vocab_size)).any())):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}) (vocab_size={vocab_size}), "
            f"got ids from {int(tokens.min())} to {int(tokens.max())}"
        )


def init_backbone_(embed: nn.Module, blocks: Any) -> None:
    """GPT-2-style initialisation of what the model (not the mixers) owns; see the module docstring."""
    nn.init.normal_(embed.weight, std=INIT_STD)
    out_std = INIT_STD / math.sqrt(2 * len(blocks))
    for block in blocks:
        if block.mlp is not None:
            nn.init.normal_(block.mlp.w_in.weight, std=INIT_STD)
            nn.init.normal_(block.mlp.w_out.weight, std=out_std)


def depth_options(name: str, layer_idx: int, n_layers: int, opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` plus the layer's position for mixers whose init depends on depth.

    Mixers that take ``layer_idx`` and ``n_layers`` (HGRN's forget-gate lower bound, RWKV's
    depth-dependent decay and token-shift init) get them filled in per layer unless set explicitly.
    """
    accepted = mixer_options(name)
    if "layer_idx" in accepted and "n_layers" in accepted:
        opts = {"layer_idx": layer_idx, "n_layers": n_layers, **opts}
    return opts


def build_blocks(config: Any, make_mixer: Any = None) -> nn.ModuleList:
    """One ``Block`` per layer, the mixers cycled from ``config.pattern``.

    ``make_mixer(name, d_model, options)`` may return a custom module (e.g. a ``Bidirectional``);
    by default blocks build registry mixers themselves.
    """
    blocks = []
    for layer_idx, name in enumerate(config.layer_mixers()):
        opts = depth_options(name, layer_idx, config.n_layers, config.options_for(name))
        mixer = name if make_mixer is None else make_mixer(name, config.d_model, opts)
        blocks.append(Block(
            config.d_model, mixer, mixer_options=opts if isinstance(mixer, str) else None, mlp=config.mlp,
            mlp_ratio=config.mlp_ratio, dropout=config.dropout, norm_eps=config.norm_eps,
        ))
    return nn.ModuleList(blocks)


class LanguageModel(PretrainedMixin, nn.Module):
    """Embedding -> blocks -> final RMSNorm -> (tied) head; see the module docstring for the equations."""

    config_class = ModelConfig
    format_name = "seqmix.LanguageModel"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"LanguageModel takes a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = build_blocks(config)
        non_causal = sorted({name for name, b in zip(config.layer_mixers(), self.blocks) if not getattr(b.mixer, "causal", True)})
        if non_causal:
            raise UserError(
                f"a language model predicts the next token, so its mixers must be causal; "
                f"mixer_options make {', '.join(non_causal)} non-causal (remove causal: false)"
            )
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_backbone_(self.embed, self.blocks)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=INIT_STD)

    # ------------------------------------------------------------------ contract
    def forward(self, tokens: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """``tokens: [B, T]`` -> ``(logits: [B, T, V] float32, state: one mixer state per layer)``.

        ``state=None`` starts every layer from its zero/empty state; a state returned by an earlier call
        continues the same sequences.
        """
        check_tokens(tokens, self.config.vocab_size, 2, "[batch, time]")
        states = self._check_state(state)
        h = self.dropout(self.embed(tokens))  # [B, T, D]
        new_states = []
        for block, s in zip(self.blocks, states):
            h, s = block(h, s)
            new_states.append(s)
        return self._logits(h), new_states

    def step(self, token: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """One token per sequence ``token: [B]`` -> ``(logits: [B, V] float32, new state)``."""
        check_tokens(token, self.config.vocab_size, 1, "[batch]")
        states = self._check_state(state)
        h = self.dropout(self.embed(token))  # [B, D]
        new_states = []
        for block, s in zip(self.blocks, states):
            h, s = block.step(h, s)
            new_states.append(s)
        return self._logits(h), new_states

    def init_state(self, batch_size: int, device: Any = None, dtype: Optional[torch.dtype] = None) -> list:
        """The zero/empty state of every layer for ``batch_size`` sequences."""
        return [block.init_state(batch_size, device=device, dtype=dtype) for block in self.blocks]

    def state_size(self, context_len: int) -> int:
        """Elements held per sequence after ``context_len`` tokens, summed over the layers."""
        return sum(block.state_size(context_len) for block in self.blocks)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (a tied head counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    # ------------------------------------------------------------------ helpers
    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        with full_precision(h):
            h = h.to(torch.promote_types(self.head.weight.dtype, torch.float32))
            return nn.functional.linear(self.norm(h), self.head.weight.to(h.dtype))

    def _check_state(self, state: Optional[list]) -> list:
        if state is None:
            return [None] * len(self.blocks)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            got = f"a {type(state).__name__} of {len(state)}" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(f"state must be a list with one mixer state per layer ({len(self.blocks)}), got {got}")
        return list(state)
