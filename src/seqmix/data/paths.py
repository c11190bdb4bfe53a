"""Where the shared datasets live: one lookup for every task's default data files.

``$SEQMIX_DATA`` if set, else the ``shared/data`` folder beside the checkout (``src/seqmix/data/`` ->
``../../../../shared/data``), which is where the project's small real corpora are staged (see its
``SOURCES.md``). Every loader takes an explicit path too; this is only the default.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "shared_data_root"]

DATA_ENV = "SEQMIX_DATA"


def shared_data_root() -> Path:
    """``$SEQMIX_DATA`` if set, else ``<checkout>/../shared/data`` (it may not exist: callers check)."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"
