"""Peak memory of one computation: the most tensor bytes alive at once, above what was alive before.

The figure is the same on every device: bytes handed out by PyTorch's allocator for tensors created
during the call (activations saved for backward, temporaries, gradients) at the worst moment; what
existed before the call (the model's weights, the inputs) is not counted.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes allocated
  at the start.
- CPU: PyTorch keeps no allocation statistics on CPU, so the call runs under PyTorch's profiler with
  ``profile_memory=True``, which records every allocation and free of PyTorch's CPU allocator (also
  those inside fused kernels and in the backward pass) with a timestamp; the running sum of these events
  in time order is the live-bytes curve, and its maximum is the peak.

Accuracy: exact for tensor storage, which is what activations and temporaries are. Not counted:
allocator rounding and fragmentation, memory a library takes outside PyTorch's allocator (oneDNN's
primitive caches, MKL's internal GEMM buffers, Python objects). On CPU, freeing a tensor that existed
before the call does not lower the curve (the profiler did not see it allocated), so free gradients
before measuring; the speed benchmarks do. ``tests/bench/test_speed.py`` checks that a known sequence
of allocations gives its peak to within 1 KiB and that an allocation made only in the backward pass is
seen. Resident-set size (``ru_maxrss``) was rejected as the CPU method: it is a process-lifetime
high-water mark, so import-time peaks and earlier measurements mask later ones, and glibc keeps freed
memory mapped, which would need a fresh process per figure.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Union

import torch

__all__ = ["peak_memory"]


def peak_memory(fn: Callable[[], Any], device: Union[str, torch.device] = "cpu") -> int:
    """Peak bytes of tensors alive at once during one call of ``fn``, above those alive before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    if device.type == "cpu":
        return _cpu_peak(fn)
    raise NotImplementedError(f"peak memory is measured on cpu and cuda, not on {device.type!r}")


def _cpu_peak(fn: Callable[[], Any]) -> int:
    # the autograd profiler directly: torch.profiler.profile would first import the compiler stack
    from torch.autograd import DeviceType
    from torch.autograd.profiler import profile

    prof = profile(use_cpu=True, profile_memory=True, use_kineto=True, record_shapes=False)
    with _quiet_stderr():  # Kineto prints a line at start and stop; the figures matter, not the log
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    events = [e for e in prof.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == DeviceType.CPU:
            live += event.nbytes()  # + allocation, - free
            peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ log lines), restoring it afterwards; a no-op where that fails."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
