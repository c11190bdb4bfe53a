"""Wall-clock timing that holds up on a shared, noisy machine.

Every figure is the median of several repeats after a warm-up, reported with its interquartile range
(IQR) so that a reader can tell a real difference from noise. Candidates that are to be compared are
timed in *interleaved rounds*: round r runs every candidate once, in turn, so a noisy spell (another
process, a frequency drop) hits all of them alike instead of whichever happened to run at that moment.
Ratios measured this way in one run are trustworthy; absolute figures from a busy machine are not.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Mapping, Optional, TypeVar, Union

import torch

__all__ = ["Timing", "num_threads", "reason", "synchronize", "time_calls", "time_interleaved"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Timing:
    """Seconds of several repeats of one measurement."""

    samples: tuple[float, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    @property
    def iqr(self) -> float:
        """Interquartile range: the spread of the middle half of the samples (0 for one sample)."""
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "iqr_s": self.iqr, "repeats": len(self.samples)}


def reason(error: BaseException) -> str:
    """What went wrong, in one line: the exception type and the first line of its message."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError quotes str()
    text = str(message).strip().splitlines()[0] if str(message).strip() else ""
    return f"{type(error).__name__}: {text}"[:240]


def _quantile(samples: tuple[float, ...], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), exact for any number of samples."""
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@contextlib.contextmanager
def num_threads(n: Optional[int]) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (None: leave torch's choice); restore afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"threads must be a positive int or None, got {n!r}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def synchronize(device: Union[str, torch.device, None]) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU), so a timer sees the whole computation."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _seconds(fn: Callable[[], Any], device: Union[str, torch.device, None]) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(
    candidates: Mapping[K, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    device: Union[str, torch.device, None] = None,
    interleave: bool = True,
    on_round: Optional[Callable[[int, K], None]] = None,
    slow_seconds: Optional[float] = None,
    shuffle: bool = False,
) -> dict[K, Union[Timing, BaseException]]:
    """Time each candidate ``repeats`` times after ``warmup`` untimed calls.

    With ``interleave`` (the default) round r calls every candidate once, in turn; without it each
    candidate runs all its repeats back to back. A candidate that raises is recorded as the exception
    and dropped from later rounds, so one failure never stops the others; ``KeyboardInterrupt`` still
    stops everything.

    Args:
        candidates: name -> a zero-argument callable doing the work to time.
        repeats: timed calls per candidate (the median is the figure to report).
        warmup: untimed calls first, which pay one-off costs (allocation, kernel selection, caches).
        device: the device to synchronize before and after each call (CUDA runs asynchronously).
        interleave: interleave candidates across rounds (see the module docstring).
        on_round: called as ``on_round(call_index, key)`` before every call, e.g. to advance a progress bar.
        slow_seconds: a candidate whose warm-up call took longer than this is timed once, in the first
            round, instead of ``repeats`` times (a budget for reference loops that take minutes).
        shuffle: visit the candidates in a new (seeded) random order every round, so that no candidate
            always runs right after the same neighbour (whose data it may find in cache, or evict).

    Returns:
        key -> ``Timing`` or the exception the candidate raised.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    results: dict[K, Union[Timing, BaseException]] = {}
    samples: dict[K, list[float]] = {key: [] for key in candidates}
    warm: dict[K, float] = {}
    calls = 0

    def run(key: K, timed: bool) -> None:
        nonlocal calls
        if key in results:  # failed earlier
            return
        if on_round is not None:
            on_round(calls, key)
        calls += 1
        try:
            elapsed = _seconds(candidates[key], device)
        except Exception as error:  # noqa: BLE001 - a failing candidate is reported, not fatal
            results[key] = error
            return
        if timed:
            samples[key].append(elapsed)
        else:
            warm[key] = elapsed

    keys = list(candidates)
    rng = random.Random(0)
    rounds = [rng.sample(keys, len(keys)) if shuffle else keys for _ in range(repeats)]
    order = [(key, r) for r in range(repeats) for key in rounds[r]] if interleave else [
        (key, r) for key in keys for r in range(repeats)
    ]
    for key in candidates:
        for _ in range(warmup):
            run(key, timed=False)
    for key, r in order:
        if r > 0 and slow_seconds is not None and warm.get(key, 0.0) > slow_seconds:
            continue
        run(key, timed=True)
    for key in candidates:
        if key not in results:
            results[key] = Timing(tuple(samples[key]))
    return {key: results[key] for key in candidates}


def time_calls(
    fn: Callable[[], Any], calls: int = 50, warmup: int = 3, device: Union[str, torch.device, None] = None
) -> Timing:
    """Seconds of each of ``calls`` single calls of a short ``fn`` (e.g. one decoding step).

    Each call is timed on its own, so the median discards the calls a busy machine interrupted.
    """
    if calls < 1 or warmup < 0:
        raise ValueError(f"need calls >= 1 and warmup >= 0, got calls={calls}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    return Timing(tuple(_seconds(fn, device) for _ in range(calls)))
