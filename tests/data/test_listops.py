"""ListOps: parsing, the expression semantics, the fixed split, encoding, bucketing and padding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix.data import listops
from seqmix.data.listops import (PAD_ID, TOKEN_ID, bucket_batches, encode, evaluate_expression, length_sorted_batches,
                                 pad_batch, read_listops, split_listops)
from seqmix.errors import UserError

STAGED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "listops" / "test_d20s.tsv"


def random_expression(rng: np.random.Generator, depth: int = 0) -> str:
    """A ListOps-style expression in the staged file's binarized form: '( ( ( [OP a ) b ) ] )'."""
    if depth >= 3 or rng.random() < 0.3:
        return str(rng.integers(0, 10))
    op = listops.OPERATORS[rng.integers(0, 4)]
    text = op
    for _ in range(rng.integers(2, 5)):
        text = f"( {text} {random_expression(rng, depth + 1)} )"
    return f"( {text} ] )"


@pytest.fixture
def lookalike(tmp_path) -> Path:
    """50 distinct generated rows labelled by the reference evaluator."""
    rng = np.random.default_rng(0)
    rows = {}
    while len(rows) < 50:
        e = random_expression(rng)
        rows[e] = evaluate_expression(e.split())
    path = tmp_path / "listops.tsv"
    path.write_text("".join(f"{v}\t{e}\n" for e, v in rows.items()))
    return path


@pytest.mark.parametrize("expression, value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 5 [MAX 1 3 ] 8 ]", 3),
    ("[MED 1 2 3 4 ]", 2),  # median 2.5, truncated
    ("[MED 7 1 9 ]", 7),
    ("[SM 5 6 7 ]", 8),  # 18 mod 10
    ("( ( ( [SM 6 ) 5 ) 9 ) ] )", 0),  # the staged file's first row: parentheses are ignored
    ("7", 7),
])
def test_expression_semantics(expression, value):
    assert evaluate_expression(expression.split()) == value


def test_unbalanced_expressions_are_rejected():
    for bad in ("[MAX 1 2", "1 ]", "[SM ]"):
        with pytest.raises(ValueError):
            evaluate_expression(bad.split())


def test_read_parses_labels_and_tokens(lookalike):
    tokens, labels, digest = read_listops(lookalike)
    assert len(tokens) == len(labels) == 50
    assert all(evaluate_expression(t) == l for t, l in zip(tokens, labels))
    assert digest == hashlib.sha256(lookalike.read_bytes()).hexdigest()


def test_missing_file_names_itself(tmp_path):
    with pytest.raises(UserError, match=r"nowhere\.tsv.*does not exist.*data\.path"):
        read_listops(tmp_path / "nowhere.tsv")


@pytest.mark.parametrize("line, problem", [("3 [MAX 1 2 ]", "label<TAB>expression"),
                                           ("12\t[MAX 1 2 ]", "label 0-9"),
                                           ("3\t[MAX 1 x ]", "unknown token")])
def test_bad_lines_name_the_line(tmp_path, line, problem):
    path = tmp_path / "bad.tsv"
    path.write_text(f"9\t[MAX 1 9 ]\n{line}\n")
    with pytest.raises(UserError, match=rf"line 2: .*{problem}"):
        read_listops(path)


def test_split_is_80_10_10_disjoint_deterministic_and_independent_of_line_order(lookalike, tmp_path):
    a = split_listops(lookalike)
    assert {s: len(t) for s, t in a.tokens.items()} == {"train": 40, "valid": 5, "test": 5}
    texts = {s: {" ".join(t) for t in a.tokens[s]} for s in a.tokens}
    assert not (texts["train"] & texts["valid"] or texts["train"] & texts["test"] or texts["valid"] & texts["test"])
    assert sum(len(t) for t in texts.values()) == 50
    lines = lookalike.read_text().splitlines()
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    b = split_listops(shuffled)
    for split in a.tokens:
        assert a.tokens[split] == b.tokens[split]
        np.testing.assert_array_equal(a.labels[split], b.labels[split])


def test_encode_drops_parentheses_unless_kept():
    toks = "( ( [MAX 2 ) 9 ) ] )".split()
    assert encode(toks).tolist() == [TOKEN_ID[t] for t in ("[MAX", "2", "9", "]")]
    assert encode(toks, keep_parens=True).tolist() == [TOKEN_ID[t] for t in toks]
    assert PAD_ID not in encode(toks, keep_parens=True)


def test_bucket_batches_cover_every_index_once_with_little_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 500, size=1000)
    batches = bucket_batches(lengths, 16, np.random.default_rng(7))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), len(batches)))
    assert padded < 0.6 * random_padded  # bucketing removes most of the padding
    again = bucket_batches(lengths, 16, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))


def test_length_sorted_batches_respect_both_limits():
    lengths = np.array([5, 100, 3, 50, 50, 7, 300])
    batches = length_sorted_batches(lengths, batch_size=3, max_tokens=120)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * lengths[b].max() <= 120
    assert [lengths[b].tolist() for b in batches] == [[3, 5, 7], [50, 50], [100], [300]]


def test_pad_batch_right_pads_with_zero():
    tokens, lengths = pad_batch([np.array([3, 4, 5]), np.array([7])])
    assert tokens.tolist() == [[3, 4, 5], [7, 0, 0]]
    assert lengths.tolist() == [3, 1]
    assert tokens.dtype == lengths.dtype == torch.long


@pytest.mark.skipif(not STAGED.is_file(), reason="ListOps not staged in ../shared/data/listops")
def test_staged_file_labels_match_the_semantics_and_split_is_pinned():
    tokens, labels, _ = read_listops(STAGED)
    assert len(tokens) == 10_000
    assert all(evaluate_expression(t) == l for t, l in zip(tokens, labels))  # every one of the 10,000 rows
    splits = split_listops(STAGED)
    digests = {s: hashlib.sha256("\n".join(" ".join(t) for t in splits.tokens[s]).encode()).hexdigest()[:16]
               for s in splits.tokens}
    # the fixed split, the same on every machine: 8000 / 1000 / 1000 rows with these contents
    assert {s: len(t) for s, t in splits.tokens.items()} == {"train": 8000, "valid": 1000, "test": 1000}
    assert digests == {"train": "7d0b798ef1c3778e", "valid": "b62894eabc1821ac", "test": "70aa71dc3e5720fa"}
    lengths = [len(encode(t)) for t in tokens]
    assert max(lengths) == 939 and abs(np.mean(lengths) - 42.85) < 0.01  # without the parentheses
