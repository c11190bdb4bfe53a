"""Sequential recommendation: ranking metrics, batches, the recommender's causality, training end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqmix import get_spec, list_mixers
from seqmix.data.seqrec import eval_split, read_interactions
from seqmix.errors import UserError
from seqmix.models.bidirectional import Bidirectional
from seqmix.models.recommender import Recommender, RecommenderConfig
from seqmix.tasks.ranking import full_rank, pessimistic_rank, rank_sums
from seqmix.tasks.seqrec import SeqRecDataConfig, SeqRecModelConfig, SeqRecTask, evaluate_split

N_ITEMS = 40


def cycle_file(tmp_path, n_users=60, n_items=N_ITEMS, seed=0):
    """Every user walks the catalogue in steps of +1 (mod N) from a random start: the next item is
    fully determined by the last one, so a next-item model can learn it from a handful of steps."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        start, length = rng.integers(1, n_items + 1), rng.integers(4, 14)
        lines += [f"{u} {(start + t - 1) % n_items + 1}" for t in range(length)]
    path = tmp_path / "cycle.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def model(objective="causal", pattern=("attention",), n_items=N_ITEMS, d_model=16, **kw):
    torch.manual_seed(0)
    opts = {name: dict(get_spec(name).test_options) for name in pattern}
    opts.update(kw.pop("mixer_options", {}))
    cfg = RecommenderConfig(n_items=n_items, d_model=d_model, n_layers=2, pattern=list(pattern), mixer_options=opts,
                            objective=objective, **kw)
    return Recommender(cfg).double().eval()


# ---------------------------------------------------------------------- metrics
def test_metrics_on_hand_checked_ranks():
    sums = rank_sums(torch.tensor([0]))
    assert sums["hr@1"] == sums["ndcg@1"] == sums["ndcg@10"] == sums["mrr"] == 1.0
    sums = rank_sums(torch.tensor([2]))  # ranked 3rd
    assert sums["hr@1"] == 0 and sums["hr@5"] == sums["hr@10"] == 1
    assert sums["ndcg@10"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert sums["mrr"] == pytest.approx(1 / 3)
    sums = rank_sums(torch.tensor([10]))  # 11th: outside the top 10
    assert sums["hr@10"] == sums["ndcg@10"] == 0 and sums["mrr"] == pytest.approx(1 / 11)
    both = rank_sums(torch.tensor([0, 2]))  # sums over users
    assert both["ndcg@10"] == pytest.approx(1.5)


def test_ties_are_pessimistic():
    target = torch.tensor([1.0, 1.0])
    others = torch.tensor([[1.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    assert pessimistic_rank(target, others).tolist() == [2, 0]  # equal scores rank above the target
    constant = torch.zeros(1, 8)  # a model scoring every item alike gets the worst rank, not the best
    assert full_rank(constant, torch.tensor([3])).tolist() == [7]
    nan = torch.tensor([[0.0, float("nan"), 1.0, 2.0]])  # a NaN target score ranks last
    assert full_rank(nan, torch.tensor([1])).tolist() == [3]
    assert full_rank(nan, torch.tensor([1]), exclude=torch.tensor([[0, -1]])).tolist() == [2]
    assert pessimistic_rank(torch.tensor([float("nan")]), torch.zeros(1, 5)).tolist() == [5]


def test_full_rank_excludes_history_but_never_the_target():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.8, 0.3]])  # items 1..5 in columns 0..4
    target = torch.tensor([2])  # score 0.5; columns 1 and 3 score higher
    assert full_rank(scores, target).tolist() == [2]
    assert full_rank(scores, target, exclude=torch.tensor([[1, -1]])).tolist() == [1]
    assert full_rank(scores, target, exclude=torch.tensor([[1, 3, 1, 2]])).tolist() == [0]  # repeats, target listed


def test_full_rank_equals_masking_the_scores():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 30), generator=gen).float()  # many ties
    targets = torch.randint(0, 30, (50,), generator=gen)
    exclude = torch.randint(-1, 30, (50, 7), generator=gen)
    masked = scores.clone()
    for u in range(50):
        for c in exclude[u].tolist():
            if c >= 0 and c != targets[u]:
                masked[u, c] = float("-inf")
    t = scores[torch.arange(50), targets]
    brute = torch.tensor([int((masked[u] >= t[u]).sum()) - 1 for u in range(50)])
    assert torch.equal(full_rank(scores, targets, exclude), brute)


# ---------------------------------------------------------------------- batches
def task(path, objective="causal", seed=0, **data):
    d = read_interactions(path)
    cfg = SeqRecDataConfig(path=str(path), **{"batch_size": 8, "eval_batch_size": 16, **data})
    return SeqRecTask(d, cfg, cloze=objective == "cloze", seed=seed), d


def test_causal_batch_targets_are_the_next_items(tmp_path):
    t, d = task(cycle_file(tmp_path), max_len=5)
    b = t.batch(3)
    for row in range(b.items.shape[0]):
        n = int(b.lengths[row])
        assert 1 <= n <= 5
        assert torch.all(b.items[row, n:] == 0) and torch.all(b.targets[row, n:] == 0)
        # the cycle: every target is its input + 1 (mod N)
        assert torch.equal(b.targets[row, :n], b.items[row, :n] % N_ITEMS + 1)
    assert torch.equal(t.batch(3).items, b.items)  # a pure function of the index


def test_cloze_masking_is_deterministic_for_a_seed(tmp_path):
    path = cycle_file(tmp_path)
    t, d = task(path, "cloze", mask_prob=0.3)
    a, b = t.batch(5), t.batch(5)
    assert torch.equal(a.items, b.items) and torch.equal(a.targets, b.targets)
    other, _ = task(path, "cloze", seed=1, mask_prob=0.3)
    assert not torch.equal(other.batch(5).items, a.items)
    mask_id = d.n_items + 1
    masked = a.items == mask_id
    assert torch.equal(masked, a.targets > 0)  # a target exactly where an item was masked
    assert bool(masked.any(1).all())  # at least one per sequence
    assert bool((a.targets[masked] >= 1).all() and (a.targets[masked] <= d.n_items).all())


def test_epoch_covers_every_training_user_once(tmp_path):
    t, d = task(cycle_file(tmp_path, n_users=37))
    seen = []
    for i in range(t.batches_per_epoch):
        t.batch(i)
        seen += t._epoch_cache[1][i].tolist()
    assert sorted(seen) == list(range(len(t.seqs)))


def test_bce_negatives_avoid_the_training_sequence(tmp_path):
    t, d = task(cycle_file(tmp_path), loss="bce")
    for i in range(4):
        b = t.batch(i)
        chosen = t._epoch_cache[1][i]
        for row, j in enumerate(chosen):
            history = set(d.train[t.train_users[j]].tolist())
            negs = b.negatives[row][b.targets[row] > 0].tolist()
            assert negs and not history & set(negs)


# ---------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", ["attention", "gru", "mamba"])
def test_causal_prediction_ignores_later_items_and_padding(name):
    m = model("causal", (name,))
    items = torch.randint(1, N_ITEMS + 1, (2, 9), generator=torch.Generator().manual_seed(1))
    z = m(items)
    later = items.clone()
    later[:, 5:] = later[:, 5:] % N_ITEMS + 1  # change every item after position 4
    z2 = m(later)
    torch.testing.assert_close(z2[:, :5], z[:, :5], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(z2[:, 5:], z[:, 5:])
    padded = items.clone()
    padded[0, 6:] = 0  # right padding: the real positions keep their outputs
    torch.testing.assert_close(m(padded, torch.tensor([6, 9]))[0, :6], z[0, :6], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [spec.name for spec in list_mixers()])
def test_every_mixer_in_both_objectives(name):
    for objective in ("causal", "cloze"):
        m = model(objective, (name,), d_model=16)
        items = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]])
        z = m(items, torch.tensor([6, 3]))
        assert z.shape == (2, 6, 16) and torch.isfinite(z).all()
        assert m.score(z[:, -1]).shape == (2, N_ITEMS)
        first = items.clone()
        first[0, 5] = 11  # the last item of row 0
        reaches_first = not torch.allclose(m(first, torch.tensor([6, 3]))[0, 0], z[0, 0])
        assert reaches_first == (objective == "cloze"), f"{name} {objective}"
        assert isinstance(m.blocks[0].mixer, Bidirectional) == (objective == "cloze")
        torch.testing.assert_close(m(items[1:, :3])[0], z[1, :3], rtol=1e-9, atol=1e-9)  # padding is invisible


def test_score_candidates_equal_full_scores():
    m = model()
    z = m(torch.tensor([[3, 4, 5]]))[:, -1]  # [1, D]
    full = m.score(z)  # [1, N]
    cand = torch.tensor([[7, 1, 40]])
    torch.testing.assert_close(m.score(z, cand), full[:, cand[0] - 1])


def test_non_causal_attention_refuses_padding():
    m = model("cloze", ("attention",), mixer_options={"attention": {"causal": False, "n_heads": 2}})
    assert not isinstance(m.blocks[0].mixer, Bidirectional)
    with pytest.raises(ValueError, match="would attend to the padding"):
        m(torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1]))
    with pytest.raises(UserError, match="must be causal"):
        model("causal", ("attention",), mixer_options={"attention": {"causal": False}})


def test_evaluation_with_non_causal_attention_groups_equal_lengths(tmp_path):
    t, d = task(cycle_file(tmp_path), "cloze")
    m = model("cloze", ("attention",), mixer_options={"attention": {"causal": False, "n_heads": 2}}).float()
    split = eval_split(d, "valid", n_negatives=10)
    out = evaluate_split(m, split, d, t.cfg, cloze=True, exact=True)
    assert out["users"] == len(d.evaluated())
    t_exact = SeqRecTask(d, t.cfg, cloze=True, seed=0, exact_lengths=True)
    for i in range(t_exact.batches_per_epoch):
        b = t_exact.batch(i)
        assert bool((b.lengths == b.items.shape[1]).all())  # no padding in any batch


def test_evaluation_is_independent_of_batching(tmp_path):
    t, d = task(cycle_file(tmp_path))
    m = model("causal", ("gru",)).float()
    split = eval_split(d, "test", n_negatives=10)
    a = evaluate_split(m, split, d, SeqRecDataConfig(eval_batch_size=7), cloze=False)
    b = evaluate_split(m, split, d, SeqRecDataConfig(eval_batch_size=100), cloze=False)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5), key


# ---------------------------------------------------------------------- configs
def test_bad_configs_name_the_field():
    with pytest.raises(UserError, match=r"data.loss must be one of 'bce', 'ce', got 'hinge'"):
        SeqRecDataConfig(loss="hinge")
    with pytest.raises(UserError, match=r"data.mask_prob"):
        SeqRecDataConfig(mask_prob=0)
    with pytest.raises(UserError, match=r"data.max_len must be at least 2"):
        SeqRecDataConfig(max_len=1)
    with pytest.raises(UserError, match=r"data.batch_size must be a positive int"):
        SeqRecDataConfig(batch_size=0)
    with pytest.raises(UserError, match=r"objective must be one of 'causal', 'cloze'"):
        SeqRecModelConfig(objective="mlm")
    with pytest.raises(UserError, match=r"model.d_model"):
        SeqRecModelConfig(d_model=-1)
    with pytest.raises(UserError, match=r"model.n_items is 5 but the data has 40"):
        SeqRecModelConfig(n_items=5).resolve(40)


# ---------------------------------------------------------------------- end to end
@pytest.mark.parametrize("objective,loss", [("causal", "ce"), ("causal", "bce"), ("cloze", "ce")])
def test_training_learns_the_cycle(tmp_path, objective, loss):
    from seqmix.train import OptimConfig, TrainConfig, TrainerConfig
    from seqmix.train.run import evaluate_checkpoint, train

    path = cycle_file(tmp_path)
    steps = {("causal", "ce"): 60, ("causal", "bce"): 120, ("cloze", "ce"): 150}[objective, loss]
    config = TrainConfig(
        task="seqrec",
        model={"d_model": 32, "n_layers": 1, "pattern": ["gru"], "objective": objective, "dropout": 0.0},
        data={"path": str(path), "batch_size": 16, "n_negatives": 20, "loss": loss, "mask_prob": 0.5},
        optim=OptimConfig(lr=1e-2, warmup_steps=5, weight_decay=0.0),
        trainer=TrainerConfig(out_dir=str(tmp_path / "run"), max_steps=steps, eval_interval=0, checkpoint_interval=0,
                              log_interval=10, progress=False, tensorboard=False, threads=1),
    )
    d = read_interactions(path)
    before = evaluate_split(Recommender(config.model.resolve(d.n_items)).eval(), eval_split(d, "valid", 20), d,
                            config.data, cloze=objective == "cloze")
    result = train(config, handle_sigint=False)
    after = result.final_eval
    assert before["full_hr@1"] < 0.2
    assert after["full_hr@1"] > 0.8, after  # the next item of a +1 walk
    assert after["sampled_ndcg@10"] > before["sampled_ndcg@10"]
    test = evaluate_checkpoint(tmp_path / "run", split="test", device="cpu")
    assert test["full_hr@1"] > 0.8 and test["users"] == len(d.evaluated()) and test["same_data_as_training"]


def test_recipes_build_and_state_their_results():
    import pathlib

    import yaml

    from seqmix.train import TrainConfig

    recipes = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs" / "seqrec").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"sasrec_video_attention", "sasrec_video_gru", "bert4rec_video_attention",
                                          "bert4rec_video_gru"}
    for path in recipes:
        text = path.read_text()
        config = TrainConfig(**yaml.safe_load(text))
        assert config.task == "seqrec" and config.data.path is None, path.name  # no machine path in a recipe
        assert ("sasrec" in path.stem) == (config.model.objective == "causal"), path.name
        assert "# Measured" in text and f"seqmix train --config configs/seqrec/{path.name}" in text, path.name
