"""Exceptions for problems caused by user input.

`UserError` marks an error the user can fix (a bad option, a missing or corrupt
file, a prompt outside the vocabulary). Its message is one line that names the
problem; the command-line interface prints it as ``error: <message>`` without a
traceback. It subclasses `ValueError` so library callers can keep catching
``ValueError``.
"""


class UserError(ValueError):
    """A problem caused by user input, reported as a one-line message."""


__all__ = ["UserError"]
