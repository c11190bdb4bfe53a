"""mLSTM against the authors' ``xlstm`` package (skipped when it is not installed).

1. The cell: our chunkwise and recurrent forms against the package's parallel stabilised form
   (``parallel_stabilized_simple``; a fresh state) and its recurrent step
   (``recurrent_step_stabilized_simple``, any state). The package's parallel form stabilises with a
   row maximum that ignores the zero initial state's ``m_0 = 0``; the result is the same up to the
   ``eps`` added to the normaliser, so that comparison runs with ``eps = 0`` (then it is exact).
2. The whole ``mlstm`` mixer against the package's ``mLSTMLayer`` with the same weights: token by
   token through the package's ``step`` (same recurrence, same eps: equal to rounding), and through its
   parallel ``forward`` (equal up to the eps effect above).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqmix import build_mixer
from seqmix.ops.mlstm import MLSTMCellState, mlstm_chunk, mlstm_recurrent, mlstm_step
from seqmix.testing import assert_close

backends = pytest.importorskip("xlstm.blocks.mlstm.backends")
F64 = torch.float64


def _cell_inputs(B, H, T, D, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=F64) for _ in range(3))
    i_pre = torch.randn(B, H, T, 1, generator=g, dtype=F64) * 3
    f_pre = 2.0 + torch.randn(B, H, T, 1, generator=g, dtype=F64) * 2
    return q, k, v, i_pre, f_pre


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("T", [1, 29, 100])
def test_cell_equals_xlstm_parallel(form, T):
    B, H, D = 2, 3, 8
    q, k, v, i_pre, f_pre = _cell_inputs(B, H, T, D, seed=T)
    h_ref = backends.parallel_stabilized_simple(q, k, v, i_pre, f_pre, eps=0.0)
    fresh = MLSTMCellState(*(torch.zeros(*shape, dtype=F64) for shape in ((B, H, D, D), (B, H, D), (B, H))))
    args = (q, k / math.sqrt(D), v, i_pre[..., 0], F.logsigmoid(f_pre[..., 0]), fresh)
    h, _ = mlstm_chunk(*args, chunk_size=16, eps=0.0) if form == "chunk" else mlstm_recurrent(*args, eps=0.0)
    assert_close(f"mLSTM {form} vs xlstm parallel_stabilized_simple", h, h_ref, 1e-10)


def test_cell_step_equals_xlstm_step():
    B, H, D, T = 2, 3, 8, 12
    q, k, v, i_pre, f_pre = _cell_inputs(B, H, T, D, seed=1)
    g = torch.Generator().manual_seed(2)
    C, n, m = (torch.randn(*shape, generator=g, dtype=F64) for shape in ((B, H, D, D), (B, H, D), (B, H)))
    ref_state = (C.clone(), n.clone().unsqueeze(-1), m.clone()[..., None, None])
    ours = MLSTMCellState(C, n, m)
    for t in range(T):
        sl = slice(t, t + 1)
        h_ref, ref_state = backends.recurrent_step_stabilized_simple(
            *ref_state, q[:, :, sl].clone(), k[:, :, sl].clone(), v[:, :, sl].clone(), i_pre[:, :, sl], f_pre[:, :, sl]
        )
        h, ours = mlstm_step(q[:, :, t], k[:, :, t] / math.sqrt(D), v[:, :, t], i_pre[:, :, t, 0],
                             F.logsigmoid(f_pre[:, :, t, 0]), ours)  # fmt: skip
        assert_close(f"mLSTM step {t} vs xlstm recurrent_step_stabilized_simple", h, h_ref[:, :, 0], 1e-12)
    for name, a, b in zip("Cnm", ours, (ref_state[0], ref_state[1][..., 0], ref_state[2][..., 0, 0])):
        assert_close(f"final {name} vs xlstm", a, b, 1e-12)


def _xlstm_layer(ours, context_length):
    layer_mod = pytest.importorskip("xlstm.blocks.mlstm.layer")
    config = layer_mod.mLSTMLayerConfig(
        embedding_dim=ours.d_model, num_heads=ours.n_heads, proj_factor=ours.inner / ours.d_model,
        conv1d_kernel_size=ours.d_conv, qkv_proj_blocksize=ours.qkv_block_size, context_length=context_length,
    )  # fmt: skip
    ref = layer_mod.mLSTMLayer(config).double().eval()
    assert ref.config._inner_embedding_dim == ours.inner, "choose d_model so that the package needs no rounding"
    with torch.no_grad():
        ref.proj_up.weight.copy_(ours.up_proj.weight)
        ref.conv1d.conv.weight.copy_(ours.conv.weight)
        ref.conv1d.conv.bias.copy_(ours.conv.bias)
        ref.q_proj.weight.copy_(ours.q_weight)
        ref.k_proj.weight.copy_(ours.k_weight)
        ref.v_proj.weight.copy_(ours.v_weight)
        for gate in ("igate", "fgate"):
            getattr(ref.mlstm_cell, gate).weight.copy_(getattr(ours, gate).weight)
            getattr(ref.mlstm_cell, gate).bias.copy_(getattr(ours, gate).bias)
        ref.mlstm_cell.outnorm.weight.copy_(ours.norm_weight - 1.0)  # the package stores 1 + w
        ref.learnable_skip.copy_(ours.skip)
        ref.proj_down.weight.copy_(ours.down_proj.weight)
    return ref


def _mixer(seed=0):
    torch.manual_seed(seed)
    ours = build_mixer("mlstm", d_model=32, n_heads=4, chunk_size=8).double()  # inner 64: no rounding
    with torch.no_grad():  # move gates and norms off their init so that every weight matters
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ours


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_mixer_equals_xlstm_layer_step_by_step(mode):
    ours = _mixer()
    T = 21
    ref = _xlstm_layer(ours, T)
    x = torch.randn(2, T, 32, dtype=F64)
    with torch.no_grad():
        y, _ = ours(x, mode=mode)
        mlstm_state, conv_state, outs = None, None, []
        for t in range(T):
            y_t, states = ref.step(x[:, t : t + 1], mlstm_state=mlstm_state, conv_state=conv_state)
            mlstm_state, conv_state = states["mlstm_state"], states["conv_state"]
            outs.append(y_t)
    assert_close(f"mlstm {mode} vs xlstm mLSTMLayer.step loop", y, torch.cat(outs, dim=1), 1e-10)


def test_mixer_equals_xlstm_layer_forward():
    ours = _mixer(1)
    T = 40
    ref = _xlstm_layer(ours, T)
    x = torch.randn(2, T, 32, dtype=F64)
    with torch.no_grad():
        y, _ = ours(x)
        y_ref = ref(x)
    # the package's parallel form stabilises without m_0 = 0: equal up to the normaliser's eps = 1e-6
    assert_close("mlstm vs xlstm mLSTMLayer.forward", y, y_ref, 1e-5)


@pytest.mark.parametrize("i_shift", [-10.0, 0.0, 3.0])
def test_cell_chunk_equals_mlstm_kernels_chunkwise(i_shift):
    """Our chunkwise cell against ``mlstm_kernels``' native chunkwise kernel (xlstm_large's CPU
    backend, the peer of the speed benchmark's kernel rows), outputs and gradients. Its
    ``native_autograd`` variant is the exact reference here: the hand-written ``native_custbw``
    backward of mlstm_kernels 2.0.6 matches it only while the input gates stay strongly negative (as
    at xlstm_large's init, bias -10); with gates near 0 its dq, dk, di, df are off by about 100%."""
    kernels = pytest.importorskip("mlstm_kernels.torch")
    B, H, T, K, V = 2, 3, 96, 8, 12  # the package's kernel needs T to be a multiple of its chunk
    g = torch.Generator().manual_seed(int(i_shift) + 20)
    q, k, v = (torch.randn(B, H, T, d, generator=g).requires_grad_() for d in (K, K, V))
    i_pre = (i_shift + torch.randn(B, H, T, generator=g)).requires_grad_()
    f_pre = (2.0 + 2 * torch.randn(B, H, T, generator=g)).requires_grad_()
    leaves = (q, k, v, i_pre, f_pre)
    h_ref = kernels.get_mlstm_kernel("chunkwise--native_autograd")(q, k, v, i_pre, f_pre, chunk_size=16)
    fresh = MLSTMCellState(torch.zeros(B, H, K, V), torch.zeros(B, H, K), torch.zeros(B, H))
    h, _ = mlstm_chunk(q / math.sqrt(K), k, v, i_pre, F.logsigmoid(f_pre), fresh, chunk_size=16)
    assert_close("mLSTM chunk vs mlstm_kernels chunkwise--native_autograd", h, h_ref, 1e-5)
    grad_out = torch.randn(h.shape, generator=g)
    ours = torch.autograd.grad(h, leaves, grad_out)
    theirs = torch.autograd.grad(h_ref, leaves, grad_out)
    for name, a, b in zip(("q", "k", "v", "i", "f"), ours, theirs):
        assert_close(f"d{name}: mLSTM chunk vs mlstm_kernels native_autograd", a, b, 1e-4)
