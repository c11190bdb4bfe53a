"""The delta rule against flash-linear-attention's references (``fla.ops.delta_rule.naive``: the token loop
``delta_rule_recurrence`` and the WY-form ``delta_rule_chunkwise`` behind fla's DeltaNet layer): the same
tensors give the same outputs and final state. Skipped when fla is not installed.

Only the op is compared: fla's DeltaNet layer needs triton kernels, which CPU-only machines lack.
fla's package ``__init__`` imports triton too; its naive reference file needs only torch and einops
and is loaded directly from the installed package. Both fla references scale queries by
``K^-1/2`` themselves and compute in float32.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.delta import delta_chunk, delta_recurrent
from seqmix.testing import assert_close


def _load_naive():
    pytest.importorskip("einops")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla) is not installed", allow_module_level=True)
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "delta_rule" / "naive.py"
    if not path.exists():
        pytest.skip("this fla version has no naive reference for the delta rule", allow_module_level=True)
    module_spec = importlib.util.spec_from_file_location("_fla_delta_rule_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _inputs(B, H, T, K, V, beta_max, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, K, generator=g)
    k = F.normalize(torch.randn(B, H, T, K, generator=g), dim=-1)
    v = torch.randn(B, H, T, V, generator=g)
    beta = beta_max * torch.rand(B, H, T, generator=g)
    return q, k, v, beta


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("B,H,T,beta_max", [(2, 2, 37, 1.0), (1, 3, 1, 1.0), (2, 2, 100, 2.0)])
def test_op_equals_fla_recurrence(form, B, H, T, beta_max):
    naive = _load_naive()
    K, V = 8, 6
    q, k, v, beta = _inputs(B, H, T, K, V, beta_max, seed=T)
    S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(1))
    o_ref, S_ref = naive.delta_rule_recurrence(q, k, v, beta, initial_state=S0.clone())
    args = (q * K**-0.5, k, v, beta, S0)
    o, S = delta_chunk(*args, chunk_size=16) if form == "chunk" else delta_recurrent(*args)
    assert_close(f"delta rule {form} outputs vs fla delta_rule_recurrence", o, o_ref, 1e-5)
    assert_close(f"delta rule {form} final state vs fla delta_rule_recurrence", S, S_ref, 1e-5)


@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_chunk_equals_fla_chunkwise(beta_max):
    naive = _load_naive()
    B, H, T, K, V, C = 2, 2, 64, 8, 8, 16  # fla's chunkwise reference needs T a multiple of C
    q, k, v, beta = _inputs(B, H, T, K, V, beta_max, seed=3)
    o_ref, S_ref = naive.delta_rule_chunkwise(q, k, v, beta, chunk_size=C)
    o, S = delta_chunk(q * K**-0.5, k, v, beta, torch.zeros(B, H, K, V), chunk_size=C)
    assert_close("delta_chunk outputs vs fla delta_rule_chunkwise", o, o_ref, 1e-5)
    assert_close("delta_chunk final state vs fla delta_rule_chunkwise", S, S_ref, 1e-5)
