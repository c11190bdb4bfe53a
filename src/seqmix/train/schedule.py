"""Optimizer construction and the learning-rate schedule.

Schedule (Loshchilov & Hutter 2017, "SGDR", arXiv:1608.03983, without restarts), with a linear warmup:

    lr(s) = lr * (s + 1) / warmup                                  for s < warmup
    lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2        afterwards, p in [0, 1]

where ``p`` is the fraction of the run done after warmup: ``(s - warmup) / (max_steps - warmup)`` when
decaying by steps, or ``train_seconds / time_budget_s`` when decaying by time (so a run limited by wall
time still ends its cosine at the budget, however fast the machine is). The schedule is a pure function
of (step, training time), so resuming needs no scheduler state beyond those two numbers.

Weight decay (AdamW, Loshchilov & Hutter 2019, arXiv:1711.05101) applies to matrices only: parameters
with fewer than two dimensions (norm gains, biases), embedding tables and parameters flagged
``_no_weight_decay`` (e.g. Mamba's A_log and D) are not decayed, the common practice since GPT-2 —
decaying a norm gain or a decay rate towards zero changes what the layer computes, not its capacity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqmix.train.config import OptimConfig

__all__ = ["learning_rate", "build_optimizer", "param_groups"]


def learning_rate(cfg: OptimConfig, step: int, max_steps: int, train_seconds: float = 0.0,
                  time_budget_s: float | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.decay_by == "time":
        assert time_budget_s is not None, "decay_by='time' needs a time budget"
        progress = train_seconds / time_budget_s
    else:
        progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and everything else (see the module docstring)."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or id(p) in no_decay_ids or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
