"""Tokenizers: round trips, vocabulary rules, clear errors, save/load."""

from __future__ import annotations

import json

import pytest

from seqmix.data import (
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from seqmix.errors import UserError

TEXT = "To be, or not to be:\nthat is the question.\n"


def test_char_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer.fit(TEXT)
    assert tok.chars == sorted(set(TEXT)) and tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT) and tok.decode(ids) == TEXT
    assert tok.encode("\n") == [0]  # "\n" has the lowest code point


def test_char_unknown_characters_named():
    tok = CharTokenizer.fit(TEXT)
    with pytest.raises(UserError, match=r"2 character\(s\) not in the vocabulary: 'Z', 'é'") as info:
        tok.encode("Zébe")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="empty text"):
        CharTokenizer.fit("")


def test_byte_round_trip_any_text():
    tok = ByteTokenizer()
    text = "naïve café — 日本"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a cut multi-byte character decodes to U+FFFD
    raw = b"\xff\xfeabc".decode("utf-8", errors="surrogateescape")
    assert tok.encode(raw) == [0xFF, 0xFE, 97, 98, 99]


def test_word_vocabulary_eos_unk_and_order():
    text = "the cat sat\nthe dog sat\nthe end\n"
    tok = WordTokenizer.fit(text)
    assert tok.words[:2] == ["<eos>", "<unk>"]
    assert tok.words[2:4] == ["the", "sat"]  # by count
    assert tok.words[4:] == ["cat", "dog", "end"]  # ties alphabetically
    ids = tok.encode(text)
    assert ids.count(tok.eos_id) == 3 and len(ids) == 11
    assert tok.decode(ids) == text
    assert tok.encode("the zebra") == [tok.index["the"], tok.unk_id]
    small = WordTokenizer.fit(text, max_vocab=4)
    assert small.vocab_size == 4 and small.encode("cat") == [small.unk_id]


def test_word_text_containing_unk_keeps_one_unk():
    tok = WordTokenizer.fit("a <unk> b\n<unk> a\n")
    assert tok.words.count("<unk>") == 1 and tok.encode("<unk>") == [tok.unk_id]


def test_build_tokenizer_and_errors():
    assert isinstance(build_tokenizer("char", TEXT), CharTokenizer)
    assert isinstance(build_tokenizer("byte", TEXT), ByteTokenizer)
    assert build_tokenizer("word", TEXT, max_vocab=5).vocab_size == 5
    with pytest.raises(UserError, match="unknown tokenizer 'bpe'; choose one of char, byte, word"):
        build_tokenizer("bpe", TEXT)
    with pytest.raises(UserError, match="max_vocab must be an int >= 2"):
        build_tokenizer("word", TEXT, max_vocab=1)


@pytest.mark.parametrize("kind", ["char", "byte", "word"])
def test_save_load_round_trip(tmp_path, kind):
    tok = build_tokenizer(kind, TEXT)
    assert isinstance(tok, Tokenizer)
    save_tokenizer(tok, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == kind and loaded.vocab_size == tok.vocab_size and loaded.to_dict() == tok.to_dict()
    assert loaded.encode(TEXT) == tok.encode(TEXT)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json' is missing"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(UserError, match="unknown tokenizer kind 'sentencepiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": ["a", "a"]}))
    with pytest.raises(UserError, match="invalid char tokenizer"):
        load_tokenizer(tmp_path)


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 3\)"):
        CharTokenizer("abc").decode([0, 3])
