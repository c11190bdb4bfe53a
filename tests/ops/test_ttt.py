"""TTT-Linear: the mini-batch dual form equals the token loop (outputs, the whole state and every
gradient) for any position in the mini-batch, per sequence; the loop equals mini-batch gradient descent
written with autograd; the closed-form LayerNorm gradient equals autograd's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.ttt import TTTParams, TTTState, ln_l2_grad, ttt_linear_chunk, ttt_linear_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64
STATE_NAMES = ["dW", "db", "G", "h", "pos"]


def make_inputs(B=2, H=2, T=9, Fd=4, b=4, pos=None, seed=0, dtype=F64, fresh=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    params = (rnd(H, Fd, Fd, scale=0.3), rnd(H, Fd, scale=0.3), 1.0 + rnd(H, Fd, scale=0.2), rnd(H, Fd, scale=0.2),
              1.0 / torch.arange(1, b + 1, dtype=F64) + rnd(b, scale=0.05).abs())  # fmt: skip
    pos = torch.tensor(pos if pos is not None else [0] * B, dtype=F64)
    state = (rnd(B, H, Fd, Fd, scale=0.1), rnd(B, H, Fd, scale=0.1), rnd(B, H, Fd, Fd, scale=0.1),
             rnd(B, H, Fd, scale=0.1), pos)  # fmt: skip
    if fresh:
        state = tuple(torch.zeros_like(t) for t in state)
    inputs = {"q": rnd(B, H, T, Fd), "k": rnd(B, H, T, Fd), "v": rnd(B, H, T, Fd),
              "lr": torch.rand(B, H, T, generator=g, dtype=F64)}  # fmt: skip
    inputs = {n: t.to(dtype) for n, t in inputs.items()}
    inputs["params"] = tuple(t.to(dtype) for t in params)
    inputs["state"] = tuple(t.to(dtype) for t in state)
    return inputs


def run(form, inputs):
    fn = lambda q, k, v, lr, params, state: form(q, k, v, lr, TTTParams(*params), TTTState(*state))  # noqa: E731
    return outputs_and_grads(fn, inputs, output_names=["z"] + [f"final {n}" for n in STATE_NAMES])


# (B, T, b, positions): b = 1 (online GD), b > T, T = 1, sequences at different positions of their
# mini-batch, ends on and off a mini-batch boundary
CASES = [
    (2, 9, 4, [0, 0]),
    (2, 16, 4, [1, 3]),
    (1, 1, 16, [5]),
    (1, 1, 4, [3]),
    (3, 63, 16, [0, 15, 7]),
    (2, 7, 1, [0, 0]),
    (2, 20, 16, [15, 14]),
    (2, 12, 5, [4, 2]),
]


@pytest.mark.parametrize("B,T,b,pos", CASES)
def test_chunk_matches_reference(B, T, b, pos):
    inputs = make_inputs(B, T=T, b=b, pos=pos)
    expected = run(ttt_linear_recurrent, inputs)
    actual = run(ttt_linear_chunk, inputs)
    assert_all_close(actual, expected, 1e-10, f"ttt_linear_chunk B={B} T={T} b={b} pos={pos}")


@pytest.mark.parametrize("split", [1, 5, 8, 13])
def test_chunk_split_and_carry(split):
    """Cutting the sequence anywhere, each sequence at its own position, changes nothing."""
    inputs = make_inputs(2, T=21, b=8, pos=[0, 6], seed=1)
    q, k, v, lr = (inputs[n] for n in ("q", "k", "v", "lr"))
    params, state = TTTParams(*inputs["params"]), TTTState(*inputs["state"])
    z, s = ttt_linear_chunk(q, k, v, lr, params, state)
    z1, s1 = ttt_linear_chunk(q[:, :, :split], k[:, :, :split], v[:, :, :split], lr[:, :, :split], params, state)
    z2, s2 = ttt_linear_chunk(q[:, :, split:], k[:, :, split:], v[:, :, split:], lr[:, :, split:], params, s1)
    torch.testing.assert_close(torch.cat((z1, z2), dim=2), z, rtol=1e-12, atol=1e-12)
    for name, a, c in zip(STATE_NAMES, s2, s):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12, msg=f"final {name}")


def test_float32_chunk_matches_float64_reference():
    reference = run(ttt_linear_recurrent, make_inputs(2, T=70, b=16, pos=[0, 9], seed=2))
    expected = {n: t.float() for n, t in reference.items()}
    actual = run(ttt_linear_chunk, make_inputs(2, T=70, b=16, pos=[0, 9], seed=2, dtype=torch.float32))
    assert all(t.dtype == torch.float32 for t in actual.values())
    assert_all_close(actual, expected, 1e-4, "float32 ttt_linear_chunk vs float64 reference")


def test_ln_l2_grad_is_the_gradient_of_the_loss():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 5, 6, generator=g, dtype=F64, requires_grad=True)
    target = torch.randn(2, 3, 5, 6, generator=g, dtype=F64)
    w, bias = torch.randn(3, 6, generator=g, dtype=F64), torch.randn(3, 6, generator=g, dtype=F64)
    normed = F.layer_norm(z, (6,), eps=1e-6) * w[:, None] + bias[:, None]
    (want,) = torch.autograd.grad(0.5 * ((normed - target) ** 2).sum(), z)
    torch.testing.assert_close(ln_l2_grad(z, target, w, bias, 1e-6), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("b", [1, 3, 4])
def test_reference_is_mini_batch_gradient_descent(b):
    """The spec, written with autograd: inside a mini-batch every gradient is taken at the mini-batch's
    initial (W, b); token i of the mini-batch reads W_0 - eta_i sum_{j<=i} lr_j grad l_j(W_0), and the
    next mini-batch starts from the weights of its last token."""
    H, T, Fd = 2, 11, 4
    inputs = make_inputs(1, H, T, Fd, b=b, seed=4, fresh=True)
    q, k, v, lr = (inputs[n][0] for n in ("q", "k", "v", "lr"))
    W_init, b_init, ln_w, ln_b, eta = inputs["params"]
    z, _ = ttt_linear_recurrent(*(inputs[n] for n in ("q", "k", "v", "lr")), TTTParams(*inputs["params"]),
                                TTTState(*inputs["state"]))  # fmt: skip

    def ln(x, h):
        return F.layer_norm(x, (Fd,), eps=1e-6) * ln_w[h] + ln_b[h]

    for h in range(H):
        W0, b0 = W_init[h].clone(), b_init[h].clone()
        gW, gb = torch.zeros_like(W0), torch.zeros_like(b0)
        for t in range(T):
            i = t % b
            Wv, bv = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
            loss = 0.5 * ((ln(k[h, t] @ Wv + bv, h) - (v[h, t] - k[h, t])) ** 2).sum()
            dW, db = torch.autograd.grad(loss, (Wv, bv))
            gW, gb = gW + lr[h, t] * dW, gb + lr[h, t] * db
            W_t, b_t = W0 - eta[i] * gW, b0 - eta[i] * gb
            want = q[h, t] + ln(q[h, t] @ W_t + b_t, h)
            torch.testing.assert_close(z[0, h, t], want, rtol=1e-12, atol=1e-12, msg=f"z[head {h}, t={t}]")
            if i == b - 1:
                W0, b0, gW, gb = W_t, b_t, torch.zeros_like(gW), torch.zeros_like(gb)


def test_bad_arguments_fail_clearly():
    inputs = make_inputs(2, T=5)
    q, k, v, lr = (inputs[n] for n in ("q", "k", "v", "lr"))
    params, state = TTTParams(*inputs["params"]), TTTState(*inputs["state"])
    with pytest.raises(ValueError, match="lr must have shape"):
        ttt_linear_chunk(q, k, v, lr[:, :1], params, state)
    with pytest.raises(ValueError, match="pos must have shape"):
        ttt_linear_recurrent(q, k, v, lr, params, state._replace(pos=state.pos[:1]))
    with pytest.raises(ValueError, match="W_init must have shape"):
        ttt_linear_chunk(q, k, v, lr, params._replace(W_init=params.W_init[:1]), state)


# ---------------------------------------------------------------- the TTT-Linear mixer built on this op
@pytest.mark.parametrize(
    "kwargs,match",
    [({"n_heads": 3}, "n_heads"), ({"mini_batch_size": 0}, "mini_batch_size"), ({"base_lr": 0}, "base_lr"),
     ({"n_heads": 16}, "rotary")],  # fmt: skip
)
def test_ttt_linear_constructor_validation(kwargs, match):
    from seqmix.mixers.ttt_linear import TTTLinear

    with pytest.raises(ValueError, match=match):
        TTTLinear(16, **kwargs)


def test_ttt_linear_state_tracks_the_mini_batch_position():
    """After t tokens the state sits at position t mod b; a completed mini-batch leaves no running sums."""
    from seqmix.mixers.ttt_linear import TTTLinear

    torch.manual_seed(0)
    m = TTTLinear(16, n_heads=2, mini_batch_size=4).double()
    x = torch.randn(2, 11, 16, dtype=F64)
    with torch.no_grad():
        for T in (1, 4, 8, 11):
            _, s = m(x[:, :T])
            assert (s.pos == T % 4).all(), f"pos after {T} tokens"
            assert ((s.G == 0).all() and (s.h == 0).all()) == (T % 4 == 0), f"running sums after {T} tokens"
            assert (s.dW != 0).any() == (T >= 4), f"weights stepped after {T} tokens"
