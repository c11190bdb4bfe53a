"""Parsing the ``--tasks`` and ``--mixers`` lists of ``seqmix bench`` / ``seqmix compare``.

Task specs (a comma-separated string or a YAML list)::

    mqar                                  the task with its default parameters
    mqar:n_pairs=4,8,16                   one cell per value (values separated by commas)
    mqar:n_pairs=4,8:length=64,128        several parameters (separated by ':'): every combination
    passkey:eval_lengths=[64,256,1024]    a list value, in brackets
    mqar:n_pairs=4,8,parity,induction     a comma then a task name starts the next task
    all                                   every task with its defaults

Values are read as YAML scalars (``8`` is an int, ``0.5`` a float, ``true`` a bool, ``[1,2]`` a list).
Unknown tasks, unknown parameters and bad values fail at once, naming what is allowed.
"""

from __future__ import annotations

import itertools
from typing import Any, Union

import yaml

from seqmix.bench.variants import list_variants, resolve_variant
from seqmix.errors import UserError

__all__ = ["parse_tasks", "parse_mixers", "parse_ints", "TaskSpec"]

TaskSpec = tuple[str, dict[str, Any]]


def _task_names() -> list[str]:
    from seqmix.data.synthetic import TASKS

    return list(TASKS)


def _split_outside_brackets(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"{where}: cannot read the value {text!r}") from None


def _parse_one(spec: str) -> list[TaskSpec]:
    """``name[:param=v1,v2[:param2=...]]`` -> one (name, params) per combination of values."""
    from seqmix.data.synthetic import task_params

    name, *assignments = [p.strip() for p in _split_outside_brackets(spec.strip(), ":")]
    names = _task_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown task {name!r}{hint}; known tasks: {', '.join(names)}")
    allowed = task_params(name)
    axes: dict[str, list[Any]] = {}
    for assignment in assignments:
        key, eq, values = assignment.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise UserError(f"task spec {spec!r}: {assignment!r} must look like param=value[,value...]")
        if key not in allowed:
            raise UserError(f"task {name!r} has no parameter {key!r}; its parameters are: {', '.join(allowed)}")
        axes[key] = [_value(v.strip(), f"task spec {spec!r}") for v in _split_outside_brackets(values, ",")]
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())] if axes else [{}]
    from seqmix.data.synthetic import build_task

    for params in combos:
        build_task(name, **params)  # a bad value fails here, naming the field
    return [(name, params) for params in combos]


def parse_tasks(tasks: Union[str, list[str], None], default: list[str]) -> list[TaskSpec]:
    """The task specs of ``--tasks`` (see the module docstring); None or "default" -> ``default``."""
    if tasks is None or tasks == "default" or tasks == ["default"]:
        items = list(default)
    elif tasks == "all" or tasks == ["all"]:
        items = _task_names()
    elif isinstance(tasks, str):
        items = _group(tasks)
    else:
        items = [item for t in tasks for item in (_group(t) if isinstance(t, str) else [str(t)])]
    if not items:
        raise UserError("--tasks is empty; name at least one task (or 'all')")
    specs: list[TaskSpec] = []
    for item in items:
        for spec in _parse_one(item):
            if spec not in specs:
                specs.append(spec)
    return specs


def _group(text: str) -> list[str]:
    """Split a comma-separated list into task specs: a piece that starts with a task name starts a spec."""
    names = set(_task_names()) | {"all"}
    groups: list[str] = []
    for piece in _split_outside_brackets(text, ","):
        piece = piece.strip()
        if not piece:
            continue
        head = piece.split(":", 1)[0].strip()
        if head in names or not groups:
            groups.append(piece)
        else:
            groups[-1] += "," + piece  # another value of the previous parameter
    if "all" in groups:
        if len(groups) > 1:
            raise UserError("--tasks: 'all' cannot be combined with other task specs")
        return _task_names()
    return groups


def parse_mixers(mixers: Union[str, list[str], None], default: list[str]) -> list[str]:
    """Variant labels of ``--mixers``: comma-separated or a list; "all" = every registered mixer;
    "variants" = every mixer and variant (the -neg ones and attention-abs); None/"default" -> ``default``."""
    if mixers is None or mixers == "default" or mixers == ["default"]:
        labels = list(default)
    else:
        raw = mixers.split(",") if isinstance(mixers, str) else [p for m in mixers for p in str(m).split(",")]
        labels = []
        for label in (p.strip() for p in raw):
            if label == "all":
                from seqmix.mixers.registry import REGISTRY

                labels += list(REGISTRY)
            elif label == "variants":
                labels += list(list_variants())
            elif label:
                resolve_variant(label)  # unknown -> UserError listing the known ones
                labels.append(label)
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise UserError("--mixers is empty; name at least one mixer (or 'all')")
    return labels


def parse_ints(name: str, values: Union[int, str, list[int]]) -> list[int]:
    """``64``, ``"64,128"`` or ``[64, 128]`` -> positive ints."""
    if isinstance(values, (int, str)) and not isinstance(values, bool):
        values = [v for v in str(values).split(",") if v.strip()]
    out = []
    for v in values:
        try:
            n = int(str(v).strip())
        except ValueError:
            raise UserError(f"--{name} must be positive ints (e.g. 64 or 64,128), got {v!r}") from None
        if n <= 0:
            raise UserError(f"--{name} must be positive ints (e.g. 64 or 64,128), got {v!r}")
        out.append(n)
    if not out:
        raise UserError(f"--{name} is empty")
    return out
