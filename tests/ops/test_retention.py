"""Retention ops: every fast form equals the reference loop (outputs, final state, every gradient),
and the reference loop equals the paper's absolute-position formula."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import pytest
import torch

from seqmix.modules.rotary import rotary_inv_freq, rotate_pairs
from seqmix.ops.retention import retention_chunk, retention_parallel, retention_recurrent
from seqmix.testing import assert_all_close, outputs_and_grads

B, H, K, V = 2, 3, 8, 6
ARGS = ("q", "k", "v", "log_gamma", "theta", "initial_state")


def log_gammas(kind: str) -> torch.Tensor:
    """Per-head log decays: the paper's multi-scale set, decays within 1e-6 of 1, or crushing decays."""
    h = torch.arange(H, dtype=torch.float64)
    if kind == "multiscale":
        return torch.log1p(-(2.0 ** (-5.0 - h)))
    if kind == "near_one":
        return -1e-6 * (h + 1)
    if kind == "strong":  # gamma^T underflows to 0: dividing cumulative products would give inf/nan
        return torch.tensor([-0.7, -30.0, -200.0], dtype=torch.float64)
    raise ValueError(kind)


def make_inputs(T: int, decay: str, rotary: bool, dtype=torch.float64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rnd = partial(torch.randn, generator=g, dtype=torch.float64)
    inputs = {
        "q": rnd(B, H, T, K),
        "k": rnd(B, H, T, K) / math.sqrt(K),
        "v": rnd(B, H, T, V),
        "log_gamma": log_gammas(decay),
        # rotary_inv_freq's slowest frequencies barely move in a short test, so scale them up
        "theta": rotary_inv_freq(K, dtype=torch.float64) * 3.0 if rotary else None,
        "initial_state": rnd(B, H, K, V),
    }
    return {n: None if t is None else t.to(dtype) for n, t in inputs.items()}


def run(form: Callable, inputs: dict) -> dict[str, torch.Tensor]:
    """Outputs, final state and gradients of a fixed random functional of both w.r.t. every input."""
    return outputs_and_grads(form, {n: inputs[n] for n in ARGS}, output_names=["output o", "final_state"])


FORMS = {
    "parallel": lambda chunk_size: retention_parallel,
    "chunk": lambda chunk_size: partial(retention_chunk, chunk_size=chunk_size),
}

# (T, chunk_size, decay): T = 1, T a multiple of C, T not a multiple of C, C > T, C = 1, long T
CASES = [
    (1, 16, "multiscale"),
    (32, 16, "multiscale"),
    (63, 16, "multiscale"),
    (20, 64, "multiscale"),
    (9, 1, "multiscale"),
    (300, 32, "near_one"),
    (70, 32, "strong"),
]


@pytest.mark.parametrize("rotary", [True, False], ids=["rotary", "no_rotary"])
@pytest.mark.parametrize("T,chunk_size,decay", CASES)
@pytest.mark.parametrize("form", list(FORMS))
def test_fast_form_matches_reference_float64(form: str, T: int, chunk_size: int, decay: str, rotary: bool) -> None:
    inputs = make_inputs(T, decay, rotary)
    expected = run(retention_recurrent, inputs)
    actual = run(FORMS[form](chunk_size), inputs)
    assert_all_close(actual, expected, 1e-10, f"{form} T={T} C={chunk_size} {decay} rotary={rotary}")


@pytest.mark.parametrize("form", list(FORMS))
def test_fast_form_float32_stays_close_to_float64_reference(form: str) -> None:
    # Long sequence with decays near 1: errors would accumulate here if anything were unstable.
    T = 300
    expected = run(retention_recurrent, make_inputs(T, "near_one", True, torch.float64))
    expected = {n: t.float() for n, t in expected.items()}  # the float64 reference, rounded to float32
    actual = run(FORMS[form](32), make_inputs(T, "near_one", True, torch.float32))
    assert_all_close(actual, expected, 1e-4, f"{form} float32 vs float64 reference")


def test_reference_is_the_papers_absolute_position_formula() -> None:
    # o_n = sum_{m<=n} gamma^(n-m) <rot(q_n, n theta), rot(k_m, m theta)> v_m, with zero initial state;
    # and the final state read by a query equals continuing the sum one token further.
    T = 25
    x = make_inputs(T + 1, "multiscale", True)
    q, k, v, log_gamma, theta = x["q"], x["k"], x["v"], x["log_gamma"], x["theta"]
    pos = torch.arange(T + 1, dtype=torch.float64)
    qa, ka = rotate_pairs(q, pos[:, None] * theta), rotate_pairs(k, pos[:, None] * theta)
    n, m = pos[:, None], pos[None, :]
    decay = torch.where(n >= m, log_gamma[:, None, None].exp() ** (n - m), torch.zeros(()).double())
    o_paper = ((qa @ ka.transpose(-1, -2)) * decay) @ v  # [B, H, T+1, V]

    zero = torch.zeros(B, H, K, V, dtype=torch.float64)
    o_ref, state = retention_recurrent(q[:, :, :T], k[:, :, :T], v[:, :, :T], log_gamma, theta, zero)
    assert_all_close({"output o": o_ref}, {"output o": o_paper[:, :, :T]}, 1e-12, "reference vs paper")
    o_next, _ = retention_recurrent(q[:, :, T:], k[:, :, T:], v[:, :, T:], log_gamma, theta, state)
    assert_all_close({"output o (carried)": o_next}, {"output o (carried)": o_paper[:, :, T:]}, 1e-12, "carried state")


def test_rotation_changes_the_output() -> None:
    # Guards the test above from passing with rotation silently ignored everywhere.
    x = make_inputs(10, "multiscale", True)
    rotated, _ = retention_chunk(*(x[n] for n in ARGS), chunk_size=4)
    plain, _ = retention_chunk(*(x[n] if n != "theta" else None for n in ARGS), chunk_size=4)
    assert (rotated - plain).abs().max() > 1e-3


def test_chunk_float32_keeps_long_rotations_precise() -> None:
    # The chunk form rotates queries and keys by their position in the whole call (up to T radians times
    # the fastest frequency), not by their position in a chunk: in float32 those angles must be formed
    # in float64, or scores drift by up to T * 3e-8 radians (here ~5e-4) from the float64 result. The
    # float64 chunk form stands in for the reference loop (the tests above prove them equal) to stay fast.
    T = 4000
    inputs = make_inputs(T, "near_one", True, torch.float64, seed=3)
    inputs = {n: t[:1, :1] if t.ndim == 4 else t[:1] for n, t in inputs.items()}  # B = H = 1
    # every pair fast (angles up to ~10^4); a float32 number, so that both runs rotate by the same angles
    inputs["theta"] = torch.full((K // 2,), 2.3, dtype=torch.float32).double()
    chunk = partial(retention_chunk, chunk_size=64)
    expected = {n: t.float() for n, t in run(chunk, inputs).items()}
    actual = run(chunk, {n: None if t is None else t.float() for n, t in inputs.items()})
    assert_all_close(actual, expected, 1e-4, f"chunk float32 vs float64, T={T}")


@pytest.mark.parametrize("which", ["output", "state", "both"])
@pytest.mark.parametrize("rotary", [True, False], ids=["rotary", "no_rotary"])
def test_chunk_backward_from_either_output_matches_reference(which: str, rotary: bool) -> None:
    # The chunk form has a hand-written backward: a loss on the outputs only (no gradient reaches the
    # final state), on the final state only (none reaches the outputs), or on both must give autograd's
    # gradients through the reference loop for every argument, decays and frequencies included.
    inputs = make_inputs(37, "multiscale", rotary, seed=5)

    def loss_of(form):
        leaves = {n: None if t is None else t.clone().requires_grad_(True) for n, t in inputs.items()}
        o, state = form(*(leaves[n] for n in ARGS))
        w_o = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype)
        w_s = torch.randn(state.shape, generator=torch.Generator().manual_seed(2), dtype=state.dtype)
        loss = {"output": (o * w_o).sum(), "state": (state * w_s).sum()}
        total = loss["output"] + loss["state"] if which == "both" else loss[which]
        wrt = [n for n in ARGS if leaves[n] is not None]
        grads = torch.autograd.grad(total, [leaves[n] for n in wrt], allow_unused=True)  # q: unused by the state
        return {f"grad of {n}": torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(wrt, grads)}

    expected = loss_of(retention_recurrent)
    actual = loss_of(partial(retention_chunk, chunk_size=8))
    assert_all_close(actual, expected, 1e-10, f"chunk backward, loss on {which}")


def test_chunk_without_gradients_keeps_nothing_and_agrees() -> None:
    # Inference (no input needs a gradient) runs the same forward and keeps no per-chunk states.
    inputs = make_inputs(50, "multiscale", True, seed=6)
    args = [inputs[n] for n in ARGS]
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        o, state = retention_chunk(*args, chunk_size=16)
    assert not saved and not o.requires_grad
    o_ref, state_ref = retention_recurrent(*args)
    assert_all_close({"o": o, "state": state}, {"o": o_ref, "state": state_ref}, 1e-10, "no-grad chunk form")
