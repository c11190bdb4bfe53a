"""Training memory grows linearly in T for every mixer whose state does not grow with the context.

The speed issue's promise: no ``[B, T, D, N]`` state or ``T x T`` score matrix is materialised where a
chunked form avoids it. Measured with ``seqmix.bench.memory.peak_memory`` (tensor bytes alive at once
during forward + backward of the default mode), at the registry's small test options: quadrupling T may
at most quadruple the peak, plus a quarter for rounding and per-call constants. A form that holds
``T x T`` scores grows 16-fold (a banded ``parallel`` sliding-window form measured 9x, full attention 5.8x).
"""

from __future__ import annotations

import pytest
import torch

from seqmix import build_mixer, get_spec, list_mixers
from seqmix.bench.memory import peak_memory

NAMES = [spec.name for spec in list_mixers()]
D_MODEL = 16
T_SHORT, T_LONG = 256, 1024


def _peak(mixer: torch.nn.Module, T: int) -> int:
    x = torch.randn(2, T, D_MODEL, requires_grad=True)  # [B, T, D]
    grad = torch.randn(2, T, D_MODEL)

    def run() -> None:
        y, _ = mixer(x)
        y.backward(grad)

    run()  # warm-up: lazily built buffers (masks, rotary tables) are not part of the growth
    mixer.zero_grad(set_to_none=True)
    x.grad = None
    return peak_memory(run)


@pytest.mark.parametrize("name", NAMES)
def test_memory_grows_linearly_in_T(name):
    torch.manual_seed(0)
    mixer = build_mixer(name, d_model=D_MODEL, **get_spec(name).test_options)
    if not mixer.causal or mixer.state_size(T_SHORT) != mixer.state_size(T_LONG):
        pytest.skip(f"{name}: its state grows with the context (attention over the whole prefix)")
    short, long = _peak(mixer, T_SHORT), _peak(mixer, T_LONG)
    growth = long / short
    allowed = T_LONG / T_SHORT * 1.25
    assert growth <= allowed, (
        f"{name} (mode {mixer.modes[0]!r}): peak memory {short / 2**20:.2f} MiB at T={T_SHORT}, "
        f"{long / 2**20:.2f} MiB at T={T_LONG}: {growth:.2f}x for {T_LONG // T_SHORT}x the length (allowed {allowed:g})"
    )
    assert growth >= 1.5, f"{name}: {growth:.2f}x for 4x the length: the measurement missed the activations"
