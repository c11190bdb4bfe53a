"""ListOps (Nangia & Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning",
arXiv:1804.06028): nested prefix expressions over the digits 0-9, the label is the expression's value.

    [MAX 2 9 [MIN 4 7 ] 0 ]   -> 9        [MIN, [MAX: min, max    [MED: int(median)    [SM: sum mod 10

The staged file is the original release's ``test_d20s.tsv`` ('label<TAB>expression', 10,000 rows;
the training file of the release is not staged, see ``../shared/data/SOURCES.md``). Its expressions
are written as binarized trees: every operator's argument list is wrapped in ``(`` ... ``)`` pairs
that only encode the left-branching parse. The sequence models of the original paper never saw those
parentheses -- SPINN's loader turns them into shift/reduce transitions and keeps the other tokens --
so by default they are dropped (mean length 43 tokens instead of 127, max 939 instead of 2815);
``keep_parens=True`` keeps them as two more tokens.

The split is FIXED, the same on every machine and independent of the file's line order: the rows are
ordered by the SHA-256 of ``"seqmix-listops-v1:" + expression`` (the file has no duplicate
expressions) and the first 80% are training, the next 10% validation, the last 10% test -- 8000 /
1000 / 1000 for the staged file. Batches of a length-bucketed sampler (``bucket_batches``) are
right-padded with id 0 (``pad_batch``) and come with the true lengths, which
``seqmix.models.SequenceClassifier`` takes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from seqmix.data.paths import shared_data_root
from seqmix.errors import UserError

__all__ = ["OPERATORS", "VOCAB", "PAD_ID", "N_CLASSES", "DEFAULT_LISTOPS", "ListOpsSplits", "default_listops_path",
           "read_listops", "split_listops", "encode", "evaluate_expression", "bucket_batches", "pad_batch"]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
VOCAB = ("<pad>", *OPERATORS, "]", *(str(d) for d in range(10)), "(", ")")  # ids 0..17; 0 is padding only
PAD_ID = 0
N_CLASSES = 10
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
SPLIT_SALT = "seqmix-listops-v1:"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # 8000 / 1000 / 1000 of the staged 10,000 rows
SPLITS = ("train", "valid", "test")
DEFAULT_LISTOPS = Path("listops") / "test_d20s.tsv"


def default_listops_path() -> Path:
    """``$SEQMIX_DATA/listops/test_d20s.tsv``, else ``../shared/data/listops/test_d20s.tsv`` beside the checkout."""
    return (shared_data_root() / DEFAULT_LISTOPS).resolve()


@dataclass
class ListOpsSplits:
    """The three splits as token lists and labels, plus the file's digest (to match checkpoints to data)."""

    tokens: dict[str, list[list[str]]]  # split -> expressions as token lists (parentheses included)
    labels: dict[str, np.ndarray]  # split -> [N] int64 labels 0..9
    sha256: str

    def encoded(self, split: str, keep_parens: bool = False) -> list[np.ndarray]:
        return [encode(toks, keep_parens) for toks in self.tokens[split]]


def read_listops(path: Union[str, Path, None] = None) -> tuple[list[list[str]], np.ndarray, str]:
    """``(token lists, labels [N], sha256)`` of a 'label<TAB>expression' file (``None``: the staged one).

    A missing file, a line without a tab, a label outside 0-9 or an unknown token is a ``UserError``
    naming the file and the line.
    """
    path = Path(default_listops_path() if path is None else path).expanduser()
    if not path.is_file():
        raise UserError(f"ListOps file {str(path)!r} does not exist; give data.path a 'label<TAB>expression' file "
                        f"(the original ListOps format, e.g. test_d20s.tsv of nyu-mll/spinn), or put it at "
                        f"../shared/data/{DEFAULT_LISTOPS.as_posix()} beside the checkout (or under $SEQMIX_DATA)")
    blob = path.read_bytes()
    tokens, labels = [], []
    for number, line in enumerate(blob.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, expression = line.partition("\t")
        if not tab or label.strip() not in tuple(str(d) for d in range(N_CLASSES)):
            raise UserError(f"{str(path)!r} line {number}: expected 'label<TAB>expression' with a label 0-9, "
                            f"got {line[:60]!r}")
        toks = expression.split()
        unknown = sorted({t for t in toks if t not in TOKEN_ID or t == VOCAB[PAD_ID]})
        if unknown or not toks:
            shown = ", ".join(map(repr, unknown)) or "(none)"
            raise UserError(f"{str(path)!r} line {number}: unknown token(s) {shown}; "
                            f"ListOps tokens are {' '.join(VOCAB[1:])}")
        tokens.append(toks)
        labels.append(int(label))
    if not tokens:
        raise UserError(f"ListOps file {str(path)!r} holds no 'label<TAB>expression' lines")
    return tokens, np.asarray(labels, dtype=np.int64), hashlib.sha256(blob).hexdigest()


def split_listops(path: Union[str, Path, None] = None) -> ListOpsSplits:
    """The fixed 80/10/10 split of a ListOps file (see the module docstring)."""
    tokens, labels, digest = read_listops(path)
    order = split_order([" ".join(t) for t in tokens])
    n = len(order)
    n_train, n_valid = int(round(n * SPLIT_FRACTIONS[0])), int(round(n * SPLIT_FRACTIONS[1]))
    parts = {"train": order[:n_train], "valid": order[n_train:n_train + n_valid], "test": order[n_train + n_valid:]}
    if any(len(p) == 0 for p in parts.values()):
        raise UserError(f"ListOps file {str(path)!r} has {n} row(s); the 80/10/10 split needs at least 10")
    return ListOpsSplits(tokens={s: [tokens[i] for i in idx] for s, idx in parts.items()},
                         labels={s: labels[idx] for s, idx in parts.items()}, sha256=digest)


def split_order(expressions: Sequence[str]) -> np.ndarray:
    """Row indices ordered by the SHA-256 of the salted expression (a portable, content-defined shuffle)."""
    keys = [hashlib.sha256((SPLIT_SALT + e).encode()).hexdigest() for e in expressions]
    return np.asarray(sorted(range(len(keys)), key=lambda i: (keys[i], i)), dtype=np.int64)


def encode(tokens: Sequence[str], keep_parens: bool = False) -> np.ndarray:
    """Token ids ``[T]`` (int64) of one expression; the parentheses are dropped unless ``keep_parens``."""
    return np.asarray([TOKEN_ID[t] for t in tokens if keep_parens or t not in ("(", ")")], dtype=np.int64)


def evaluate_expression(tokens: Sequence[str]) -> int:
    """The value of a ListOps expression (parentheses ignored): the label the data should carry.

    A stack of open operators, each with its arguments so far; ``]`` closes the innermost one and
    hands its value to the enclosing operator (or makes it the result).
    """
    stack: list[tuple[str, list[int]]] = []
    result: Optional[int] = None
    for tok in tokens:
        if tok in ("(", ")"):
            continue
        if tok in OPERATORS:
            stack.append((tok, []))
            continue
        if tok == "]":
            if not stack:
                raise ValueError("']' without an open operator")
            op, args = stack.pop()
            value = _apply(op, args)
        else:
            value = int(tok)
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if stack or result is None:
        raise ValueError("unbalanced expression")
    return result


def _apply(op: str, args: list[int]) -> int:
    if not args:
        raise ValueError(f"{op} without arguments")
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(np.median(args))  # the mean of the two middle values for an even count, truncated
    return sum(args) % 10  # [SM


# ---------------------------------------------------------------------------------------- batching
def bucket_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                   pool: int = 50) -> list[np.ndarray]:
    """One epoch of batches of indices, each batch of similar lengths (little padding), in random order.

    1. shuffle all indices; 2. cut them into pools of ``pool * batch_size``; 3. sort each pool by
    length and cut it into batches of ``batch_size``; 4. shuffle the batches. Every index appears once.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    batches = []
    size = pool * batch_size
    for start in range(0, len(order), size):
        chunk = order[start: start + size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def length_sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Deterministic evaluation batches: indices by increasing length, at most ``batch_size`` sequences
    and at most ``max_tokens`` padded tokens (batch size x longest length) per batch (one at least)."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for i in order:
        if current and (len(current) == batch_size or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(np.asarray(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.asarray(current))
    return batches


def pad_batch(sequences: Sequence[np.ndarray], max_len: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, T] right-padded with PAD_ID, lengths [B])``; ``T`` is the longest length (or ``max_len``)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # [B]
    T = int(lengths.max()) if max_len is None else max_len
    tokens = torch.full((len(sequences), T), PAD_ID, dtype=torch.long)  # [B, T]
    for b, seq in enumerate(sequences):
        tokens[b, : len(seq)] = torch.as_tensor(seq[:T], dtype=torch.long)
    return tokens, lengths.clamp(max=T)
