"""Property-based checks: every chunked/parallel op equals its reference loop for random sizes.

The hand-picked cases in the other op tests cover the edges we thought of; hypothesis draws batch,
length, chunk size, widths and decay ranges we did not, and shrinks any failure to a minimal case.
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqmix.ops.linear_attention import linear_attention_chunk, linear_attention_recurrent
from seqmix.ops.mamba import selective_scan_chunked, selective_scan_recurrent
from seqmix.ops.retention import retention_chunk, retention_recurrent
from seqmix.ops.scan import linear_scan_chunked, linear_scan_recurrent, scan_chunked, scan_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64
# fixed examples under CI (a run that passes stays passing), fresh ones on a developer's machine
SETTINGS = settings(max_examples=40, deadline=None, derandomize=bool(os.environ.get("CI")))
sizes = st.fixed_dictionaries(
    {
        "B": st.integers(1, 3),
        "T": st.integers(1, 70),
        "log2_chunk": st.integers(0, 6),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64) * scale


@SETTINGS
@given(sizes, st.integers(1, 4), st.floats(-8.0, 0.0))
def test_scan_chunked_equals_loop(size, width, log_decay_floor):
    g = torch.Generator().manual_seed(size["seed"])
    B, T = size["B"], size["T"]
    log_a = torch.rand(B, T, width, generator=g, dtype=F64) * log_decay_floor  # in [floor, 0]
    inputs = {"log_a": log_a, "b": _randn(g, B, T, width), "initial_state": _randn(g, B, width)}
    want = outputs_and_grads(scan_recurrent, inputs, output_names=["h", "h_last"])
    chunk = 2 ** size["log2_chunk"]
    got = outputs_and_grads(lambda *a: scan_chunked(*a, chunk), inputs, output_names=["h", "h_last"])
    assert_all_close(got, want, 1e-10, f"scan_chunked {size} width={width}")


@SETTINGS
@given(sizes, st.integers(1, 4), st.booleans())
def test_linear_scan_chunked_equals_loop(size, width, complex_):
    """Signed transitions in [-1, 1], or complex ones in the unit disk (as real/imaginary pairs)."""
    g = torch.Generator().manual_seed(size["seed"])
    B, T = size["B"], size["T"]
    shape = (B, T, width, 2) if complex_ else (B, T, width)
    a = 2 * torch.rand(*shape, generator=g, dtype=F64) - 1
    if complex_:
        a = a / math.sqrt(2)  # |a| <= 1
    inputs = {"a": a, "b": _randn(g, *shape), "initial_state": _randn(g, B, *shape[2:])}

    def form(fn):
        if not complex_:
            return fn
        return lambda *t: tuple(map(torch.view_as_real, fn(*map(torch.view_as_complex, t))))

    want = outputs_and_grads(form(linear_scan_recurrent), inputs, output_names=["h", "h_last"])
    chunk = 2 ** size["log2_chunk"]
    got = outputs_and_grads(form(lambda *t: linear_scan_chunked(*t, chunk)), inputs, output_names=["h", "h_last"])
    assert_all_close(got, want, 1e-10, f"linear_scan_chunked {size} width={width} complex={complex_}")


@SETTINGS
@given(sizes, st.integers(1, 3), st.integers(1, 5), st.booleans())
def test_linear_attention_chunk_equals_loop(size, heads, half_k, normalize):
    g = torch.Generator().manual_seed(size["seed"])
    B, T, K = size["B"], size["T"], 2 * half_k
    feat = lambda *s: torch.nn.functional.elu(_randn(g, *s)) + 1  # noqa: E731 - positive features
    inputs = {
        "q": feat(B, heads, T, K),
        "k": feat(B, heads, T, K),
        "v": _randn(g, B, heads, T, K + 1),
        "initial_state": (feat(B, heads, K, K + 1), feat(B, heads, K)),
    }
    want = outputs_and_grads(lambda q, k, v, s: linear_attention_recurrent(q, k, v, s, normalize), inputs)
    chunk = max(1, 2 ** size["log2_chunk"] - 1)  # any size, not only powers of two
    got = outputs_and_grads(lambda q, k, v, s: linear_attention_chunk(q, k, v, s, chunk, normalize), inputs)
    assert_all_close(got, want, 1e-10, f"linear_attention_chunk {size} heads={heads} K={K}")


@SETTINGS
@given(sizes, st.integers(1, 3), st.integers(1, 4), st.booleans())
def test_retention_chunk_equals_loop(size, heads, half_k, rotary):
    g = torch.Generator().manual_seed(size["seed"])
    B, T, K = size["B"], size["T"], 2 * half_k
    log_gamma = torch.log1p(-(2.0 ** (-1.0 - 3 * torch.rand(heads, generator=g, dtype=F64))))
    theta = torch.rand(K // 2, generator=g, dtype=F64) if rotary else None
    inputs = {"q": _randn(g, B, heads, T, K), "k": _randn(g, B, heads, T, K), "v": _randn(g, B, heads, T, 3),
              "log_gamma": log_gamma, "theta": theta, "initial_state": _randn(g, B, heads, K, 3)}
    want = outputs_and_grads(retention_recurrent, inputs)
    chunk = max(1, 2 ** size["log2_chunk"] + 1)
    got = outputs_and_grads(lambda *a: retention_chunk(*a, chunk), inputs)
    assert_all_close(got, want, 1e-10, f"retention_chunk {size} heads={heads} K={K} rotary={rotary}")


@SETTINGS
@given(sizes, st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_selective_scan_chunked_equals_loop(size, d, n, negative_eigenvalues):
    g = torch.Generator().manual_seed(size["seed"])
    B, T = size["B"], size["T"]
    inputs = {
        "u": _randn(g, B, T, d),
        "delta": torch.nn.functional.softplus(_randn(g, B, T, d, scale=2.0)),
        "A": -torch.exp(_randn(g, d, n, scale=math.log(4.0))),
        "Bm": _randn(g, B, T, n),
        "Cm": _randn(g, B, T, n),
        "initial_state": _randn(g, B, d, n),
    }
    neg = negative_eigenvalues
    want = outputs_and_grads(
        lambda *a: selective_scan_recurrent(*a, negative_eigenvalues=neg), inputs, output_names=["y", "h_last"]
    )
    chunk = 2 ** size["log2_chunk"]
    got = outputs_and_grads(lambda *a: selective_scan_chunked(*a, chunk, neg), inputs, output_names=["y", "h_last"])
    assert_all_close(got, want, 1e-10, f"selective_scan_chunked {size} d={d} n={n} negative_eigenvalues={neg}")
