"""Saving and loading models as ``config.json`` + ``model.safetensors`` -- never pickle.

safetensors stores raw tensors and a JSON header, so loading an untrusted checkpoint cannot run code
(``torch.load`` unpickles, which can). The layout of a saved directory::

    config.json         {"format": "seqmix.LanguageModel", "format_version": 1, "seqmix_version": ...,
                         "config": {...model config...}, "weights": {"file", "bytes", "sha256"},
                         "tied": {"head.weight": "embed.weight"}, "extra": {...caller's data...}}
    model.safetensors   every tensor of the state dict once (a tied weight is stored under one name)

Each file is written to a temporary file in the same directory, flushed to disk and moved over the
final name with ``os.replace``, so a crash never leaves a half-written file under the final name.
The weights go first and ``config.json`` records their SHA-256, so a config that does not belong to
the weights beside it (or a truncated or damaged weights file) is detected at load time. For an
all-or-nothing checkpoint of several files, write into a fresh directory and rename it.

Every loading problem -- missing directory or file, invalid JSON, wrong format, truncated or corrupt
weights, missing or unexpected tensors, shapes from another configuration -- raises ``UserError``
with one line that names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar, Union

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from seqmix.errors import UserError

__all__ = ["PretrainedMixin", "atomic_write_bytes", "load_config_json", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
M = TypeVar("M", bound="PretrainedMixin")


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform/file system allows opening a directory
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_config_json(directory: Union[str, Path]) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved model directory (format-agnostic, for trainers and tools)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint directory {str(directory)!r} does not exist")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing; a saved model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{str(path)!r} is not valid JSON ({_one_line(exc)}); the checkpoint is corrupt") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into tensors stored once and aliases (name -> name it shares memory with)."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t
    return unique, aliases


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` built from a config dataclass.

    A subclass sets ``config_class`` (with ``to_dict``/``from_dict``) and ``format_name``, stores its
    config as ``self.config`` and is constructed by ``cls(config)``.
    """

    config_class: ClassVar[type]
    format_name: ClassVar[str]
    config: Any

    def save_pretrained(self, directory: Union[str, Path], extra: Optional[dict[str, Any]] = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        ``extra`` (JSON-serialisable) is stored under ``"extra"`` in ``config.json``. Returns the directory.
        """
        directory = Path(directory)
        header = {
            "format": self.format_name,
            "format_version": FORMAT_VERSION,
            "seqmix_version": _seqmix_version(),
            "config": self.config.to_dict(),
        }
        if extra is not None:
            header["extra"] = extra
        json.dumps(header)  # fail (TypeError) on unserialisable extra before anything is written
        # 1. serialise every tensor once (tied weights share memory; safetensors refuses duplicates)
        unique, aliases = _unique_tensors(self.state_dict())  # type: ignore[attr-defined]
        blob = safetensors_save({k: v.detach().to("cpu").contiguous() for k, v in unique.items()})
        # 2. weights first, then the config that records their checksum
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / WEIGHTS_NAME, blob)
        header["weights"] = {"file": WEIGHTS_NAME, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        header["tied"] = aliases
        atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(header, indent=2) + "\n").encode("utf-8"))
        return directory

    @classmethod
    def from_pretrained(cls: type[M], directory: Union[str, Path], map_location: Any = "cpu") -> M:
        """Rebuild the model saved in ``directory`` with its weights on ``map_location``."""
        directory = Path(directory)
        header = load_config_json(directory)
        config_path = str(directory / CONFIG_NAME)
        # 1. the right kind of file, from a format version we can read
        if header.get("format") != cls.format_name:
            raise UserError(
                f"{config_path!r} holds format {header.get('format')!r}, not {cls.format_name!r}; "
                f"load it with the class that saved it"
            )
        version = header.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(
                f"{config_path!r} has format_version {version!r}; this seqmix reads versions <= {FORMAT_VERSION} "
                "(upgrade seqmix to load it)"
            )
        # 2. the config (unknown keys or bad values name the field)
        try:
            config = cls.config_class.from_dict(header.get("config"))
        except (UserError, ValueError, TypeError) as exc:
            raise UserError(f"{config_path!r}: invalid model config: {_one_line(exc)}") from None
        # 3. the weights, checked against the recorded size and checksum, then parsed
        tensors = _read_weights(directory / WEIGHTS_NAME, header)
        # 4. a model of that config, then the tensors, checked name by name and shape by shape
        model = cls(config)
        model._load_checked(tensors, str(directory / WEIGHTS_NAME))
        return model.to(map_location)  # type: ignore[attr-defined]

    def _load_checked(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        expected, _ = _unique_tensors(self.state_dict())  # type: ignore[attr-defined]
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing tensors {_short(missing)}")
            if unexpected:
                parts.append(f"unexpected tensors {_short(unexpected)}")
            raise UserError(f"{where!r} does not fit this model config ({'; '.join(parts)}); it was saved from another configuration")
        for k, t in expected.items():
            if tuple(tensors[k].shape) != tuple(t.shape):
                raise UserError(
                    f"{where!r} does not fit this model config: tensor {k!r} has shape {tuple(tensors[k].shape)}, "
                    f"the config builds {tuple(t.shape)}"
                )
        dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
        if len(dtypes) == 1:  # a model saved in bfloat16 comes back in bfloat16
            self.to(dtypes.pop())  # type: ignore[attr-defined]
            expected, _ = _unique_tensors(self.state_dict())  # type: ignore[attr-defined]  # .to() made new tensors
        with torch.no_grad():
            for k, t in expected.items():
                t.copy_(tensors[k])


def _read_weights(path: Path, header: dict[str, Any]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing; the checkpoint has {CONFIG_NAME} but no weights")
    blob = path.read_bytes()
    weights = header.get("weights")
    record: dict[str, Any] = weights if isinstance(weights, dict) else {}
    if "bytes" in record and len(blob) != record["bytes"]:
        raise UserError(
            f"{str(path)!r} is truncated or was replaced: {len(blob)} bytes, {CONFIG_NAME} records {record['bytes']}"
        )
    if "sha256" in record and hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise UserError(f"{str(path)!r} is corrupt: its SHA-256 differs from the one recorded in {CONFIG_NAME}")
    try:
        return safetensors_load(blob)
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types for bad files
        raise UserError(f"{str(path)!r} is not a readable safetensors file ({_one_line(exc)}); it is truncated or corrupt") from None


def _short(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _seqmix_version() -> str:
    import seqmix

    return seqmix.__version__


