"""Corpora: the shipped tiny Shakespeare, clear errors for bad files, the split, Penn Treebank."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from seqmix.data import (
    DEFAULT_CORPUS,
    CharTokenizer,
    WordTokenizer,
    default_corpus_path,
    load_text,
    ptb_paths,
    split_stream,
    token_stream,
)
from seqmix.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_shipped_corpus_loads_and_is_the_recorded_file():
    text = load_text(None)
    assert default_corpus_path().name == DEFAULT_CORPUS
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    assert hashlib.sha256(default_corpus_path().read_bytes()).hexdigest() == TINY_SHAKESPEARE_SHA256
    assert CharTokenizer.fit(text).vocab_size == 65
    assert (default_corpus_path().parent / "SOURCES.md").is_file()


def test_missing_empty_directory_and_non_utf8(tmp_path):
    with pytest.raises(UserError, match=r"corpus file '.*nope.txt' does not exist; give an existing text file") as info:
        load_text(tmp_path / "nope.txt")
    assert "\n" not in str(info.value)
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(UserError, match=r"corpus file '.*empty.txt' is empty"):
        load_text(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="is a directory"):
        load_text(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"'.*latin1.txt' is not UTF-8 text \(byte 0xe9 at offset 3\); convert it to UTF-8"):
        load_text(tmp_path / "latin1.txt")
    assert load_text(tmp_path / "latin1.txt", errors="surrogateescape").startswith("caf")


def test_split_is_the_last_ten_percent():
    ids = torch.arange(1000)
    train, val = split_stream(ids)
    assert torch.equal(train, ids[:900]) and torch.equal(val, ids[900:])
    train, val = split_stream(list(range(1001)), val_fraction=0.25)
    assert len(train) == 750 and val[0] == 750 and len(val) == 251
    text = load_text()
    tok = CharTokenizer.fit(text)
    train, val = split_stream(token_stream(text, tok))
    n = int(len(text) * 0.9)  # nanoGPT's shakespeare_char cut
    assert tok.decode(val) == text[n:] and len(train) == n


def test_split_errors():
    with pytest.raises(UserError, match="val_fraction must be a number strictly between 0 and 1"):
        split_stream(torch.arange(10), val_fraction=1.0)
    with pytest.raises(UserError, match="too short to split"):
        split_stream(torch.arange(1))


def test_ptb_paths_error(tmp_path):
    with pytest.raises(UserError, match="lacks ptb.train.txt, ptb.valid.txt, ptb.test.txt"):
        ptb_paths(tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "ptb").is_dir(), reason="Penn Treebank not staged in ../shared/data/ptb")
def test_penn_treebank_reads_with_the_standard_vocabulary():
    paths = ptb_paths(SHARED_DATA / "ptb")
    train = load_text(paths["train"])
    tok = WordTokenizer.fit(train)
    assert tok.vocab_size == 10_000  # Mikolov's vocabulary: 9,999 words + <eos>
    ids = token_stream(train, tok)
    assert len(ids) == 929_589  # the standard count of training tokens (with <eos>)
    valid = token_stream(load_text(paths["valid"]), tok)
    assert len(valid) == 73_760 and int((valid == tok.unk_id).sum()) > 0
