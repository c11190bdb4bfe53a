"""Mamba-2 against public references.

1. The SSD op against flash-linear-attention's reference for simple gated linear attention
   (``fla.ops.simple_gla.naive``: ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``,
   the same recurrence): the same tensors give the same outputs and final state.
2. The whole ``mamba2`` mixer against ``transformers``' ``Mamba2Mixer`` (its pure-PyTorch path, used
   when the ``mamba_ssm`` kernels are absent) with the same weights: the same outputs.

Each part is skipped when its package is not installed. fla's package ``__init__`` imports triton,
which CPU-only machines lack; its naive reference file needs only torch and is loaded directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from seqmix import build_mixer
from seqmix.ops.ssd import ssd_chunk, ssd_recurrent
from seqmix.testing import assert_close


def _load_fla_naive(family: str):
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla) is not installed", allow_module_level=True)
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / family / "naive.py"
    if not path.exists():
        pytest.skip(f"this fla version has no naive reference for {family}", allow_module_level=True)
    module_spec = importlib.util.spec_from_file_location(f"_fla_{family}_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("B,T,H", [(2, 37, 3), (1, 1, 2), (2, 130, 2)])
def test_ssd_op_equals_fla_simple_gla(form, B, T, H):
    naive = _load_fla_naive("simple_gla")
    g_ = torch.Generator().manual_seed(T)
    K, V = 8, 6
    q, k = torch.randn(B, T, H, K, generator=g_), torch.randn(B, T, H, K, generator=g_)
    v = torch.randn(B, T, H, V, generator=g_)
    g = -torch.rand(B, T, H, generator=g_) * 2  # log decays
    S0 = torch.randn(B, H, K, V, generator=g_)
    o_ref, S_ref = naive.naive_recurrent_simple_gla(q, k, v, g, scale=K**-0.5, initial_state=S0)
    args = (q.transpose(1, 2) * K**-0.5, k.transpose(1, 2), v.transpose(1, 2), g.transpose(1, 2), S0)
    o, S = ssd_chunk(*args, chunk_size=16) if form == "chunk" else ssd_recurrent(*args)
    assert_close(f"SSD {form} outputs vs fla naive_recurrent_simple_gla", o.transpose(1, 2), o_ref, 1e-5)
    assert_close(f"SSD {form} final state vs fla naive_recurrent_simple_gla", S, S_ref, 1e-5)


def _transformers_mixer(ours):
    """transformers' Mamba2Mixer configured like ``ours`` and loaded with its weights."""
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    config_cls = pytest.importorskip("transformers").Mamba2Config
    config = config_cls(
        hidden_size=ours.d_model, num_heads=ours.n_heads, head_dim=ours.head_dim, expand=ours.expand,
        state_size=ours.d_state, n_groups=1, conv_kernel=ours.d_conv, chunk_size=ours.chunk_size,
        layer_norm_epsilon=ours.norm_eps, use_bias=False, use_conv_bias=True, num_hidden_layers=1,
    )  # fmt: skip
    ref = modeling.Mamba2Mixer(config, layer_idx=0).double().eval()
    with torch.no_grad():
        # both projections order their outputs [z, xBC, dt]; the conv runs over xBC = [x, B, C]
        ref.in_proj.weight.copy_(ours.in_proj.weight)
        ref.conv1d.weight.copy_(ours.conv.weight)
        ref.conv1d.bias.copy_(ours.conv.bias)
        for name in ("dt_bias", "A_log", "D"):
            getattr(ref, name).copy_(getattr(ours, name))
        ref.norm.weight.copy_(ours.norm_weight)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
    return ref


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_mixer_equals_transformers_mamba2(mode):
    torch.manual_seed(0)
    ours = build_mixer("mamba2", d_model=16, d_state=8, n_heads=4, chunk_size=8).double()
    with torch.no_grad():  # move the weights off their init so that every path matters
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = _transformers_mixer(ours)
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    with torch.no_grad():
        y_ref = ref(x)
        y, _ = ours(x, mode=mode)
    # the reference's fallback scan runs in float32 whatever the module's dtype
    assert_close(f"mamba2 {mode} vs transformers Mamba2Mixer", y, y_ref.to(y.dtype), 1e-5)
