"""Elman and GRU ops: the fused kernels, the cells and the loops agree with nn.RNN / nn.GRU, gradients included."""

from __future__ import annotations

import pytest
import torch

from seqmix.ops.rnn import elman_fused, elman_recurrent, gru_fused, gru_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

F64 = torch.float64
CASES = {
    "elman": (lambda d, h: torch.nn.RNN(d, h, batch_first=True), elman_fused, elman_recurrent),
    "gru": (lambda d, h: torch.nn.GRU(d, h, batch_first=True), gru_fused, gru_recurrent),
}


def _module(kind: str, d_in: int, d_hidden: int) -> torch.nn.RNNBase:
    torch.manual_seed(0)
    return CASES[kind][0](d_in, d_hidden).double()


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("B,T", [(3, 11), (1, 1), (2, 40)])
def test_forms_agree_with_torch_module(kind, B, T):
    rnn = _module(kind, 5, 7)
    weights = [w.detach() for w in rnn.all_weights[0]]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, 5, generator=g, dtype=F64)
    h0 = torch.randn(B, 7, generator=g, dtype=F64)
    want_y, want_h = rnn(x, h0[None])
    _, fused, loop = CASES[kind]
    for form in (fused, loop):
        y, h = form(x, *weights, h0)
        torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12, msg=f"{kind} {form.__name__}: outputs")
        torch.testing.assert_close(h, want_h[0], rtol=1e-12, atol=1e-12, msg=f"{kind} {form.__name__}: final h")


@pytest.mark.parametrize("kind", CASES)
def test_fused_gradients_equal_loop_gradients(kind):
    rnn = _module(kind, 4, 6)
    names = ["w_ih", "w_hh", "b_ih", "b_hh"]
    g = torch.Generator().manual_seed(2)
    inputs = {"x": torch.randn(2, 17, 4, generator=g, dtype=F64)}
    inputs.update({n: w.detach() for n, w in zip(names, rnn.all_weights[0])})
    inputs["initial_state"] = torch.randn(2, 6, generator=g, dtype=F64)
    _, fused, loop = CASES[kind]
    want = outputs_and_grads(loop, inputs, output_names=["h_all", "h_T"])
    got = outputs_and_grads(fused, inputs, output_names=["h_all", "h_T"])
    assert_all_close(got, want, 1e-10, f"{kind}: fused vs loop")


def test_gru_cell_follows_pytorch_reset_convention():
    """n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): the reset gate multiplies the recurrent term *with* its bias."""
    rnn = _module("gru", 3, 2)
    w_ih, w_hh, b_ih, b_hh = (w.detach() for w in rnn.all_weights[0])
    x, h = torch.randn(1, 3, dtype=F64), torch.randn(1, 2, dtype=F64)
    r = torch.sigmoid(x @ w_ih[:2].T + b_ih[:2] + h @ w_hh[:2].T + b_hh[:2])
    z = torch.sigmoid(x @ w_ih[2:4].T + b_ih[2:4] + h @ w_hh[2:4].T + b_hh[2:4])
    n = torch.tanh(x @ w_ih[4:].T + b_ih[4:] + r * (h @ w_hh[4:].T + b_hh[4:]))
    want = (1 - z) * n + z * h
    got, _ = gru_recurrent(x[:, None], w_ih, w_hh, b_ih, b_hh, h)
    torch.testing.assert_close(got[:, 0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,gates", [("elman", 1), ("gru", 3)])
def test_mixers_draw_orthogonal_recurrent_blocks(name, gates):
    from seqmix import build_mixer

    m = build_mixer(name, 12, d_hidden=10)
    w_hh = m.rnn.weight_hh_l0.detach()
    for g in range(gates):
        block = w_hh[g * 10 : (g + 1) * 10]
        torch.testing.assert_close(block @ block.T, torch.eye(10), atol=1e-5, rtol=0, msg=f"{name} block {g}")
    assert m.out_proj is not None and m(torch.randn(2, 3, 12))[0].shape == (2, 3, 12)


# --------------------------------------------------------------------------- the GRU's hand-written backward
@pytest.mark.parametrize("B,T,D,H", [(1, 1, 3, 4), (3, 2, 5, 2), (2, 29, 4, 9)])
@pytest.mark.parametrize("used", ["both", "h_all", "h_T"])
def test_gru_adjoint_gradients_equal_the_loop(B, T, D, H, used):
    """Every gradient, with the loss on both outputs or on one only (the other's gradient is None)."""
    from seqmix.ops.gru_adjoint import gru_fused_adjoint

    g = torch.Generator().manual_seed(B * 100 + T)
    args = [torch.randn(B, T, D, generator=g, dtype=F64), 0.7 * torch.randn(3 * H, D, generator=g, dtype=F64),
            0.7 * torch.randn(3 * H, H, generator=g, dtype=F64), torch.randn(3 * H, generator=g, dtype=F64),
            torch.randn(3 * H, generator=g, dtype=F64), torch.randn(B, H, generator=g, dtype=F64)]
    grads = []
    for form in (gru_recurrent, gru_fused_adjoint):
        leaves = [a.clone().requires_grad_(True) for a in args]
        h_all, h_T = form(*leaves)
        loss = {"both": (h_all * 1.3).sum() + (h_T**2).sum(), "h_all": (h_all**2).sum(), "h_T": h_T.sum()}[used]
        grads.append(torch.autograd.grad(loss, leaves))
    for name, a, b in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"], *grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=f"d/d{name}")


def test_gru_adjoint_with_saturated_gates_matches_the_loop():
    from seqmix.ops.gru_adjoint import gru_fused_adjoint

    g = torch.Generator().manual_seed(5)
    args = [torch.randn(2, 12, 3, generator=g, dtype=F64), 30 * torch.randn(9, 3, generator=g, dtype=F64),
            30 * torch.randn(9, 3, generator=g, dtype=F64), torch.zeros(9, dtype=F64), torch.zeros(9, dtype=F64),
            torch.randn(2, 3, generator=g, dtype=F64)]
    inputs = dict(zip(["x", "w_ih", "w_hh", "b_ih", "b_hh", "initial_state"], args))
    want = outputs_and_grads(gru_recurrent, inputs, output_names=["h_all", "h_T"])
    got = outputs_and_grads(gru_fused_adjoint, inputs, output_names=["h_all", "h_T"])
    assert_all_close(got, want, 1e-9, "saturated gates")


def test_gru_fused_keeps_pytorchs_backward_under_autocast():
    """Under CPU autocast the kernel computes in bfloat16; PyTorch's own backward handles the casts."""
    rnn = _module("gru", 4, 6).float()
    x = torch.randn(2, 5, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h_all, _ = gru_fused(x, *rnn.all_weights[0], torch.zeros(2, 6))
    h_all.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
