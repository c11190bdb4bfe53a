"""Sequential-recommendation data: a ``user item`` interaction file, leave-one-out splits, negatives.

The format is SASRec's (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation",
arXiv:1808.09781): one ``user item`` pair of integer ids per line, each user's lines in time order
(users may interleave). Items are re-indexed to ``1..N`` in the order of their original ids (the
identity for SASRec's files, whose ids already are ``1..N``); id 0 is padding and ``N + 1`` the
[mask] token of a cloze model. Users are kept in the order of their ids.

Leave-one-out split (SASRec; Sun et al. 2019, BERT4Rec, arXiv:1904.06690): for a user with
interactions ``i_1 .. i_n`` (n >= 3) the last item ``i_n`` is the test target, ``i_{n-1}`` the
validation target and ``i_1 .. i_{n-2}`` the training sequence. A user with fewer than 3 interactions
keeps them all for training and is never evaluated -- what SASRec's ``data_partition`` does.
Validation ranks the validation target after the training sequence; test ranks the test target after
the training sequence extended by the validation item.

Evaluation candidates (``EvalSplit``), fixed by the file and a seed, the same for every model:

* sampled: 100 negatives per user drawn uniformly, without replacement, from the items the user never
  interacted with (training, validation and test items all excluded), from a generator seeded by
  ``(seed, split, user id)``. SASRec's own evaluation draws them with replacement, excludes only the
  training items and scores 10,000 random users; popularity-sampled negatives give other numbers again
  (Krichene & Rendle 2020, "On Sampled Metrics for Item Recommendation").
* full: every item ``1..N`` except those in the user's history (the target itself is never excluded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from seqmix.data.paths import shared_data_root
from seqmix.errors import UserError

__all__ = ["DEFAULT_VIDEO", "Interactions", "EvalSplit", "read_interactions", "eval_split", "sample_negatives",
           "default_video_path"]

# Video.txt of SASRec's repository, staged beside the checkout (see ../shared/data/SOURCES.md);
# SEQMIX_DATA points at another copy of that data folder
DEFAULT_VIDEO = Path("seqrec") / "sasrec_video" / "Video.txt"
SPLITS = {"valid": 1, "test": 2}


def default_video_path() -> Path:
    """``$SEQMIX_DATA/seqrec/sasrec_video/Video.txt``, else ``../shared/data/...`` beside the checkout."""
    return (shared_data_root() / DEFAULT_VIDEO).resolve()


@dataclass
class Interactions:
    """Every user's leave-one-out split; items re-indexed to ``1..n_items``."""

    users: np.ndarray  # [U] original user ids, ascending
    train: list[np.ndarray]  # per user: the training sequence (int64), all items of a user with < 3
    valid: np.ndarray  # [U] validation target per user, 0 for a user with fewer than 3 interactions
    test: np.ndarray  # [U] test target per user, 0 likewise
    item_ids: np.ndarray  # [N] original id of item k + 1
    n_items: int  # N (ids 1..N; 0 is padding)
    sha256: str  # of the file, to tell whether a checkpoint was evaluated on the data it was trained on

    @property
    def n_users(self) -> int:
        return len(self.users)

    def evaluated(self) -> np.ndarray:
        """Indices of the users that have validation and test targets (>= 3 interactions)."""
        return np.flatnonzero(self.test > 0)

    def history(self, user: int, split: str) -> np.ndarray:
        """The items before ``split``'s target: the training sequence, plus the validation item for test."""
        if split == "valid":
            return self.train[user]
        return np.append(self.train[user], self.valid[user])

    def target(self, split: str) -> np.ndarray:
        return self.valid if split == "valid" else self.test


def read_interactions(path: Union[str, Path, None] = None) -> Interactions:
    """Read a ``user item`` file (one pair per line, time-ordered per user) and split it leave-one-out.

    ``path=None`` reads SASRec's Video.txt from the shared data folder. A missing file, a line that is
    not two positive integers, or an empty file is a ``UserError`` naming the file (and the line).
    """
    path = Path(default_video_path() if path is None else path).expanduser()
    if not path.is_file():
        raise UserError(f"interaction file {str(path)!r} does not exist; give data.path a 'user item' file "
                        f"(one pair of positive integer ids per line, in time order per user), e.g. SASRec's "
                        f"Video.txt, or put it at ../shared/data/{DEFAULT_VIDEO.as_posix()} beside the checkout "
                        f"(or under $SEQMIX_DATA)")
    blob = path.read_bytes()
    # 1. parse: two integer columns; the line number of the first bad line goes into the message
    pairs = _parse(blob, path)
    if len(pairs) == 0:
        raise UserError(f"interaction file {str(path)!r} holds no 'user item' lines")
    # 2. items to 1..N by ascending original id (a stable, file-determined map)
    item_ids, items = np.unique(pairs[:, 1], return_inverse=True)
    items = items.astype(np.int64) + 1  # [L]
    # 3. group by user, keeping each user's file order (a stable sort by user id)
    order = np.argsort(pairs[:, 0], kind="stable")
    user_col, items = pairs[order, 0], items[order]
    users, starts = np.unique(user_col, return_index=True)
    bounds = list(starts[1:]) + [len(items)]
    train, valid, test = [], np.zeros(len(users), np.int64), np.zeros(len(users), np.int64)
    for u, (a, b) in enumerate(zip(starts, bounds)):
        seq = items[a:b]
        if len(seq) < 3:  # too short to hold out two items: all of it trains, the user is not evaluated
            train.append(seq.copy())
        else:
            train.append(seq[:-2].copy())
            valid[u], test[u] = seq[-2], seq[-1]
    return Interactions(users=users, train=train, valid=valid, test=test, item_ids=item_ids,
                        n_items=len(item_ids), sha256=hashlib.sha256(blob).hexdigest())


def _parse(blob: bytes, path: Path) -> np.ndarray:
    rows = []
    for lineno, line in enumerate(blob.decode("utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.isdigit() for f in fields) or int(fields[0]) < 1 or int(fields[1]) < 1:
            raise UserError(f"{path}:{lineno}: expected 'user item' (two positive integer ids), got {line.strip()[:80]!r}")
        rows.append((int(fields[0]), int(fields[1])))
    return np.array(rows, dtype=np.int64).reshape(-1, 2)  # [L, 2]


def sample_negatives(exclude: np.ndarray, n_items: int, n: int, seed: int, split: str, user_id: int) -> np.ndarray:
    """``n`` distinct items of ``1..n_items`` outside ``exclude``, uniform, seeded by (seed, split, user_id)."""
    allowed = n_items - len(np.unique(exclude))
    if allowed < n:
        raise UserError(f"cannot draw {n} negatives for user {user_id}: only {allowed} of {n_items} items are not "
                        "in their history; lower data.n_negatives")
    rng = np.random.default_rng([seed, SPLITS[split], int(user_id)])
    picked: list[int] = []
    seen = set(int(i) for i in exclude)
    while len(picked) < n:  # rejection sampling: the history is tiny next to the catalogue
        for item in rng.integers(1, n_items + 1, size=2 * (n - len(picked)) + 8):
            item = int(item)
            if item not in seen:
                seen.add(item)
                picked.append(item)
                if len(picked) == n:
                    break
    return np.array(picked, dtype=np.int64)


@dataclass
class EvalSplit:
    """What one split evaluates: for every evaluated user its history, target and sampled negatives."""

    split: str  # "valid" or "test"
    users: np.ndarray  # [U'] indices into Interactions (users with >= 3 interactions)
    histories: list[np.ndarray]  # per user: the items before the target, oldest first
    targets: np.ndarray  # [U'] the held-out item
    negatives: np.ndarray  # [U', n_negatives] sampled negatives (see the module docstring)


def eval_split(data: Interactions, split: str, n_negatives: int = 100, seed: int = 0,
               users: Optional[np.ndarray] = None) -> EvalSplit:
    """The ``split`` ("valid" or "test") of ``data`` with its fixed sampled negatives."""
    if split not in SPLITS:
        raise UserError(f"split must be 'valid' or 'test', got {split!r}")
    idx = data.evaluated() if users is None else np.asarray(users, dtype=np.int64)
    targets = data.target(split)[idx]
    histories = [data.history(int(u), split) for u in idx]
    negatives = np.zeros((len(idx), n_negatives), dtype=np.int64)
    for row, u in enumerate(idx):
        # every item the user interacted with is excluded, the other held-out item as well
        seen = np.concatenate([data.train[u], [data.valid[u], data.test[u]]])
        negatives[row] = sample_negatives(seen, data.n_items, n_negatives, seed, split, int(data.users[u]))
    return EvalSplit(split=split, users=idx, histories=histories, targets=targets, negatives=negatives)
