"""Resuming continues exactly; Ctrl-C writes a checkpoint; a time budget stops the run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from seqmix.errors import UserError
from seqmix.models import LanguageModel
from seqmix.train import read_checkpoint, train_language_model


def _stop_after(step: int, how: str):
    def callback(trainer, record):
        if trainer.step == step:
            if how == "exception":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the handler finishes the step first

    return callback


@pytest.mark.parametrize("how", ["exception", "signal"])
def test_twenty_steps_equal_ten_plus_resume_plus_ten(make_config, how):
    # dropout on: the resumed run must also restore the RNG that draws the dropout masks
    model = {"dropout": 0.1}
    trainer = {"max_steps": 20, "checkpoint_interval": 4}
    straight = train_language_model(make_config(model=model, trainer=trainer, out="straight"), handle_sigint=True)
    assert len(straight.losses) == 20 and not straight.interrupted

    cfg = make_config(model=model, trainer=trainer, out="split")
    first = train_language_model(cfg, callbacks=(_stop_after(10, how),))
    assert first.interrupted and first.stopped_by == "interrupt" and first.step == 10
    assert first.losses == straight.losses[:10]
    assert read_checkpoint(cfg.trainer.out_dir + "/last").state["step"] == 10
    second = train_language_model(cfg, resume=True)
    assert second.step == 20
    assert second.losses == straight.losses[10:]  # exactly equal, not merely close
    a = LanguageModel.from_pretrained(straight.checkpoint).state_dict()
    b = LanguageModel.from_pretrained(second.checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_extends_a_finished_run_with_a_constant_schedule(make_config):
    optim = {"schedule": "constant"}
    straight = train_language_model(make_config(optim=optim, trainer={"max_steps": 12}, out="a"))
    cfg = make_config(optim=optim, trainer={"max_steps": 5}, out="b")
    first = train_language_model(cfg)
    cfg.trainer.max_steps = 12
    second = train_language_model(cfg, resume=True)
    assert first.losses + second.losses == straight.losses


def test_interrupt_writes_a_loadable_checkpoint_and_metrics(make_config):
    cfg = make_config(trainer={"max_steps": 50})
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    result = train_language_model(cfg, callbacks=(_stop_after(3, "signal"),))
    assert result.interrupted and result.step == 3 and result.final_eval is None
    model = LanguageModel.from_pretrained(result.checkpoint)
    assert isinstance(model, LanguageModel)
    records = [json.loads(line) for line in open(os.path.join(cfg.trainer.out_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert records[-1]["event"] == "stopped:interrupt"
    assert signal.getsignal(signal.SIGINT) == before  # the handler is put back


def test_time_budget_stops_training_then_evaluates(make_config):
    cfg = make_config(trainer={"max_steps": 10_000, "time_budget_s": 0.5})
    result = train_language_model(cfg)
    assert result.stopped_by == "time_budget" and 0 < result.step < 10_000
    assert result.train_seconds >= 0.5 and result.final_eval is not None
    assert read_checkpoint(result.checkpoint).state["step"] == result.step


def test_fresh_run_refuses_to_replace_a_checkpoint_and_resume_needs_one(make_config):
    cfg = make_config(trainer={"max_steps": 2})
    with pytest.raises(UserError, match="no checkpoint to continue"):
        train_language_model(cfg, resume=True)
    train_language_model(cfg)
    with pytest.raises(UserError, match="already holds a checkpoint"):
        train_language_model(cfg)
    metrics = Path(cfg.trainer.out_dir) / "metrics.jsonl"
    first_run = metrics.read_text().splitlines()
    cfg.trainer.overwrite = True
    assert train_language_model(cfg).step == 2
    # the replaced run's records are gone: the log holds this run's records only
    assert len(metrics.read_text().splitlines()) == len(first_run)


def test_resume_with_another_model_config_names_the_difference(make_config):
    cfg = make_config(trainer={"max_steps": 2})
    train_language_model(cfg)
    other = make_config(model={"d_model": 24}, trainer={"max_steps": 4})
    with pytest.raises(UserError, match=r"another model config \(d_model: checkpoint 16, config 24\)"):
        train_language_model(other, resume=True)


def test_best_checkpoint_tracks_the_lowest_validation_loss(make_config):
    cfg = make_config(trainer={"max_steps": 6, "eval_interval": 2})
    result = train_language_model(cfg)
    losses = [e["loss"] for e in result.evals]
    assert [e["step"] for e in result.evals] == [2, 4, 6]
    best = read_checkpoint(os.path.join(cfg.trainer.out_dir, "best"))
    assert best.state["best_val_loss"] == min(losses)
    assert best.state["step"] == result.evals[losses.index(min(losses))]["step"]
