"""Seq2Seq and its decoding: step == teacher forcing, padding never leaks, beam search is exact where it
must be (beam 1 == greedy; a wide beam == exhaustive search), source keys computed once, clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from seqmix import get_spec, list_mixers
from seqmix.errors import UserError
from seqmix.models import Bidirectional
from seqmix.models.seq2seq import PaddingMaskedAttention, Seq2Seq, Seq2SeqState
from seqmix.models.seq2seq_config import Seq2SeqConfig
from seqmix.seq2seq_decoding import beam_search, greedy_decode, length_penalty

V_SRC, V_TGT = 13, 9
PAD, BOS, EOS = 0, 1, 2
TOL = dict(rtol=1e-10, atol=1e-10)
ALL = [spec.name for spec in list_mixers()]


def _opts(names):
    return {n: dict(get_spec(n).test_options) for n in names}


def make(pattern=("attention",), enc=None, cross="dot", d=16, layers=2, v_tgt=V_TGT, seed=0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    enc = tuple(enc or pattern)
    cfg = Seq2SeqConfig(
        src_vocab_size=V_SRC, tgt_vocab_size=v_tgt,
        encoder=dict(d_model=d, n_layers=layers, pattern=list(enc), mixer_options=_opts(enc)),
        decoder=dict(d_model=d, n_layers=layers, pattern=list(pattern), mixer_options=_opts(pattern)),
        cross_attention=cross, cross_heads=2 if cross == "dot" else None, **kw)
    return Seq2Seq(cfg).double().eval()


def ids(B, T, vocab, seed=0):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def stepwise(model, src, tgt, lengths=None):
    state = model.start(model.encode(src, lengths), lengths)
    out = []
    for t in range(tgt.shape[1]):
        logits, state = model.step(tgt[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1), state


# --------------------------------------------------------------------------- step == teacher forcing
@pytest.mark.parametrize("cross", ["dot", "additive"])
@pytest.mark.parametrize("name", ["attention", "lstm", "gru", "mamba", "gla"])
def test_step_decoding_equals_teacher_forced_forward(name, cross):
    model = make((name,), cross=cross)
    src, tgt, lengths = ids(3, 7, V_SRC), ids(3, 6, V_TGT, seed=1), torch.tensor([7, 4, 1])
    full = model(src, tgt, lengths)  # [B, T, V]
    steps, _ = stepwise(model, src, tgt, lengths)
    torch.testing.assert_close(steps, full, **TOL)


@pytest.mark.parametrize("name", ALL)
def test_every_registered_mixer_decodes_step_by_step(name):
    """Every mixer as the decoder (under an LSTM encoder): the step form equals the parallel one."""
    model = make((name,), enc=("lstm",), layers=1)
    src, tgt = ids(2, 5, V_SRC), ids(2, 5, V_TGT, seed=1)
    torch.testing.assert_close(stepwise(model, src, tgt)[0], model(src, tgt), **TOL)


def test_decode_continues_from_a_state():
    model = make(("mamba", "attention"), layers=2)
    src, tgt = ids(2, 6, V_SRC), ids(2, 8, V_TGT, seed=1)
    state = model.start(model.encode(src))
    full, _ = model.decode(tgt, state)
    a, state_a = model.decode(tgt[:, :3], state)
    b, _ = model.decode(tgt[:, 3:], state_a)
    torch.testing.assert_close(torch.cat((a, b), dim=1), full, **TOL)


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("name", ALL)
def test_source_padding_never_reaches_real_positions(name):
    """Every mixer as the encoder: a right-padded batch gives the single unpadded runs' logits."""
    model = make(("attention",), enc=(name,), layers=1)
    src, tgt, lengths = ids(2, 9, V_SRC), ids(2, 4, V_TGT, seed=1), torch.tensor([5, 9])
    padded = src.clone()
    padded[0, 5:] = PAD
    batch = model(padded, tgt, lengths)
    for b in range(2):
        single = model(src[b: b + 1, : int(lengths[b])], tgt[b: b + 1])
        torch.testing.assert_close(batch[b: b + 1], single, **TOL)
    garbage = padded.clone()
    garbage[0, 5:] = 7  # other padding values change nothing either
    torch.testing.assert_close(model(garbage, tgt, lengths), batch, **TOL)


@pytest.mark.parametrize("cross", ["dot", "additive"])
def test_padding_does_not_change_decoded_outputs(cross):
    model = make(("gru",), enc=("attention",), cross=cross)
    src, lengths = ids(3, 8, V_SRC), torch.tensor([8, 3, 5])
    for decoder in (lambda s, n: greedy_decode(model, s, n, bos_id=BOS, eos_id=EOS, max_len=6, banned_ids=[PAD, BOS]),
                    lambda s, n: beam_search(model, s, n, bos_id=BOS, eos_id=EOS, max_len=6, beam_size=3, alpha=0.6,
                                             banned_ids=[PAD, BOS])):
        batch = decoder(src, lengths)
        for b in range(3):
            single = decoder(src[b: b + 1, : int(lengths[b])], None)[0]
            assert batch[b].tokens == single.tokens
            assert batch[b].score == pytest.approx(single.score, abs=1e-9)


def test_encoder_sees_the_whole_source():
    """Attention is built non-causal and masked; a causal mixer is wrapped in Bidirectional."""
    for enc, kind in (("attention", PaddingMaskedAttention), ("lstm", Bidirectional)):
        model = make(("gru",), enc=(enc,))
        assert isinstance(model.enc_blocks[0].mixer, kind)
        src = ids(1, 6, V_SRC)
        changed = src.clone()
        changed[0, -1] = 3 if int(src[0, -1]) != 3 else 4
        assert not torch.allclose(model.encode(src)[0, 0], model.encode(changed)[0, 0])
    unidirectional = make(("gru",), enc=("lstm",), bidirectional_encoder=False)
    src = ids(1, 6, V_SRC)
    changed = src.clone()
    changed[0, -1] = 3 if int(src[0, -1]) != 3 else 4
    torch.testing.assert_close(unidirectional.encode(src)[0, :-1], unidirectional.encode(changed)[0, :-1], **TOL)


# --------------------------------------------------------------------------- decoding
def peaked(pattern, cross="dot", v_tgt=6, seed=0):
    """A random model with a sharper output distribution (an untied N(0, 1) head): non-trivial searches."""
    model = make(pattern, cross=cross, v_tgt=v_tgt, seed=seed, tie_embeddings=False)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("cross", ["dot", "additive"])
@pytest.mark.parametrize("name", ["attention", "lstm", "mamba", "gla"])
def test_beam_one_equals_greedy(name, cross):
    model = peaked((name,), cross=cross, v_tgt=V_TGT)
    src, lengths = ids(4, 7, V_SRC), torch.tensor([7, 2, 5, 6])
    kw = dict(bos_id=BOS, eos_id=EOS, max_len=12, banned_ids=[PAD, BOS])
    greedy = greedy_decode(model, src, lengths, **kw)
    beam = beam_search(model, src, lengths, beam_size=1, alpha=0.6, **kw)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    for g, b in zip(greedy, beam):
        assert b.log_prob == pytest.approx(g.log_prob, abs=1e-9)
        assert g.finished == b.finished


@torch.no_grad()
def _exhaustive(model, src, max_len, alpha, tokens=(3, 4, 5)):
    """Score every hypothesis (up to max_len - 1 tokens + EOS, or max_len tokens without EOS) in one
    teacher-forced pass per sentence; right padding of the decoder inputs cannot reach earlier positions."""
    hyps = [list(seq) + [EOS] for n in range(max_len) for seq in itertools.product(tokens, repeat=n)]
    hyps += [list(seq) for seq in itertools.product(tokens, repeat=max_len)]
    tgt_in = torch.tensor([[BOS] + h[:-1] + [PAD] * (max_len - len(h)) for h in hyps])  # [H, max_len]
    target = torch.tensor([h + [PAD] * (max_len - len(h)) for h in hyps])  # [H, max_len]
    real = torch.tensor([[t < len(h) for t in range(max_len)] for h in hyps])  # [H, max_len]
    penalty = torch.tensor([length_penalty(len(h), alpha) for h in hyps], dtype=torch.float64)
    best = []
    for b in range(src.shape[0]):
        logp = torch.log_softmax(model(src[b: b + 1].expand(len(hyps), -1), tgt_in).double(), dim=-1)
        scores = (logp.gather(2, target[..., None])[..., 0] * real).sum(dim=1) / penalty  # [H]
        i = int(scores.argmax())
        best.append((float(scores[i]), hyps[i]))
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_finds_the_exhaustive_best(alpha):
    """Vocabulary {PAD, BOS, EOS, 3, 4, 5}, max_len 3: with a beam wider than all candidates the search is
    exhaustive, so it must return the best-scoring hypothesis under GNMT's length penalty."""
    model = peaked(("lstm",), v_tgt=6, seed=2)
    src, max_len = ids(6, 5, V_SRC), 3
    expected = _exhaustive(model, src, max_len, alpha)
    assert len({tuple(h) for _, h in expected}) > 1  # not vacuous: the sentences' best hypotheses differ
    found = beam_search(model, src, None, bos_id=BOS, eos_id=EOS, max_len=max_len, beam_size=27 * 4, alpha=alpha,
                        banned_ids=[PAD, BOS])
    for (score, hyp), h in zip(expected, found):
        assert h.tokens + ([EOS] if h.finished else []) == hyp
        assert h.score == pytest.approx(score, abs=1e-9)
    narrow = beam_search(model, src, None, bos_id=BOS, eos_id=EOS, max_len=max_len, beam_size=2, alpha=alpha,
                         banned_ids=[PAD, BOS])
    assert all(h.score <= s + 1e-9 for h, (s, _) in zip(narrow, expected))
    # and the search matters: greedy decoding misses the best hypothesis of some sentences
    greedy = greedy_decode(model, src, None, bos_id=BOS, eos_id=EOS, max_len=max_len, banned_ids=[PAD, BOS])
    assert [h.tokens + [EOS] * h.finished for h in greedy] != [h for _, h in expected]


def test_source_keys_are_computed_once_per_sentence():
    model = make(("attention", "lstm"))
    calls = {"encoder": 0, "keys": 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    model.src_embed.register_forward_hook(counter("encoder"))
    for block in model.dec_blocks:
        block.cross.k_proj.register_forward_hook(counter("keys"))
    src = ids(3, 6, V_SRC)
    beam_search(model, src, None, bos_id=BOS, eos_id=EOS, max_len=8, beam_size=4, banned_ids=[PAD, BOS])
    assert calls == {"encoder": 1, "keys": 2}  # one encoder pass, one key projection per decoder layer
    calls.update(encoder=0, keys=0)
    greedy_decode(model, src, None, bos_id=BOS, eos_id=EOS, max_len=8)
    assert calls == {"encoder": 1, "keys": 2}


def test_recurrent_decoder_state_does_not_grow():
    model = make(("lstm",), enc=("attention",))
    state = model.start(model.encode(ids(2, 5, V_SRC)))
    sizes = []
    for t in range(4):
        _, state = model.step(torch.full((2,), BOS), state)
        sizes.append(sum(x.numel() for s in state.layers for x in s))
    assert len(set(sizes)) == 1
    assert isinstance(state, Seq2SeqState)


@pytest.mark.parametrize("name, cross", [("attention", "dot"), ("lstm", "additive"), ("mamba", "dot")])
def test_bfloat16_autocast_stays_close_and_decodes(name, cross):
    model = make((name,), cross=cross).float()
    src, tgt, lengths = ids(3, 7, V_SRC), ids(3, 5, V_TGT, seed=1), torch.tensor([7, 3, 5])
    reference = model(src, tgt, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, tgt, lengths)
        hyps = beam_search(model, src, lengths, bos_id=BOS, eos_id=EOS, max_len=6, beam_size=3)
    assert logits.dtype == torch.float32  # the head runs with autocast off
    torch.testing.assert_close(logits, reference, rtol=0, atol=5e-2)
    assert len(hyps) == 3 and all(len(h.tokens) <= 6 for h in hyps)


# --------------------------------------------------------------------------- config and errors
def test_save_and_load_round_trip(tmp_path):
    model = make(("lstm",), cross="additive")
    src, tgt = ids(2, 5, V_SRC), ids(2, 4, V_TGT, seed=1)
    model.save_pretrained(tmp_path)
    loaded = Seq2Seq.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt), **TOL)
    assert loaded.head.weight is loaded.tgt_embed.weight


def test_depths_and_widths_are_independent():
    cfg = Seq2SeqConfig(src_vocab_size=V_SRC, tgt_vocab_size=V_TGT,
                        encoder=dict(d_model=32, n_layers=4, pattern=["mamba"]),
                        decoder=dict(d_model=16, n_layers=1, pattern=["gru"], mlp="none"))
    model = Seq2Seq(cfg).double()
    assert len(model.enc_blocks) == 4 and len(model.dec_blocks) == 1
    src, tgt = ids(2, 5, V_SRC), ids(2, 4, V_TGT, seed=1)
    assert model(src, tgt).shape == (2, 4, V_TGT)
    torch.testing.assert_close(stepwise(model, src, tgt)[0], model(src, tgt), **TOL)


@pytest.mark.parametrize("kwargs, match", [
    (dict(cross_attention="luong"), "cross_attention must be one of 'dot', 'additive'"),
    (dict(cross_heads=3), "cross_heads: n_heads must divide d_model"),
    (dict(cross_attention="additive", cross_heads=2), "cross_heads applies to cross_attention 'dot' only"),
    (dict(decoder=dict(pattern=["attention"], mixer_options={"attention": {"causal": False}})),
     "decoder.mixer_options.attention: the decoder generates one token at a time"),
    (dict(encoder=dict(pattern=["mamab"])), "encoder.pattern: unknown mixer 'mamab'.*did you mean 'mamba'"),
    (dict(decoder=dict(n_layers=0)), "decoder.n_layers must be a positive int, got 0"),
    (dict(encoder=dict(depth=3)), "unknown key.*encoder.depth.*allowed keys in 'encoder'"),
    (dict(encoder=[1]), "encoder must be a mapping"),
    (dict(src_vocab_size=-1), "src_vocab_size must be an int >= 0"),
    (dict(tie_embeddings="yes"), "tie_embeddings must be True or False"),
])
def test_bad_configs_name_the_field(kwargs, match):
    with pytest.raises(UserError, match=match):
        Seq2SeqConfig(**kwargs)


def test_model_needs_vocabulary_sizes_and_resolve_fills_them():
    cfg = Seq2SeqConfig(encoder=dict(d_model=16, n_layers=1), decoder=dict(d_model=16, n_layers=1))
    with pytest.raises(UserError, match="src_vocab_size is 0"):
        Seq2Seq(cfg)
    resolved = cfg.resolve(11, 7)
    assert (resolved.src_vocab_size, resolved.tgt_vocab_size) == (11, 7)
    with pytest.raises(UserError, match="tgt_vocab_size is 7 but the tokenizer has 8"):
        resolved.resolve(11, 8)
    assert Seq2SeqConfig.from_dict(resolved.to_dict()) == resolved


def test_bad_decoding_arguments():
    model = make(("gru",))
    src = ids(1, 4, V_SRC)
    with pytest.raises(UserError, match="eos_id 2 cannot be banned"):
        greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=4, banned_ids=[EOS])
    with pytest.raises(UserError, match="beam_size must be a positive int"):
        beam_search(model, src, bos_id=BOS, eos_id=EOS, max_len=4, beam_size=0)
    with pytest.raises(UserError, match=r"eos_id must be a token id in \[0, 9\)"):
        greedy_decode(model, src, bos_id=BOS, eos_id=99, max_len=4)
    with pytest.raises(ValueError, match="src_lengths must hold one integer"):
        model.encode(src, torch.tensor([5]))
