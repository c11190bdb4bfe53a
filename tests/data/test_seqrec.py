"""Sequential-recommendation data: reader, leave-one-out split, fixed sampled negatives."""

from __future__ import annotations

import numpy as np
import pytest

from seqmix.data.seqrec import default_video_path, eval_split, read_interactions, sample_negatives
from seqmix.errors import UserError

# users interleave; item ids are not contiguous (10, 20, 30, 40, 50, 70) -> re-indexed 1..6 by id
HAND_MADE = """\
7 30
3 10
7 20
3 20
7 70
3 30
3 40
9 50
9 10
7 40
3 50
"""


@pytest.fixture
def hand_made(tmp_path):
    path = tmp_path / "inter.txt"
    path.write_text(HAND_MADE)
    return path


def test_reader_reindexes_and_splits_leave_one_out(hand_made):
    data = read_interactions(hand_made)
    assert data.n_items == 6
    assert data.item_ids.tolist() == [10, 20, 30, 40, 50, 70]  # item k + 1 has original id item_ids[k]
    assert data.users.tolist() == [3, 7, 9]
    # user 3: 10 20 30 40 50 -> items 1 2 3 4 5: train 1 2 3, valid 4, test 5
    assert data.train[0].tolist() == [1, 2, 3] and data.valid[0] == 4 and data.test[0] == 5
    # user 7: 30 20 70 40 (file order kept) -> 3 2 6 4: train 3 2, valid 6, test 4
    assert data.train[1].tolist() == [3, 2] and data.valid[1] == 6 and data.test[1] == 4
    # user 9 has two interactions: both train, never evaluated
    assert data.train[2].tolist() == [5, 1] and data.valid[2] == 0 and data.test[2] == 0
    assert data.evaluated().tolist() == [0, 1]
    # the test history is the training sequence extended by the validation item
    assert data.history(1, "valid").tolist() == [3, 2]
    assert data.history(1, "test").tolist() == [3, 2, 6]


def test_bad_files_name_themselves(tmp_path):
    with pytest.raises(UserError, match="does not exist.*data.path"):
        read_interactions(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n1 x\n")
    with pytest.raises(UserError, match=r"bad.txt:2: expected 'user item'"):
        read_interactions(bad)
    bad.write_text("1 2\n0 3\n")
    with pytest.raises(UserError, match=r"bad.txt:2"):
        read_interactions(bad)
    bad.write_text("\n")
    with pytest.raises(UserError, match="no 'user item' lines"):
        read_interactions(bad)


def _random_file(tmp_path, n_users=40, n_items=300, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"{u} {i}" for u in range(1, n_users + 1)
             for i in rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 30), replace=False)]
    path = tmp_path / "random.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_negatives_avoid_every_interaction_and_are_fixed(tmp_path):
    data = read_interactions(_random_file(tmp_path))
    a = eval_split(data, "test", n_negatives=100, seed=3)
    b = eval_split(data, "test", n_negatives=100, seed=3)
    assert np.array_equal(a.negatives, b.negatives)  # fixed across calls (runs, models)
    assert not np.array_equal(a.negatives, eval_split(data, "valid", 100, seed=3).negatives)
    assert not np.array_equal(a.negatives, eval_split(data, "test", 100, seed=4).negatives)
    for row, u in enumerate(a.users):
        seen = set(data.train[u]) | {data.valid[u], data.test[u]}
        negs = a.negatives[row].tolist()
        assert len(set(negs)) == 100, "negatives are distinct"
        assert not seen & set(negs), f"user {u}: a negative is in the user's interactions"
        assert all(1 <= i <= data.n_items for i in negs)
    # a user's negatives do not depend on the other users
    only = eval_split(data, "test", 100, seed=3, users=a.users[3:4])
    assert np.array_equal(only.negatives[0], a.negatives[3])
    assert a.targets.tolist() == data.test[a.users].tolist()


def test_negatives_need_enough_items():
    with pytest.raises(UserError, match="cannot draw 5 negatives"):
        sample_negatives(np.array([1, 2, 3]), n_items=6, n=5, seed=0, split="test", user_id=1)
    assert sorted(sample_negatives(np.array([1, 2, 3]), n_items=6, n=3, seed=0, split="test", user_id=1)) == [4, 5, 6]


@pytest.mark.skipif(not default_video_path().is_file(), reason="../shared/data/seqrec/sasrec_video/Video.txt is absent")
def test_real_video_file():
    data = read_interactions()  # the default path
    assert (data.n_users, data.n_items) == (31013, 23715)
    assert data.item_ids.tolist() == list(range(1, 23716))  # SASRec's ids are already 1..N: identity
    evaluated = data.evaluated()
    assert len(evaluated) == 31013 - 112  # 112 users have fewer than 3 interactions
    assert sum(len(s) for s in data.train) + 2 * len(evaluated) == 287107
