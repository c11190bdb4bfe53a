"""The ``seqmix`` command: a thin, typed map from subcommands onto library functions.

Every flag can also come from a YAML file with ``--config FILE`` (jsonargparse).
"""

from __future__ import annotations

import json
import sys
from typing import Literal, Optional

__all__ = ["main", "list_command"]


def list_command(d_model: int = 256, context_len: int = 4096, format: Literal["table", "json"] = "table") -> None:
    """List the registered mixers: family, modes, state size and source paper.

    Args:
        d_model: model width at which parameters and state size are counted.
        context_len: context length at which the state size is counted (it grows only for attention).
        format: "table" for people, "json" for programs.
    """
    from seqmix.bench.catalog import mixer_table

    rows = mixer_table(d_model=d_model, context_len=context_len)
    if format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"seqmix mixers (d_model={d_model}; state per sequence after {context_len} tokens)")
    for column, justify in [("name", "left"), ("family", "left"), ("modes", "left"),
                            ("state floats", "right"), ("params", "right"), ("paper", "left")]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.name, r.family, ", ".join(r.modes), f"{r.state_floats:,}", f"{r.parameters:,}", r.paper)
    Console(width=max(Console().width, 150)).print(table)


def main(argv: Optional[list[str]] = None) -> None:
    """Run a subcommand; a user error prints ``error: <one line>`` and exits with code 2, no traceback."""
    from argparse import ArgumentError

    from jsonargparse import auto_cli

    from seqmix.errors import UserError
    from seqmix.train.commands import eval_command, explain_argument_error, generate_command, task_from_argv, train_command_for

    from seqmix.bench.speed import speed_command
    from seqmix.bench.compare import bench_command, compare_command

    args = sys.argv[1:] if argv is None else list(argv)
    task = task_from_argv(args[1:]) if args[:1] == ["train"] else "lm"
    try:
        train_command = train_command_for(task)  # the model and data sections depend on the task
    except UserError as exc:
        _fail(str(exc))
    commands = {
        "list": list_command,
        "train": train_command,
        "eval": eval_command,
        "generate": generate_command,
        # ---- commands (each helper adds its own line below, imported from its module)
        "speed": speed_command,
        "bench": bench_command,
        "compare": compare_command,
    }
    try:
        auto_cli(commands, args=args, as_positional=False, exit_on_error=False)
    except ArgumentError as exc:
        _fail(explain_argument_error(str(exc), task))
    except UserError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
