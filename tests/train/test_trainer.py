"""The Trainer is task-agnostic: any model, any task with batch/loss/evaluate; accumulation, clipping, bf16."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from seqmix.train import OptimConfig, Trainer, TrainerConfig, read_checkpoint, train_language_model


class Regression:
    """A toy task: fit y = x @ w_true with a linear model (shows the protocol a new task implements)."""

    def __init__(self, n_batches: int = 64, batch: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n_batches, batch, 4, generator=g)  # [N, B, 4]
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])  # [N, B]
        self.seen: list[int] = []

    def batch(self, index):
        self.seen.append(index)
        i = index % len(self.x)
        return self.x[i], self.y[i]

    def loss(self, model, batch):
        x, y = batch
        return ((model(x).squeeze(-1) - y) ** 2).mean(), y.numel()

    def evaluate(self, model, autocast=None):
        with torch.no_grad():
            loss = float(((model(self.x.reshape(-1, 4)).squeeze(-1) - self.y.reshape(-1)) ** 2).mean())
        return {"loss": loss, "ppl": float("nan"), "bits_per_token": float("nan")}

    def rank_state(self):
        return {}

    def load_rank_state(self, tensors):
        pass


def _trainer(tmp_path, model, task, **cfg):
    optim = OptimConfig(**{"name": "sgd", "lr": 0.1, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0,
                           "grad_clip": 0.0, **cfg.pop("optim", {})})
    trainer_cfg = TrainerConfig(**{"out_dir": str(tmp_path / "toy"), "max_steps": 1, "eval_interval": 0,
                                   "log_interval": 1, "progress": False, "tensorboard": False, **cfg})
    return Trainer(model, task, optim, trainer_cfg, handle_sigint=False)


def test_any_model_and_task_train_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, task = nn.Linear(4, 1), Regression()
    result = _trainer(tmp_path, model, task, max_steps=60).fit()
    assert result.losses[-1] < 0.05 * result.losses[0]
    assert result.final_eval["loss"] < 0.05 * result.losses[0]
    assert read_checkpoint(result.checkpoint).state["step"] == 60  # a plain module is saved as safetensors


def test_gradient_accumulation_equals_one_step_on_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    model, task = nn.Linear(4, 1), Regression()
    reference = nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    _trainer(tmp_path, model, task, grad_accum=2).fit()
    assert task.seen == [0, 1]  # micro-batch i of step s is batch(s * grad_accum + i)
    x = torch.cat([task.x[0], task.x[1]])
    y = torch.cat([task.y[0], task.y[1]])
    ((reference(x).squeeze(-1) - y) ** 2).mean().backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_gradient_norm_is_clipped(tmp_path):
    torch.manual_seed(0)
    model, task = nn.Linear(4, 1), Regression()
    before = [p.detach().clone() for p in model.parameters()]
    records = []
    trainer = _trainer(tmp_path, model, task, optim={"grad_clip": 0.01})
    trainer.callbacks = (lambda tr, rec: records.append(rec),)
    trainer.fit()
    assert records[0]["grad_norm"] > 0.01  # the norm before clipping is logged
    step = torch.cat([(b - a.detach()).reshape(-1) for a, b in zip(model.parameters(), before)])
    assert float(step.norm()) == pytest.approx(0.1 * 0.01, rel=1e-4)  # lr * clipped norm


def test_bf16_autocast_trains_and_keeps_fp32_weights(make_config):
    cfg = make_config(model={"pattern": ["attention"]}, trainer={"max_steps": 4, "precision": "bf16"})
    result = train_language_model(cfg)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    header = json.loads(open(result.checkpoint / "config.json").read())
    assert header["config"]["d_model"] == 16
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(result.checkpoint / "model.safetensors")).values()} == {torch.float32}


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model, task = nn.Linear(4, 1), Regression()
    from seqmix.errors import UserError

    with pytest.raises(UserError, match="training diverged.*lower optim.lr"):
        _trainer(tmp_path, model, task, max_steps=200, optim={"lr": 10.0}).fit()


def test_compiled_training_matches_eager(make_config):
    """trainer.compile gives the eager losses (or, without a working compiler, falls back to eager)."""
    model = {"pattern": ["attention"]}
    eager = train_language_model(make_config(model=model, trainer={"max_steps": 3}, out="eager"))
    compiled = train_language_model(make_config(model=model, trainer={"max_steps": 3, "compile": True},
                                                out="compiled"))
    torch.testing.assert_close(torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-4, atol=1e-4)


def test_a_compiler_failure_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch):
    import torch._dynamo.exc as dynamo_exc

    calls = []

    def broken_compile(module, *args, **kwargs):
        def fail(*a, **k):
            calls.append("compiled")
            raise dynamo_exc.TorchDynamoException("no C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model, task = nn.Linear(4, 1), Regression()
    reference = nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*without it"):
        result = _trainer(tmp_path, model, task, max_steps=3, compile=True).fit()
    assert calls == ["compiled"]  # tried once, then eager for good
    expected = _trainer(tmp_path / "ref", reference, Regression(), max_steps=3).fit()
    assert result.losses == expected.losses


def test_an_error_in_the_model_is_not_mistaken_for_a_compiler_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: (lambda *x: module(*x)))  # a stand-in wrapper

    class Broken(nn.Linear):
        def forward(self, x):
            raise RuntimeError("shape mismatch in the user's model")

    with pytest.raises(RuntimeError, match="user's model"):
        _trainer(tmp_path, Broken(4, 1), Regression(), compile=True).fit()
