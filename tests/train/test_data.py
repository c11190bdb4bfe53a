"""Language-modelling data: windows, stateful rows with a carried state, whole-split evaluation."""

from __future__ import annotations

import pytest
import torch

from seqmix.errors import UserError
from seqmix.models import LanguageModel, ModelConfig
from seqmix.train import DataConfig, LMTask, load_lm_data, train_language_model

STREAM = torch.arange(1000) % 50  # [N] a token stream with a 50-token vocabulary


def _task(stateful=False, rank=0, world_size=1, val=None, **data):
    cfg = DataConfig(**{"seq_len": 8, "batch_size": 3, "eval_batch_size": 4, "stateful": stateful, **data})
    val = STREAM[:203] if val is None else val
    return LMTask(STREAM, val, cfg, seed=0, rank=rank, world_size=world_size)


def _model(pattern="mingru", **kw):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=50, d_model=16, n_layers=2, pattern=[pattern], **kw))


def test_random_windows_are_a_function_of_seed_rank_and_index():
    a, b = _task(), _task()
    assert torch.equal(a.batch(5).tokens, b.batch(5).tokens)
    assert not torch.equal(a.batch(5).tokens, a.batch(6).tokens)
    assert not torch.equal(a.batch(5).tokens, _task(rank=1, world_size=2).batch(5).tokens)
    window = a.batch(0).tokens
    assert window.shape == (3, 9)
    for row in window:  # each window is a contiguous slice of the stream
        start = int((row[0] - STREAM[0]) % 50)
        assert torch.equal(row, (torch.arange(start, start + 9)) % 50)


def test_stateful_windows_are_consecutive_rows_and_reset_each_epoch():
    task = _task(stateful=True)  # 3 rows of 333 tokens, (333 - 1) // 8 = 41 windows per epoch
    assert task.windows_per_epoch == 41
    first, second = task.batch(0), task.batch(1)
    assert first.reset and not second.reset
    assert torch.equal(first.tokens[:, -1], second.tokens[:, 0])  # window 2 starts where window 1 ended
    assert torch.equal(first.tokens[1], STREAM[333: 342])
    assert task.batch(41).reset and torch.equal(task.batch(41).tokens, first.tokens)
    # two processes take different rows of the same 6-row layout
    r0, r1 = _task(stateful=True, rank=0, world_size=2), _task(stateful=True, rank=1, world_size=2)
    assert torch.equal(r0.batch(0).tokens[0], STREAM[:9]) and torch.equal(r1.batch(0).tokens[0], STREAM[3 * 166: 3 * 166 + 9])


def test_stateful_training_carries_the_final_state_of_the_previous_window():
    task, model = _task(stateful=True), _model()
    w1, w2 = task.batch(0), task.batch(1)
    task.loss(model, w1)
    _, state1 = model(w1.tokens[:, :-1])
    carried = [t for t in _flat(task.carry)]
    assert carried and all(torch.allclose(a, b) for a, b in zip(carried, _flat(state1)))
    assert all(not t.requires_grad for t in carried)  # detached: backprop stops at the window edge
    with_state, _ = task.loss(model, w2)
    _, expected_state = model(w2.tokens[:, :-1], state1)
    fresh = _task(stateful=True)
    without_state, _ = fresh.loss(model, w2)  # w2 is not a reset window, but nothing is carried yet
    assert not torch.allclose(with_state, without_state)
    assert all(torch.allclose(a, b) for a, b in zip(_flat(task.carry), _flat(expected_state)))
    task.loss(model, task.batch(task.windows_per_epoch))  # a new epoch starts from the zero state
    _, restart = model(task.batch(0).tokens[:, :-1])
    assert all(torch.allclose(a, b) for a, b in zip(_flat(task.carry), _flat(restart)))


def _flat(state):
    from seqmix import state_tensors

    return state_tensors(state)


@pytest.mark.parametrize("stateful", [False, True])
@pytest.mark.parametrize("n_val", [2, 9, 203])
def test_evaluation_covers_every_validation_target_once(stateful, n_val):
    val = STREAM[:n_val]
    pieces = list(_task(stateful=stateful, val=val)._eval_pieces())
    targets = torch.cat([t.reshape(-1) for _, t, _ in pieces])
    assert targets.numel() == n_val - 1
    # every process takes a share; together they cover the split once
    shares = [list(_task(stateful=stateful, val=val, rank=r, world_size=3)._eval_pieces()) for r in range(3)]
    assert sum(t.numel() for share in shares for _, t, _ in share) == n_val - 1


@torch.no_grad()
def test_evaluation_equals_the_mean_loss_over_all_targets():
    model = _model()
    model.eval()
    val = STREAM[:203]
    metrics = _task(val=val, seq_len=8).evaluate(model)
    # windows of 8 targets from the zero state: compute them one by one
    total, count = 0.0, 0
    for s in range(0, 202, 8):
        x, y = val[s: min(s + 8, 202)], val[s + 1: min(s + 8, 202) + 1]
        logits, _ = model(x[None])
        total += float(torch.nn.functional.cross_entropy(logits[0], y, reduction="sum"))
        count += y.numel()
    assert metrics["tokens"] == count == 202
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["bits_per_token"] == pytest.approx(metrics["loss"] / 0.6931471805599453)
    # stateful evaluation of a recurrent model carries the state along each row: one row = one long pass
    stateful = _task(stateful=True, val=val, eval_batch_size=1).evaluate(model)
    logits, _ = model(val[None, :-1])
    full = float(torch.nn.functional.cross_entropy(logits[0], val[1:]))
    assert stateful["loss"] == pytest.approx(full, rel=1e-5)


def test_stateful_training_carries_state_end_to_end_and_resumes_it(make_config):
    data = {"stateful": True, "batch_size": 2, "seq_len": 8}
    trainer = {"max_steps": 12}
    straight = train_language_model(make_config(data=data, trainer=trainer, out="a"))
    cfg = make_config(data=data, trainer=trainer, out="b")

    def stop(tr, record):
        if tr.step == 5:
            assert tr.task.carry is not None  # a state is being carried ...
            raise KeyboardInterrupt

    train_language_model(cfg, callbacks=(stop,))
    from seqmix.train import read_checkpoint

    rank0 = read_checkpoint(cfg.trainer.out_dir + "/last").rank_tensors(0)
    assert any(k.startswith("carry.") for k in rank0)  # ... saved with the checkpoint ...
    resumed = train_language_model(cfg, resume=True)
    assert resumed.losses == straight.losses[5:]  # ... and restored: the losses continue exactly


def test_stateful_training_rejects_a_state_that_grows_and_takes_a_bounded_one(make_config):
    cfg = make_config(model={"pattern": ["attention"]}, data={"stateful": True})
    with pytest.raises(UserError, match="attention.*grows with every token"):
        train_language_model(cfg)
    # a sliding window's cache is bounded: it is carried like a recurrent state
    swa = make_config(model={"pattern": ["swa"], "mixer_options": {"swa": {"window": 8}}},
                      data={"stateful": True}, trainer={"max_steps": 3}, out="swa")
    seen = []
    train_language_model(swa, callbacks=(lambda tr, rec: seen.append(tr.task.carry[0].k.shape[2]),))
    assert seen == [7, 7, 7]  # the last window - 1 keys of each window travel to the next


def test_too_short_corpora_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="fewer than data.seq_len"):
        _task(seq_len=2000)
    with pytest.raises(UserError, match="too short for 300 stateful rows"):
        _task(stateful=True, batch_size=300, seq_len=8)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abcdefghij")
    cfg = DataConfig(corpus=str(tiny), seq_len=4)
    _, train, val = load_lm_data(cfg)
    with pytest.raises(UserError, match="validation split has 1 token"):
        LMTask(train, val, cfg, seed=0)


def test_ptb_directory_uses_its_official_split(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat sat on the mat \n the dog sat \n" * 20)
    (tmp_path / "ptb.valid.txt").write_text(" the cat sat \n a bird \n")
    (tmp_path / "ptb.test.txt").write_text(" the mat \n")
    tok, train, val = load_lm_data(DataConfig(corpus=str(tmp_path), tokenizer="word"))
    assert tok.kind == "word" and train.numel() == 20 * 11
    assert tok.decode(val.tolist()).split() == ["the", "cat", "sat", "<unk>", "<unk>"]
    _, _, test = load_lm_data(DataConfig(corpus=str(tmp_path), tokenizer="word"), tok, split="test")
    assert tok.decode(test.tolist()).split() == ["the", "mat"]
    with pytest.raises(UserError, match="a test split exists only for a corpus directory"):
        load_lm_data(DataConfig(corpus=str(tmp_path / "ptb.test.txt"), tokenizer="word"), tok, split="test")
    with pytest.raises(UserError, match="data.corpus .* does not exist; give a UTF-8 text file, a Penn Treebank"):
        load_lm_data(DataConfig(corpus=str(tmp_path / "nothing"), tokenizer="word"))
