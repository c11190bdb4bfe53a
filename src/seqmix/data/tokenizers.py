"""Tokenizers that turn text into token ids and back, and save and load as plain JSON.

* ``CharTokenizer``: one id per distinct character of the training text (sorted by code point, as in
  char-rnn and nanoGPT's shakespeare_char). Encoding a character it never saw is an error that lists
  the offending characters -- a silent ``<unk>`` would hide a wrong corpus or prompt.
* ``ByteTokenizer``: the 256 byte values of the UTF-8 encoding; any text is representable. Decoding
  an invalid byte sequence (a model can sample one) shows U+FFFD in its place.
* ``WordTokenizer``: whitespace-separated words with a newline as an end-of-sentence token, the
  Penn Treebank setup of Mikolov et al. 2010 and Zaremba et al. 2014 ("Recurrent Neural Network
  Regularization", arXiv:1409.2329). Special tokens come first
  (``<eos>`` = 0, ``<unk>`` = 1), then words by decreasing count (ties alphabetically); words outside
  the vocabulary (or beyond ``max_vocab``) map to ``<unk>``.

Each tokenizer has ``kind``, ``vocab_size``, ``encode(text) -> list[int]``, ``decode(ids) -> str`` and
``to_dict()``; ``save_tokenizer``/``load_tokenizer`` store that dict as ``tokenizer.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, Union, runtime_checkable

from seqmix.errors import UserError

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "ByteTokenizer",
    "WordTokenizer",
    "TOKENIZER_KINDS",
    "build_tokenizer",
    "tokenizer_from_dict",
    "save_tokenizer",
    "load_tokenizer",
    "TOKENIZER_NAME",
]

TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_KINDS = ("char", "byte", "word")


@runtime_checkable
class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    out = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    bad = [i for i in out if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {bad[:5]}")
    return out


def _show(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(c) for c in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class CharTokenizer:
    """One id per character of a fixed alphabet."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise UserError("a character vocabulary must be a non-empty list of distinct single characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        """The alphabet of ``text``, sorted by code point."""
        if not text:
            raise UserError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        index = self.index
        try:
            return [index[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in index})
            raise UserError(
                f"the text has {len(unknown)} character(s) not in the vocabulary: {_show(unknown)}; "
                f"the vocabulary has {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in _ids(ids, self.vocab_size))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """The 256 byte values of the text's UTF-8 encoding."""

    kind = "byte"
    vocab_size = 256

    @classmethod
    def fit(cls, text: str = "") -> "ByteTokenizer":
        return cls()

    def encode(self, text: str) -> list[int]:
        # surrogateescape: a text read with errors="surrogateescape" gives back its original bytes
        return list(text.encode("utf-8", errors="surrogateescape"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(_ids(ids, 256)).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class WordTokenizer:
    """Whitespace-separated words; each newline is an end-of-sentence token."""

    kind = "word"

    def __init__(self, words: Iterable[str], unk: str = "<unk>", eos: str = "<eos>") -> None:
        words = list(words)
        if len(set(words)) != len(words) or unk not in words or eos not in words:
            raise UserError(f"a word vocabulary must list distinct words and include {unk!r} and {eos!r}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.unk, self.eos = unk, eos
        self.unk_id, self.eos_id = self.index[unk], self.index[eos]
        self.vocab_size = len(words)

    @classmethod
    def fit(cls, text: str, max_vocab: Optional[int] = None, unk: str = "<unk>", eos: str = "<eos>") -> "WordTokenizer":
        """The words of ``text`` by decreasing count, at most ``max_vocab`` entries including the two specials."""
        if max_vocab is not None and (not isinstance(max_vocab, int) or max_vocab < 2):
            raise UserError(f"max_vocab must be an int >= 2 (it includes {eos!r} and {unk!r}) or None, got {max_vocab!r}")
        counts = Counter(text.split())
        if not counts:
            raise UserError("cannot build a word vocabulary from a text without words")
        for special in (eos, unk):
            counts.pop(special, None)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            ranked = ranked[: max_vocab - 2]
        return cls([eos, unk] + ranked, unk=unk, eos=eos)

    def tokens(self, text: str) -> list[str]:
        """The word sequence: each line's words, an ``eos`` for every newline."""
        out: list[str] = []
        for i, line in enumerate(text.split("\n")):
            if i:
                out.append(self.eos)
            out.extend(line.split())
        return out

    def encode(self, text: str) -> list[int]:
        get, unk = self.index.get, self.unk_id
        return [get(w, unk) for w in self.tokens(text)]

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        for i in _ids(ids, self.vocab_size):
            if i == self.eos_id:
                out.append("\n")
            else:
                out.append(self.words[i] if not out or out[-1] == "\n" else " " + self.words[i])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "words": self.words, "unk": self.unk, "eos": self.eos}

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def build_tokenizer(kind: str, text: str, **options: Any) -> Tokenizer:
    """A tokenizer of ``kind`` ("char", "byte" or "word") fitted to ``text``; ``options`` go to ``fit``."""
    classes: dict[str, Any] = {"char": CharTokenizer, "byte": ByteTokenizer, "word": WordTokenizer}
    if kind not in classes:
        raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    if options and kind != "word":
        raise UserError(f"the {kind} tokenizer takes no options, got {', '.join(options)}")
    return classes[kind].fit(text, **options)


def tokenizer_from_dict(data: Any, where: str = "tokenizer") -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict``'s output."""
    kind = data.get("kind") if isinstance(data, dict) else None
    try:
        if kind == "char":
            return CharTokenizer(data["chars"])
        if kind == "byte":
            return ByteTokenizer()
        if kind == "word":
            return WordTokenizer(data["words"], unk=data["unk"], eos=data["eos"])
    except (KeyError, TypeError, UserError) as exc:
        raise UserError(f"{where}: invalid {kind} tokenizer ({exc})") from None
    raise UserError(f"{where}: unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")


def save_tokenizer(tokenizer: Tokenizer, directory: Union[str, Path]) -> Path:
    """Write ``tokenizer.json`` into ``directory`` atomically; returns its path."""
    from seqmix.models.pretrained import atomic_write_bytes

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_NAME
    atomic_write_bytes(path, (json.dumps(tokenizer.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def load_tokenizer(directory: Union[str, Path]) -> Tokenizer:
    """The tokenizer saved by ``save_tokenizer`` in ``directory``."""
    path = Path(directory) / TOKENIZER_NAME
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing; save the tokenizer with the model (save_tokenizer)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{str(path)!r} is not valid JSON ({' '.join(str(exc).split())}); the file is corrupt") from None
    return tokenizer_from_dict(data, where=repr(str(path)))
