"""``seqmix train / eval / generate``: a whole run through the CLI, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqmix.cli import main

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n" * 10


def _config(tmp_path: Path, corpus: Path, out: Path, **trainer) -> Path:
    trainer = {"out_dir": str(out), "max_steps": 6, "eval_interval": 0, "checkpoint_interval": 0,
               "progress": False, "tensorboard": False, **trainer}
    cfg = {"model": {"d_model": 16, "n_layers": 2, "pattern": ["mingru"]},
           "data": {"corpus": str(corpus), "seq_len": 16, "batch_size": 4},
           "optim": {"lr": 0.01, "warmup_steps": 2}, "trainer": trainer}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained through the CLI once for this module."""
    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT)
    main(["train", "--config", str(_config(tmp, corpus, tmp / "run")), "--optim.lr", "0.02"])
    return tmp, corpus, tmp / "run"


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_train_eval_generate(trained, capsys):
    tmp, corpus, run = trained
    saved = json.loads((run / "last" / "trainer.json").read_text())
    assert saved["step"] == 6 and saved["config"]["optim"]["lr"] == 0.02  # the dotted flag overrode the file
    main(["eval", "--checkpoint", str(run), "--format", "json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["tokens"] == len(TEXT) - int(len(TEXT) * 0.9) - 1 and metrics["loss"] > 0
    main(["eval", "--checkpoint", str(run / "last")])
    assert "bits/char" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "checkpoint_eval"]  # each `seqmix eval` is appended to the run's metrics
    assert len(evals) == 2 and evals[0]["task"] == "lm" and evals[0]["split"] == "valid"
    assert evals[0]["loss"] == metrics["loss"]
    other = tmp / "other.txt"
    other.write_text(TEXT[:300])
    main(["eval", "--checkpoint", str(run), "--data", str(other), "--format", "json"])
    assert json.loads(capsys.readouterr().out)["tokens"] == 300 - int(300 * 0.9) - 1
    main(["generate", "--checkpoint", str(run), "--prompt", "ROMEO:", "--max_new_tokens", "40", "--seed", "3"])
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 6 + 30
    main(["generate", "--checkpoint", str(run), "--prompt", "ROMEO:", "--max_new_tokens", "40", "--seed", "3"])
    assert capsys.readouterr().out == text  # a seed makes samples reproducible
    main(["generate", "--checkpoint", str(run), "--prompt", "But", "--num_samples", "2", "--max_new_tokens", "5",
          "--temperature", "0"])
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2


def test_bad_inputs_give_one_line_errors(trained, tmp_path, capsys):
    tmp, corpus, run = trained
    cfg = str(_config(tmp_path, corpus, tmp_path / "new"))
    msg = _error(capsys, ["train", "--config", cfg, "--model.pattern", "[mambo]"])
    assert "unknown mixer 'mambo'" in msg and "mamba" in msg
    msg = _error(capsys, ["train", "--config", cfg, "--optim.lrr", "3"])
    assert "unknown config key 'optim.lrr'" in msg and "allowed keys in 'optim': name, lr" in msg
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  d_modle: 8\n")
    msg = _error(capsys, ["train", "--config", str(bad_yaml)])
    assert "'model.d_modle'" in msg and "d_model" in msg
    bad_yaml.write_text("modle:\n  d_model: 8\n")
    msg = _error(capsys, ["train", "--config", str(bad_yaml)])
    assert "'modle' is not a section" in msg and "model, data, optim, trainer" in msg
    bad_yaml.write_text("task: translate\n")
    msg = _error(capsys, ["train", "--config", str(bad_yaml)])
    assert "unknown task 'translate'" in msg and "lm, seq2seq, seqrec, classify, forecast" in msg
    assert "unknown task 'nope'" in _error(capsys, ["train", "--config", cfg, "--task", "nope"])
    msg = _error(capsys, ["eval", "--checkpoint", str(run), "--split", "train"])
    assert "split must be 'valid' or 'test'" in msg
    msg = _error(capsys, ["train", "--config", cfg, "--data.corpus", str(tmp_path / "missing.txt")])
    assert "missing.txt" in msg and "does not exist" in msg
    (tmp_path / "empty.txt").write_text("  \n")
    assert "is empty" in _error(capsys, ["train", "--config", cfg, "--data.corpus", str(tmp_path / "empty.txt")])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    msg = _error(capsys, ["train", "--config", cfg, "--data.corpus", str(tmp_path / "latin1.txt")])
    assert "not UTF-8" in msg
    msg = _error(capsys, ["generate", "--checkpoint", str(run), "--prompt", "Zoë"])
    assert msg.startswith("error: prompt:") and "'ë'" in msg and "not in the vocabulary" in msg
    assert "no checkpoint" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "nowhere")])
    # resuming a run with a config whose model differs from the checkpoint's
    other = _config(tmp_path, corpus, run, max_steps=8)
    msg = _error(capsys, ["train", "--config", str(other), "--resume", "true", "--model.d_model", "24"])
    assert "another model config" in msg and "d_model: checkpoint 16, config 24" in msg


def test_damaged_checkpoints_give_one_line_errors(trained, tmp_path, capsys):
    import shutil

    _, _, run = trained
    broken = tmp_path / "broken"
    shutil.copytree(run / "last", broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    assert "truncated" in _error(capsys, ["generate", "--checkpoint", str(broken)])
    (broken / "model.safetensors").write_bytes(weights)
    (broken / "config.json").write_text("{not json")
    assert "corrupt" in _error(capsys, ["eval", "--checkpoint", str(broken)])


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "long"
    cfg = _config(tmp_path, corpus, out, max_steps=100_000, log_interval=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seqmix.cli", "train", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "interrupted at step" in stdout and "--resume" in stdout
    saved = json.loads((out / "last" / "trainer.json").read_text())
    assert saved["step"] >= 2


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIGS])
def test_recipes_are_valid_configs(path, capsys):
    """Every recipe, of every task, parses through the CLI and validates; its runs go to runs/<name>."""
    import yaml

    from seqmix.train import TrainConfig

    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(path), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg = TrainConfig.from_dict({k: printed[k] for k in ("task", "model", "data", "optim", "trainer")})
    assert cfg.task == (path.parent.name if path.parent != CONFIG_DIR else "lm")
    assert cfg.trainer.out_dir == f"runs/{path.stem}"
    if cfg.task == "lm":
        assert cfg.model.resolve(65).layer_mixers()  # every mixer of the pattern is registered and buildable


def test_task_is_read_from_the_flag_or_the_recipe(tmp_path):
    from seqmix.train.commands import task_from_argv

    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: seqrec\nmodel: {}\n")
    assert task_from_argv(["--config", str(recipe)]) == "seqrec"
    assert task_from_argv([f"--config={recipe}", "--task", "classify"]) == "classify"
    assert task_from_argv(["--model.d_model", "8"]) == "lm"


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "eval", "generate", "list"))
