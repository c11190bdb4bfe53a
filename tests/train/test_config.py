"""Training configs validate at once; the schedule and the optimizer groups do what they document."""

from __future__ import annotations

import math

import pytest
import torch

from seqmix.errors import UserError
from seqmix.models import LanguageModel, ModelConfig
from seqmix.train import DataConfig, LMModelConfig, OptimConfig, TrainConfig, TrainerConfig, learning_rate
from seqmix.train.schedule import param_groups


@pytest.mark.parametrize("make, message", [
    (lambda: OptimConfig(lr=0), r"optim\.lr must be a number > 0, got 0"),
    (lambda: OptimConfig(name="adam"), r"optim\.name must be one of 'adamw', 'sgd', got 'adam'"),
    (lambda: OptimConfig(lr=1e-3, min_lr=1e-2), r"optim\.min_lr .* must not exceed optim\.lr"),
    (lambda: OptimConfig(beta2=1.0), r"optim\.beta2 must be in \[0, 1\)"),
    (lambda: DataConfig(tokenizer="bpe"), r"data\.tokenizer must be one of 'char', 'byte', 'word', got 'bpe'"),
    (lambda: DataConfig(seq_len=0), r"data\.seq_len must be a positive int"),
    (lambda: DataConfig(val_fraction=1.0), r"data\.val_fraction must be in \(0, 1\)"),
    (lambda: TrainerConfig(precision="fp16"), r"trainer\.precision must be one of 'fp32', 'bf16', got 'fp16'"),
    (lambda: TrainerConfig(device="tpu"), r"trainer\.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (lambda: TrainerConfig(time_budget_s=-1), r"trainer\.time_budget_s must be a number > 0"),
    (lambda: LMModelConfig(pattern=["mambaa"]), r"model\.pattern: unknown mixer 'mambaa' \(did you mean 'mamba'\?\)"),
    (lambda: LMModelConfig(mixer_options={"attention": {"heads": 2}}), r"model\.mixer_options\.attention: unknown option"),
    (lambda: TrainConfig(optim=OptimConfig(decay_by="time")), r"optim\.decay_by 'time' needs trainer\.time_budget_s"),
    (lambda: TrainConfig.from_dict({"optim": {"lrr": 1}}), r"unknown key\(s\) optim\.lrr; allowed keys in 'optim': name, lr,"),
    (lambda: TrainConfig.from_dict({"modle": {}}), r"unknown config section\(s\) modle; allowed: task, model, data, optim, trainer"),
])
def test_bad_values_fail_at_construction_naming_the_field(make, message):
    with pytest.raises(UserError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_config_round_trips_and_vocab_size_comes_from_the_tokenizer():
    cfg = TrainConfig(model=LMModelConfig(d_model=32, pattern=["mamba", "attention"]), optim=OptimConfig(lr=1e-3))
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg and cfg.model.vocab_size == 0
    model_cfg = cfg.model.resolve(65)
    assert type(model_cfg) is ModelConfig and model_cfg.vocab_size == 65 and model_cfg.pattern == ["mamba", "attention"]
    with pytest.raises(UserError, match="model.vocab_size is 50 but the tokenizer has 65"):
        LMModelConfig(vocab_size=50).resolve(65)


def test_warmup_then_cosine_to_min_lr():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert learning_rate(cfg, 0, 110) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 110) == pytest.approx(1.0)
    assert learning_rate(cfg, 10, 110) == pytest.approx(1.0)
    assert learning_rate(cfg, 60, 110) == pytest.approx(0.55)  # half way: the mean of lr and min_lr
    assert learning_rate(cfg, 110, 110) == pytest.approx(0.1)
    lrs = [learning_rate(cfg, s, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    by_time = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay_by="time")
    assert learning_rate(by_time, 5, 10**9, train_seconds=30, time_budget_s=60) == pytest.approx(0.5)
    assert learning_rate(by_time, 5, 10**9, train_seconds=90, time_budget_s=60) == pytest.approx(0.0)
    constant = OptimConfig(lr=1.0, warmup_steps=2, schedule="constant")
    assert [learning_rate(constant, s, 5) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert math.isclose(learning_rate(OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0), 0, 1), 1.0)


def test_weight_decay_skips_norms_biases_embeddings_and_flagged_parameters():
    model = LanguageModel(ModelConfig(vocab_size=11, d_model=16, n_layers=2, pattern=["mamba", "attention"]))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "embed.weight" in skipped  # the tied head shares it: counted once
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("A_log") for n in skipped) and any(n.endswith(".D") for n in skipped)
    assert not any("norm" in n for n in decayed)
    assert len(decayed) + len(skipped) == len(list(model.parameters()))
    assert isinstance(torch.optim.AdamW([decay, no_decay]), torch.optim.AdamW)
