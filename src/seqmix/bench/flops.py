"""Floating-point work: counted FLOPs of a computation and the machine's matrix-multiply ceiling.

``count_flops`` runs a computation under a dispatch mode that applies the FLOP formulas of
``torch.utils.flop_counter`` (the registry behind ``FlopCounterMode``), which cover matrix products
only (mm, bmm, addmm, baddbmm, convolutions, attention kernels): an element-wise op, a reduction or an
exp counts zero. That is the right numerator for an "achieved rate
of the GEMM units" figure, and it is what the chunkwise forms are designed to maximise. Two CPU kernels
the counter does not know are added here with their exact matmul counts:

- ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward), PyTorch's CPU SDPA kernel.
  With ``is_causal=True`` the kernel skips the masked blocks, so the count is scaled by the fraction of
  the score matrix kept, ``(T + 1) / (2 T)`` for square causal attention.
- ``aten.mkldnn_rnn_layer`` (and its backward), the fused oneDNN LSTM/GRU/RNN layer: forward
  ``2 T B G H (I + H)`` for G gates, input size I and hidden size H; backward twice that (gradients of
  the inputs and of the weights).

``matmul_ceiling`` measures the best dense float matmul rate the machine offers, once: ``torch.matmul``
(MKL/OpenBLAS on CPU, cuBLAS on CUDA) and, on CPU, the same product through oneDNN (the library behind
PyTorch's fused CPU kernels), which on some machines is considerably faster. Every path's result is
checked against ``torch.matmul``'s before its rate counts. The ceiling is the best rate measured, not a
theoretical peak, so a fraction of it says how well a form feeds the GEMM units that the machine has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from seqmix.bench.timing import Timing, reason as _reason, time_interleaved

__all__ = ["count_flops", "MatmulCeiling", "matmul_ceiling", "achieved_fraction"]

aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _causal_fraction(q_len: int, k_len: int, is_causal: bool) -> float:
    """Fraction of the ``q_len x k_len`` score matrix a causal kernel computes (top-left aligned mask)."""
    if not is_causal:
        return 1.0
    m = min(q_len, k_len)  # query i sees keys 0..i (capped at k_len)
    kept = m * (m + 1) // 2 + (q_len - m) * k_len
    return kept / (q_len * k_len)


def _sdpa_cpu(query, key, value, dropout_p=0.0, is_causal=False, *args, out_val=None, **kwargs) -> int:
    full = sdpa_flop_count(_shape(query), _shape(key), _shape(value))
    return round(full * _causal_fraction(query.shape[-2], key.shape[-2], is_causal))


def _sdpa_cpu_backward(grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False,
                       *args, out_val=None, **kwargs) -> int:
    full = sdpa_backward_flop_count(_shape(grad_out), _shape(query), _shape(key), _shape(value))
    return round(full * _causal_fraction(query.shape[-2], key.shape[-2], is_causal))


def _rnn_layer_flops(inputs, w_ih, w_hh, batch_first: bool) -> int:
    """2 T B (G H) (I + H): the input and the recurrent GEMM of every step."""
    steps, batch = (inputs.shape[1], inputs.shape[0]) if batch_first else (inputs.shape[0], inputs.shape[1])
    gate_rows, in_size = w_ih.shape  # [G H, I]
    hidden = w_hh.shape[1]
    return 2 * steps * batch * gate_rows * (in_size + hidden)


def _mkldnn_rnn_layer(inputs, w0, w1, w2, w3, hx, cx, reverse, batch_sizes, mode, hidden_size, num_layers,
                      has_biases, bidirectional, batch_first, train, *args, out_val=None, **kwargs) -> int:
    return _rnn_layer_flops(inputs, w0, w1, batch_first)


def _mkldnn_rnn_layer_backward(inputs, w1, w2, w3, w4, hx, cx_tmp, output, hy, cy, grad_output, grad_hy,
                               grad_cy, reverse, mode, hidden_size, num_layers, has_biases, train,
                               bidirectional, batch_sizes, batch_first, *args, out_val=None, **kwargs) -> int:
    return 2 * _rnn_layer_flops(inputs, w1, w2, batch_first)


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    mapping: dict[Any, Callable[..., int]] = {}
    for name, fn in [
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward),
        ("mkldnn_rnn_layer", _mkldnn_rnn_layer),
        ("mkldnn_rnn_layer_backward", _mkldnn_rnn_layer_backward),
    ]:
        op = getattr(aten, name, None)  # absent from some builds
        if op is not None:
            mapping[op] = fn  # takes tensors (the registry's formulas are wrapped to take shapes)
    return mapping


class _MatmulFlops(TorchDispatchMode):
    """Sums the FLOP formulas of ``torch.utils.flop_counter`` (plus ours) over every op that runs.

    The same registry and rules as ``FlopCounterMode`` (an op without a formula is decomposed when it
    can be, so that its parts are counted), without its per-module bookkeeping and without the compiler
    guard torch wraps around dispatch modes, whose first call imports the compiler stack (seconds).
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch would wrap __torch_dispatch__ to keep its compiler out, importing the compiler on the
        # first op (seconds); eager counting never compiles. If torch drops this hook, only start-up slows.
        return False

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.formulas = {**flop_registry, **_custom_mapping()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        formula = self.formulas.get(func._overloadpacket)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul FLOPs (multiply and add counted separately) of one call of ``fn``, forward and backward."""
    with _MatmulFlops() as counter:
        fn()
    return counter.total


# --------------------------------------------------------------------------- the ceiling
@dataclass(frozen=True)
class MatmulCeiling:
    """Measured dense matmul rates, GFLOP/s, per path; ``best`` is the ceiling to compare against."""

    size: int  # n of the n x n x n products timed
    dtype: str
    gflops: dict[str, float] = field(default_factory=dict)  # path -> rate (only paths that ran and agreed)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it did not count

    @property
    def best(self) -> Optional[float]:
        return max(self.gflops.values(), default=None)

    @property
    def best_path(self) -> Optional[str]:
        return max(self.gflops, key=self.gflops.__getitem__, default=None)

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "dtype": self.dtype, "gflops": dict(self.gflops), "skipped": dict(self.skipped),
                "best_gflops": self.best, "best_path": self.best_path}


def _batched(fn: Callable[[], Any], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def _cpu_onednn_paths(a: torch.Tensor, b: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """oneDNN's GEMM reached from PyTorch on CPU, each returning ``a @ b`` as a dense tensor.

    ``mkldnn._linear_pointwise`` computes ``x @ w.T`` on dense tensors through oneDNN (the op PyTorch's
    compiler emits for fused CPU linears); ``mkldnn_linear`` does the same on oneDNN's own (blocked)
    tensor layout, the format its fused kernels keep internally.
    """
    w = b.t().contiguous()  # [n, k] = weight of a linear layer
    paths: dict[str, Callable[[], torch.Tensor]] = {}
    if not torch.backends.mkldnn.is_available():
        return paths
    linear_pointwise = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if linear_pointwise is not None:
        paths["oneDNN linear"] = lambda: linear_pointwise(a, w, None, "none", [], "")
    if hasattr(torch._C._nn, "mkldnn_linear") and a.dtype in (torch.float32, torch.bfloat16):
        a_m, w_m = a.to_mkldnn(), w.to_mkldnn()
        paths["oneDNN linear (blocked layout)"] = lambda: torch._C._nn.mkldnn_linear(a_m, w_m)
    return paths


def matmul_ceiling(
    size: int = 2048,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    repeats: int = 5,
    sample_seconds: float = 0.1,
) -> MatmulCeiling:
    """The best ``size^3`` matmul rate of the available paths, in GFLOP/s (``2 size^3 / seconds``).

    A path counts only if its product agrees with ``torch.matmul``'s (relative Frobenius error below
    1e-5 in float32/64, 1e-2 in 16-bit types), so a faster path that computes something else, e.g. in
    reduced precision, cannot raise the ceiling. Each timed sample repeats the product for about
    ``sample_seconds``, and the paths alternate round by round (``time_interleaved``).
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)  # [n, n]
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)  # [n, n]
    flop = 2.0 * size**3
    reference = torch.matmul(a, b)
    tolerance = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    paths: dict[str, Callable[[], torch.Tensor]] = {"torch.matmul": lambda: torch.matmul(a, b)}
    if device.type == "cpu":
        paths.update(_cpu_onednn_paths(a, b))
    checked: dict[str, Callable[[], torch.Tensor]] = {}
    skipped: dict[str, str] = {}
    for name, path in paths.items():
        try:
            out = path()
            out = out.to_dense() if out.is_mkldnn else out
            error = float((out.float() - reference.float()).norm() / reference.float().norm())
        except Exception as err:  # noqa: BLE001 - an unavailable path is reported, not fatal
            skipped[name] = _reason(err)
            continue
        if error < tolerance:
            checked[name] = path
        else:
            skipped[name] = f"result differs from torch.matmul (relative error {error:.1e})"
    single = time_interleaved(checked, repeats=1, warmup=1, device=device)
    calls = {name: max(1, math.ceil(sample_seconds / t.median))
             for name, t in single.items() if isinstance(t, Timing)}
    timings = time_interleaved({name: _batched(checked[name], calls[name]) for name in calls},
                               repeats=repeats, warmup=0, device=device)
    gflops: dict[str, float] = {}
    for name in checked:
        t = timings.get(name, single[name])
        if isinstance(t, Timing):
            gflops[name] = flop * calls[name] / t.median / 1e9
        else:
            skipped[name] = _reason(t)
    return MatmulCeiling(size=size, dtype=str(dtype).replace("torch.", ""), gflops=gflops, skipped=skipped)


def achieved_fraction(
    flops: Optional[int], seconds: Optional[float], ceiling_gflops: Optional[float]
) -> Optional[float]:
    """``flops / seconds`` as a fraction of the ceiling; None when any figure is missing or zero."""
    if not flops or not seconds or not ceiling_gflops:
        return None
    return flops / seconds / 1e9 / ceiling_gflops
