"""Delta rule: the chunkwise (UT transform) form equals the reference loop (outputs, final state and every
gradient), the loop equals the matrix form of the rule, reflections (beta = 2) preserve the state's norm
over long sequences, and backward keeps no per-token state."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.delta import delta_chunk, delta_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64
ARGS = ("q", "k", "v", "beta", "initial_state")


def make_inputs(B=2, H=2, T=9, K=4, V=5, beta_max=1.0, seed=0, dtype=F64, repeated_keys=False):
    """L2-normalised keys (as DeltaNet uses them) and beta uniform in [0, beta_max]."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    k = rnd(B, H, T, K)
    if repeated_keys:  # every key one of two directions: many nearly dependent rows in A
        k = k[:, :, :2].repeat_interleave(-(-T // 2), dim=2)[:, :, :T] + 1e-3 * k
    beta = beta_max * torch.rand(B, H, T, generator=g, dtype=F64)
    inputs = {"q": rnd(B, H, T, K), "k": F.normalize(k, dim=-1), "v": rnd(B, H, T, V), "beta": beta,
              "initial_state": rnd(B, H, K, V)}  # fmt: skip
    return {n: t.to(dtype) for n, t in inputs.items()}


def run(form, inputs):
    return outputs_and_grads(form, {n: inputs[n] for n in ARGS}, output_names=["o", "final state"])


CASES = [(2, 1, 16), (2, 6, 1), (1, 7, 64), (2, 32, 16), (2, 63, 16), (1, 37, 8)]


@pytest.mark.parametrize("beta_max", [1.0, 2.0], ids=["beta<=1", "beta<=2"])
@pytest.mark.parametrize("B,T,C", CASES)
def test_chunk_matches_reference(B, T, C, beta_max):
    inputs = make_inputs(B, T=T, beta_max=beta_max)
    expected = run(delta_recurrent, inputs)
    actual = run(partial(delta_chunk, chunk_size=C), inputs)
    assert_all_close(actual, expected, 1e-10, f"delta_chunk B={B} T={T} C={C} beta<={beta_max}")


@pytest.mark.parametrize("beta_max", [1.0, 2.0], ids=["beta<=1", "beta<=2"])
def test_long_sequence_with_nearly_repeated_keys(beta_max):
    """600 tokens whose keys take two directions: the triangular systems are as coupled as they get."""
    inputs = make_inputs(1, T=600, K=8, V=8, beta_max=beta_max, seed=1, repeated_keys=True)
    expected = run(delta_recurrent, inputs)
    actual = run(partial(delta_chunk, chunk_size=64), inputs)
    for name, t in actual.items():
        assert torch.isfinite(t).all(), f"{name} has non-finite values"
    assert_all_close(actual, expected, 1e-9, f"delta_chunk, nearly repeated keys, beta<={beta_max}")


@pytest.mark.parametrize("which", ["output", "state", "both"])
@pytest.mark.parametrize("beta_max", [1.0, 2.0], ids=["beta<=1", "beta<=2"])
def test_chunk_backward_from_either_output_matches_reference(which, beta_max):
    """The chunk loop has a hand-written backward: a loss on the outputs only, on the final state only, or
    on both gives autograd's gradients through the reference loop for every input."""
    inputs = make_inputs(2, T=45, beta_max=beta_max, seed=7)

    def grads(form):
        leaves = {n: inputs[n].clone().requires_grad_(True) for n in ARGS}
        o, S = form(*(leaves[n] for n in ARGS))
        w_o = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
        loss = {"output": (o * w_o).sum(), "state": (S * w_s).sum()}
        total = loss["output"] + loss["state"] if which == "both" else loss[which]
        got = torch.autograd.grad(total, [leaves[n] for n in ARGS], allow_unused=True)  # q: unused by the state
        return {f"grad of {n}": torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(ARGS, got)}

    expected = grads(delta_recurrent)
    actual = grads(partial(delta_chunk, chunk_size=8))
    assert_all_close(actual, expected, 1e-10, f"delta_chunk backward, loss on {which}, beta<={beta_max}")


def test_reflections_preserve_the_state_norm():
    """beta = 2 with unit keys and v = 0: S_t = (I - 2 k k^T) S_{t-1}, a reflection, so the Frobenius
    norm of every column of S is preserved over 2000 tokens (negative eigenvalues, no blow-up)."""
    inputs = make_inputs(1, T=2000, K=6, V=3, seed=2)
    inputs["v"] = torch.zeros_like(inputs["v"])
    inputs["beta"] = torch.full_like(inputs["beta"], 2.0)
    _, S = delta_chunk(*(inputs[n] for n in ARGS), chunk_size=64)
    S0 = inputs["initial_state"]
    torch.testing.assert_close(S.norm(dim=-2), S0.norm(dim=-2), rtol=1e-10, atol=0, msg="column norms of S")


def test_float32_chunk_matches_float64_reference():
    expected = {n: t.float() for n, t in run(delta_recurrent, make_inputs(2, T=70, beta_max=2.0, seed=3)).items()}
    actual = run(partial(delta_chunk, chunk_size=16), make_inputs(2, T=70, beta_max=2.0, seed=3, dtype=torch.float32))
    assert all(t.dtype == torch.float32 for t in actual.values())
    assert_all_close(actual, expected, 1e-4, "float32 delta_chunk vs float64 reference")


def test_reference_equals_matrix_form():
    """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t with explicit matrices."""
    inputs = make_inputs(1, H=1, T=10, beta_max=2.0, seed=4)
    q, k, v, beta, S = (inputs[n][0, 0] for n in ARGS)
    o, S_final = delta_recurrent(*(inputs[n] for n in ARGS))
    eye = torch.eye(4, dtype=F64)
    for t in range(10):
        S = (eye - beta[t] * torch.outer(k[t], k[t])) @ S + beta[t] * torch.outer(k[t], v[t])
        torch.testing.assert_close(o[0, 0, t], S.T @ q[t], rtol=1e-12, atol=1e-12, msg=f"o[{t}]")
    torch.testing.assert_close(S_final[0, 0], S, rtol=1e-12, atol=1e-12, msg="final state")


def test_beta_zero_keeps_the_state():
    inputs = make_inputs(2, T=20, seed=5)
    inputs["beta"] = torch.zeros_like(inputs["beta"])
    o, S = delta_chunk(*(inputs[n] for n in ARGS), chunk_size=8)
    torch.testing.assert_close(S, inputs["initial_state"], rtol=0, atol=0)
    torch.testing.assert_close(o, inputs["q"] @ inputs["initial_state"], rtol=1e-12, atol=1e-12)


def test_backward_keeps_no_per_token_state():
    B, H, T, K, V, C = 2, 2, 256, 8, 8, 16
    inputs = make_inputs(B, H, T, K, V)
    leaves = [inputs[n].requires_grad_(True) for n in ARGS]
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        delta_chunk(*leaves, chunk_size=C)
    allowed = max(B * H * T * max(K, V, C), B * H * (T // C) * K * V)
    assert allowed < B * H * T * K * V
    too_big = [tuple(s) for s in saved if s.numel() > allowed]
    assert not too_big, f"autograd keeps tensors of shapes {too_big}"


def test_bad_arguments_fail_clearly():
    inputs = make_inputs(2, T=5)
    args = [inputs[n] for n in ARGS]
    with pytest.raises(ValueError, match="chunk_size"):
        delta_chunk(*args, chunk_size=0)
    with pytest.raises(ValueError, match="beta must have shape"):
        delta_chunk(*args[:3], args[3][:, :1], args[4])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        delta_recurrent(*args[:4], args[4][:1])


# ---------------------------------------------------------------- the DeltaNet mixer built on this op
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 3}, "n_heads"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"negative_eigenvalues": "yes"}, "negative_eigenvalues"),
    ],
)
def test_deltanet_constructor_validation(kwargs, match):
    from seqmix.mixers.deltanet import DeltaNet

    with pytest.raises(ValueError, match=match):
        DeltaNet(16, **kwargs)


@pytest.mark.parametrize("negative", [False, True])
def test_deltanet_keys_and_beta(negative):
    """Keys reach the rule L2-normalised; beta lies in (0, 1), or in (0, 2) with negative eigenvalues."""
    from seqmix.mixers.deltanet import DeltaNet

    torch.manual_seed(0)
    m = DeltaNet(32, n_heads=2, negative_eigenvalues=negative)
    qkv = torch.randn(3, 50, 96) * 3
    beta_logits = torch.linspace(-12, 12, 3 * 50 * 2).view(3, 50, 2)
    q, k, v, beta = m._inputs(qkv, beta_logits, torch.float32)
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(3, 50, 2), rtol=1e-4, atol=1e-4)
    upper = 2.0 if negative else 1.0
    assert beta.min() >= 0 and beta.max() <= upper and beta.max() > 0.99 * upper
