"""``seqmix speed``: training and decoding speed of every mixer, measured on the user's own machine.

Per mixer (default options, default mode) and per sequence length T it measures the forward+backward
time of one ``[B, T, d_model]`` batch (median and IQR of interleaved rounds, see ``bench.timing``),
tokens per second, peak memory (``bench.memory``) and the matmul FLOPs of that work
(``bench.flops``), reported as an achieved rate and as a fraction of the machine's matmul ceiling,
which is measured once per run. Per context length it measures the latency of one ``step`` after a
state has been built by a whole-sequence forward over a random context of that length, and the state
size. A mixer that is missing or fails is reported with a one-line reason; the run goes on.

Steps of a run:
1. measure the matmul ceiling (``torch.matmul`` and, on CPU, oneDNN; the best counts);
2. build each mixer and one shared input and output gradient per T;
3. per (mixer, T): one instrumented fwd+bwd that counts FLOPs and peak memory (it also warms up);
4. time all (mixer, T) fwd+bwd closures in interleaved rounds;
5. per (mixer, context): prefill by ``forward``, then time single ``step`` calls;
6. assemble one JSON-able dict; the command also prints tables, writes the JSON and a PNG plot.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch

from seqmix import options
from seqmix.bench.flops import achieved_fraction, count_flops, matmul_ceiling
from seqmix.bench.memory import peak_memory
from seqmix.bench.timing import Timing, num_threads, reason as _reason, time_interleaved
from seqmix.errors import UserError
from seqmix.mixers.registry import build_mixer, get_spec, list_mixers

__all__ = ["run_speed", "speed_command", "resolve_mixers", "machine_info"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUICK = {"seq_lens": [32, 64], "context_lens": [8, 32], "batch_size": 2, "d_model": 64, "repeats": 1, "steps": 5,
         "ceiling_size": 256, "ceiling_seconds": 0.02}


def resolve_mixers(mixers: Union[str, list[str], None]) -> list[str]:
    """``"all"``/None -> every registered mixer; ``"a,b"`` or ``["a", "b"]`` -> those names, in that order.

    Unknown names are kept (they are reported as errors in the results, not raised here).
    """
    if mixers is None or mixers == "all" or mixers == ["all"]:
        return [spec.name for spec in list_mixers()]
    names = mixers.split(",") if isinstance(mixers, str) else [n for m in mixers for n in str(m).split(",")]
    return [n.strip() for n in names if n.strip()]


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to interpret the figures."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fwd_bwd(mixer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """One training step's mixer work: forward, then backward of a dense upstream gradient."""
    leaves = [*mixer.parameters(), x]

    def clear() -> None:
        for t in leaves:  # fresh gradients every call, as after optimizer.zero_grad(set_to_none=True)
            t.grad = None

    def run() -> None:
        clear()
        y, _ = mixer(x)
        y.backward(grad)

    run.clear = clear  # type: ignore[attr-defined]  # lets a memory measurement start from no gradients
    return run


def _step_latencies(mixer: Any, contexts: tuple[int, ...], batch: int, steps: int, dtype: torch.dtype,
                    device: torch.device, generator: torch.Generator) -> dict[int, Union[Timing, BaseException]]:
    """Latency of one ``step`` after each context, on states built by a whole-sequence forward.

    The contexts are timed in shuffled interleaved rounds of single calls, so that their ratio (does a
    step get slower as the context grows?) is measured under the same conditions.
    """
    calls: dict[int, Callable[[], Any]] = {}
    failed: dict[int, BaseException] = {}
    with torch.no_grad():
        x_t = torch.randn(batch, mixer.d_model, generator=generator).to(device, dtype)  # [B, D]
        for c in contexts:
            try:
                x = torch.randn(batch, c, mixer.d_model, generator=generator).to(device, dtype)  # [B, c, D]
                _, state = mixer(x)
                # every call starts from the same prefilled state: each one is a step at exactly `c`
                calls[c] = lambda state=state: mixer.step(x_t, state)
            except Exception as error:  # noqa: BLE001 - reported per context
                failed[c] = error
        timed = time_interleaved(calls, repeats=steps, warmup=3, device=device, shuffle=True)
    return {c: failed[c] if c in failed else timed[c] for c in contexts}


def run_speed(
    mixers: Union[str, list[str], None] = "all",
    seq_lens: tuple[int, ...] = (256, 1024, 4096),
    context_lens: tuple[int, ...] = (128, 1024, 8192),
    batch_size: int = 4,
    d_model: int = 256,
    dtype: str = "float32",
    device: str = "cpu",
    threads: Optional[int] = None,
    repeats: int = 3,
    steps: int = 50,
    step_batch_size: int = 1,
    ceiling_size: int = 2048,
    ceiling_seconds: float = 0.1,
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Measure; returns the JSON-able result (see ``speed_command`` for the arguments)."""
    try:  # bad options fail here, before any measurement, with a message naming the option
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        for name, values in (("seq_lens", seq_lens), ("context_lens", context_lens)):
            if not values:
                raise ValueError(f"{name} must list at least one length")
            for v in values:
                options.positive_int(name, v)
        for name, value in (("batch_size", batch_size), ("d_model", d_model), ("repeats", repeats),
                            ("steps", steps), ("step_batch_size", step_batch_size), ("ceiling_size", ceiling_size)):
            options.positive_int(name, value)
        if threads is not None:
            options.positive_int("threads", threads)
        torch_dtype, dev = DTYPES[dtype], torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but this torch build or machine has no CUDA device")
    except (ValueError, RuntimeError) as error:  # torch.device raises RuntimeError for a bad string
        raise UserError(str(error)) from None
    say = progress or (lambda _msg: None)
    names = resolve_mixers(mixers)
    gen = torch.Generator().manual_seed(0)

    with num_threads(threads):
        # 1. the ceiling
        say("matmul ceiling")
        ceiling = matmul_ceiling(ceiling_size, dtype=torch_dtype, device=dev, repeats=max(3, repeats),
                                 sample_seconds=ceiling_seconds)
        # 2. mixers, inputs and upstream gradients (shared by all mixers)
        built: dict[str, Any] = {}
        entries: dict[str, dict[str, Any]] = {}
        for name in names:
            entry: dict[str, Any] = {"name": name, "error": None, "fwd_bwd": [], "step": []}
            entries[name] = entry
            try:
                say(f"build {name}")
                spec = get_spec(name)
                mixer = build_mixer(name, d_model=d_model).to(device=dev, dtype=torch_dtype)
                entry.update(family=spec.family, mode=mixer.modes[0],
                             parameters=sum(p.numel() for p in mixer.parameters()))
                built[name] = mixer
            except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
                entry["error"] = _reason(error)
        inputs = {T: torch.randn(batch_size, T, d_model, generator=gen).to(dev, torch_dtype).requires_grad_()
                  for T in seq_lens}  # [B, T, D]
        grads = {T: torch.randn(batch_size, T, d_model, generator=gen).to(dev, torch_dtype) for T in seq_lens}

        # 3. one instrumented run per (mixer, T): FLOPs and peak memory
        runs: dict[tuple[str, int], Callable[[], None]] = {}
        cells: dict[tuple[str, int], dict[str, Any]] = {}
        for name, mixer in built.items():
            for T in seq_lens:
                cell: dict[str, Any] = {"seq_len": T, "error": None}
                cells[(name, T)] = cell
                run = _fwd_bwd(mixer, inputs[T], grads[T])
                say(f"count FLOPs and memory: {name} T={T}")
                try:
                    counted: list[int] = []  # one run under both instruments (neither allocates tensors)
                    run.clear()  # type: ignore[attr-defined]
                    cell["peak_bytes"] = peak_memory(lambda: counted.append(count_flops(run)), dev)
                    cell["flops"] = counted[0]
                    runs[(name, T)] = run
                except Exception as error:  # noqa: BLE001
                    cell["error"] = _reason(error)

        # 4. interleaved timing
        total = len(runs) * (repeats + 1)
        timings = time_interleaved(
            runs, repeats=repeats, warmup=1, device=dev,
            on_round=lambda i, key: say(f"fwd+bwd {i + 1}/{total}: {key[0]} T={key[1]}"),
        )
        for key, timing in timings.items():
            cell = cells[key]
            if isinstance(timing, BaseException):
                cell["error"] = _reason(timing)
                continue
            cell.update(timing.as_dict())
            cell["tokens_per_s"] = batch_size * key[1] / timing.median
            cell["gflops_per_s"] = cell["flops"] / timing.median / 1e9
            cell["ceiling_fraction"] = achieved_fraction(cell["flops"], timing.median, ceiling.best)
        for (name, _), cell in cells.items():
            entries[name]["fwd_bwd"].append(cell)
        del runs, inputs, grads

        # 5. decoding
        for name, mixer in built.items():
            mixer.eval()
            say(f"step latency: {name}")
            if getattr(mixer, "causal", True):
                latencies = _step_latencies(mixer, context_lens, step_batch_size, steps, torch_dtype, dev, gen)
            else:
                latencies = {c: RuntimeError("non-causal mixer has no step") for c in context_lens}
            for c in context_lens:
                step: dict[str, Any] = {"context": c, "error": None}
                entries[name]["step"].append(step)
                try:
                    step["state_size"] = mixer.state_size(c)
                except Exception as error:  # noqa: BLE001
                    step["error"] = _reason(error)
                result = latencies[c]
                if isinstance(result, BaseException):
                    step["error"] = step["error"] or _reason(result)
                else:
                    step.update(result.as_dict())
            try:  # bounded: the state after the longest context is no larger than after one token
                entries[name]["bounded_state"] = mixer.state_size(max(context_lens)) == mixer.state_size(1)
            except Exception:  # noqa: BLE001 - already reported in the step cells
                entries[name]["bounded_state"] = None

        # 6. the result
        return {
            "machine": machine_info(dev),
            "ceiling": ceiling.as_dict(),
            "config": {"mixers": names, "seq_lens": list(seq_lens), "context_lens": list(context_lens),
                       "batch_size": batch_size, "d_model": d_model, "dtype": dtype, "repeats": repeats,
                       "steps": steps, "step_batch_size": step_batch_size},
            "methods": {
                "fwd_bwd": "forward + backward of a dense random output gradient; median of interleaved rounds",
                "peak_bytes": "peak bytes of tensors alive at once during one fwd+bwd, above those alive "
                              "before it (CPU: torch.profiler allocation events; CUDA: max_memory_allocated)",
                "flops": "matmul FLOPs by the formulas of torch.utils.flop_counter "
                         "(+ CPU SDPA and fused RNN kernels); element-wise work counts zero",
                "step": "median of single step calls on a state prefilled by forward over the context; "
                        "the contexts of a mixer alternate in shuffled rounds",
            },
            "mixers": list(entries.values()),
        }


def speed_command(
    mixers: Union[str, list[str]] = "all",
    seq_lens: list[int] = [256, 1024, 4096],  # noqa: B006 - jsonargparse reads the default for --help
    context_lens: list[int] = [128, 1024, 8192],  # noqa: B006
    batch_size: int = 4,
    d_model: int = 256,
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32",
    device: str = "cpu",
    threads: Optional[int] = None,
    repeats: int = 3,
    steps: int = 50,
    step_batch_size: int = 1,
    out: str = "speed",
    plot: bool = True,
    quick: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every mixer's training (fwd+bwd) and decoding (step) on this machine.

    Prints two tables, and writes ``OUT.json`` (all figures, machine info) and ``OUT.png`` (log-log
    plots of time vs. sequence length and step latency vs. context). Mixers use their default options
    and default mode. All (mixer, length) pairs are timed in interleaved rounds, so compare them as
    ratios: a busy machine slows all of them alike.

    Args:
        mixers: "all", a comma-separated list ("mamba,lstm") or a list of registry names.
        seq_lens: sequence lengths T for forward+backward, e.g. [256,1024,4096].
        context_lens: context lengths for the step latency, e.g. [128,1024,8192].
        batch_size: batch size B of the forward+backward runs.
        d_model: model width.
        dtype: parameter and input dtype.
        device: "cpu", "cuda", "cuda:1", ...
        threads: torch intra-op threads (default: torch's choice).
        repeats: timed rounds per figure; the median is reported with its interquartile range.
        steps: timed step calls per latency figure.
        step_batch_size: batch size of the decoding steps.
        out: output path prefix: writes OUT.json and OUT.png.
        plot: write the PNG plot.
        quick: a smoke run at toy sizes (T 32/64, contexts 8/32, B=2, d_model=64, one repeat).
        progress: show what is being measured while it runs.
    """
    sizes = dict(seq_lens=tuple(seq_lens), context_lens=tuple(context_lens), batch_size=batch_size,
                 d_model=d_model, repeats=repeats, steps=steps)
    if quick:
        sizes.update({k: tuple(v) if isinstance(v, list) else v for k, v in QUICK.items()})
    from seqmix.bench.report import print_tables, progress_reporter

    with progress_reporter(enabled=progress) as say:
        result = run_speed(mixers, dtype=dtype, device=device, threads=threads, step_batch_size=step_batch_size,
                           progress=say, **sizes)  # type: ignore[arg-type]
    prefix = Path(out[:-5] if out.endswith(".json") else out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".json")
    import json

    json_path.write_text(json.dumps(result, indent=2))
    written = [str(json_path)]
    if plot:
        from seqmix.bench.plot import plot_speed

        png_path = prefix.with_name(prefix.name + ".png")
        plot_speed(result, png_path)
        written.append(str(png_path))
    print_tables(result, written)
    return result
