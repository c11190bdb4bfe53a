"""Checkpoints: atomic writes, no pickle, and one-line errors for damaged files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from seqmix.errors import UserError
from seqmix.models import LanguageModel
from seqmix.train import checkpoint as ckpt
from seqmix.train import read_checkpoint, train_language_model
from seqmix.train.run import evaluate_checkpoint


def _weights(directory) -> dict:
    return LanguageModel.from_pretrained(directory).state_dict()


def test_a_crash_while_writing_leaves_the_previous_checkpoint(make_config, monkeypatch):
    cfg = make_config(trainer={"max_steps": 4, "checkpoint_interval": 2})
    train_language_model(cfg)  # last/ at step 4
    last = Path(cfg.trainer.out_dir) / "last"
    before = _weights(last)
    # the next run dies in the middle of writing its checkpoint (after the model, before the optimizer)
    real_save = ckpt.save_file

    def failing_save(tensors, path):
        if path.endswith("optimizer.safetensors"):
            raise OSError("disk full (simulated)")
        return real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", failing_save)
    cfg.trainer.max_steps = 6
    with pytest.raises(OSError, match="simulated"):
        train_language_model(cfg, resume=True)
    monkeypatch.undo()
    assert read_checkpoint(last).state["step"] == 4
    after = _weights(last)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (last.parent / ".last.tmp").exists()  # the half-written directory is cleaned up
    assert train_language_model(cfg, resume=True).step == 6  # and the run continues from it


def test_a_crash_between_the_two_renames_falls_back_to_the_previous(make_config, monkeypatch):
    cfg = make_config(trainer={"max_steps": 2})
    train_language_model(cfg)
    last = Path(cfg.trainer.out_dir) / "last"
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) > 1 and str(dst) == str(last):
            raise KeyboardInterrupt  # the process dies after moving last/ aside, before the new one lands
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    cfg.trainer.max_steps = 3
    with pytest.raises(KeyboardInterrupt):
        train_language_model(cfg, resume=True, handle_sigint=False)
    monkeypatch.undo()
    assert not last.exists()
    assert read_checkpoint(last).state["step"] == 2  # read from .last.old
    # crashing again, now before the new checkpoint is renamed into place, must not lose .last.old

    def crash_on_target(src, dst):
        if str(dst) == str(last):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_target)
    with pytest.raises(KeyboardInterrupt):
        train_language_model(cfg, resume=True, handle_sigint=False)
    monkeypatch.undo()
    assert read_checkpoint(last).state["step"] == 2
    assert train_language_model(cfg, resume=True).step == 3
    assert last.is_dir() and not (last.parent / ".last.old").exists()


def test_optimizer_state_round_trips_through_json_and_safetensors():
    model = torch.nn.Linear(3, 2)
    for opt in (torch.optim.AdamW(model.parameters(), lr=1e-3), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        structure, tensors = ckpt.flatten_optimizer(opt.state_dict())
        back = ckpt.unflatten_optimizer(structure, tensors)
        ref = opt.state_dict()
        assert back["param_groups"] == ref["param_groups"]
        for pid, entries in ref["state"].items():
            for key, value in entries.items():
                assert torch.equal(back["state"][pid][key], value), (pid, key)


def test_checkpoint_files_are_never_pickles(make_config):
    cfg = make_config(trainer={"max_steps": 2})
    result = train_language_model(cfg)
    names = sorted(p.name for p in Path(result.checkpoint).iterdir())
    assert names == ["config.json", "model.safetensors", "optimizer.safetensors", "rank0.safetensors",
                     "tokenizer.json", "trainer.json"]


@pytest.mark.parametrize("damage", ["truncate-optimizer", "corrupt-trainer", "truncate-weights", "missing-trainer"])
def test_damaged_checkpoints_give_one_line_errors(make_config, damage):
    cfg = make_config(trainer={"max_steps": 2})
    last = Path(train_language_model(cfg).checkpoint)
    if damage == "truncate-optimizer":
        data = (last / "optimizer.safetensors").read_bytes()
        (last / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
        expected = r"optimizer\.safetensors is corrupt or truncated"
    elif damage == "corrupt-trainer":
        (last / "trainer.json").write_text('{"format": "seqmix-training-checkpoint", "st')
        expected = r"trainer\.json is corrupt or truncated"
    elif damage == "truncate-weights":
        data = (last / "model.safetensors").read_bytes()
        (last / "model.safetensors").write_bytes(data[:100])
        expected = r"model\.safetensors.*truncated"
    else:
        (last / "trainer.json").unlink()
        expected = r"has no trainer\.json"
    with pytest.raises(UserError, match=expected) as info:
        train_language_model(cfg, resume=True)
    assert "\n" not in str(info.value)
    if damage == "truncate-weights":  # eval and generate read the weights too
        with pytest.raises(UserError, match=expected):
            evaluate_checkpoint(last)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "nothing")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "trainer.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not a seqmix training checkpoint"):
        read_checkpoint(tmp_path / "x")
