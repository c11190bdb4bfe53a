"""Short causal depthwise conv: ``forward`` (F.conv1d on state + input) equals a loop over ``step`` and
the window-sum formula, in outputs, new state and the gradients of x, weight, bias and the state;
short inputs (T < K - 1) and split-and-carry streaming work."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from seqmix.modules.conv import CausalConv1d
from seqmix.testing import assert_all_close, outputs_and_grads

C = 5


def make(kernel_size: int, bias: bool = True, dtype=torch.float64) -> CausalConv1d:
    torch.manual_seed(0)
    return CausalConv1d(C, kernel_size, bias=bias).to(dtype)


def make_inputs(B: int, T: int, K: int, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64).to(dtype)
    state = torch.randn(B, C, K - 1, generator=g, dtype=torch.float64).to(dtype)
    return x, state


def forward_form(conv, x, state):
    return conv(x, state)


def step_loop(conv, x, state):
    ys = []
    for t in range(x.shape[1]):
        y_t, state = conv.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def window_formula(conv, x, state):
    """y[t, c] = bias[c] + sum_k w[c, k] * z[t + k, c], z = history then x; the state is z's last K-1 rows."""
    K = conv.kernel_size
    T = x.shape[1]
    z = torch.cat([state.transpose(1, 2), x], dim=1)  # [B, K-1+T, C]
    y = sum(conv.weight[:, 0, k] * z[:, k : k + T] for k in range(K))
    if conv.bias is not None:
        y = y + conv.bias
    return y, z[:, z.shape[1] - (K - 1) :].transpose(1, 2)


def run(conv: CausalConv1d, form: Callable, x: torch.Tensor, state: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, new state and gradients of a fixed random functional of both w.r.t. x, the state and the
    conv's parameters (``grad of weight``, ``grad of bias``)."""
    return outputs_and_grads(
        lambda x_, s: form(conv, x_, s),
        {"x": x, "conv_state": state},
        params=dict(conv.named_parameters()),
        output_names=["output y", "new state"],
    )


# (B, T, K, bias): T = 1 and T < K - 1, T = K - 1, T > K, K = 1 (no history), K = 2, no bias
CASES = [(2, 1, 4, True), (2, 2, 4, True), (1, 3, 4, True), (2, 9, 4, True), (2, 6, 1, True), (3, 5, 2, False)]


@pytest.mark.parametrize("B,T,K,bias", CASES)
@pytest.mark.parametrize("form", [step_loop, window_formula], ids=["step loop", "window formula"])
def test_forward_matches(form, B, T, K, bias):
    conv = make(K, bias)
    x, state = make_inputs(B, T, K)
    expected = run(conv, form, x, state)
    actual = run(conv, forward_form, x, state)
    assert_all_close(actual, expected, 1e-12, f"forward vs {form.__name__} (B={B}, T={T}, K={K}, bias={bias})")


def test_float32():
    x, state = make_inputs(2, 11, 4, dtype=torch.float32)
    expected = run(make(4, dtype=torch.float32), step_loop, x, state)
    actual = run(make(4, dtype=torch.float32), forward_form, x, state)
    assert actual["output y"].dtype == torch.float32
    assert_all_close(actual, expected, 1e-5, "float32 forward vs step loop")


def test_short_input_shifts_the_history():
    """With T = 2 < K - 1 = 3 the new state is (oldest history entry dropped) + the two new inputs."""
    conv = make(4)
    x, state = make_inputs(2, 2, 4)
    _, new_state = conv(x, state)
    expected = torch.cat([state[:, :, 2:], x.transpose(1, 2)], dim=2)
    torch.testing.assert_close(new_state, expected, rtol=0, atol=0, msg="new conv state after 2 tokens")


@pytest.mark.parametrize("split", [1, 2, 5, 10])
def test_split_and_carry(split):
    conv = make(4)
    x, state = make_inputs(2, 11, 4)
    with torch.no_grad():
        y, s = conv(x, state)
        y1, s1 = conv(x[:, :split], state)
        y2, s2 = conv(x[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-12, atol=1e-12, msg=f"outputs split at {split}")
    torch.testing.assert_close(s2, s, rtol=0, atol=0, msg=f"final state split at {split}")


def test_zero_state_default_and_init_state():
    conv = make(3)
    x, _ = make_inputs(2, 4, 3)
    state = conv.init_state(2)
    assert state.shape == (2, C, 2) and state.dtype == torch.float64 and not state.any()
    with torch.no_grad():
        torch.testing.assert_close(conv(x)[0], conv(x, state)[0], rtol=0, atol=0, msg="None state vs zero state")


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="channels must be a positive int"):
        CausalConv1d(0)
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        CausalConv1d(4, kernel_size=0)
    conv = make(4)
    x, state = make_inputs(2, 3, 4)
    with pytest.raises(ValueError, match=r"conv_state must have shape \(2, 5, 3\)"):
        conv(x, state[:, :, :2])
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 5\]"):
        conv(x[..., :4], state)
    with pytest.raises(ValueError, match=r"x_t must have shape \[B, 5\]"):
        conv.step(x, state)
