"""Autocast switched off for the parts of a computation that accumulate over time."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["full_precision"]


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``x``'s device: recurrences and their matmuls run in the state's dtype.

    A mixer's projections may run in bfloat16/float16 under autocast; the part that accumulates over
    time (a running sum, a normaliser that grows with t, a chunkwise state) must not, or it loses
    precision or overflows. Hand-written backwards use it too: backward may run under the caller's
    autocast.
    """
    try:
        return torch.autocast(x.device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support (e.g. meta): nothing to switch off
        return contextlib.nullcontext()
