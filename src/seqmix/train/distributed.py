"""Data-parallel training through ``torchrun``, detected from its environment variables.

``torchrun --nproc_per_node N -m seqmix.cli train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; the
trainer then joins a process group (NCCL when the processes use CUDA devices, gloo on CPU), wraps the
model in DistributedDataParallel (which broadcasts rank 0's initial weights and averages gradients), and
lets only rank 0 write checkpoints and metrics. Without those variables nothing changes: one process,
no process group. Decisions that must agree across ranks (stop now? how much training time has passed,
which drives a time-based schedule?) are taken by rank 0 and broadcast every step, so ranks never
disagree on the step at which they stop or on the learning rate they use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "teardown", "broadcast_floats", "all_reduce_sum", "gather_objects"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def setup(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; return this process's rank info and device.

    ``device`` is the trainer's option: "auto" picks CUDA when available. Under torchrun each process
    takes the GPU of its LOCAL_RANK.
    """
    info = DistInfo(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and info.enabled:
        device = f"cuda:{info.local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_floats(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank (a no-op in a single process)."""
    if not _active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (a no-op in a single process)."""
    if not _active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (on every rank); ``[obj]`` in a single process.

    Used for per-rank RNG and carried-state tensors at checkpoint time; these are objects this run
    produced in memory, never read from disk, so the pickling inside torch.distributed is safe here.
    """
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
