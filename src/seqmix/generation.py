"""Text generation with any ``LanguageModel``: parallel prefill, then one ``step`` per token.

1. prefill: ``model(prompt)`` runs the prompt through every layer's parallel/chunkwise form and
   returns the logits of the next token plus each layer's state;
2. decode: ``model.step(token, state)`` consumes the sampled token -- O(1) work and memory per token
   for recurrent layers, O(t) for attention's key/value cache.

Sampling from the logits ``z`` of the next token (nucleus sampling: Holtzman et al. 2020, "The Curious
Case of Neural Text Degeneration", arXiv:1904.09751):

* ``temperature == 0``: greedy, ``argmax z`` (ties go to the lowest id);
* otherwise ``p = softmax(z / temperature)`` restricted to
  - ``top_k``: the k most likely tokens (ties with the k-th are kept too);
  - ``top_p``: the smallest set of most likely tokens whose total probability reaches ``top_p``
    (the most likely token is always kept);
  both filters may be combined (top-k first), and the survivors are renormalised.

All prompts of a batch have the same length (no padding). A sequence that emits ``stop_token``
keeps emitting it while the others go on; generation ends early once every sequence has stopped.
``callback(i, tokens)`` receives each new column ``[B]`` as soon as it is chosen, for streaming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Union

import torch

from seqmix.models.language_model import check_tokens

if TYPE_CHECKING:
    from seqmix.models.language_model import LanguageModel

__all__ = ["generate", "filter_logits", "sample_next"]


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """``logits: [..., V]`` with every token outside the top-k / nucleus set to ``-inf``."""
    _check_filters(top_k, top_p)
    out = logits
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]  # [..., 1]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        # drop a token when the more likely ones before it already reach top_p (never the first)
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One token id per row of ``logits: [B, V]`` -> ``[B]`` (see the module docstring for the rules)."""
    _check_temperature(temperature)
    if temperature == 0:
        return logits.argmax(dim=-1)
    z = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(z, dim=-1)  # [B, V]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model: "LanguageModel",
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    stop_token: Optional[int] = None,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
    generator: Optional[torch.Generator] = None,
    return_logits: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Continue ``prompt: [B, T]`` by up to ``max_new_tokens`` tokens.

    Returns ``tokens: [B, T + n]`` (``n <= max_new_tokens``; fewer when every sequence hit
    ``stop_token``) or, with ``return_logits``, ``(tokens, logits: [B, n, V])`` where ``logits[:, i]``
    are the model's float32 logits from which new token ``i`` was drawn (before temperature and
    filtering). The model runs in eval mode (dropout off) and is put back in its previous mode after.
    """
    vocab_size = model.config.vocab_size
    check_tokens(prompt, vocab_size, 2, "[batch, time]")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    _check_temperature(temperature)
    _check_filters(top_k, top_p)
    if stop_token is not None and not (isinstance(stop_token, int) and 0 <= stop_token < vocab_size):
        raise ValueError(f"stop_token must be a token id in [0, {vocab_size}), got {stop_token!r}")

    was_training = model.training
    model.eval()
    try:
        # 1. prefill with the parallel forms
        logits, state = model(prompt)
        next_logits = logits[:, -1]  # [B, V]
        columns: list[torch.Tensor] = []
        seen_logits: list[torch.Tensor] = []
        stopped = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)  # [B]
        # 2. decode one token at a time
        for i in range(max_new_tokens):
            token = sample_next(next_logits, temperature, top_k, top_p, generator).to(prompt.dtype)  # [B]
            if stop_token is not None:
                token = torch.where(stopped, torch.full_like(token, stop_token), token)
                stopped = stopped | (token == stop_token)
            columns.append(token)
            if return_logits:
                seen_logits.append(next_logits)
            if callback is not None:
                callback(i, token)
            if i + 1 == max_new_tokens or (stop_token is not None and bool(stopped.all())):
                break
            next_logits, state = model.step(token, state)
    finally:
        model.train(was_training)

    new = torch.stack(columns, dim=1) if columns else prompt.new_zeros(prompt.shape[0], 0)  # [B, n]
    tokens = torch.cat([prompt, new], dim=1)
    if not return_logits:
        return tokens
    V = next_logits.shape[-1]
    all_logits = torch.stack(seen_logits, dim=1) if seen_logits else next_logits.new_zeros(prompt.shape[0], 0, V)
    return tokens, all_logits  # [B, T + n], [B, n, V]


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")


def _check_filters(top_k: Optional[int], top_p: Optional[float]) -> None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and (
        not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
