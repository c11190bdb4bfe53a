"""Multi30k task 1 (Elliott et al. 2016, "Multi30K: Multilingual English-German Image Descriptions").

The raw (cased, untokenised) files of the ``multi30k/dataset`` repository, ``data/task1/raw``, are
expected under ``<root>/multi30k/raw/`` as ``<split>.<lang>``: ``train`` (29,000 sentences), ``val``
(1,014) and the test sets ``test_2016_flickr`` (1,000, the one the literature reports),
``test_2017_flickr`` (1,000) and ``test_2017_mscoco`` (461). Line ``i`` of ``<split>.en`` translates
line ``i`` of ``<split>.de``; files of one split whose line counts differ are an error, since a
silently shifted pairing would train on wrong translations.

Raw text is kept as it is (only the line break and surrounding whitespace are removed), so that BLEU is
computed against the untouched references with sacrebleu's own tokenisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from seqmix.errors import UserError

__all__ = ["MULTI30K_LANGS", "MULTI30K_TEST_SETS", "read_lines", "read_parallel", "load_multi30k"]

MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_TEST_SETS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")


def read_lines(path: Union[str, Path], what: str) -> list[str]:
    """The lines of a UTF-8 file, stripped; a final newline does not make an extra empty line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{what} file {str(path)!r} is missing; put the Multi30k task1 raw files (<split>.<lang>, "
            "gunzipped) under <root>/multi30k/raw/ and pass that root as --data.root (or set SEQMIX_DATA)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} file {str(path)!r}: {exc.strerror or exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def read_parallel(src_path: Union[str, Path], tgt_path: Union[str, Path], what: str) -> list[tuple[str, str]]:
    """Pairs ``(line i of src_path, line i of tgt_path)``; differing line counts are a ``UserError``."""
    src, tgt = read_lines(src_path, what), read_lines(tgt_path, what)
    if len(src) != len(tgt):
        raise UserError(
            f"{what} files are not aligned: {str(src_path)!r} has {len(src)} lines but {str(tgt_path)!r} "
            f"has {len(tgt)}; line i of one must translate line i of the other"
        )
    if not src:
        raise UserError(f"{what} files {str(src_path)!r} and {str(tgt_path)!r} are empty")
    return list(zip(src, tgt))


def load_multi30k(
    root: Union[str, Path],
    test_set: str = "test_2016_flickr",
    src_lang: str = "en",
    tgt_lang: str = "de",
) -> dict[str, list[tuple[str, str]]]:
    """``{"train", "valid", "test"}`` -> ``(source, target)`` sentence pairs, English -> German by default."""
    if test_set not in MULTI30K_TEST_SETS:
        raise UserError(f"Multi30k test set {test_set!r} is unknown; choose one of {', '.join(MULTI30K_TEST_SETS)}")
    for field, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if lang not in MULTI30K_LANGS:
            raise UserError(f"Multi30k {field} {lang!r} is unknown; choose one of {', '.join(MULTI30K_LANGS)}")
    if src_lang == tgt_lang:
        raise UserError(f"Multi30k src_lang and tgt_lang must differ, got {src_lang!r} twice")
    raw = Path(root) / "multi30k" / "raw"
    files = {"train": "train", "valid": "val", "test": test_set}
    return {
        split: read_parallel(raw / f"{name}.{src_lang}", raw / f"{name}.{tgt_lang}", what=f"Multi30k {name}")
        for split, name in files.items()
    }
