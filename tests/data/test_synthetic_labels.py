"""Label correctness of every synthetic task: each target recomputed in plain Python from the inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqmix.data.synthetic import IGNORE, build_task, evaluate_mod_arith, least_squares_predictions
from seqmix.data.synthetic.passkey import FIRST_FILLER, KEY_MARK, QUERY_MARK
from seqmix.data.synthetic.sampling import weighted_distinct


def rows(batch):
    return [(x.tolist(), y.tolist()) for x, y in zip(batch.inputs, batch.targets)]


# -- mqar -----------------------------------------------------------------------------------------


def test_mqar_targets_are_the_values_of_the_queried_keys():
    task = build_task("mqar", n_pairs=3, length=20, vocab_size=16)
    for x, y in rows(task.sample(64, 0)):
        pairs = dict(zip(x[0:6:2], x[1:6:2]))
        assert len(pairs) == 3 and all(k < 8 for k in pairs) and all(v >= 8 for v in pairs.values())
        assert len(set(pairs.values())) == 3
        scored = [t for t, v in enumerate(y) if v != IGNORE]
        assert sorted(x[t] for t in scored) == sorted(pairs)  # every key is queried exactly once
        assert sum(x.count(key) for key in pairs) == 6  # and appears nowhere else (noise avoids the keys)
        assert all(t >= 6 and (t - 6) % 2 == 0 for t in scored)  # queries sit at even offsets of the query region
        assert all(y[t] == pairs[x[t]] for t in scored)


def test_mqar_noise_covers_every_id_but_the_keys():
    batch = build_task("mqar", n_pairs=3, length=400, vocab_size=16).sample(8, 0)
    for (x, y), queried in zip(rows(batch), batch.info["query_positions"].tolist()):
        noise = {v for t, v in enumerate(x) if t >= 6 and t not in queried}
        assert noise == set(range(16)) - set(x[0:6:2])


def test_mqar_hand_example_layout():
    batch = build_task("mqar", n_pairs=2, length=16, vocab_size=12).sample(1, 0)
    x, y = batch.inputs[0].tolist(), batch.targets[0].tolist()
    k1, v1, k2, v2 = x[:4]
    assert y[:4] == [IGNORE] * 4
    assert {(x[t], y[t]) for t in range(16) if y[t] != IGNORE} == {(k1, v1), (k2, v2)}


def test_mqar_power_law_crowds_queries_near_the_pairs_and_power_one_is_uniform():
    K, T = 2, 84  # 40 query slots
    gaps = {}
    for a in (0.01, 1.0):
        batch = build_task("mqar", n_pairs=K, length=T, vocab_size=64, power_a=a).sample(2000, 0)
        gaps[a] = (batch.info["query_positions"].float() - 2 * K) / 2
    assert gaps[1.0].mean().item() == pytest.approx(19.5, abs=0.6)  # uniform over slots 0..39
    assert gaps[0.01].mean().item() < 12  # p(g) ∝ g^-0.99 favours the first slots
    assert (gaps[0.01] == 0).float().mean() > 3 * (gaps[1.0] == 0).float().mean()


def test_weighted_distinct_first_draw_follows_the_weights_and_never_repeats():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    draw = weighted_distinct(20000, 3, weights, torch.Generator().manual_seed(0))
    freq = torch.bincount(draw[:, 0], minlength=4).double() / 20000
    assert torch.allclose(freq, weights.double() / 10, atol=0.015)
    assert all(len(set(r)) == 3 for r in draw.tolist())


# -- selective copy -------------------------------------------------------------------------------


def test_selective_copy_targets_are_the_data_tokens_in_order():
    task = build_task("selective_copy", length=20, n_tokens=4, vocab_size=8)
    for x, y in rows(task.sample(64, 0)):
        region, markers = x[:16], x[16:]
        data = [v for v in region if v != 0]
        assert len(data) == 4 and all(1 <= v <= 6 for v in data)
        assert markers == [7] * 4
        assert y[:16] == [IGNORE] * 16 and y[16:] == data


# -- induction ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 16, 128])
def test_induction_target_follows_the_first_trigger(length):
    task = build_task("induction", length=length, vocab_size=6)
    for x, y in rows(task.sample(64, 0)):
        triggers = [t for t, v in enumerate(x) if v == 5]
        assert len(triggers) == 2 and triggers[1] == length - 1
        assert y[:-1] == [IGNORE] * (length - 1) and y[-1] == x[triggers[0] + 1] != 5


def test_induction_tests_at_one_to_eight_times_the_training_length():
    task = build_task("induction", length=32)
    assert [(s.name, s.params, s.x) for s in task.eval_settings()] == [
        (f"L={n}", {"length": n}, float(n)) for n in (32, 64, 128, 256)]
    assert task.train_length == 32 and task.max_eval_length == 256
    assert task.sample(2, 0, split="test", length=256).inputs.shape == (2, 256)


# -- state tracking -------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["final", "every"])
def test_parity_is_the_parity_of_the_bits(score):
    task = build_task("parity", score=score)
    for seed in range(3):
        for x, y in rows(task.sample(32, seed)):
            bits = x[:-1]
            assert x[-1] == 2 and set(bits) <= {0, 1} and y[-1] == sum(bits) % 2
            if score == "every":
                assert y[:-1] == [sum(bits[: i + 1]) % 2 for i in range(len(bits))]
            else:
                assert y[:-1] == [IGNORE] * len(bits)


def test_parity_training_lengths_cover_3_to_40_one_per_batch_and_test_lengths_are_longer():
    task = build_task("parity")
    lengths = [task.sample(2, seed).info["length"] for seed in range(400)]
    assert min(lengths) == 3 and max(lengths) == 40 and len(set(lengths)) == 38
    settings = task.eval_settings()
    assert [s.name for s in settings] == ["L=3-40", "L=64", "L=128", "L=256"]
    for s in settings[1:]:
        batch = task.sample(4, 0, split="test", **s.params)
        assert batch.inputs.shape == (4, s.x + 1) and batch.info["length"] == s.x
    assert task.train_length == 41 and task.max_eval_length == 257


def test_cycle_nav_hand_examples_and_walks():
    task = build_task("cycle_nav")
    cfg = task.config
    # Deletang et al.'s examples: moves 1 -1 0 -1 -1 -> -2 = position 3; 1 1 1 -1 -> 2 (ids are move + 1).
    moves = torch.tensor([[2, 0, 1, 0, 0], [2, 2, 2, 0, 1]])
    assert (task._answers(cfg, moves)[:, -1] - 4).tolist() == [3, 2]
    for x, y in rows(task.sample(32, 0, score="every")):
        pos, walk = 0, []
        for a in x[:-1]:
            pos = (pos + a - 1) % 5
            walk.append(4 + pos)
        assert x[-1] == 3 and y == walk + [walk[-1]]


@pytest.mark.parametrize("modulus", [5, 7])
def test_sum_mod_is_the_running_sum(modulus):
    task = build_task("sum_mod", modulus=modulus, score="every")
    assert task.vocab_size == modulus + 1
    for x, y in rows(task.sample(32, 0)):
        digits = x[:-1]
        assert x[-1] == modulus and y == [sum(digits[: i + 1]) % modulus for i in range(len(digits))] + [sum(digits) % modulus]
    final = task.sample(8, 0, score="final")
    assert (final.mask.sum(1) == 1).all()


def encode(expression: str, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = expression.split()
    numbers = torch.tensor([[int(v) for v in parts[0::2]]])
    ops = torch.tensor([["+-*".index(o) for o in parts[1::2]]])
    return numbers, ops


@pytest.mark.parametrize("expression, value", [
    ("1 + 2 * 3", 2),  # Deletang et al.'s examples (mod 5): * before +, so not (1 + 2) * 3 = 4
    ("1 - 1 - 1", 4),  # left to right: (1 - 1) - 1 = -1
    ("0 * 1 + 4 * 3 - 2", 0),
    ("4 - 2 * 3", 3),  # 4 - 6 = -2; the minus applies to the whole product
    ("3 * 4 * 2 - 0 * 4 + 1", 0),  # 24 - 0 + 1 = 25
    ("2", 2),
    ("0 * 0 - 4", 1),
])
def test_mod_arith_hand_examples(expression, value):
    numbers, ops = encode(expression, 5)
    assert evaluate_mod_arith(numbers, ops, 5).item() == value == eval(expression) % 5


@pytest.mark.parametrize("modulus", [5, 7, 2])
def test_mod_arith_agrees_with_python_precedence(modulus):
    task = build_task("mod_arith", modulus=modulus)
    ops = "+-*"
    for seed in range(3):
        batch = task.sample(64, seed)
        assert batch.info["length"] % 2 == 1
        for x, y in rows(batch):
            text = " ".join(str(v) if i % 2 == 0 else ops[v - modulus] for i, v in enumerate(x[:-1]))
            assert x[-1] == modulus + 3 and y[-1] == eval(text) % modulus, text


def test_mod_arith_draws_only_odd_lengths():
    task = build_task("mod_arith", min_length=4, max_length=10)
    assert {task.sample(1, s).info["length"] for s in range(100)} == {5, 7, 9}
    assert task.train_length == 10  # 9 expression tokens and "="


# -- set disjointness -----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["short_first", "long_first", "mixed"])
def test_set_disjoint_target_is_the_shared_element(order):
    task = build_task("set_disjoint", short_size=3, long_size=7, vocab_size=14, order=order)
    batch = task.sample(200, 0)
    for (x, y), short_first in zip(rows(batch), batch.info["short_first"].tolist()):
        assert x[-1] == 13 and x.count(12) == 1
        first, second = x[: x.index(12)], x[x.index(12) + 1: -1]
        short, long = (first, second) if short_first else (second, first)
        assert len(short) == 3 == len(set(short)) and len(long) == 7 == len(set(long))
        assert set(short) & set(long) == {y[-1]} and y[:-1] == [IGNORE] * 11
    share = batch.info["short_first"].float().mean().item()
    assert share == {"short_first": 1.0, "long_first": 0.0}.get(order, pytest.approx(0.5, abs=0.12))


def test_set_disjoint_eval_settings_are_one_per_order():
    settings = build_task("set_disjoint").eval_settings()
    assert [(s.name, s.params, s.x) for s in settings] == [
        (o, {"order": o}, None) for o in ("short_first", "long_first", "mixed")]


# -- in-context regression ------------------------------------------------------------------------


def test_icl_regression_layout_and_targets():
    task = build_task("icl_regression", n_dims=3, n_points=5)
    batch = task.sample(4, 0)
    assert batch.inputs.shape == (4, 9, 4) and task.d_in == 4 and task.d_out == 1
    x, w = batch.inputs[:, 0::2, :3], batch.info["w"]  # [B, 5, 3], [B, 3]
    y = (x @ w[:, :, None])[..., 0]  # [B, 5]
    assert torch.allclose(batch.targets[:, 0::2, 0], y, atol=1e-6)
    assert torch.allclose(batch.inputs[:, 1::2, 3], y[:, :-1], atol=1e-6)
    assert (batch.inputs[:, 0::2, 3] == 0).all() and (batch.inputs[:, 1::2, :3] == 0).all()
    assert (batch.targets[:, 1::2] == 0).all() and batch.mask[:, 0::2].all() and not batch.mask[:, 1::2].any()
    last = task.sample(4, 0, scored="last")
    assert last.mask.sum().item() == 4 and last.mask[:, -1].all()


def test_least_squares_baseline_matches_numpy_on_each_prefix():
    task = build_task("icl_regression", n_dims=3, n_points=7, noise_std=0.5)
    batch = task.sample(3, 1)
    pred = least_squares_predictions(batch.inputs, batch.mask)
    inputs = batch.inputs.double().numpy()
    for b in range(3):
        for i in range(7):
            xs, ys = inputs[b, 0:2 * i:2, :3], inputs[b, 1:2 * i:2, 3]
            w = np.linalg.lstsq(xs, ys, rcond=None)[0] if i else np.zeros(3)  # min-norm below 3 examples
            assert pred[b, 2 * i].item() == pytest.approx(float(inputs[b, 2 * i, :3] @ w), abs=1e-8)
    assert (pred[:, 1::2] == 0).all()


def test_least_squares_is_exact_once_there_are_d_noiseless_examples():
    task = build_task("icl_regression", n_dims=4, n_points=10)
    batch = task.sample(8, 0)
    pred = least_squares_predictions(batch.inputs, batch.mask)
    y = batch.targets[..., 0].double()
    err = (pred - y) ** 2  # [B, T]
    assert err[:, 0].equal(y[:, 0] ** 2)  # no examples: predicts 0
    assert err[:, 2 * 4::2].max() < 1e-8  # 4 or more examples determine w
    assert err[:, 2 * 3].min() > 1e-6  # 3 examples do not
    scores = task.score(torch.zeros(8, 19, 1), batch)
    assert scores["least_squares_relative_mse"] < 0.5 and scores["relative_mse"] == pytest.approx(1.0)


def test_icl_eval_settings_count_in_context_examples():
    task = build_task("icl_regression", n_dims=8, n_points=24)
    assert [s.x for s in task.eval_settings()] == [4, 8, 16, 23, 47]
    setting = task.eval_settings()[1]
    batch = task.sample(2, 0, split="test", **setting.params)
    assert batch.inputs.shape == (2, 17, 9) and batch.mask.sum().item() == 2  # 8 examples then the query
    assert task.max_eval_length == 95


# -- passkey --------------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", ["random", "repeat"])
def test_passkey_key_is_where_the_depth_says_and_the_targets_are_its_digits(filler):
    T, k = 40, 3
    n_filler = T - 2 * k - 1
    task = build_task("passkey", length=T, n_digits=k, filler=filler)
    for depth in (0.0, 0.3, 1.0):
        for x, y in rows(task.sample(16, 0, depth=depth)):
            start = x.index(KEY_MARK)
            assert start == round(depth * n_filler) and x.count(KEY_MARK) == 1
            digits = x[start + 1: start + 1 + k]
            q = T - k
            assert x[q] == QUERY_MARK and x[q + 1:] == digits[:-1] and y[q:] == digits
            assert y[:q] == [IGNORE] * q
            filler_tokens = x[:start] + x[start + k + 1: q]
            assert len(filler_tokens) == n_filler and all(v >= FIRST_FILLER for v in filler_tokens)
            if filler == "repeat":  # a fixed cycle through the filler ids that runs on across the key
                assert filler_tokens == [FIRST_FILLER + i % 20 for i in range(n_filler)]


def test_passkey_depth_is_uniform_in_training_and_settings_cover_lengths_and_depths():
    task = build_task("passkey")
    depth = task.sample(2000, 0).info["depth"]
    assert 0 <= depth.min() and depth.max() <= 1 and depth.mean().item() == pytest.approx(0.5, abs=0.03)
    settings = task.eval_settings()
    assert len(settings) == 15 and settings[4].name == "L=128,depth=0.50"
    assert settings[4].params == {"length": 128, "depth": 0.5} and settings[4].x == 128
    assert task.max_eval_length == 1024
