"""Tokenizers for sentence pairs (source -> target): word, byte-level BPE, and raw bytes.

Every kind shares four special ids, so a model and its decoding loop never ask which kind it has:
``pad_id = 0``, ``bos_id = 1``, ``eos_id = 2``, ``unk_id = 3``. ``encode_src``/``encode_tgt`` add no
BOS/EOS (the batching code and the model decide where they go); ``decode_tgt`` stops at the first EOS
and drops PAD and BOS, so it can be handed a raw decoder output.

* ``word`` -- whitespace-separated words (SCAN). The vocabularies come from the training pairs only,
  words by decreasing count (ties alphabetically), at most ``vocab_size`` entries including the four
  specials; an unseen word becomes ``<unk>``. Source and target vocabularies are separate by default
  (SCAN's command and action words are disjoint, and a shared table would only waste output logits).
* ``bpe`` -- byte-level BPE (Sennrich et al. 2016; the GPT-2 byte alphabet, Radford et al. 2019)
  trained with the HuggingFace ``tokenizers`` library on the training pairs only. The byte-level
  pre-tokenizer maps every UTF-8 byte to a symbol, so there is no ``<unk>`` and
  ``decode(encode(text)) == text`` for any text -- BLEU then sees exactly the detokenised string. One
  joint vocabulary for source and target by default, as in Vaswani et al. 2017 and Sennrich et al. 2016
  for related languages: names, numbers and cognates share pieces, and the embeddings can be tied.
  ``shared=False`` trains one BPE per side instead. No prefix space is added, so the first word of a
  sentence and the same word after a space are different pieces: the price of an exact round trip.
* ``byte`` -- UTF-8 bytes, id = byte + 4; nothing to train, 260 ids per side.

``save`` writes one JSON file, ``pair_tokenizer.json`` (atomically; no pickle), and ``load`` reads it
back, raising a ``UserError`` that names the file if it is missing or corrupt.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from seqmix.errors import UserError

__all__ = ["PAIR_TOKENIZER_KINDS", "PAIR_TOKENIZER_NAME", "SPECIALS", "PairTokenizer", "build_pair_tokenizer"]

PAIR_TOKENIZER_KINDS = ("word", "bpe", "byte")
PAIR_TOKENIZER_NAME = "pair_tokenizer.json"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3 in every kind
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_FORMAT = "seqmix-pair-tokenizer"
_BYTE_ALPHABET = 256


class _WordCodec:
    """Whitespace words <-> ids; ``words[:4]`` are the specials."""

    def __init__(self, words: list[str]) -> None:
        if list(words[:4]) != list(SPECIALS) or len(set(words)) != len(words):
            raise ValueError(f"a word vocabulary must start with {SPECIALS} and list distinct words")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = len(self.words)

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int) -> "_WordCodec":
        counts = Counter(w for text in texts for w in text.split())
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - len(SPECIALS)]
        return cls(list(SPECIALS) + ranked)

    def encode(self, text: str) -> list[int]:
        get = self.index.get
        return [get(w, UNK_ID) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def to_json(self) -> Any:
        return self.words


class _ByteCodec:
    """UTF-8 bytes shifted past the specials; an UNK id decodes to U+FFFD."""

    vocab_size = len(SPECIALS) + _BYTE_ALPHABET

    def encode(self, text: str) -> list[int]:
        return [b + len(SPECIALS) for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - len(SPECIALS) if i >= len(SPECIALS) else 0xFF for i in ids)  # 0xFF is never valid UTF-8
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> Any:
        return None


def _tokenizers_library() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("the bpe tokenizer needs the tokenizers package: pip install 'tokenizers>=0.15'") from None
    return tokenizers


class _BpeCodec:
    """A HuggingFace ``tokenizers.Tokenizer`` with a byte-level BPE model."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        for i, special in enumerate(SPECIALS):
            if tokenizer.token_to_id(special) != i:
                raise ValueError(f"the BPE vocabulary must hold {special!r} at id {i}")

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int) -> "_BpeCodec":
        hf = _tokenizers_library()
        pre_tokenizers = hf.pre_tokenizers
        tokenizer = hf.Tokenizer(hf.models.BPE(unk_token=SPECIALS[UNK_ID]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),  # listed first, so they get ids 0..3
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever unknown
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, data: Any) -> "_BpeCodec":
        return cls(_tokenizers_library().Tokenizer.from_str(json.dumps(data)))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def to_json(self) -> Any:
        return json.loads(self.tokenizer.to_str())


class PairTokenizer:
    """Source and target codecs behind one interface (see the module docstring)."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, kind: str, src: Any, tgt: Any, shared: bool) -> None:
        self.kind, self.shared = kind, shared
        self._src, self._tgt = src, tgt
        self.src_vocab_size: int = src.vocab_size
        self.tgt_vocab_size: int = tgt.vocab_size

    def encode_src(self, text: str) -> list[int]:
        """Source ids, no BOS/EOS."""
        return self._src.encode(text)

    def encode_tgt(self, text: str) -> list[int]:
        """Target ids, no BOS/EOS."""
        return self._tgt.encode(text)

    def decode_tgt(self, ids: Union[Sequence[int], Any]) -> str:
        """Text of target ids up to the first EOS, without PAD and BOS."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        kept: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if not 0 <= i < self.tgt_vocab_size:
                raise ValueError(f"target id {i} is outside the vocabulary [0, {self.tgt_vocab_size})")
            if i not in (PAD_ID, BOS_ID):
                kept.append(i)
        return self._tgt.decode(kept)

    def to_dict(self) -> dict[str, Any]:
        tgt = None if self.shared else self._tgt.to_json()
        return {"format": _FORMAT, "version": 1, "kind": self.kind, "shared": self.shared,
                "src": self._src.to_json(), "tgt": tgt}

    @classmethod
    def from_dict(cls, data: Any) -> "PairTokenizer":
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a seqmix pair tokenizer (no \"format\": {_FORMAT!r})")
        kind, shared = data.get("kind"), data.get("shared")
        if kind not in PAIR_TOKENIZER_KINDS or not isinstance(shared, bool):
            raise ValueError(f"bad kind {kind!r} or shared {shared!r}")
        make = {"word": _WordCodec, "bpe": _BpeCodec.from_json, "byte": lambda _: _ByteCodec()}[kind]
        src = make(data["src"])
        return cls(kind, src, src if shared else make(data["tgt"]), shared)

    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``pair_tokenizer.json`` into ``directory`` atomically; returns its path."""
        from seqmix.models.pretrained import atomic_write_bytes

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PAIR_TOKENIZER_NAME
        atomic_write_bytes(path, (json.dumps(self.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "PairTokenizer":
        """The tokenizer ``save`` wrote into ``directory``."""
        path = Path(directory) / PAIR_TOKENIZER_NAME
        if not path.is_file():
            raise UserError(f"{str(path)!r} is missing; save the pair tokenizer there (PairTokenizer.save) first")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except UserError:  # e.g. the tokenizers package is missing: not the file's fault
            raise
        except Exception as exc:  # bad JSON, bad structure, or the tokenizers library rejecting its part
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"{str(path)!r} is not a valid pair tokenizer ({reason}); the file is corrupt") from None

    def __repr__(self) -> str:
        return (f"PairTokenizer(kind={self.kind!r}, shared={self.shared}, "
                f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size})")


def build_pair_tokenizer(
    kind: str,
    train_pairs: Sequence[tuple[str, str]],
    vocab_size: int = 8000,
    shared: Optional[bool] = None,
) -> PairTokenizer:
    """A tokenizer of ``kind`` fitted to ``train_pairs`` (the TRAINING split only).

    ``vocab_size`` is the largest vocabulary per side, specials included (word, bpe; the byte kind
    always has 260). ``shared`` None means the kind's default: separate for word, joint for bpe; the
    byte kind is the same table on both sides either way.
    """
    if kind not in PAIR_TOKENIZER_KINDS:
        raise UserError(f"tokenizer kind {kind!r} is unknown; choose one of {', '.join(PAIR_TOKENIZER_KINDS)}")
    if shared is not None and not isinstance(shared, bool):
        raise UserError(f"shared must be true, false or None (the kind's default), got {shared!r}")
    smallest = {"word": len(SPECIALS) + 1, "bpe": len(SPECIALS) + _BYTE_ALPHABET + 1, "byte": 1}[kind]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        why = " (4 specials + the 256-byte base alphabet + at least one merge)" if kind == "bpe" else ""
        raise UserError(f"vocab_size for the {kind} tokenizer must be an int >= {smallest}{why}, got {vocab_size!r}")
    pairs = list(train_pairs)
    if not pairs:
        raise UserError("cannot build a pair tokenizer from an empty list of training pairs")
    if kind == "byte":
        codec = _ByteCodec()
        return PairTokenizer("byte", codec, codec, shared=True)
    shared = (kind == "bpe") if shared is None else shared
    fit = _WordCodec.fit if kind == "word" else _BpeCodec.fit
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if shared:
        codec = fit(sources + targets, vocab_size)
        return PairTokenizer(kind, codec, codec, shared=True)
    return PairTokenizer(kind, fit(sources, vocab_size), fit(targets, vocab_size), shared=False)
