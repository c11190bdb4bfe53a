"""Our HGRN recurrence against flash-linear-attention's reference (``fla.ops.hgrn.naive``, the op behind fla's
HGRN layer: ``h_t = exp(g_t) h_{t-1} + x_t``, computed in float32): the same tensors into both give the same
outputs and final state. Skipped when fla is not installed.

fla's package ``__init__`` imports triton, which CPU-only machines lack; the naive reference file itself needs
only torch, so it is loaded directly from the installed package.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import pytest
import torch

from seqmix.ops.scan import scan_chunked, scan_recurrent
from seqmix.testing import assert_close


def _load_naive():
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla) is not installed", allow_module_level=True)
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "hgrn" / "naive.py"
    if not path.exists():
        pytest.skip(f"this fla version has no {path.name} reference for HGRN", allow_module_level=True)
    module_spec = importlib.util.spec_from_file_location("_fla_hgrn_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


naive = _load_naive()


@pytest.mark.parametrize("form", [partial(scan_chunked, chunk_size=16), scan_recurrent], ids=["chunked", "loop"])
@pytest.mark.parametrize("B,T,D", [(2, 37, 8), (1, 1, 3), (3, 130, 5)])
def test_same_tensors_same_outputs(form, B, T, D):
    g_ = torch.Generator().manual_seed(T)
    x = torch.randn(B, T, D, generator=g_)
    # log forget gates as HGRN builds them: log(lower_bound + (1 - lower_bound) sigmoid(.)) with bound 0.5
    log_half = torch.tensor(0.5).log()
    g = torch.logaddexp(log_half, log_half + torch.nn.functional.logsigmoid(torch.randn(B, T, D, generator=g_)))
    h0 = torch.randn(B, D, generator=g_)
    o_ref, h_ref = naive.naive_recurrent_hgrn(x, g, initial_state=h0, output_final_state=True)
    o, h = form(g, x, h0)
    assert_close("HGRN outputs vs fla naive_recurrent_hgrn", o, o_ref, 1e-5)
    assert_close("HGRN final state vs fla naive_recurrent_hgrn", h, h_ref, 1e-5)
