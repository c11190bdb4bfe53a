"""The hand-written backward of ``linear_attention_chunk`` (``seqmix.ops.linear_attention_fast``) against
autograd through the reference loop: every gradient (q, k, v, S0, z0), with the gradient flowing from the
output only, from the final state only, and from both; with and without the normaliser; awkward sizes;
both ways of summing over chunks and several blocks of chunks; autocast; double backward."""

from __future__ import annotations

import pytest
import torch

import seqmix.ops.linear_attention_fast as fast
from seqmix.mixers.linear_attention import LinearAttention
from seqmix.ops.linear_attention import (
    _linear_attention_chunk_autograd,
    elu_feature_map,
    linear_attention_chunk,
    linear_attention_recurrent,
)
from seqmix.testing import assert_all_close, fixed_weights

F64 = torch.float64
NAMES = ("q", "k", "v", "S0", "z0")


def make(B, H, T, K, V, seed=0, dtype=F64):
    """Feature-mapped (positive) q, k, values, and a non-zero initial state with z0 > 0."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    tensors = {"q": elu_feature_map(rnd(B, H, T, K)), "k": elu_feature_map(rnd(B, H, T, K)),
               "v": rnd(B, H, T, V), "S0": rnd(B, H, K, V), "z0": rnd(B, H, K).abs() + 0.5}  # fmt: skip
    return {n: t.to(dtype) for n, t in tensors.items()}


def grads(form, tensors, source, wrt=NAMES, **kw):
    """Outputs and the gradients (of the inputs in ``wrt``) of ``<w_o, o> + <w_S, S> + <w_z, z>``, the
    terms that ``source`` names; an input outside ``wrt`` does not require grad."""
    leaves = {n: t.detach().clone().requires_grad_(n in wrt) for n, t in tensors.items()}
    o, (S, z) = form(leaves["q"], leaves["k"], leaves["v"], (leaves["S0"], leaves["z0"]), **kw)
    loss = 0.0
    if source in ("output", "both"):
        loss = loss + (o * fixed_weights(o.shape, o.dtype, 1)).sum()
    if source in ("state", "both"):
        loss = loss + (S * fixed_weights(S.shape, S.dtype, 2)).sum() + (z * fixed_weights(z.shape, z.dtype, 3)).sum()
    out = {"o": o.detach(), "S": S.detach(), "z": z.detach()}
    # the final state does not depend on q: the reference reports it unused, the fused form gives zeros
    inputs = [leaves[n] for n in wrt]
    for n, t, g in zip(wrt, inputs, torch.autograd.grad(loss, inputs, allow_unused=True)):
        out[f"grad of {n}"] = torch.zeros_like(t) if g is None else g
    return out


@pytest.fixture(params=["sums", "loops"])
def chunk_paths(request, monkeypatch):
    """``sums``: the defaults at these tiny sizes (one block of chunks, ``cumsum`` over chunks).
    ``loops``: running sums chunk by chunk and blocks of three chunks (the last one shorter unless
    B H N is a multiple of 3; blocks may span two sequences), the paths that large inputs take."""
    if request.param == "loops":
        monkeypatch.setattr(fast, "_LOOP_MIN_ELEMENTS", 1)
        monkeypatch.setattr(fast, "_block_length", lambda C: 3)
    return request.param


# (B, H, T, K, V, C): one token; T < C; T not a multiple of C (odd chunk count); T a multiple of C;
# K != V both ways; C = 1; one chunk that is the whole sequence
SIZES = [
    (2, 2, 1, 4, 3, 4),
    (1, 2, 3, 4, 4, 8),
    (2, 1, 13, 3, 5, 4),
    (1, 3, 16, 4, 4, 4),
    (2, 2, 11, 5, 2, 3),
    (1, 2, 6, 2, 3, 1),
    (2, 1, 9, 4, 4, 9),
]


@pytest.mark.parametrize("source", ["output", "state", "both"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
@pytest.mark.parametrize("B,H,T,K,V,C", SIZES)
def test_every_gradient_matches_autograd_through_the_reference(B, H, T, K, V, C, normalize, source, chunk_paths):
    tensors = make(B, H, T, K, V, seed=T + 10 * C + K)
    expected = grads(linear_attention_recurrent, tensors, source, normalize=normalize)
    actual = grads(linear_attention_chunk, tensors, source, chunk_size=C, normalize=normalize)
    what = f"chunk backward ({source}, normalize={normalize}, {chunk_paths}) B={B} H={H} T={T} K={K} V={V} C={C}"
    assert_all_close(actual, expected, 1e-10, what)


@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
def test_fused_equals_the_autograd_chunk_form(normalize, chunk_paths):
    """Same chunks, same products: the fused op and plain autograd through the chunk form agree to
    rounding, forward and backward."""
    tensors = make(2, 3, 37, 6, 5, seed=4)
    expected = grads(_linear_attention_chunk_autograd, tensors, "both", chunk_size=8, normalize=normalize)
    actual = grads(linear_attention_chunk, tensors, "both", chunk_size=8, normalize=normalize)
    assert_all_close(actual, expected, 1e-12, f"fused vs autograd chunk form (normalize={normalize})")


@pytest.mark.parametrize("wrt", [("q",), ("k",), ("v",), ("S0", "z0"), ("k", "z0")], ids=lambda w: "+".join(w))
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
def test_gradients_of_some_inputs_only(wrt, normalize):
    """Backward skips the gradients nobody asked for; the others are unchanged."""
    tensors = make(2, 2, 10, 4, 3, seed=5)
    expected = grads(linear_attention_recurrent, tensors, "both", wrt=wrt, normalize=normalize)
    actual = grads(linear_attention_chunk, tensors, "both", wrt=wrt, chunk_size=4, normalize=normalize)
    assert_all_close(actual, expected, 1e-10, f"gradients of {wrt} only (normalize={normalize})")


def test_strided_inputs_as_the_mixer_passes_them():
    """The mixer hands over transposed views of [B, T, H, K] memory: same results and gradients."""
    tensors = make(2, 3, 19, 4, 4, seed=6)
    strided = {n: (t.transpose(1, 2).contiguous().transpose(1, 2) if n in "qkv" else t) for n, t in tensors.items()}
    assert not strided["q"].is_contiguous()
    want = grads(linear_attention_chunk, tensors, "both", chunk_size=8)
    got = grads(linear_attention_chunk, strided, "both", chunk_size=8)
    assert_all_close(got, want, 1e-13, "strided vs contiguous inputs")


def test_float32_under_bf16_autocast_stays_float32():
    """The op switches autocast off: a float32 call under bf16 autocast equals the plain float32 call."""
    tensors = make(2, 3, 33, 8, 8, seed=8, dtype=torch.float32)
    plain = grads(linear_attention_chunk, tensors, "both", chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = grads(linear_attention_chunk, tensors, "both", chunk_size=16)
    assert all(t.dtype == torch.float32 for t in auto.values())
    assert_all_close(auto, plain, 0.0, "float32 linear_attention_chunk under bf16 autocast")


def test_mixer_under_bf16_autocast_stays_near_float32():
    """Under bf16 autocast only the projections run in bf16 (the op keeps float32): output and every
    parameter gradient stay within 2e-2 of the float32 run, relative to each tensor's largest entry
    (bf16 keeps 8 bits of mantissa, ~4e-3 per rounding; measured up to 6e-3 here)."""
    torch.manual_seed(0)
    mixer = LinearAttention(32, n_heads=2, chunk_size=8)
    x = torch.randn(2, 21, 32)

    def run():
        mixer.zero_grad()
        y, _ = mixer(x)
        (y.float() * fixed_weights(y.shape, torch.float32, 4)).sum().backward()
        return {"y": y.detach().float(), **{f"grad of {n}": p.grad.clone() for n, p in mixer.named_parameters()}}

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run()
    assert_all_close(auto, plain, 2e-2, "LinearAttention under bf16 autocast vs float32")


def test_double_backward_is_refused_clearly():
    tensors = make(1, 2, 6, 3, 3, seed=9)
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors.values()]
    o, _ = linear_attention_chunk(leaves[0], leaves[1], leaves[2], (leaves[3], leaves[4]), chunk_size=4)
    (gq,) = torch.autograd.grad(o.square().sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        gq.sum().backward()
