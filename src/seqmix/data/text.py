"""Text corpora as token streams: loading with clear errors, the shipped default, a train/val split.

The default corpus is tiny Shakespeare, shipped inside the package (``data/corpora``, origin in
``SOURCES.md`` there). A language model trains on one long token stream; ``split_stream`` keeps the
first ``1 - val_fraction`` of it for training and the last ``val_fraction`` for validation, cut at
``int(N * (1 - val_fraction))`` exactly as nanoGPT's ``shakespeare_char`` does, so numbers compare.
Penn Treebank comes with its own split (``ptb.{train,valid,test}.txt``, Mikolov's preprocessing);
``ptb_paths`` finds the three files in a directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from seqmix.errors import UserError

__all__ = ["DEFAULT_CORPUS", "default_corpus_path", "load_text", "ptb_paths", "split_stream", "token_stream"]

DEFAULT_CORPUS = "tiny_shakespeare.txt"
PTB_SPLITS = ("train", "valid", "test")


def default_corpus_path() -> Path:
    """Path of the shipped tiny Shakespeare file."""
    return Path(str(resources.files("seqmix.data").joinpath("corpora", DEFAULT_CORPUS)))


def load_text(path: Union[str, Path, None] = None, errors: str = "strict") -> str:
    """The UTF-8 text of ``path``; ``None`` gives the shipped tiny Shakespeare.

    A missing, unreadable, empty or non-UTF-8 file raises ``UserError`` with one line naming the path
    and what to do. ``errors="surrogateescape"`` accepts any bytes (for the byte tokenizer, which
    encodes them back to the original bytes).
    """
    file = default_corpus_path() if path is None else Path(path).expanduser()
    shown = repr(str(path)) if path is not None else f"the shipped corpus {DEFAULT_CORPUS!r}"
    if not file.exists():
        hint = "" if path is None else "; give an existing text file, or none for the shipped tiny Shakespeare"
        raise UserError(f"corpus file {shown} does not exist{hint}")
    if file.is_dir():
        raise UserError(f"corpus path {shown} is a directory; give a text file")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read corpus file {shown}: {exc.strerror or exc}") from None
    if not data.strip():
        raise UserError(f"corpus file {shown} is empty; give a file with text in it")
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"corpus file {shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it to UTF-8, or use the byte tokenizer"
        ) from None


def ptb_paths(root: Union[str, Path]) -> dict[str, Path]:
    """``{"train", "valid", "test"}`` -> the Penn Treebank files ``ptb.<split>.txt`` in ``root``."""
    root = Path(root).expanduser()
    paths = {split: root / f"ptb.{split}.txt" for split in PTB_SPLITS}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(
            f"Penn Treebank directory {str(root)!r} lacks {', '.join(missing)}; it must hold "
            "ptb.train.txt, ptb.valid.txt and ptb.test.txt (Mikolov's simple-examples preprocessing)"
        )
    return paths


def token_stream(text: str, tokenizer) -> torch.Tensor:
    """``tokenizer.encode(text)`` as one ``LongTensor [N]``."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def split_stream(ids: Union[torch.Tensor, Sequence[int]], val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: the first ``int(N * (1 - val_fraction))`` ids and the rest (the last 10% by default)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.ndim != 1:
        raise ValueError(f"split_stream takes a 1-D token stream, got shape {tuple(ids.shape)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    n_train = int(len(ids) * (1 - val_fraction))
    if n_train < 1 or n_train >= len(ids):
        raise UserError(
            f"a stream of {len(ids)} tokens is too short to split with val_fraction={val_fraction}: "
            "both parts need at least one token"
        )
    return ids[:n_train], ids[n_train:]
