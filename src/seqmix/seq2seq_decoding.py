"""Greedy and beam-search decoding for ``Seq2Seq``, batched over sentences.

Both encode the source once and build the cross-attention keys/values once per sentence
(``Seq2Seq.start``); then every target token is one ``step`` -- O(1) work and memory for a recurrent
decoder, O(t) for attention's KV cache. A hypothesis holds the generated tokens without BOS and EOS;
``max_len`` bounds the generated tokens, EOS included (a hypothesis that reaches it unfinished is
returned as it is). ``banned_ids`` (e.g. PAD and BOS) are never generated.

Beam search (Sutskever et al. 2014; the length penalty of Wu et al. 2016, GNMT, arXiv:1609.08144)::

    score(Y) = log P(Y | X) / lp(Y),   lp(Y) = ((5 + |Y|) / 6) ** alpha,   |Y| counting EOS

1. start: beam 0 of each sentence is BOS with log-probability 0, beams 1..K-1 are empty (-inf); the
   encoder state and the source keys/values are expanded to K beams per sentence once (index_select);
2. each step scores every (beam, next token) pair by the beam's log-probability plus the token's and
   keeps the best 2K candidates, so that K continue even if up to K of them end;
3. a candidate among the best K that ends in EOS (any of the best K at the last step) is finished and
   kept if its score beats the sentence's best finished one; the best K candidates that do not end in
   EOS become the new beams -- their states are reordered with index_select (the source keys/values
   need no reordering: all beams of a sentence share them);
4. a sentence is done when K hypotheses have finished (the rule of fairseq, which makes beam size 1
   exactly greedy), or when no live beam can beat its best finished score any more: a beam's
   log-probability only falls, so its best reachable score is ``max(s / lp(t+1), s / lp(max_len))``;
   done sentences leave the batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch

from seqmix import options
from seqmix.errors import UserError
from seqmix.state import map_state

if TYPE_CHECKING:
    from seqmix.models.seq2seq import Seq2Seq

__all__ = ["Hypothesis", "greedy_decode", "beam_search", "length_penalty", "decode"]


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, without BOS and EOS
    log_prob: float  # log P(tokens [+ EOS] | source)
    score: float  # log_prob / lp(|Y|) for beam search; log_prob for greedy
    finished: bool  # ended with EOS (False: stopped by max_len)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ``((5 + length) / 6) ** alpha`` (1 for alpha = 0)."""
    return ((5.0 + length) / 6.0) ** alpha


def _select(state, index: torch.Tensor):
    return map_state(lambda t: t.index_select(0, index), state)


def _ban(logp: torch.Tensor, banned: list[int]) -> torch.Tensor:
    if banned:
        logp[:, banned] = float("-inf")
    return logp


def _check(max_len: int, bos_id: int, eos_id: int, vocab: int, banned: Iterable[int]) -> list[int]:
    try:
        options.positive_int("max_len", max_len)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ids = {"bos_id": bos_id, "eos_id": eos_id, **{f"banned id {b}": b for b in banned}}
    for name, value in ids.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab:
            raise UserError(f"{name} must be a token id in [0, {vocab}), got {value!r}")
    banned = sorted(set(banned))
    if eos_id in banned:
        raise UserError(f"eos_id {eos_id} cannot be banned: decoding could never end")
    return banned


@torch.no_grad()
def greedy_decode(model: "Seq2Seq", src: torch.Tensor, src_lengths: Optional[torch.Tensor] = None, *,
                  bos_id: int, eos_id: int, max_len: int, banned_ids: Iterable[int] = ()) -> list[Hypothesis]:
    """The most likely next token at every step, for each sentence of ``src: [B, S]``."""
    banned = _check(max_len, bos_id, eos_id, model.config.tgt_vocab_size, banned_ids)
    B = src.shape[0]
    state = model.start(model.encode(src, src_lengths), src_lengths)
    out = torch.zeros(B, max_len, dtype=torch.long, device=src.device)  # [B, max_len] generated ids
    length = torch.full((B,), max_len, dtype=torch.long, device=src.device)  # generated, EOS included
    log_prob = torch.zeros(B, dtype=torch.float64, device=src.device)
    alive = torch.arange(B, device=src.device)  # sentence ids still decoding
    token = torch.full((B,), bos_id, dtype=torch.long, device=src.device)
    for t in range(max_len):
        logits, state = model.step(token, state)  # [n, V]
        logp = _ban(torch.log_softmax(logits.double(), dim=-1), banned)  # float64, as beam_search's scores
        token = logp.argmax(dim=-1)  # [n]
        log_prob[alive] += logp.gather(1, token[:, None])[:, 0]
        out[alive, t] = token
        ended = token == eos_id
        if bool(ended.any()):
            length[alive[ended]] = t + 1
            keep = (~ended).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            alive, token, state = alive[keep], token[keep], _select(state, keep)  # finished rows leave
    hyps = []
    for b in range(B):
        n = int(length[b])
        finished = n > 0 and int(out[b, n - 1]) == eos_id
        tokens = out[b, : n - 1 if finished else n].tolist()
        hyps.append(Hypothesis(tokens, float(log_prob[b]), float(log_prob[b]), finished))
    return hyps


@torch.no_grad()
def beam_search(model: "Seq2Seq", src: torch.Tensor, src_lengths: Optional[torch.Tensor] = None, *,
                bos_id: int, eos_id: int, max_len: int, beam_size: int = 4, alpha: float = 0.0,
                banned_ids: Iterable[int] = ()) -> list[Hypothesis]:
    """The best hypothesis of a beam search per sentence of ``src: [B, S]`` (see the module docstring)."""
    banned = _check(max_len, bos_id, eos_id, model.config.tgt_vocab_size, banned_ids)
    try:
        K = options.positive_int("beam_size", beam_size)
        alpha = options.number("length_penalty", alpha)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    B, device = src.shape[0], src.device
    V = model.config.tgt_vocab_size
    # 1. encode once; the source keys/values are computed once and expanded to K beams per sentence
    state = model.start(model.encode(src, src_lengths), src_lengths)
    state = _select(state, torch.arange(B, device=device).repeat_interleave(K))
    scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)  # [n, K] beam log-probs
    scores[:, 0] = 0.0
    seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)  # [n*K, t] tokens of each beam
    token = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    alive = torch.arange(B, device=device)  # sentence ids still searching
    best: list[Optional[Hypothesis]] = [None] * B
    n_finished = [0] * B
    for t in range(max_len):
        n = alive.numel()
        logits, state = model.step(token, state)  # [n*K, V]
        logp = _ban(torch.log_softmax(logits.double(), dim=-1), banned)
        # 2. the best 2K (beam, token) candidates of each sentence
        cand = (scores.view(n * K, 1) + logp).view(n, K * V)
        top, idx = cand.topk(min(2 * K, K * V), dim=1)  # [n, 2K], best first
        origin, tok = idx // V, idx % V  # [n, 2K]
        # 3. finish candidates among the best K that end in EOS (all of the best K at the last step)
        ends = (tok == eos_id) | (t == max_len - 1)
        ends[:, K:] = False
        ends &= torch.isfinite(top)
        lp = length_penalty(t + 1, alpha)
        for i, j in ends.nonzero().tolist():
            b = int(alive[i])
            n_finished[b] += 1
            score = float(top[i, j]) / lp
            if best[b] is None or score > best[b].score:
                eos = int(tok[i, j]) == eos_id
                prefix = seqs[i * K + int(origin[i, j])].tolist()
                best[b] = Hypothesis(prefix + ([] if eos else [int(tok[i, j])]), float(top[i, j]), score, eos)
        if t == max_len - 1:
            break
        # the best K candidates that go on become the beams
        going = top.masked_fill(tok == eos_id, float("-inf"))
        scores, pick = going.topk(K, dim=1)  # [n, K]
        beam = origin.gather(1, pick) + K * torch.arange(n, device=device)[:, None]  # [n, K] row in the batch
        token = tok.gather(1, pick).view(-1)  # [n*K]
        rows = beam.view(-1)
        seqs = torch.cat((seqs[rows], token[:, None]), dim=1)  # [n*K, t+1]
        state = state._replace(layers=_select(state.layers, rows))
        # 4. done sentences: K finished, or no live beam can beat the best finished score
        reach = torch.maximum(scores / length_penalty(t + 2, alpha), scores / length_penalty(max_len, alpha))
        reach = reach.max(dim=1).values  # [n]
        done = [n_finished[int(b)] >= K or (best[int(b)] is not None and best[int(b)].score >= float(r))
                for b, r in zip(alive, reach)]
        if any(done):
            keep = torch.tensor([not d for d in done], device=device).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            rows = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)
            alive, scores, seqs, token = alive[keep], scores[keep], seqs[rows], token[rows]
            state = _select(state, rows)
    return [h if h is not None else Hypothesis([], float("-inf"), float("-inf"), False) for h in best]


def decode(model: "Seq2Seq", src: torch.Tensor, src_lengths: Optional[torch.Tensor] = None, *, bos_id: int,
           eos_id: int, max_len: int, beam_size: int = 1, alpha: float = 0.0,
           banned_ids: Iterable[int] = ()) -> list[Hypothesis]:
    """Greedy decoding for ``beam_size`` 1, else beam search."""
    if beam_size == 1:
        return greedy_decode(model, src, src_lengths, bos_id=bos_id, eos_id=eos_id, max_len=max_len,
                             banned_ids=banned_ids)
    return beam_search(model, src, src_lengths, bos_id=bos_id, eos_id=eos_id, max_len=max_len,
                       beam_size=beam_size, alpha=alpha, banned_ids=banned_ids)
