"""Shared pieces of the training tests: a small corpus and a tiny, fast training config."""

from __future__ import annotations

import pytest

from seqmix.train import DataConfig, LMModelConfig, OptimConfig, TrainConfig, TrainerConfig

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 12


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path, corpus):
    """``make_config(**sections)``: a tiny run; keyword dicts override fields of each section."""

    def make(model=None, data=None, optim=None, trainer=None, out="run") -> TrainConfig:
        return TrainConfig(
            model=LMModelConfig(**{"d_model": 16, "n_layers": 2, "pattern": ["mingru"], **(model or {})}),
            data=DataConfig(**{"corpus": str(corpus), "seq_len": 16, "batch_size": 4, "eval_batch_size": 8,
                               **(data or {})}),
            optim=OptimConfig(**{"lr": 1e-2, "warmup_steps": 3, **(optim or {})}),
            trainer=TrainerConfig(**{"out_dir": str(tmp_path / out), "max_steps": 8, "eval_interval": 0,
                                     "checkpoint_interval": 0, "log_interval": 1, "progress": False,
                                     "tensorboard": False, **(trainer or {})}),
        )

    return make
