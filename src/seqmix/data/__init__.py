"""Data: tokenizers, text corpora (tiny Shakespeare ships with the package) and synthetic diagnostic tasks (``seqmix.data.synthetic``)."""

from seqmix.data.text import DEFAULT_CORPUS, default_corpus_path, load_text, ptb_paths, split_stream, token_stream
from seqmix.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "DEFAULT_CORPUS",
    "default_corpus_path",
    "load_text",
    "ptb_paths",
    "split_stream",
    "token_stream",
    "Tokenizer",
    "CharTokenizer",
    "ByteTokenizer",
    "WordTokenizer",
    "build_tokenizer",
    "tokenizer_from_dict",
    "save_tokenizer",
    "load_tokenizer",
]
