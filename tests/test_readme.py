"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if README.exists() else []


@pytest.mark.skipif(not README.exists(), reason="README.md not found beside tests/")
def test_readme_has_python_examples():
    assert BLOCKS, "README.md should show the contract in at least one python block"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})


@pytest.mark.skipif(not README.exists(), reason="README.md not found beside tests/")
def test_readme_table_lists_every_registered_mixer():
    from seqmix import list_mixers

    text = README.read_text()
    missing = [s.name for s in list_mixers() if f"| `{s.name}` |" not in text]
    assert not missing, f"README's mixer table lacks {missing}"
