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


def median_seconds(fn: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_forward_backward(mixer, batch: int, length: int, repeats: int) -> float:
    x = torch.randn(batch, length, mixer.d_model, requires_grad=True)

    def run() -> None:
        y, _ = mixer(x)
        y.sum().backward()
        mixer.zero_grad(set_to_none=True)
        x.grad = None

    return median_seconds(run, repeats)


@torch.no_grad()
def time_step(mixer, context: int, steps: int) -> float:
    """Median seconds of one ``step`` for one sequence after ``context`` tokens of prefill."""
    _, state = mixer(torch.randn(1, context, mixer.d_model))
    x_t = torch.randn(1, mixer.d_model)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        _, state = mixer.step(x_t, state)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first calls pay one-off costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="*", default=None, help="registry names (default: all)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 4096], help="step-latency contexts")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median reported)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per latency figure (median)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    names = args.mixers or [spec.name for spec in list_mixers()]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"B={args.batch}, d_model={args.d_model}, float32, default mode per mixer; "
          f"median of {args.repeats} (fwd+bwd) / {args.steps} (step, B=1)")
    header = f"{'mixer':<18}{'mode':<10}" + "".join(f"{'T=' + str(t) + ' ms':>14}" for t in args.lengths)
    header += "".join(f"{'tok/s T=' + str(args.lengths[-1]):>16}" for _ in [0])
    header += "".join(f"{'step@' + str(c) + ' us':>14}" for c in args.contexts)
    print(header)
    print("-" * len(header))
    results = []
    for name in names:
        mixer = build_mixer(name, d_model=args.d_model)
        row = {"mixer": name, "mode": mixer.modes[0], "fwd_bwd_s": {}, "step_s": {}}
        for T in args.lengths:
            row["fwd_bwd_s"][T] = time_forward_backward(mixer, args.batch, T, args.repeats)
        for c in args.contexts:
            row["step_s"][c] = time_step(mixer, c, args.steps)
        results.append(row)
        line = f"{name:<18}{row['mode']:<10}"
        line += "".join(f"{row['fwd_bwd_s'][T] * 1e3:>14.1f}" for T in args.lengths)
        line += f"{args.batch * args.lengths[-1] / row['fwd_bwd_s'][args.lengths[-1]]:>16,.0f}"
        line += "".join(f"{row['step_s'][c] * 1e6:>14.0f}" for c in args.contexts)
        print(line, flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
                "d_model": args.d_model}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
