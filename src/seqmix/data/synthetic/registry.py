"""Task name -> class; ``build_task`` and ``task_params`` validate names and parameters."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from seqmix.data.synthetic.base import SyntheticTask
from seqmix.data.synthetic.copying import SelectiveCopy
from seqmix.data.synthetic.passkey import Passkey
from seqmix.data.synthetic.recall import MQAR, Induction
from seqmix.data.synthetic.regression import ICLRegression
from seqmix.data.synthetic.sets import SetDisjoint
from seqmix.data.synthetic.state_tracking import CycleNav, ModArith, Parity, SumMod
from seqmix.errors import UserError

__all__ = ["TASKS", "build_task", "task_params", "list_tasks"]

TASKS: dict[str, type[SyntheticTask]] = {
    cls.name: cls
    for cls in (MQAR, SelectiveCopy, Induction, Parity, CycleNav, SumMod, ModArith, SetDisjoint, ICLRegression,
                Passkey)
}


def _task_class(name: Any) -> type[SyntheticTask]:
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown task {name!r}{hint}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def build_task(name: str, **params: Any) -> SyntheticTask:
    """The task ``name`` with ``params`` overriding its defaults (see ``task_params(name)``)."""
    return _task_class(name)(**params)


def task_params(name: str) -> dict[str, Any]:
    """The parameters of task ``name`` with their defaults."""
    fields = dataclasses.fields(_task_class(name).config_class)
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields}


def list_tasks() -> list[dict[str, Any]]:
    """One row per task: name, kind, source, summary (for listings and reports)."""
    return [{"name": n, "kind": c.kind, "source": c.source, "summary": c.summary} for n, c in TASKS.items()]
