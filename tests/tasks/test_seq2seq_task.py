"""Task kind ``seq2seq``: configs, deterministic batches, a toy reversal task learnt through the Trainer,
teacher-forced sequence accuracy == greedy exact match, and SCAN/Multi30k look-alikes run through
``seqmix train`` / ``seqmix eval`` (the real files when present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix.cli import main
from seqmix.data.seq2seq_data import build_pair_tokenizer, default_data_root, encode_pairs
from seqmix.errors import UserError
from seqmix.models.seq2seq import Seq2Seq
from seqmix.seq2seq_decoding import greedy_decode
from seqmix.tasks.seq2seq import (Seq2SeqDataConfig, Seq2SeqModelConfig, Seq2SeqTask, decode_split, summary,
                                  teacher_forced_metrics)
from seqmix.train import Trainer
from seqmix.train.config import OptimConfig, TrainerConfig


def reversal_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = [str(w) for w in rng.integers(0, 8, size=rng.integers(2, 7))]
        out.append((" ".join(words), " ".join(reversed(words))))
    return out


def bahdanau_config(tok) -> Seq2SeqModelConfig:
    """The RNN encoder-decoder with additive attention, tiny."""
    rnn = dict(d_model=32, n_layers=1, pattern=["lstm"], mlp="none")
    return Seq2SeqModelConfig(encoder=rnn, decoder=rnn, cross_attention="additive")


@pytest.fixture(scope="module")
def trained_reversal(tmp_path_factory):
    """An LSTM encoder-decoder with additive attention trained 200 steps to reverse digit strings (~3 s)."""
    torch.manual_seed(0)
    train, valid = reversal_pairs(2000, 0), reversal_pairs(200, 1)
    tok = build_pair_tokenizer("word", train)
    model = Seq2Seq(bahdanau_config(tok).resolve(tok.src_vocab_size, tok.tgt_vocab_size))
    task = Seq2SeqTask(encode_pairs(tok, train), encode_pairs(tok, valid), tok, Seq2SeqDataConfig(batch_size=32), seed=0)
    optim = OptimConfig(lr=1e-2, min_lr=1e-4, warmup_steps=20, weight_decay=0.0)
    cfg = TrainerConfig(max_steps=200, eval_interval=0, checkpoint_interval=0, progress=False, tensorboard=False,
                        out_dir=str(tmp_path_factory.mktemp("reversal")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads of small GEMMs on a busy machine: 25x slower here
    try:
        result = Trainer(model, task, optim, cfg, handle_sigint=False).fit()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tok, valid, result


def test_a_toy_reversal_task_is_learnt_in_seconds(trained_reversal):
    model, tok, valid, result = trained_reversal
    assert result.final_eval["sequence_accuracy"] > 0.85, result.final_eval
    assert result.final_eval["token_accuracy"] > 0.95
    decoded = decode_split(model, encode_pairs(tok, valid), tok, batch_size=64, max_len=12)
    hits = sum(tok.decode_tgt(ids) == tgt for ids, (_, tgt) in zip(decoded, valid))
    assert hits / len(valid) > 0.85


def test_sequence_accuracy_is_greedy_exact_match(trained_reversal):
    """Teacher-forced: every target token (EOS included) is the argmax <=> greedy decoding returns the target."""
    model, tok, valid, _ = trained_reversal
    ids = encode_pairs(tok, valid)
    metrics = teacher_forced_metrics(model, ids, tok, 64, torch.device("cpu"))
    decoded = decode_split(model, ids, tok, batch_size=64, max_len=12)
    greedy_hits = sum(d == t for d, (_, t) in zip(decoded, ids))
    assert 0 < greedy_hits < len(ids) or metrics["sequence_accuracy"] == 1.0
    assert metrics["sequence_accuracy"] == pytest.approx(greedy_hits / len(ids))
    assert metrics["examples"] == 200 and metrics["tokens"] == sum(len(t) + 1 for _, t in ids)


def test_decode_split_puts_predictions_back_in_order(trained_reversal):
    model, tok, valid, _ = trained_reversal
    ids = encode_pairs(tok, valid[:20])
    decoded = decode_split(model, ids, tok, batch_size=7, max_len=12)
    for (src, _), got in zip(ids, decoded):  # one sentence at a time, no batching or sorting
        single = greedy_decode(model, torch.tensor([src]), bos_id=tok.bos_id, eos_id=tok.eos_id, max_len=12,
                               banned_ids=[tok.pad_id, tok.bos_id])[0]
        assert single.tokens == got


def test_batches_are_a_pure_function_of_the_index():
    train = reversal_pairs(300, 0)
    tok = build_pair_tokenizer("word", train)
    ids = encode_pairs(tok, train)
    cfg = Seq2SeqDataConfig(batch_size=16)
    a, b = Seq2SeqTask(ids, ids[:10], tok, cfg, seed=3), Seq2SeqTask(ids, ids[:10], tok, cfg, seed=3)
    for i in (0, 5, 19, 40, 3):  # out of order, across epochs (19 batches per epoch)
        x, y = a.batch(i), b.batch(i)
        assert torch.equal(x.src, y.src) and torch.equal(x.tgt, y.tgt)
    epoch = [a.batch(i).indices for i in range(a.batches_per_epoch)]
    assert sorted(torch.cat(epoch).tolist()) == list(range(300))  # one epoch covers every pair once
    assert not torch.equal(a.batch(0).indices, a.batch(a.batches_per_epoch).indices)  # epochs differ
    ranks = [Seq2SeqTask(ids, ids[:10], tok, cfg, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert set(ranks[0].batch(0).indices.tolist()).isdisjoint(ranks[1].batch(0).indices.tolist())


def test_loss_counts_real_target_tokens_and_smooths_labels():
    train = reversal_pairs(50, 0)
    tok = build_pair_tokenizer("word", train)
    ids = encode_pairs(tok, train)
    torch.manual_seed(0)
    model = Seq2Seq(bahdanau_config(tok).resolve(tok.src_vocab_size, tok.tgt_vocab_size))
    plain = Seq2SeqTask(ids, ids, tok, Seq2SeqDataConfig(batch_size=8), seed=0)
    smooth = Seq2SeqTask(ids, ids, tok, Seq2SeqDataConfig(batch_size=8, label_smoothing=0.1), seed=0)
    batch = plain.batch(0)
    loss, n = plain.loss(model, batch)
    assert n == int(batch.tgt_lengths.sum()) + len(batch)  # every target token plus one EOS per pair
    assert smooth.loss(model, batch)[0] != loss


def test_max_lengths_skip_training_pairs_only():
    train = reversal_pairs(100, 0)
    tok = build_pair_tokenizer("word", train)
    ids = encode_pairs(tok, train)
    task = Seq2SeqTask(ids, ids, tok, Seq2SeqDataConfig(batch_size=8, max_src_len=4), seed=0)
    assert task.skipped == sum(len(s) > 4 for s, _ in ids) > 0
    assert len(task.valid_ids) == 100
    with pytest.raises(UserError, match="skip every training pair"):
        Seq2SeqTask(ids, ids, tok, Seq2SeqDataConfig(max_tgt_len=1), seed=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="wmt14"), "data.dataset must be one of 'scan', 'multi30k'"),
    (dict(tokenizer="char"), "data.tokenizer must be one of 'word', 'bpe', 'byte'"),
    (dict(beam_size=0), "data.beam_size must be a positive int"),
    (dict(label_smoothing=1.0), r"data.label_smoothing must be in \[0, 1\)"),
    (dict(max_decode_len=-1), "data.max_decode_len must be an int >= 0"),
    (dict(max_src_len=0), "data.max_src_len must be a positive int"),
])
def test_bad_data_configs(kwargs, match):
    with pytest.raises(UserError, match=match):
        Seq2SeqDataConfig(**kwargs)


def test_model_config_errors_name_the_model_section():
    with pytest.raises(UserError, match=r"^model.decoder.n_layers must be a positive int"):
        Seq2SeqModelConfig(decoder=dict(n_layers=0))
    with pytest.raises(UserError, match=r"^model.tgt_vocab_size is 5 but the tokenizer has 9"):
        Seq2SeqModelConfig(tgt_vocab_size=5).resolve(7, 9)
    with pytest.raises(UserError, match="^model.share_embeddings needs encoder.d_model == decoder.d_model"):
        Seq2SeqModelConfig(share_embeddings=True, encoder=dict(d_model=32), decoder=dict(d_model=64))


# --------------------------------------------------------------------------- end to end through the CLI
PRIMITIVES = {"walk": "I_WALK", "run": "I_RUN", "jump": "I_JUMP", "look": "I_LOOK"}
TURNS = {"": [], "left": ["I_TURN_LEFT"], "right": ["I_TURN_RIGHT"]}
REPEATS = {"": 1, "twice": 2, "thrice": 3}


def _scan_phrase(rng) -> tuple[list[str], list[str]]:
    prim, turn, rep = rng.choice(list(PRIMITIVES)), rng.choice(list(TURNS)), rng.choice(list(REPEATS))
    words = [w for w in (prim, turn, rep) if w]
    return words, (TURNS[turn] + [PRIMITIVES[prim]]) * REPEATS[rep]


def write_scan_lookalike(root: Path, n_train: int = 600, n_test: int = 120) -> None:
    """A SCAN-shaped grammar (primitive [left|right] [twice|thrice] [and ...]) in the official file layout."""
    rng = np.random.default_rng(0)
    lines = set()
    while len(lines) < n_train + n_test:
        words, actions = _scan_phrase(rng)
        if rng.random() < 0.5:
            more, more_actions = _scan_phrase(rng)
            words, actions = words + ["and"] + more, actions + more_actions
        lines.add(f"IN: {' '.join(words)} OUT: {' '.join(actions)}")
    lines = sorted(lines)
    rng.shuffle(lines)
    folder = root / "scan" / "simple_split"
    folder.mkdir(parents=True)
    (folder / "tasks_train_simple.txt").write_text("\n".join(lines[:n_train]) + "\n")
    (folder / "tasks_test_simple.txt").write_text("\n".join(lines[n_train:]) + "\n")


def write_recipe(path: Path, out: Path, data: str, model: str, steps: int, log_interval: int = 10) -> None:
    path.write_text(f"""task: seq2seq
model: {model}
data: {data}
optim: {{lr: 1.0e-2, min_lr: 1.0e-4, warmup_steps: 20, weight_decay: 0.0}}
trainer: {{max_steps: {steps}, eval_interval: 0, checkpoint_interval: 0, out_dir: {out}, progress: false,
          tensorboard: false, threads: 1, log_interval: {log_interval}}}
""")


def test_scan_lookalike_through_train_and_eval(tmp_path, capsys):
    write_scan_lookalike(tmp_path / "data")
    out, recipe = tmp_path / "run", tmp_path / "scan.yaml"
    rnn = "{d_model: 32, n_layers: 1, pattern: [gru], mlp: none}"
    write_recipe(recipe, out, f"{{dataset: scan, root: {tmp_path / 'data'}, batch_size: 32}}",
                 f"{{encoder: {rnn}, decoder: {rnn}, cross_attention: additive}}", steps=150)
    main(["train", "--config", str(recipe)])
    assert "task seq2seq" in capsys.readouterr().out
    main(["eval", "--checkpoint", str(out), "--split", "test", "--format", "json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "test" and metrics["examples"] == 120 and metrics["decoding"] == "greedy"
    assert metrics["exact_match"] > 0.5, metrics  # a 150-step GRU already gets most of this grammar right
    assert metrics["exact_match"] == pytest.approx(metrics["sequence_accuracy"])  # greedy == teacher-forced argmax
    main(["eval", "--checkpoint", str(out), "--split", "test"])
    assert "exact match" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("exact_match" in r for r in records)


def test_resumed_training_equals_straight_training(tmp_path, capsys):
    """The batches are a function of the step and the tokenizer comes back from the checkpoint: 3 steps +
    resume + 3 steps give the losses of 6 steps straight."""
    write_scan_lookalike(tmp_path / "data", n_train=200, n_test=20)
    stack = "{d_model: 16, n_layers: 1, pattern: [lstm], mlp: none, dropout: 0.1}"
    losses = {}
    for name, steps in (("straight", [6]), ("resumed", [3, 6])):
        recipe = tmp_path / f"{name}.yaml"
        write_recipe(recipe, tmp_path / name, f"{{dataset: scan, root: {tmp_path / 'data'}, batch_size: 8}}",
                     f"{{encoder: {stack}, decoder: {stack}}}", steps=6, log_interval=1)
        for i, n in enumerate(steps):
            main(["train", "--config", str(recipe), "--trainer.max_steps", str(n)] + (["--resume", "true"] if i else []))
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if r.get("kind") == "train"]
    capsys.readouterr()
    assert len(losses["straight"]) == 6
    assert losses["resumed"] == losses["straight"]


def write_multi30k_lookalike(root: Path) -> None:
    rng = np.random.default_rng(0)
    nouns = {"dog": "Hund", "man": "Mann", "woman": "Frau", "child": "Kind", "ball": "Ball"}
    verbs = {"runs": "rennt", "sits": "sitzt", "plays": "spielt"}
    raw = root / "multi30k" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 200), ("val", 20), ("test_2016_flickr", 20)):
        en, de = [], []
        for _ in range(n):
            noun, verb = rng.choice(list(nouns)), rng.choice(list(verbs))
            en.append(f"A {noun} {verb}.")
            de.append(f"Ein {nouns[noun]} {verbs[verb]}.")
        (raw / f"{split}.en").write_text("\n".join(en) + "\n")
        (raw / f"{split}.de").write_text("\n".join(de) + "\n")


def test_multi30k_lookalike_reports_bleu_with_beam_search(tmp_path, capsys):
    write_multi30k_lookalike(tmp_path / "data")
    out, recipe = tmp_path / "run", tmp_path / "m30k.yaml"
    stack = "{d_model: 32, n_layers: 1, pattern: [gru], mlp: none}"
    write_recipe(recipe, out, f"{{dataset: multi30k, root: {tmp_path / 'data'}, tokenizer: bpe, vocab_size: 300, "
                 "batch_size: 16, beam_size: 3, max_decode_len: 40}",
                 f"{{encoder: {stack}, decoder: {stack}, share_embeddings: true}}", steps=60)
    main(["train", "--config", str(recipe)])
    capsys.readouterr()
    main(["eval", "--checkpoint", str(out), "--split", "test", "--format", "json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["decoding"] == "beam 3, alpha 0.6" and metrics["examples"] == 20
    assert 0.0 <= metrics["bleu"] <= 100.0 and metrics["max_decode_len"] == 40
    assert summary(metrics).startswith("BLEU ")


def test_share_embeddings_needs_a_joint_vocabulary(tmp_path, capsys):
    write_scan_lookalike(tmp_path / "data", n_train=60, n_test=10)
    recipe = tmp_path / "bad.yaml"
    write_recipe(recipe, tmp_path / "run", f"{{dataset: scan, root: {tmp_path / 'data'}}}",
                 "{share_embeddings: true}", steps=1)
    with pytest.raises(SystemExit):
        main(["train", "--config", str(recipe)])
    err = capsys.readouterr().err
    assert "share_embeddings needs one vocabulary" in err and "Traceback" not in err


def test_missing_data_names_the_file(tmp_path, capsys):
    recipe = tmp_path / "missing.yaml"
    write_recipe(recipe, tmp_path / "run", f"{{dataset: scan, root: {tmp_path / 'nothing'}}}", "{}", steps=1)
    with pytest.raises(SystemExit):
        main(["train", "--config", str(recipe)])
    err = capsys.readouterr().err
    assert "tasks_train_simple.txt" in err and "missing" in err and "Traceback" not in err


@pytest.mark.skipif(not (default_data_root() / "scan" / "length_split").is_dir(), reason="shared SCAN data absent")
def test_real_scan_length_split_builds(tmp_path, capsys):
    """The real files: two training steps of the length split, whose test targets outgrow the training ones."""
    out, recipe = tmp_path / "run", tmp_path / "scan.yaml"
    stack = "{d_model: 16, n_layers: 1, pattern: [lstm], mlp: none}"
    write_recipe(recipe, out, "{dataset: scan, split_name: length, batch_size: 8, eval_batch_size: 2048}",
                 f"{{encoder: {stack}, decoder: {stack}}}", steps=2)
    main(["train", "--config", str(recipe)])
    assert "15,291 training / 1,699 validation pairs" in capsys.readouterr().out
