"""Encoder-decoder data: SCAN and Multi30k loading, pair tokenizers, bucketed batches, exact match and BLEU.

Most tests write small look-alike files into ``tmp_path``; the ones marked ``real`` read the staged
files in ``../shared/data`` (or ``$SEQMIX_DATA``) and skip when they are absent.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from seqmix.data.scan import parse_scan_line, split_scan_validation
from seqmix.data.seq2seq_data import (
    PairTokenizer,
    build_pair_tokenizer,
    corpus_bleu,
    default_data_root,
    encode_pairs,
    exact_match,
    load_pairs,
    make_batches,
)
from seqmix.errors import UserError

DATA = default_data_root()
needs_scan = pytest.mark.skipif(not (DATA / "scan").is_dir(), reason="SCAN not staged in ../shared/data/scan")
needs_multi30k = pytest.mark.skipif(
    not (DATA / "multi30k" / "raw").is_dir(), reason="Multi30k not staged in ../shared/data/multi30k/raw"
)

WORDS = ["walk", "run", "look", "jump"]
ACTS = {"walk": "I_WALK", "run": "I_RUN", "look": "I_LOOK", "jump": "I_JUMP"}


def _scan_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct SCAN-like lines (verb [twice|thrice] [and verb])."""
    rng, seen, lines = random.Random(seed), set(), []
    while len(lines) < n:
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        ka, kb = rng.randint(1, 3), rng.randint(1, 3)
        cmd = f"{a} {['', 'twice', 'thrice'][ka - 1]} and {b} {['', 'twice', 'thrice'][kb - 1]}".split()
        line = f"IN: {' '.join(cmd)} OUT: {' '.join([ACTS[a]] * ka + [ACTS[b]] * kb)}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def _write_scan(root, folder, train_name, test_name, train_lines, test_lines):
    base = root / "scan" / folder
    base.mkdir(parents=True, exist_ok=True)
    (base / train_name).write_text("\n".join(train_lines) + "\n")
    (base / test_name).write_text("\n".join(test_lines) + "\n")


def _write_multi30k(root, n_train=30, n_val=5, n_test=4):
    raw = root / "multi30k" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("val", n_val), ("test_2016_flickr", n_test), ("test_2017_flickr", 2)):
        (raw / f"{name}.en").write_text("".join(f"A dog runs {name} {i}.\n" for i in range(n)))
        (raw / f"{name}.de").write_text("".join(f"Ein Hund läuft {name} {i}.\n" for i in range(n)))
    return raw


# ---------------------------------------------------------------- SCAN


def test_parse_scan_line_hand_written():
    assert parse_scan_line("IN: jump twice OUT: I_JUMP I_JUMP\n") == ("jump twice", "I_JUMP I_JUMP")
    assert parse_scan_line("IN:  turn   left OUT:  I_TURN_LEFT ") == ("turn left", "I_TURN_LEFT")
    for bad in ("jump OUT: I_JUMP", "IN: jump I_JUMP", "IN: OUT: I_JUMP", "IN: jump OUT:", "IN: a OUT: b OUT: c"):
        with pytest.raises(UserError, match="IN: <command> OUT: <actions>|must both be non-empty"):
            parse_scan_line(bad)


def test_scan_generated_split_is_fixed_disjoint_and_keeps_repeated_primitives(tmp_path):
    lines = _scan_lines(57) + ["IN: jump OUT: I_JUMP"] * 6  # 63 lines, the primitive oversampled
    random.Random(1).shuffle(lines)
    _write_scan(tmp_path, "add_prim_split", "tasks_train_addprim_jump.txt", "tasks_test_addprim_jump.txt",
                lines, ["IN: jump twice OUT: I_JUMP I_JUMP"])
    splits = load_pairs("scan", tmp_path, "add_jump")
    assert set(splits) == {"train", "valid", "test"}
    assert len(splits["valid"]) == round(0.1 * 63) == 6 and len(splits["train"]) == 57
    assert splits["test"] == [("jump twice", "I_JUMP I_JUMP")]
    assert not set(splits["valid"]) & set(splits["train"])  # disjoint by content
    assert splits["train"].count(("jump", "I_JUMP")) == 6  # every copy of the primitive stays in training
    assert sorted(splits["train"] + splits["valid"]) == sorted(parse_scan_line(x) for x in lines)
    # the choice depends on the content only: the same pairs in another file order give the same set
    _write_scan(tmp_path / "b", "add_prim_split", "tasks_train_addprim_jump.txt", "tasks_test_addprim_jump.txt",
                lines[::-1], ["IN: jump OUT: I_JUMP"])
    again = load_pairs("scan", tmp_path / "b", "add_jump")
    assert set(again["valid"]) == set(splits["valid"])
    # both parts keep the file order
    order = {parse_scan_line(x): i for i, x in enumerate(lines)}
    assert [order[p] for p in splits["valid"]] == sorted(order[p] for p in splits["valid"])
    # another seed holds out other pairs
    pairs = [parse_scan_line(x) for x in lines]
    assert split_scan_validation(pairs, seed=0)[1] == splits["valid"]
    assert split_scan_validation(pairs, seed=1)[1] != splits["valid"]


def test_scan_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="tasks_train_simple.txt' is missing.*--data.root.*SEQMIX_DATA") as info:
        load_pairs("scan", tmp_path, "simple")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(UserError, match="split_name 'iid' is unknown; choose one of simple, length, add_jump"):
        load_pairs("scan", tmp_path, "iid")
    with pytest.raises(UserError, match="dataset 'wmt' is unknown; choose one of scan, multi30k"):
        load_pairs("wmt", tmp_path)
    _write_scan(tmp_path, "length_split", "tasks_train_length.txt", "tasks_test_length.txt",
                _scan_lines(20), ["IN: walk OUT: I_WALK", "walk I_WALK"])
    with pytest.raises(UserError, match=r"tasks_test_length.txt' line 2: expected 'IN: <command> OUT: <actions>'"):
        load_pairs("scan", tmp_path, "length")


def test_root_none_reads_seqmix_data(tmp_path, monkeypatch):
    _write_scan(tmp_path, "simple_split", "tasks_train_simple.txt", "tasks_test_simple.txt",
                _scan_lines(30), ["IN: walk OUT: I_WALK"])
    monkeypatch.setenv("SEQMIX_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    assert len(load_pairs("scan")["valid"]) == 3


@needs_scan
@pytest.mark.parametrize(
    "split_name, n_file, n_test",
    [("simple", 16728, 4182), ("length", 16990, 3920), ("add_jump", 14670, 7706)],
)
def test_real_scan_split_sizes(split_name, n_file, n_test):
    splits = load_pairs("scan", split_name=split_name)
    assert len(splits["train"]) + len(splits["valid"]) == n_file and len(splits["test"]) == n_test
    assert len(splits["valid"]) == round(0.1 * n_file)
    assert not set(splits["valid"]) & set(splits["train"])
    assert load_pairs("scan", split_name=split_name)["valid"] == splits["valid"]
    if split_name == "add_jump":
        assert splits["train"].count(("jump", "I_JUMP")) == 1467
        assert not any("jump" in s.split() for s, _ in splits["valid"])  # jump appears only alone in training
        assert all("jump" in s.split() for s, _ in splits["test"])


# ---------------------------------------------------------------- Multi30k


def test_multi30k_generated_aligned_pairs(tmp_path):
    _write_multi30k(tmp_path)
    splits = load_pairs("multi30k", tmp_path)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [30, 5, 4]
    assert splits["train"][3] == ("A dog runs train 3.", "Ein Hund läuft train 3.")
    assert splits["test"][0] == ("A dog runs test_2016_flickr 0.", "Ein Hund läuft test_2016_flickr 0.")
    other = load_pairs("multi30k", tmp_path, "test_2017_flickr")["test"]
    assert other == [(f"A dog runs test_2017_flickr {i}.", f"Ein Hund läuft test_2017_flickr {i}.") for i in range(2)]
    with pytest.raises(UserError, match="multi30k split_name 'length' is unknown"):
        load_pairs("multi30k", tmp_path, "length")


def test_multi30k_misaligned_and_missing_files(tmp_path):
    raw = _write_multi30k(tmp_path)
    (raw / "val.de").write_text("Eins.\nZwei.\n")
    with pytest.raises(UserError, match=r"not aligned: .*val.en' has 5 lines but .*val.de' has 2"):
        load_pairs("multi30k", tmp_path)
    (raw / "val.de").unlink()
    with pytest.raises(UserError, match=r"val.de' is missing.*--data.root.*SEQMIX_DATA") as info:
        load_pairs("multi30k", tmp_path)
    assert str(raw / "val.de") in str(info.value)


@needs_multi30k
def test_real_multi30k_line_counts():
    splits = load_pairs("multi30k")
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [29000, 1014, 1000]
    assert splits["test"][0] == (
        "A man in an orange hat starring at something.",
        "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    )


# ---------------------------------------------------------------- tokenizers

SCAN_PAIRS = [("jump twice", "I_JUMP I_JUMP"), ("walk", "I_WALK"), ("walk and jump", "I_WALK I_JUMP")]
SENTENCES = [
    ("the cat sat on the mat", "die Katze saß auf der Matte"),
    ("the dog sat on the mat", "der Hund saß auf der Matte"),
    ("a cat and a dog", "eine Katze und ein Hund"),
    ("the dog ran", "der Hund rannte"),
] * 5


def test_word_tokenizer_vocabulary_round_trip_and_unk():
    tok = build_pair_tokenizer("word", SCAN_PAIRS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3) and not tok.shared
    # by decreasing count, ties alphabetically: jump 2, walk 2, and 1, twice 1
    assert tok.encode_src("jump walk and twice") == [4, 5, 6, 7] and tok.src_vocab_size == 8
    assert tok.encode_tgt("I_JUMP I_WALK") == [4, 5] and tok.tgt_vocab_size == 6
    for src, tgt in SCAN_PAIRS:
        assert tok.decode_tgt(tok.encode_tgt(tgt)) == tgt
    assert tok.encode_src("run twice") == [3, 7]  # "run" is not in the training pairs
    assert tok.decode_tgt([1, 4, 0, 5, 2, 4, 4]) == "I_JUMP I_WALK"  # BOS/PAD skipped, stops at EOS
    assert build_pair_tokenizer("word", SCAN_PAIRS, vocab_size=5).encode_src("jump walk") == [4, 3]
    joint = build_pair_tokenizer("word", SCAN_PAIRS, shared=True)
    assert joint.src_vocab_size == joint.tgt_vocab_size == 4 + 4 + 2
    assert joint.encode_src("I_JUMP") == joint.encode_tgt("I_JUMP")


def test_byte_tokenizer_round_trip():
    tok = build_pair_tokenizer("byte", [("x", "y")])
    text = "Ein Mädchen läuft — 日本"
    ids = tok.encode_tgt(text)
    assert ids[:3] == [ord("E") + 4, ord("i") + 4, ord("n") + 4] and len(ids) == len(text.encode("utf-8"))
    assert tok.decode_tgt(ids + [tok.eos_id, 50]) == text
    assert tok.src_vocab_size == tok.tgt_vocab_size == 260 and tok.encode_src(text) == ids
    assert tok.decode_tgt([ord("a") + 4, tok.unk_id]) == "a\ufffd"


def test_bpe_round_trip_and_trained_on_training_split_only():
    tok = build_pair_tokenizer("bpe", SENTENCES, vocab_size=300)
    assert tok.shared and tok.src_vocab_size == tok.tgt_vocab_size <= 300
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    for src, tgt in SENTENCES:
        assert tok.decode_tgt(tok.encode_tgt(tgt)) == tgt and tok.decode_tgt(tok.encode_src(src)) == src
    odd = "  Zürich,  ☃ 日本  "  # unseen characters and odd spacing still round-trip (byte-level, no <unk>)
    assert tok.decode_tgt(tok.encode_tgt(odd)) == odd
    assert len(tok.encode_src("the cat sat")) < len("the cat sat")  # merges were learnt
    # every learnt piece of two or more characters occurs in the training text (a piece holding part
    # of a multi-byte character, such as the first byte of "ß", decodes to U+FFFD and is left out)
    corpus = "\n".join(s for pair in SENTENCES for s in pair)
    pieces = [tok.decode_tgt([i]) for i in range(4, tok.tgt_vocab_size)]
    learnt = [p for p in pieces if len(p) >= 2 and "\ufffd" not in p]
    assert len(learnt) > 30 and all(p in corpus for p in learnt)
    # a word seen only in a test sentence is not one piece; trained on it as well, it would be
    assert len(tok.encode_tgt(" zebra")) > 1
    leaky = build_pair_tokenizer("bpe", SENTENCES + [("a zebra", "ein Zebra")] * 20, vocab_size=300)
    assert len(leaky.encode_src(" zebra")) == 1


def test_bpe_separate_vocabularies():
    tok = build_pair_tokenizer("bpe", SENTENCES, vocab_size=280, shared=False)
    assert not tok.shared
    assert tok.decode_tgt(tok.encode_tgt("die Katze")) == "die Katze"
    assert tok.encode_src("the cat") != tok.encode_tgt("the cat")  # merges from different sides


@pytest.mark.parametrize("kind, shared", [("word", False), ("word", True), ("bpe", True), ("bpe", False), ("byte", True)])
def test_save_load_gives_identical_ids(tmp_path, kind, shared):
    tok = build_pair_tokenizer(kind, SENTENCES, vocab_size=280, shared=shared)
    path = tok.save(tmp_path)
    assert path.name == "pair_tokenizer.json" and json.loads(path.read_text())["kind"] == kind
    again = PairTokenizer.load(tmp_path)
    assert (again.kind, again.shared, again.src_vocab_size, again.tgt_vocab_size) == (
        kind, tok.shared, tok.src_vocab_size, tok.tgt_vocab_size)
    for src, tgt in SENTENCES[:4] + [("a zebra ran", "ein Zebra rannte")]:
        assert again.encode_src(src) == tok.encode_src(src) and again.encode_tgt(tgt) == tok.encode_tgt(tgt)
        assert again.decode_tgt(tok.encode_tgt(tgt)) == tok.decode_tgt(tok.encode_tgt(tgt))


def test_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="pair_tokenizer.json' is missing"):
        PairTokenizer.load(tmp_path)
    (tmp_path / "pair_tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="pair_tokenizer.json' is not a valid pair tokenizer.*corrupt"):
        PairTokenizer.load(tmp_path)
    (tmp_path / "pair_tokenizer.json").write_text(json.dumps(
        {"format": "seqmix-pair-tokenizer", "version": 1, "kind": "bpe", "shared": True, "src": {"model": 3}}))
    with pytest.raises(UserError, match="not a valid pair tokenizer"):
        PairTokenizer.load(tmp_path)
    with pytest.raises(UserError, match="kind 'sentencepiece' is unknown; choose one of word, bpe, byte"):
        build_pair_tokenizer("sentencepiece", SENTENCES)
    with pytest.raises(UserError, match="vocab_size for the bpe tokenizer must be an int >= 261"):
        build_pair_tokenizer("bpe", SENTENCES, vocab_size=100)
    with pytest.raises(UserError, match="empty list of training pairs"):
        build_pair_tokenizer("word", [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_pair_tokenizer("word", SCAN_PAIRS).decode_tgt([99])


@needs_multi30k
def test_real_bpe_on_multi30k_train_only():
    splits = load_pairs("multi30k")
    train = splits["train"][:6000]  # a slice of the training split keeps the test to a second or two
    tok = build_pair_tokenizer("bpe", train, vocab_size=3000)
    assert tok.src_vocab_size == 3000
    targets = [t for _, t in splits["test"]]
    assert all(tok.decode_tgt(tok.encode_tgt(t)) == t for t in targets)
    train_text = "\n".join(s for pair in train for s in pair)
    candidates = sorted({w for t in targets for w in t.split() if len(w) > 3} - set(train_text.split()))
    # test words that are not even a substring of the training text, so no learnt piece can cover them
    unseen = [w for w in candidates[:200] if w not in train_text]
    assert len(unseen) > 20  # names and compounds that occur only in the test sentences
    assert all(len(tok.encode_tgt(" " + w)) > 1 for w in unseen)


# ---------------------------------------------------------------- batches


def test_make_batches_pads_and_covers_every_pair_once():
    pairs = [([5, 6, 7], [8]), ([5], [8, 9, 10, 11]), ([5, 6], []), ([7, 7, 7, 7], [9, 9])]
    batches = make_batches(pairs, batch_size=2, seed=0, bucket=False, shuffle=False, pad_id=0)
    assert [b.indices.tolist() for b in batches] == [[0, 1], [2, 3]]
    first = batches[0]
    assert first.src.tolist() == [[5, 6, 7], [5, 0, 0]] and first.src_lengths.tolist() == [3, 1]
    assert first.tgt.tolist() == [[8, 0, 0, 0], [8, 9, 10, 11]] and first.tgt_lengths.tolist() == [1, 4]
    assert first.src_mask.tolist() == [[True, True, True], [True, False, False]]
    tgt_in, tgt_out = first.decoder_io(bos_id=1, eos_id=2, pad_id=0)
    assert tgt_in.tolist() == [[1, 8, 0, 0, 0], [1, 8, 9, 10, 11]]
    assert tgt_out.tolist() == [[8, 2, 0, 0, 0], [8, 9, 10, 11, 2]]
    tgt_in, tgt_out = batches[1].decoder_io(bos_id=1, eos_id=2, pad_id=0)  # an empty target: just EOS
    assert tgt_in.tolist() == [[1, 0, 0], [1, 9, 9]] and tgt_out.tolist() == [[2, 0, 0], [9, 9, 2]]
    # global length sort when not shuffling: shortest sources first
    sorted_batches = make_batches(pairs, batch_size=2, seed=0, shuffle=False)
    assert [b.indices.tolist() for b in sorted_batches] == [[1, 2], [0, 3]]
    assert make_batches([], batch_size=4, seed=0) == []
    with pytest.raises(UserError, match="batch_size must be a positive int, got 0"):
        make_batches(pairs, batch_size=0, seed=0)


def test_make_batches_deterministic_and_bucketed():
    rng = random.Random(0)
    pairs = [([4] * rng.randint(1, 40), [5] * rng.randint(1, 40)) for _ in range(500)]
    a = make_batches(pairs, batch_size=16, seed=3, pool_batches=8)
    b = make_batches(pairs, batch_size=16, seed=3, pool_batches=8)
    c = make_batches(pairs, batch_size=16, seed=4, pool_batches=8)
    assert all(torch.equal(x.indices, y.indices) and torch.equal(x.src, y.src) for x, y in zip(a, b))
    assert [x.indices.tolist() for x in a] != [x.indices.tolist() for x in c]
    flat = sorted(i for x in a for i in x.indices.tolist())
    assert flat == list(range(500)) and len(a) == math.ceil(500 / 16)
    for x in a:  # every row holds its own pair
        for row, i in enumerate(x.indices.tolist()):
            assert x.src[row, : x.src_lengths[row]].tolist() == pairs[i][0]
            assert x.tgt[row, : x.tgt_lengths[row]].tolist() == pairs[i][1]

    def padding(batches):
        return sum(x.src.numel() - int(x.src_lengths.sum()) for x in batches)

    assert padding(a) < 0.25 * padding(make_batches(pairs, batch_size=16, seed=3, bucket=False))


def test_encode_pairs_feeds_batches():
    tok = build_pair_tokenizer("word", SCAN_PAIRS)
    ids = encode_pairs(tok, SCAN_PAIRS)
    assert ids[0] == ([4, 7], [4, 4])
    (batch,) = make_batches(ids, batch_size=8, seed=0, shuffle=False, pad_id=tok.pad_id)
    assert [tok.decode_tgt(row) for row in batch.tgt] == [SCAN_PAIRS[i][1] for i in batch.indices.tolist()]


# ---------------------------------------------------------------- metrics


def test_exact_match_hand_checked():
    assert exact_match(["I_JUMP I_JUMP", "I_WALK", "I_RUN"], ["I_JUMP  I_JUMP ", "I_WALK", "I_LOOK"]) == 2 / 3
    assert exact_match(["a b"], ["a b c"]) == 0.0 and exact_match(["x"], ["x"]) == 1.0
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        exact_match(["a", "b"], ["a"])


def test_corpus_bleu_hand_checked():
    refs = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    # one sentence of 6 words: n-gram precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty, so
    # BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * 12 ** -0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(100 * 12 ** -0.25)
    # all precisions 1, hypothesis 5 words against 6: brevity penalty exp(1 - 6/5)
    assert corpus_bleu(["the cat sat on the"], ["the cat sat on the mat"]) == pytest.approx(100 * math.exp(-0.2))
    assert corpus_bleu(["a b c d", "e f"], ["w x y z", "u v"]) == 0.0
    with pytest.raises(ValueError, match="no hypotheses"):
        corpus_bleu([], [])
