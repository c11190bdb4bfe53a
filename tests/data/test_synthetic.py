"""The synthetic-task contract, checked for every registered task: determinism, shapes, ids, loss, score, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from seqmix.data.synthetic import IGNORE, TASKS, EvalSetting, TaskBatch, build_task, list_tasks, task_params
from seqmix.errors import UserError

TOKEN_TASKS = [n for n, c in TASKS.items() if c.kind == "tokens"]
ALL = list(TASKS)


def same(a: TaskBatch, b: TaskBatch) -> bool:
    return all(torch.equal(x, y) for x, y in [(a.inputs, b.inputs), (a.targets, b.targets), (a.mask, b.mask)])


def test_registry_lists_the_ten_tasks():
    assert set(TASKS) == {"mqar", "selective_copy", "induction", "parity", "cycle_nav", "sum_mod", "mod_arith",
                          "set_disjoint", "icl_regression", "passkey"}
    assert [row["name"] for row in list_tasks()] == list(TASKS)
    assert all(row["source"] and row["summary"] for row in list_tasks())


@pytest.mark.parametrize("name", ALL)
def test_determinism(name):
    task = build_task(name)
    a = task.sample(8, 3)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    assert same(a, task.sample(8, 3))
    assert same(a, build_task(name).sample(8, 3))  # a fresh task object draws the same
    assert not same(a, task.sample(8, 4))
    assert not same(a, task.sample(8, 3, split="test"))
    # an override equal to the configured value is the same distribution, hence the same draw
    field = next(iter(task_params(name)))
    value = getattr(task.config, field)
    assert same(a, task.sample(8, 3, **{field: value}))


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_ids_and_lengths(name):
    task = build_task(name)
    settings = task.eval_settings()
    assert settings and all(isinstance(s, EvalSetting) for s in settings)
    assert len({s.name for s in settings}) == len(settings)
    draws = [(task.sample(16, s, split="train"), None) for s in range(3)]
    draws += [(task.sample(16, 0, split="test", **s.params), s) for s in settings]
    for batch, setting in draws:
        B, T = batch.mask.shape
        assert B == 16 and batch.mask.dtype == torch.bool and batch.info["seq_len"] == T
        assert batch.mask.any(dim=1).all()  # every sequence has a scored position
        cfg = task.resolve(**(setting.params if setting else {}))
        if setting is None:
            assert T <= task.train_length
        else:
            assert T <= task.seq_len(cfg) <= task.max_eval_length
            if setting.params.get("length", 0) is not None:  # not the drawn training range of state tracking
                assert T == task.seq_len(cfg)
            if "length" in setting.params and setting.params["length"] is not None:
                assert batch.info["length"] == setting.x == setting.params["length"]  # plotted = drawn length
        if task.kind == "tokens":
            assert batch.inputs.shape == (B, T) and batch.inputs.dtype == torch.long
            assert batch.targets.shape == (B, T) and batch.targets.dtype == torch.long
            assert torch.equal(batch.mask, batch.targets != IGNORE)
            assert 0 <= batch.inputs.min() and batch.inputs.max() < task.vocab_size
            scored = batch.targets[batch.mask]
            assert 0 <= scored.min() and scored.max() < task.vocab_size
        else:
            assert batch.inputs.shape == (B, T, task.d_in) and batch.inputs.dtype == torch.float32
            assert batch.targets.shape == (B, T, task.d_out) and batch.targets.dtype == torch.float32
    assert task.train_length == task.seq_len()


@pytest.mark.parametrize("name", TOKEN_TASKS)
def test_answer_ids_match_chance(name):
    """The targets take exactly n_answers distinct ids, so chance = 1 / n_answers is the uniform guess."""
    task = build_task(name)
    batch = task.sample(1024, 0)
    answers = batch.targets[batch.mask].unique()
    assert len(answers) == task.n_answers and task.chance == pytest.approx(1 / task.n_answers)


def perfect_output(task, batch: TaskBatch) -> torch.Tensor:
    if task.kind == "vectors":
        return batch.targets.clone()
    logits = torch.zeros(*batch.mask.shape, task.vocab_size)
    logits.scatter_(2, batch.targets.clamp(min=0)[..., None], 30.0)
    return logits


@pytest.mark.parametrize("name", ALL)
def test_perfect_output_scores_one_and_near_zero_loss(name):
    task = build_task(name)
    batch = task.sample(32, 0)
    out = perfect_output(task, batch)
    assert task.loss(out, batch).item() < 1e-6
    scores = task.score(out, batch)
    if task.kind == "tokens":
        assert scores["accuracy"] == 1.0 and scores["sequence_accuracy"] == 1.0
    else:
        assert scores["relative_mse"] == 0.0 and scores[task.primary_metric] == 0.0


@pytest.mark.parametrize("name", TOKEN_TASKS)
def test_uniform_logits_give_log_vocab_loss_and_a_guesser_gives_chance(name):
    task = build_task(name)
    batch = task.sample(512, 1)
    uniform = torch.zeros(*batch.mask.shape, task.vocab_size)
    assert task.loss(uniform, batch).item() == pytest.approx(math.log(task.vocab_size), rel=1e-4)
    # A guesser: random logits over the ids a target can take, -inf elsewhere.
    answers = batch.targets[batch.mask].unique()
    gen = torch.Generator().manual_seed(0)
    guess = torch.full_like(uniform, float("-inf"))
    guess[..., answers] = torch.rand(*batch.mask.shape, len(answers), generator=gen)
    acc = task.score(guess, batch)["accuracy"]
    n = batch.mask.sum().item()
    sigma = math.sqrt(task.chance * (1 - task.chance) / n)
    assert abs(acc - task.chance) < 5 * sigma + 1e-9, (acc, task.chance)


def test_vector_task_zero_predictor_is_chance():
    task = build_task("icl_regression")
    batch = task.sample(32, 0)
    zero = torch.zeros(*batch.mask.shape, 1)
    scores = task.score(zero, batch)
    assert scores["relative_mse"] == pytest.approx(1.0) == task.chance
    assert scores["zero_mse"] == pytest.approx(task.loss(zero, batch).item(), rel=1e-6)
    assert not task.higher_is_better and task.primary_metric == "relative_mse"


def test_sequence_accuracy_counts_whole_sequences():
    task = build_task("selective_copy", length=8, n_tokens=2, vocab_size=5)
    batch = task.sample(4, 0)
    logits = perfect_output(task, batch)
    t = batch.mask[0].nonzero()[0].item()  # sequence 0's first scored position gets a wrong argmax
    logits[0, t] = 0.0
    logits[0, t, (batch.targets[0, t] + 1) % task.vocab_size] = 30.0
    scores = task.score(logits, batch)
    assert scores["accuracy"] == pytest.approx(7 / 8) and scores["sequence_accuracy"] == pytest.approx(3 / 4)


@pytest.mark.parametrize("name", ALL)
def test_describe_is_plain_json_and_params_rebuild_the_task(name):
    task = build_task(name)
    info = json.loads(json.dumps(task.describe()))
    assert info["task"] == name and info["chance"] == task.chance and info["train_length"] == task.train_length
    defaults = task_params(name)
    assert set(defaults) == set(info["config"])
    assert same(build_task(name, **defaults).sample(4, 0), task.sample(4, 0))


def test_batch_moves_to_a_device():
    batch = build_task("passkey").sample(2, 0).to("meta")
    assert batch.inputs.device.type == "meta" and batch.info["depth"].device.type == "meta"


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown task 'parityy' \(did you mean 'parity'\?\); known tasks: mqar, "):
        build_task("parityy")
    with pytest.raises(UserError, match="known tasks: .*passkey"):
        task_params("nope")


def test_unknown_parameter_names_it_and_lists_the_parameters():
    with pytest.raises(UserError, match=r"task 'mqar' has no parameter 'n_keys'; its parameters are: n_pairs, length, "):
        build_task("mqar", n_keys=4)
    with pytest.raises(UserError, match=r"task 'parity' has no parameter 'lenght'"):
        build_task("parity").sample(2, 0, lenght=5)


@pytest.mark.parametrize("name, params, message", [
    ("mqar", {"n_pairs": 20}, r"mqar: n_pairs=20 needs length >= 4 \* n_pairs = 80 .* got length=64"),
    ("mqar", {"n_pairs": 8, "vocab_size": 10}, r"n_pairs=8 needs vocab_size >= 2 \* n_pairs = 16 .* got vocab_size=10"),
    ("mqar", {"eval_n_pairs": [4, 32]}, r"mqar: eval_n_pairs: n_pairs=32 needs length >= 4 \* n_pairs = 128"),
    ("mqar", {"power_a": 0}, r"mqar.power_a must be a number >= 1e-06 .*got 0"),
    ("selective_copy", {"n_tokens": 40}, r"length=64 cannot hold n_tokens=40: .* length >= 80"),
    ("selective_copy", {"vocab_size": 2}, r"selective_copy.vocab_size must be an int >= 3"),
    ("induction", {"length": 2}, r"induction.length must be an int >= 3"),
    ("induction", {"eval_lengths": []}, r"induction.eval_lengths must be a non-empty list of ints >= 3 or None"),
    ("parity", {"min_length": 10, "max_length": 5}, r"parity: max_length=5 must be >= min_length=10"),
    ("parity", {"score": "all"}, r"parity.score must be one of 'final', 'every', got 'all'"),
    ("parity", {"length": 0}, r"parity.length must be an int >= 1 or None, got 0"),
    ("cycle_nav", {"cycle_length": 1}, r"cycle_nav.cycle_length must be an int >= 2"),
    ("sum_mod", {"modulus": True}, r"sum_mod.modulus must be an int >= 2, got True"),
    ("mod_arith", {"modulus": 6}, r"mod_arith: modulus must be a prime .* got 6"),
    ("mod_arith", {"length": 10}, r"mod_arith: length must hold odd lengths .* got 10"),
    ("mod_arith", {"eval_lengths": [63, 64]}, r"eval_lengths must hold odd lengths .* got 64"),
    ("mod_arith", {"min_length": 4, "max_length": 4}, r"leaves no odd length"),
    ("set_disjoint", {"short_size": 30, "long_size": 40},
     r"short_size=30 and long_size=40 need short_size \+ long_size - 1 = 69 distinct elements, but vocab_size=64 .*>= 71"),
    ("set_disjoint", {"short_size": 8, "long_size": 4}, r"short_size=8 must be <= long_size=4"),
    ("set_disjoint", {"order": "random"}, r"order must be one of 'short_first', 'long_first', 'mixed', got 'random'"),
    ("icl_regression", {"noise_std": -1}, r"icl_regression.noise_std must be a number >= 0"),
    ("icl_regression", {"scored": "first"}, r"scored must be one of 'all', 'last'"),
    ("passkey", {"depth": 1.5}, r"passkey.depth must be a number in \[0, 1\] or None, got 1.5"),
    ("passkey", {"eval_lengths": [4]}, r"length=4 cannot hold n_digits=4: .* length >= 9"),
    ("passkey", {"vocab_size": 12}, r"passkey.vocab_size must be an int >= 13"),
    ("passkey", {"filler": "text"}, r"filler must be one of 'random', 'repeat'"),
])
def test_bad_parameters_name_the_field_and_what_is_allowed(name, params, message):
    with pytest.raises(UserError, match=message) as info:
        build_task(name, **params)
    assert "\n" not in str(info.value)


def test_bad_sample_arguments():
    task = build_task("mqar")
    with pytest.raises(UserError, match=r"split must be one of 'train', 'valid', 'test', got 'dev'"):
        task.sample(2, 0, split="dev")
    with pytest.raises(UserError, match="batch_size must be an int >= 1, got 0"):
        task.sample(0, 0)
    with pytest.raises(UserError, match="must be ints"):
        task.sample(2, 0.5)
    with pytest.raises(UserError, match=r"vocab_size sizes the model and cannot change per sample; build another task"):
        task.sample(2, 0, vocab_size=64)
    with pytest.raises(UserError, match=r"mqar: n_pairs=40 needs length >= 4 \* n_pairs = 160"):
        task.sample(2, 0, n_pairs=40)
    with pytest.raises(UserError, match=r"n_dims sizes the model"):
        build_task("icl_regression").sample(2, 0, n_dims=3)


def test_wrong_output_shape_is_named():
    task = build_task("parity")
    batch = task.sample(2, 0, length=5)
    with pytest.raises(UserError, match=r"task 'parity' expects logits of shape \[2, 6, 3\], got \[2, 6, 4\]"):
        task.loss(torch.zeros(2, 6, 4), batch)
    task = build_task("icl_regression")
    batch = task.sample(2, 0)
    with pytest.raises(UserError, match=r"expects predictions of shape \[2, 47, 1\]"):
        task.score(torch.zeros(2, 47, 9), batch)
