"""Task kind ``classify``: model config, the dense option, batching, whole-split evaluation, and a tiny
ListOps-style run through ``seqmix train`` / ``seqmix eval`` that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix import get_spec, list_mixers
from seqmix.cli import main
from seqmix.data.listops import evaluate_expression, pad_batch
from seqmix.errors import UserError
from seqmix.models import ClassifierConfig, SequenceClassifier
from seqmix.tasks.classify import ClassifyDataConfig, ClassifyModelConfig, ClassifyTask, evaluate_split


def tiny(pattern=("lstm",), **overrides) -> SequenceClassifier:
    torch.manual_seed(0)
    opts = {name: dict(get_spec(name).test_options) for name in pattern}
    cfg = dict(vocab_size=18, d_model=16, n_layers=3, pattern=list(pattern), mixer_options=opts, n_classes=10)
    return SequenceClassifier(ClassifierConfig(**{**cfg, **overrides})).double().eval()


def fake_data(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, 18, size=rng.integers(1, 40)) for _ in range(n)]
    return seqs, rng.integers(0, 10, size=n)


def test_model_sizes_come_from_the_data():
    cfg = ClassifyModelConfig(d_model=16, n_layers=1, pattern=["gru"])
    assert cfg.vocab_size == 0 and cfg.n_classes == 0
    resolved = cfg.resolve(18, 10)
    assert (resolved.vocab_size, resolved.n_classes, resolved.pattern) == (18, 10, ["gru"])
    with pytest.raises(UserError, match="model.vocab_size is 5 but the data has 18"):
        ClassifyModelConfig(vocab_size=5).resolve(18, 10)
    with pytest.raises(UserError, match="^model.pooling must be one of"):
        ClassifyModelConfig(pooling="max")
    with pytest.raises(UserError, match="dense must be True or False"):
        ClassifyModelConfig(dense="yes")


def test_dense_layer_input_widths_and_wiring():
    """Layer l reads W_l [e; h_1; ...; h_{l-1}]: widths D, 2D, 3D, ... and exactly that input."""
    model = tiny(("lstm",), dense=True, n_layers=4)
    D = 16
    assert [p.in_features for p in model.dense] == [2 * D, 3 * D, 4 * D]
    assert all(p.out_features == D for p in model.dense)
    seen_in, seen_out = [], []

    def record(module, args, out):  # returns None: the output is kept
        seen_in.append(args[0])
        seen_out.append(out[0])

    hooks = [b.register_forward_hook(record) for b in model.blocks]
    tokens = torch.randint(1, 18, (2, 7))
    model(tokens)
    for h in hooks:
        h.remove()
    features = [model.embed(tokens)]
    for i in range(4):
        expected = features[0] if i == 0 else model.dense[i - 1](torch.cat(features, dim=-1))
        torch.testing.assert_close(seen_in[i], expected, rtol=1e-12, atol=1e-12)
        features.append(seen_out[i])
    assert tiny(("lstm",)).dense is None  # off by default


@pytest.mark.parametrize("name", [spec.name for spec in list_mixers()])
def test_dense_classifier_works_with_every_mixer_and_padding_is_exact(name):
    model = tiny((name,), dense=True, n_layers=2, pooling="mean")
    tokens = torch.randint(1, 18, (2, 9), generator=torch.Generator().manual_seed(1))
    logits = model(tokens, torch.tensor([5, 9]))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0], model(tokens[:1, :5])[0], rtol=1e-9, atol=1e-9)


def test_training_batches_are_pure_bucketed_and_cover_an_epoch():
    seqs, labels = fake_data(100)
    cfg = ClassifyDataConfig(batch_size=8)
    a = ClassifyTask((seqs, labels), (seqs, labels), cfg, seed=3)
    b = ClassifyTask((seqs, labels), (seqs, labels), cfg, seed=3)
    assert a.batches_per_epoch == 13
    seen = []
    for i in (5, 0, 12, 5):  # any order gives the same batch
        x, y = a.batch(i), b.batch(i)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.labels, y.labels)
    for i in range(13):
        batch = a.batch(i)
        assert torch.equal(batch.lengths, (batch.tokens != 0).sum(1))  # right padding, true lengths
        seen.extend(map(tuple, [t[:n].tolist() for t, n in zip(batch.tokens, batch.lengths)]))
    assert sorted(seen) == sorted(tuple(s.tolist()) for s in seqs)  # one epoch: every example once
    first, again = a.batch(0).tokens, a.batch(13).tokens  # batch 0 of epochs 0 and 1
    assert not (first.shape == again.shape and torch.equal(first, again))  # a new epoch, a new order
    r0 = ClassifyTask((seqs, labels), (seqs, labels), cfg, seed=3, rank=0, world_size=2)
    r1 = ClassifyTask((seqs, labels), (seqs, labels), cfg, seed=3, rank=1, world_size=2)
    assert r0.batches_per_epoch == 6
    ids0 = {tuple(t.tolist()) for t in r0.batch(2).tokens}
    ids1 = {tuple(t.tolist()) for t in r1.batch(2).tokens}
    assert not ids0 & ids1  # the processes read different examples


def test_max_len_skips_long_training_examples_only():
    seqs, labels = fake_data(60)
    task = ClassifyTask((seqs, labels), (seqs, labels), ClassifyDataConfig(max_len=20), seed=0)
    assert task.skipped == sum(len(s) > 20 for s in seqs) > 0
    assert max(len(s) for s in task.train_seqs) <= 20 and len(task.valid_seqs) == 60
    with pytest.raises(UserError, match="data.max_len"):
        ClassifyDataConfig(max_len=0)


def test_whole_split_evaluation_equals_one_example_at_a_time():
    seqs, labels = fake_data(37, seed=4)
    model = tiny(("gru",), bidirectional=True, n_layers=2)
    cfg = ClassifyDataConfig(eval_batch_size=8, eval_max_tokens=100)
    m = evaluate_split(model, seqs, labels, cfg, torch.device("cpu"), majority=int(np.bincount(labels).argmax()))
    with torch.no_grad():
        logits = torch.cat([model(pad_batch([s])[0]) for s in seqs])  # [37, 10]
    target = torch.as_tensor(labels)
    assert m["examples"] == 37
    assert m["accuracy"] == pytest.approx(float((logits.argmax(-1) == target).double().mean()))
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)), rel=1e-6)  # float32 CE
    assert m["majority_accuracy"] == pytest.approx(float(np.mean(labels == np.bincount(labels).argmax())))


# ---------------------------------------------------------------------------------------- end to end
def lookalike_file(path: Path, n: int = 600) -> Path:
    """Flat ListOps rows ('( ( ( [MAX a ) b ) c ) ] )', MAX or MIN of 2-3 digits): learnable in seconds."""
    rng = np.random.default_rng(0)
    rows = {}
    while len(rows) < n:
        op = ("[MAX", "[MIN")[rng.integers(0, 2)]
        text = op
        for _ in range(rng.integers(2, 4)):
            text = f"( {text} {rng.integers(0, 10)} )"
        text = f"( {text} ] )"
        rows[text] = evaluate_expression(text.split())
    path.write_text("".join(f"{v}\t{e}\n" for e, v in rows.items()))
    return path


def test_train_then_eval_through_the_cli_learns(tmp_path, capsys):
    data = lookalike_file(tmp_path / "listops.tsv")
    out = tmp_path / "run"
    recipe = {
        "task": "classify",
        "model": {"d_model": 32, "n_layers": 1, "pattern": ["lstm"], "mlp": "none", "pooling": "last"},
        "data": {"path": str(data), "batch_size": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 5, "weight_decay": 0.0},
        "trainer": {"out_dir": str(out), "max_steps": 120, "eval_interval": 0, "checkpoint_interval": 0, "threads": 1,
                    "progress": False, "tensorboard": False, "seed": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    main(["train", "--config", str(path)])
    capsys.readouterr()
    main(["eval", "--checkpoint", str(out), "--split", "test", "--format", "json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 60 and metrics["split"] == "test"
    # chance is 0.1 and the majority class of MAX/MIN rows ~0.2; the trained LSTM does far better
    assert metrics["accuracy"] > max(0.5, metrics["majority_accuracy"] + 0.25), metrics
    main(["eval", "--checkpoint", str(out)])
    assert "accuracy" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy" in r for r in records)
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["examples"] == 120 * 32 and train[-1]["examples_per_s"] > 0  # counted in examples
    assert all("tokens" not in r for r in train)


def test_missing_data_file_names_itself(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"task": "classify", "data": {"path": str(tmp_path / "none.tsv")},
                                "trainer": {"out_dir": str(tmp_path / "r"), "progress": False}}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(path)])
    err = capsys.readouterr().err
    assert "none.tsv" in err and "does not exist" in err and "Traceback" not in err


def test_resume_across_an_epoch_boundary_equals_a_straight_run(tmp_path):
    """Batches are a pure function of the step: 12 steps straight == 5 + resume + 7 (epochs of 4 batches)."""
    from seqmix.train.config import TrainConfig
    from seqmix.train.run import train

    data = lookalike_file(tmp_path / "listops.tsv", n=50)  # 40 training rows, batch 10: 4 batches an epoch

    def config(out: str, steps: int) -> TrainConfig:
        return TrainConfig(task="classify", model={"d_model": 16, "n_layers": 1, "pattern": ["gru"], "dropout": 0.1},
                           data={"path": str(data), "batch_size": 10},
                           optim={"lr": 1e-2, "warmup_steps": 2, "schedule": "constant"},
                           trainer={"out_dir": str(tmp_path / out), "max_steps": steps, "eval_interval": 0,
                                    "checkpoint_interval": 0, "progress": False, "tensorboard": False})

    straight = train(config("a", 12))
    first = train(config("b", 5))
    second = train(config("b", 12), resume=True)
    assert first.losses + second.losses == straight.losses
