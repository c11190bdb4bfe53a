"""The results file of the diagnostic suite: JSON lines, one finished cell per line.

A grid of cells takes minutes to hours, so it must survive being interrupted. Each finished cell is
appended as one line, flushed and fsync'ed before the next cell starts; a crash can at worst leave one
torn last line. Loading skips lines that are not complete JSON objects (and counts them), so a torn
line never hides the cells before it, and appending after a torn line first ends that line with a
newline, so the fragment stays alone on its line and the new record is intact. Rerunning a grid skips
every cell whose ``key`` is already in the file: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Union

__all__ = ["ResultsFile", "load_records"]


def load_records(path: Union[str, Path]) -> tuple[list[dict[str, Any]], int]:
    """All complete records of a results file and the number of unreadable lines (0 for a clean file).

    A missing file holds no records. When a key appears twice (two runs appended the same cell), the
    last record wins.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    by_key: dict[str, dict[str, Any]] = {}
    bad = 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad += 1  # a torn line from a crash (or an edit); the other lines still count
                continue
            if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                bad += 1
                continue
            by_key[record["key"]] = record
    return list(by_key.values()), bad


class ResultsFile:
    """Append-only JSON-lines results of one grid (see the module docstring)."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.records, self.unreadable_lines = load_records(self.path)
        self._keys = {r["key"] for r in self.records}

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def get(self, key: str) -> dict[str, Any] | None:
        for record in self.records:
            if record["key"] == key:
                return record
        return None

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (which must carry a string ``key``) as one durable line."""
        if not isinstance(record.get("key"), str):
            raise ValueError("a results record needs a string 'key'")
        line = json.dumps(record, sort_keys=True, allow_nan=True).encode("utf-8")
        if b"\n" in line:  # json.dumps escapes newlines inside strings; this would be a bug
            raise AssertionError("a JSON record must fit on one line")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > 0 and not _ends_with_newline(self.path):
                f.write(b"\n")  # close a torn last line, so it cannot swallow this record
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.records = [r for r in self.records if r["key"] != record["key"]] + [record]
        self._keys.add(record["key"])

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.append(record)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
