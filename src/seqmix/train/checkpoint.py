"""Training checkpoints that never lose work, and load without running code.

A checkpoint is a directory:

    config.json, model.safetensors   the model (its ``save_pretrained``), enough for eval and generate
    tokenizer.json                   written by the caller's ``extra`` writer (language models)
    trainer.json                     step, training time, data position, training config, optimizer
                                     structure (hyper-parameters, param ids), python/numpy RNG states
    optimizer.safetensors            every optimizer state tensor, flattened as ``state.<param>.<key>``
    rank<r>.safetensors              per process: torch (and CUDA) RNG states, the carried model state

Only JSON and safetensors are read back: no pickle, so opening an untrusted checkpoint cannot run code
(``torch.save``/``torch.load`` of an optimizer state dict would be pickle).

Atomic write (numbered steps in ``write_checkpoint``): everything goes into ``.<name>.tmp`` beside the
target, every file and the directory are fsync'ed, then the previous ``<name>`` is renamed to
``.<name>.old``, the new one renamed into place, and ``.old`` deleted. A crash while writing leaves the
previous checkpoint untouched; a crash between the two renames leaves ``.<name>.old``, which
``resolve_checkpoint`` falls back to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from seqmix.errors import UserError

__all__ = [
    "FORMAT", "write_checkpoint", "read_checkpoint", "resolve_checkpoint", "LoadedCheckpoint",
    "flatten_optimizer", "unflatten_optimizer", "capture_rng", "restore_rng", "rank_rng_tensors",
    "restore_rank_rng", "read_json",
]

FORMAT = "seqmix-training-checkpoint"
VERSION = 1


# ----------------------------------------------------------------------------------------- optimizer
def flatten_optimizer(state_dict: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split an optimizer ``state_dict`` into JSON structure and named tensors (for safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict] = {}
    for pid, entries in state_dict["state"].items():
        state[str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                name = f"state.{pid}.{key}"
                tensors[name] = value.detach().to("cpu").contiguous()
                state[str(pid)][key] = {"tensor": name}
            else:
                state[str(pid)][key] = {"value": value}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return {"state": state, "param_groups": groups}, tensors


def unflatten_optimizer(structure: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """Inverse of ``flatten_optimizer``."""
    state: dict[int, dict] = {}
    for pid, entries in structure["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entries.items()}
    groups = []
    for g in structure["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict:
    """Python and NumPy global RNG states as JSON."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def restore_rng(saved: dict) -> None:
    py = saved["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def rank_rng_tensors() -> dict[str, torch.Tensor]:
    """This process's torch CPU (and CUDA) generator states."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rank_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


# ----------------------------------------------------------------------------------------- writing
def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:  # POSIX only: makes the renames themselves durable
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    target: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    state: dict,
    rank_tensors: list[dict[str, torch.Tensor]],
    extra: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write a checkpoint directory ``target`` atomically (see the module docstring); returns it.

    ``state`` is JSON (step, data position, config...); ``rank_tensors[r]`` holds process r's tensors;
    ``extra(tmp_dir)`` writes further files (a tokenizer) into the directory being built.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp, old = parent / f".{target.name}.tmp", parent / f".{target.name}.old"
    # 1. build the new checkpoint beside the target; a leftover .tmp is from a crashed write
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(tmp / "model.safetensors"))
        if extra is not None:
            extra(tmp)
        record = {"format": FORMAT, "version": VERSION, **state, "rng": capture_rng()}
        if optimizer is not None:
            structure, tensors = flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            record["optimizer"] = structure
        for r, tensors in enumerate(rank_tensors):
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"rank{r}.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps(record))
        # 2. make every byte durable before the new directory becomes visible under the target name
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # 3. swap: target -> .old, .tmp -> target, then drop .old. Without a target, a .old left by a crash
    #    mid-swap is the current checkpoint: it stays until the new one is in place.
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------- reading
def resolve_checkpoint(directory: str | os.PathLike) -> Path:
    """The checkpoint directory to read: ``directory``, or its ``.old`` twin after a crash mid-swap."""
    directory = Path(directory)
    if directory.is_dir():
        return directory
    old = directory.parent / f".{directory.name}.old"
    if old.is_dir():
        return old
    if directory.exists():
        raise UserError(f"checkpoint {directory} is not a directory; pass the checkpoint directory (e.g. runs/NAME/last)")
    raise UserError(f"no checkpoint at {directory}: the directory does not exist")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a missing, truncated or non-JSON file is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"checkpoint {path.parent} has no {path.name}; it is incomplete or not a seqmix checkpoint")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint file {path} is corrupt or truncated ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"checkpoint file {path} is corrupt: expected a JSON object")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"checkpoint {path.parent} has no {path.name}; it is incomplete")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error type for every defect
        raise UserError(f"checkpoint file {path} is corrupt or truncated ({exc})") from None


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict  # trainer.json
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def optimizer_state_dict(self) -> Optional[dict]:
        if "optimizer" not in self.state:
            return None
        try:
            return unflatten_optimizer(self.state["optimizer"], self.optimizer_tensors)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"checkpoint {self.path}: optimizer state is inconsistent ({exc!r})") from None

    def rank_tensors(self, rank: int) -> Optional[dict[str, torch.Tensor]]:
        """Process ``rank``'s tensors, or None if this checkpoint was written by fewer processes."""
        path = self.path / f"rank{rank}.safetensors"
        return _read_tensors(path) if path.is_file() else None


def read_checkpoint(directory: str | os.PathLike) -> LoadedCheckpoint:
    """Read ``trainer.json`` and the optimizer tensors; clear errors for anything missing or corrupt."""
    path = resolve_checkpoint(directory)
    state = read_json(path / "trainer.json")
    if state.get("format") != FORMAT:
        raise UserError(f"{path} is not a seqmix training checkpoint (trainer.json has format "
                        f"{state.get('format')!r}, expected {FORMAT!r})")
    if state.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has format version {state.get('version')!r}; this seqmix reads version {VERSION}")
    tensors = _read_tensors(path / "optimizer.safetensors") if "optimizer" in state else {}
    return LoadedCheckpoint(path=path, state=state, optimizer_tensors=tensors)
