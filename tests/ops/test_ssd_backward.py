"""The hand-written backward of ``ssd_chunk`` (``seqmix.ops.ssd_fast``) against autograd through the
reference loop: every gradient (q, k, v, log_a, initial_state), with the gradient flowing from the outputs
only, from the final state only, and from both; every head layout; strided inputs; autocast."""

from __future__ import annotations

import pytest
import torch

from seqmix.ops.ssd import ssd_chunk, ssd_recurrent
from seqmix.testing import assert_all_close, fixed_weights

F64 = torch.float64
NAMES = ("q", "k", "v", "log_a", "initial_state")


def make(B, H, Hq, Hk, T, K=4, V=3, signed=False, regime="typical", seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    log_a = -torch.rand(B, H, T, generator=g, dtype=F64) * 2.0
    if regime == "strong":
        log_a = -30.0 - 100.0 * torch.rand(B, H, T, generator=g, dtype=F64)
    tensors = {"q": rnd(B, Hq, T, K), "k": rnd(B, Hk, T, K), "v": rnd(B, H, T, V), "log_a": log_a,
               "initial_state": rnd(B, H, K, V)}  # fmt: skip
    sign = torch.where(torch.rand(B, H, T, generator=g) < 0.4, -1.0, 1.0).to(dtype) if signed else None
    return {n: t.to(dtype) for n, t in tensors.items()}, sign


def grads(form, tensors, sign, source, **kw):
    """Outputs and the gradients of ``<w_o, o> + <w_S, S>`` (only the terms that ``source`` names)."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
    o, S = form(*leaves.values(), sign=sign, **kw)
    loss = 0.0
    if source in ("output", "both"):
        loss = loss + (o * fixed_weights(o.shape, o.dtype, 1)).sum()
    if source in ("state", "both"):
        loss = loss + (S * fixed_weights(S.shape, S.dtype, 2)).sum()
    out = {"o": o.detach(), "final state": S.detach()}
    # the final state does not depend on q: the reference reports it unused, the fused form gives zeros
    for (n, t), g in zip(leaves.items(), torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)):
        out[f"grad of {n}"] = torch.zeros_like(t) if g is None else g
    return out


# (B, H, Hq, Hk, T, C): shared q/k (Mamba-2), per-head q/k (mLSTM), mixed sharing, one head; T a multiple
# of C or not, a single chunk, C = 1
LAYOUTS = [
    (2, 3, 1, 1, 24, 8),
    (2, 3, 1, 1, 19, 8),
    (1, 2, 2, 2, 21, 4),
    (2, 2, 2, 2, 16, 16),
    (2, 3, 1, 3, 10, 4),
    (1, 3, 3, 1, 9, 2),
    (2, 1, 1, 1, 5, 1),
]


@pytest.mark.parametrize("source", ["output", "state", "both"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("B,H,Hq,Hk,T,C", LAYOUTS)
def test_every_gradient_matches_autograd_through_the_reference(B, H, Hq, Hk, T, C, signed, source):
    tensors, sign = make(B, H, Hq, Hk, T, signed=signed, seed=T + C)
    expected = grads(ssd_recurrent, tensors, sign, source)
    actual = grads(ssd_chunk, tensors, sign, source, chunk_size=C)
    assert_all_close(actual, expected, 1e-10, f"ssd_chunk backward ({source}) B={B} H={H} Hq={Hq} Hk={Hk} T={T} C={C}")


@pytest.mark.parametrize("source", ["output", "state"])
def test_strong_decays_keep_tiny_log_a_gradients_exact(source):
    """Decays of e^-30..e^-130 per token: the log_a gradients are ~1e-14 of the others and must not drown
    in the rounding of the O(1) terms that cancel in the backward's formula (see ssd_fast)."""
    tensors, sign = make(1, 2, 1, 1, 40, regime="strong", seed=5)
    expected = grads(ssd_recurrent, tensors, sign, source)
    actual = grads(ssd_chunk, tensors, sign, source, chunk_size=8)
    assert_all_close(actual, expected, 1e-10, f"strong decays ({source})")


def test_strided_inputs_as_the_mixers_pass_them():
    """Mamba-2 hands over v as a transposed view of [B, T, H, P] memory and q, k as slices of a wider
    tensor; mLSTM hands over transposed [B, T, H, K] views. Results and gradients do not depend on strides."""
    B, H, T, K, V = 2, 3, 20, 4, 5
    tensors, _ = make(B, H, 1, 1, T, K=K, V=V, seed=7)
    wide = torch.cat((tensors["q"][:, 0], tensors["k"][:, 0], torch.zeros(B, T, 2, dtype=F64)), -1)  # [B, T, 2K+2]
    strided = dict(tensors)
    strided["q"] = wide[..., :K].unsqueeze(1)  # [B, 1, T, K], row stride 2K+2
    strided["k"] = wide[..., K : 2 * K].unsqueeze(1)
    strided["v"] = tensors["v"].transpose(1, 2).contiguous().transpose(1, 2)  # token-major memory
    assert not strided["v"].is_contiguous() and not strided["q"].is_contiguous()
    want = grads(ssd_chunk, tensors, None, "both", chunk_size=8)
    got = grads(ssd_chunk, {n: t for n, t in strided.items()}, None, "both", chunk_size=8)
    assert_all_close(got, want, 1e-13, "strided vs contiguous inputs")


def test_float32_under_bf16_autocast_stays_float32():
    """The op switches autocast off: a float32 call under bf16 autocast equals the plain float32 call."""
    tensors, _ = make(2, 3, 1, 1, 33, seed=8, dtype=torch.float32)
    plain = grads(ssd_chunk, tensors, None, "both", chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = grads(ssd_chunk, tensors, None, "both", chunk_size=16)
    assert all(t.dtype == torch.float32 for t in auto.values())
    assert_all_close(auto, plain, 0.0, "float32 ssd_chunk under bf16 autocast")


def test_double_backward_is_refused_clearly():
    tensors, _ = make(1, 2, 1, 1, 6, seed=9)
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors.values()]
    o, _ = ssd_chunk(*leaves, chunk_size=4)
    (gq,) = torch.autograd.grad(o.square().sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        gq.sum().backward()
