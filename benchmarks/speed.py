"""First speed table: forward+backward time per mixer and per-token ``step`` latency.

A benchmark, not a test: it prints figures. All mixers are timed in one run, so compare them as
ratios; the machine may be shared and noisy, which is why every figure is the median of several
repeats after a warm-up.

    python benchmarks/speed.py                       # all mixers, B=4, d_model=256, T in 256 1024 4096
    python benchmarks/speed.py --mixers mamba lstm --lengths 256 1024 --repeats 5 --json speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch

from seqmix import build_mixer, list_mixers


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_backward(mixer, batch: int, length: int) -> Callable[[], None]:
    x = torch.randn(batch, length, mixer.d_model, requires_grad=True)

    def run() -> None:
        y, _ = mixer(x)
        y.sum().backward()
        mixer.zero_grad(set_to_none=True)
        x.grad = None

    return run


@torch.no_grad()
def step_latencies(mixer, context: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` for one sequence after ``context`` tokens of prefill."""
    _, state = mixer(torch.randn(1, context, mixer.d_model))
    x_t = torch.randn(1, mixer.d_model)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        _, state = mixer.step(x_t, state)
        times.append(time.perf_counter() - start)
    return times[2:]  # the first calls pay one-off costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="*", default=None, help="registry names (default: all)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 4096], help="step-latency contexts")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per figure (median reported)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per latency figure (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    names = args.mixers or [spec.name for spec in list_mixers()]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"B={args.batch}, d_model={args.d_model}, float32, default mode per mixer; fwd+bwd: median of "
          f"{args.repeats} rounds that visit every mixer in turn; step (B=1): median of {args.steps} calls")
    mixers = {name: build_mixer(name, d_model=args.d_model) for name in names}
    runs = {(n, T): forward_backward(m, args.batch, T) for n, m in mixers.items() for T in args.lengths}
    for run in runs.values():  # warm-up: one-off allocations and kernel selection
        run()
    # rounds interleave the mixers, so that a noisy spell on a shared machine hits all of them alike
    samples: dict = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            samples[key].append(seconds(run))

    header = f"{'mixer':<18}{'mode':<10}" + "".join(f"{'T=' + str(t) + ' ms':>14}" for t in args.lengths)
    header += f"{'tok/s T=' + str(args.lengths[-1]):>16}"
    header += "".join(f"{'step@' + str(c) + ' us':>14}" for c in args.contexts)
    print(header)
    print("-" * len(header))
    results = []
    for name, mixer in mixers.items():
        fwd_bwd = {T: statistics.median(samples[(name, T)]) for T in args.lengths}
        step = {c: statistics.median(step_latencies(mixer, c, args.steps)) for c in args.contexts}
        results.append({"mixer": name, "mode": mixer.modes[0], "fwd_bwd_s": fwd_bwd, "step_s": step})
        line = f"{name:<18}{mixer.modes[0]:<10}"
        line += "".join(f"{fwd_bwd[T] * 1e3:>14.1f}" for T in args.lengths)
        line += f"{args.batch * args.lengths[-1] / fwd_bwd[args.lengths[-1]]:>16,.0f}"
        line += "".join(f"{step[c] * 1e6:>14.0f}" for c in args.contexts)
        print(line, flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
                "d_model": args.d_model}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
