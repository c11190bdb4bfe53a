"""SCAN (Lake & Baroni 2018, "Generalization without Systematicity", arXiv:1711.00350): command -> actions.

Each line of a SCAN file reads ``IN: <command words> OUT: <action words>``; a pair is
``(command, actions)`` with single spaces between words. The official files come in splits that test
different kinds of generalisation; this module knows four of them (folder names as in the SCAN
repository ``brendenlake/SCAN``):

======================  ==============================================================================
split_name              files under ``<root>/scan/``
======================  ==============================================================================
``simple``              ``simple_split/tasks_{train,test}_simple.txt`` (random 80/20 split, i.i.d.)
``length``              ``length_split/tasks_{train,test}_length.txt`` (test actions are longer)
``add_jump``            ``add_prim_split/tasks_{train,test}_addprim_jump.txt`` ("jump" seen only alone)
``add_turn_left``       ``add_prim_split/tasks_{train,test}_addprim_turn_left.txt``
======================  ==============================================================================

SCAN has no validation file. ``split_scan_validation`` holds out a fixed 10% of the training file:

1. group the training lines by content. A pair that occurs more than once is an oversampled primitive
   (the add-primitive training files repeat ``jump -> I_JUMP`` 1,467 times so the model sees the new
   primitive often); such pairs always stay in training, or the held-out set could swallow the one
   example the split is about, and the validation set could not be disjoint from training.
2. rank the pairs that occur once by ``sha256(f"{seed}\\t{command}\\t{actions}")`` -- a key that does not
   depend on the Python or NumPy version or on the order of the file;
3. the first ``round(valid_fraction * n_lines)`` of them form the validation set, the rest stay in
   training; both keep the order of the file.

With the default seed 0 and fraction 0.1 the simple split gives 15,055 training and 1,673 validation
pairs, the length split 15,291 / 1,699, add_jump 13,203 / 1,467.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Union

from seqmix.errors import UserError

__all__ = [
    "SCAN_SPLITS",
    "SCAN_VALID_FRACTION",
    "SCAN_VALID_SEED",
    "parse_scan_line",
    "read_scan_file",
    "scan_paths",
    "split_scan_validation",
    "load_scan",
]

# split_name -> (folder, train file, test file), relative to <root>/scan
SCAN_SPLITS: dict[str, tuple[str, str, str]] = {
    "simple": ("simple_split", "tasks_train_simple.txt", "tasks_test_simple.txt"),
    "length": ("length_split", "tasks_train_length.txt", "tasks_test_length.txt"),
    "add_jump": ("add_prim_split", "tasks_train_addprim_jump.txt", "tasks_test_addprim_jump.txt"),
    "add_turn_left": ("add_prim_split", "tasks_train_addprim_turn_left.txt", "tasks_test_addprim_turn_left.txt"),
}
SCAN_VALID_FRACTION = 0.1
SCAN_VALID_SEED = 0

Pair = tuple[str, str]


def parse_scan_line(line: str, where: str = "SCAN line") -> Pair:
    """``"IN: jump twice OUT: I_JUMP I_JUMP"`` -> ``("jump twice", "I_JUMP I_JUMP")``, whitespace normalised."""
    words = line.split()
    if len(words) < 4 or words[0] != "IN:" or words.count("OUT:") != 1:
        raise UserError(f"{where}: expected 'IN: <command> OUT: <actions>', got {line.strip()[:80]!r}")
    cut = words.index("OUT:")
    command, actions = words[1:cut], words[cut + 1 :]
    if not command or not actions:
        raise UserError(f"{where}: the command and the actions must both be non-empty, got {line.strip()[:80]!r}")
    return " ".join(command), " ".join(actions)


def read_scan_file(path: Union[str, Path]) -> list[Pair]:
    """All pairs of one SCAN file, in file order (blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"SCAN file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read SCAN file {str(path)!r}: {exc.strerror or exc}") from None
    pairs = [
        parse_scan_line(line, where=f"{str(path)!r} line {number}")
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not pairs:
        raise UserError(f"SCAN file {str(path)!r} holds no 'IN: ... OUT: ...' lines")
    return pairs


def scan_paths(root: Union[str, Path], split_name: str) -> tuple[Path, Path]:
    """``(train file, test file)`` of ``split_name`` under ``<root>/scan``; a missing file is a ``UserError``."""
    if split_name not in SCAN_SPLITS:
        raise UserError(f"SCAN split_name {split_name!r} is unknown; choose one of {', '.join(SCAN_SPLITS)}")
    folder, train_name, test_name = SCAN_SPLITS[split_name]
    base = Path(root) / "scan" / folder
    paths = (base / train_name, base / test_name)
    for path in paths:
        if not path.is_file():
            raise UserError(
                f"SCAN file {str(path)!r} is missing; put the SCAN repository's {folder}/ folder under "
                f"<root>/scan/ and pass that root as --data.root (or set SEQMIX_DATA)"
            )
    return paths


def _rank_key(seed: int, pair: Pair) -> bytes:
    return hashlib.sha256(f"{seed}\t{pair[0]}\t{pair[1]}".encode("utf-8")).digest()


def split_scan_validation(
    pairs: list[Pair], valid_fraction: float = SCAN_VALID_FRACTION, seed: int = SCAN_VALID_SEED
) -> tuple[list[Pair], list[Pair]]:
    """``(train, valid)``: a fixed held-out ``valid_fraction`` of ``pairs`` (see the module docstring)."""
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)) or not 0 < valid_fraction < 1:
        raise UserError(f"valid_fraction must be a number strictly between 0 and 1, got {valid_fraction!r}")
    counts = Counter(pairs)
    singles = [i for i, pair in enumerate(pairs) if counts[pair] == 1]
    n_valid = round(valid_fraction * len(pairs))
    if n_valid < 1 or n_valid > len(singles) or len(pairs) - n_valid < 1:
        raise UserError(
            f"cannot hold out {valid_fraction:.0%} of {len(pairs)} SCAN pairs ({len(singles)} of them unique) "
            "as validation: both parts need at least one pair"
        )
    chosen = set(sorted(singles, key=lambda i: _rank_key(seed, pairs[i]))[:n_valid])
    train = [pair for i, pair in enumerate(pairs) if i not in chosen]
    valid = [pair for i, pair in enumerate(pairs) if i in chosen]
    return train, valid


def load_scan(
    root: Union[str, Path],
    split_name: str = "simple",
    valid_fraction: float = SCAN_VALID_FRACTION,
    seed: int = SCAN_VALID_SEED,
) -> dict[str, list[Pair]]:
    """``{"train", "valid", "test"}`` -> ``(command, actions)`` pairs of one SCAN split."""
    train_path, test_path = scan_paths(root, split_name)
    train, valid = split_scan_validation(read_scan_file(train_path), valid_fraction, seed)
    return {"train": train, "valid": valid, "test": read_scan_file(test_path)}
