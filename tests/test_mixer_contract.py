"""The shared equivalence harness: DESIGN.md's five invariants, checked for every registered mixer.

A mixer is covered by registering it (``seqmix/mixers/registry.py``); nothing here names a mixer.

1. every mode equals a Python loop over ``step``: outputs, final state and gradients with respect to the
   input, every parameter and the initial state, ~1e-10 relative in float64 and ~1e-4 in float32;
2. split-and-carry: ``forward(x[:, :t])`` then ``forward(x[:, t:], state)`` equals ``forward(x)``;
3. causality: changing ``x[:, t]`` never changes ``y[:, :t]`` (and does change ``y[:, t]``);
4. awkward sizes: T = 1, T = 63 with chunk size 16 (from the registry's test options), B = 1;
5. ``state_size`` equals the number of elements really held, per sequence.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import pytest
import torch

from seqmix import build_mixer, get_spec, list_mixers, state_numel, state_tensors
from seqmix.testing import assert_all_close, assert_close, fixed_weights, outputs_and_grads

D_MODEL = 16
NAMES = [spec.name for spec in list_mixers()]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
SIZES = [(2, 63), (2, 32), (1, 1), (1, 20)]  # (B, T): T not a multiple of the chunk size (16), a multiple, one token, B = 1


# --------------------------------------------------------------------------- helpers
def make_mixer(name: str, dtype: torch.dtype = torch.float64, **overrides):
    torch.manual_seed(0)
    options = {**get_spec(name).test_options, **overrides}
    return build_mixer(name, d_model=D_MODEL, **options).to(dtype)


def carried_state(mixer, batch: int, dtype: torch.dtype):
    """A realistic non-zero initial state: whatever the mixer holds after a random 5-token prefix."""
    with torch.no_grad():
        _, state = mixer(fixed_weights((batch, 5, D_MODEL), dtype, 7))
    return state


def step_loop(mixer, x: torch.Tensor, state):
    ys = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


GRAD_FLOOR = 1e-3  # a gradient below 1e-3 of the largest gradient of the same loss is compared absolutely


def run_with_grads(mixer, x: torch.Tensor, state, run: Callable) -> dict[str, torch.Tensor]:
    """``run(mixer, x, state)``'s output y and final state, and the gradients (of a fixed random functional
    of both) w.r.t. the input, the initial state tensors and every parameter, named for failure messages."""
    n_state = len(state_tensors(mixer.init_state(x.shape[0])))
    return outputs_and_grads(
        lambda x_, s: run(mixer, x_, s),
        {"input x": x, "initial state": state},
        params={f"parameter {n}": p for n, p in mixer.named_parameters()},
        output_names=["output y"] + [f"final state[{i}]" for i in range(n_state)],
        seed=11,  # loss weights: seed 11 for y, 12 + i for final state[i]
    )


# --------------------------------------------------------------------------- invariants 1 and 4
@pytest.mark.parametrize("init", ["zero", "carried"])
@pytest.mark.parametrize("B,T", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_every_mode_matches_step_loop(name, dtype, B, T, init):
    mixer = make_mixer(name, dtype)
    x = fixed_weights((B, T, D_MODEL), dtype, 1)
    state = carried_state(mixer, B, dtype) if init == "carried" else None
    reference = run_with_grads(mixer, x, state, step_loop)
    if dtype == torch.float64 and init == "carried" and T > 1:
        dead = [k for k, v in reference.items() if k.startswith("grad of parameter") and not v.abs().sum() > 0]
        assert not dead, f"{name}: parameters with an all-zero gradient make the gradient check vacuous: {dead}"
    for mode in mixer.modes:
        result = run_with_grads(mixer, x, state, lambda m, x_, s: m(x_, s, mode=mode))
        assert result["output y"].dtype == dtype
        what = f"{name} mode={mode!r} vs step loop"
        assert_all_close(result, reference, TOLERANCE[dtype], what, grad_floor=GRAD_FLOOR)


VARIANTS = [(spec.name, i) for spec in list_mixers() for i in range(len(spec.test_variants))]


@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}-variant{i}" for n, i in VARIANTS])
def test_option_variants_match_step_loop(name, variant):
    """The registry's further option sets (other flags, odd chunk sizes) pass invariants 1-3 as well."""
    options = get_spec(name).test_variants[variant]
    mixer = make_mixer(name, torch.float64, **options)
    x = fixed_weights((2, 37, D_MODEL), torch.float64, seed=1)
    state = carried_state(mixer, 2, torch.float64)
    reference = run_with_grads(mixer, x, state, step_loop)
    for mode in mixer.modes:
        result = run_with_grads(mixer, x, state, lambda m, x_, s: m(x_, s, mode=mode))
        assert_all_close(result, reference, TOLERANCE[torch.float64], f"{name} {options} mode={mode!r}", GRAD_FLOOR)
        with torch.no_grad():
            y1, s1 = mixer(x[:, :20], state, mode=mode)
            y2, _ = mixer(x[:, 20:], s1, mode=mode)
        assert_close(f"{name} {options} mode={mode!r}: split at 20", torch.cat([y1, y2], 1), reference["output y"], 1e-10)


# --------------------------------------------------------------------------- invariant 2
@pytest.mark.parametrize("name", NAMES)
def test_split_and_carry_equals_whole(name):
    mixer = make_mixer(name)
    B, T = 2, 40
    x = fixed_weights((B, T, D_MODEL), torch.float64, 2)
    state0 = carried_state(mixer, B, torch.float64)
    with torch.no_grad():
        for mode in mixer.modes:
            y_full, s_full = mixer(x, state0, mode=mode)
            for t in (1, 16, 17, T - 1):
                y1, s1 = mixer(x[:, :t], state0, mode=mode)
                y2, s2 = mixer(x[:, t:], s1, mode=mode)
                what = f"{name} mode={mode!r} split at {t}"
                assert_close(f"{what}: output y", torch.cat([y1, y2], dim=1), y_full, 1e-10)
                for i, (a, b) in enumerate(zip(state_tensors(s2), state_tensors(s_full), strict=True)):
                    assert_close(f"{what}: final state[{i}]", a, b, 1e-10)


# --------------------------------------------------------------------------- invariant 3
@pytest.mark.parametrize("name", NAMES)
def test_causality(name):
    mixer = make_mixer(name)
    B, T, t = 2, 33, 10
    x = fixed_weights((B, T, D_MODEL), torch.float64, 3)
    x2 = x.clone()
    x2[:, t] += fixed_weights((B, D_MODEL), torch.float64, 4)
    with torch.no_grad():
        for mode in mixer.modes:
            y, _ = mixer(x, mode=mode)
            y2, _ = mixer(x2, mode=mode)
            assert_close(f"{name} mode={mode!r}: outputs before the changed token", y2[:, :t], y[:, :t], 1e-12)
            changed = (y2[:, t] - y[:, t]).abs().max().item()
            assert changed > 1e-8, f"{name} mode={mode!r}: changing x[:, {t}] did not change y[:, {t}]"


# --------------------------------------------------------------------------- invariant 5
@pytest.mark.parametrize("name", NAMES)
def test_state_size_counts_what_is_held(name):
    mixer = make_mixer(name)
    B = 3
    init = mixer.init_state(B)
    assert state_numel(init) == B * mixer.state_size(0), f"{name}: init_state holds a different size"
    for t in state_tensors(init):
        assert t.dtype == torch.float64, f"{name}: init_state dtype {t.dtype} does not follow the parameters"
    with torch.no_grad():
        for L in (1, 5, 33):
            _, state = mixer(fixed_weights((B, L, D_MODEL), torch.float64, 5))
            shapes = [tuple(s.shape) for s in state_tensors(state)]
            assert all(s[0] == B for s in shapes), f"{name}: every state tensor must be batch-first, got {shapes}"
            assert state_numel(state) == B * mixer.state_size(L), (
                f"{name}: after {L} tokens the state holds {state_numel(state) // B} elements per sequence, "
                f"state_size({L}) says {mixer.state_size(L)}"
            )
    assert mixer.state_size(4096) >= mixer.state_size(0) >= 0


# --------------------------------------------------------------------------- batch independence
@pytest.mark.parametrize("name", NAMES)
def test_sequences_in_a_batch_do_not_interact(name):
    mixer = make_mixer(name)
    x = fixed_weights((3, 21, D_MODEL), torch.float64, 6)
    with torch.no_grad():
        for mode in mixer.modes:
            y, _ = mixer(x, mode=mode)
            for b in range(3):
                y_b, _ = mixer(x[b : b + 1], mode=mode)
                assert_close(f"{name} mode={mode!r}: sequence {b} alone vs in the batch", y_b, y[b : b + 1], 1e-10)


# --------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_fails_clearly(name):
    mixer = make_mixer(name)
    with pytest.raises(ValueError, match="available modes"):
        mixer(torch.zeros(1, 3, D_MODEL, dtype=torch.float64), mode="no-such-mode")
    with pytest.raises(ValueError, match=r"d_model=16"):
        mixer(torch.zeros(1, 3, D_MODEL + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[batch, time, d_model\]"):
        mixer(torch.zeros(3, D_MODEL, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[batch, d_model\]"):
        mixer.step(torch.zeros(1, 3, D_MODEL, dtype=torch.float64), None)
    with pytest.raises(TypeError, match="floating-point"):
        mixer(torch.zeros(1, 3, D_MODEL, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_bad_state_fails_clearly(name):
    mixer = make_mixer(name)
    state = carried_state(mixer, 2, torch.float64)
    x3 = torch.zeros(3, 4, D_MODEL, dtype=torch.float64)
    with pytest.raises(ValueError, match="expects a state"):
        mixer(x3, state)  # a state for 2 sequences, input of 3
    with pytest.raises(ValueError, match="expects a state"):
        mixer.step(x3[:, 0], state)
    tensors = state_tensors(state)
    wrong = tuple(tensors[:-1]) if len(tensors) > 1 else (tensors[0], tensors[0])
    with pytest.raises(ValueError, match="expects a state"):
        mixer(x3[:2], wrong)
    # a plain tuple of the right tensors (e.g. after serialisation) is accepted
    plain = tensors[0] if len(tensors) == 1 else tuple(tensors)
    y_plain, _ = mixer(x3[:2], plain)
    y_named, _ = mixer(x3[:2], state)
    assert_close(f"{name}: plain-tuple state", y_plain, y_named, 0.0)


def test_registry_lists_the_foundation_mixers():
    names = set(NAMES)
    assert {"attention", "linear_attention", "retnet", "lstm", "mingru", "mamba"} <= names
    for spec in list_mixers():
        assert spec.modes, f"{spec.name}: no modes"
        assert spec.family and spec.paper, f"{spec.name}: family and paper are required"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_lists_the_options(name):
    with pytest.raises(TypeError, match="its options"):
        build_mixer(name, d_model=D_MODEL, no_such_option=1)


def test_unknown_mixer_lists_known_ones():
    with pytest.raises(KeyError, match="Known mixers: .*lstm"):
        build_mixer("lstn", d_model=8)
    with pytest.raises(KeyError, match="Did you mean 'lstm'"):
        build_mixer("lstn", d_model=8)


@pytest.mark.parametrize("name", NAMES)
def test_tensors_follow_the_input_device(name):
    """Every mode, the carried state, ``step`` and backward run on the meta device.

    A stand-in for a GPU on CPU-only machines: a tensor created on the CPU inside a form (a mask, a
    position index, a constant) meets a meta tensor and raises a device-mismatch error.
    """
    mixer = make_mixer(name, torch.float32).to("meta")
    x = torch.empty(2, 20, D_MODEL, device="meta", requires_grad=True)
    for mode in mixer.modes:
        y, state = mixer(x, mode=mode)
        y2, state = mixer(x, state, mode=mode)
        y_t, state = mixer.step(x[:, 0], state)
        (y.sum() + y2.sum() + y_t.sum()).backward()
        devices = {t.device.type for t in [y, y2, y_t, x.grad, *state_tensors(state)]}
        devices |= {p.grad.device.type for p in mixer.parameters() if p.grad is not None}
        assert devices == {"meta"}, f"{name} mode={mode!r}: results on {devices}"


AUTOCAST_TOLERANCE = 3e-2  # bfloat16 keeps ~3 significant digits; relative to max |y| in float32


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast(name):
    """Under bf16 autocast every form runs forward and backward, the state keeps its float32 dtype
    (recurrences accumulate in float32) and the output stays within AUTOCAST_TOLERANCE of float32."""
    mixer = make_mixer(name, torch.float32)
    x = fixed_weights((2, 40, D_MODEL), torch.float32, seed=9)
    with torch.no_grad():
        y32, _ = mixer(x)
    for mode in mixer.modes:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = mixer(x, mode=mode)
            y_t, state = mixer.step(x[:, 0], state)
            (y.float().sum() + y_t.float().sum()).backward()
        dtypes = {t.dtype for t in state_tensors(state)}
        assert dtypes <= {torch.float32}, f"{name} mode={mode!r}: state dtypes {dtypes} under autocast"
        assert_close(f"{name} mode={mode!r}: bf16 autocast vs float32", y.detach().float(), y32, AUTOCAST_TOLERANCE)


LOW_PRECISION_TOLERANCE = 5e-2  # relative to max |y| of the float64 computation with the same weights


@pytest.mark.parametrize("precision", ["bfloat16 model", "float16 autocast"])
@pytest.mark.parametrize("name", NAMES)
def test_long_sequence_in_low_precision(name, precision):
    """T = 2100 in a bfloat16 model or under float16 autocast stays close to float64.

    Long enough that positions exceed bfloat16's exact integers (256), that a decay rounded to 1 shows,
    and that a running normaliser of order K * t passes float16's maximum (65504) at d_model 128.
    """
    B, T, d = 1, 2100, 128
    torch.manual_seed(0)
    mixer = build_mixer(name, d_model=d, **get_spec(name).test_options)
    x = fixed_weights((B, T, d), torch.float32, seed=10)
    if precision == "bfloat16 model":
        mixer, x = mixer.to(torch.bfloat16), x.to(torch.bfloat16)
        context = contextlib.nullcontext()
    else:
        context = torch.autocast("cpu", dtype=torch.float16)
    reference = copy.deepcopy(mixer).double()
    with torch.no_grad():
        y64, state64 = reference(x.double())
        y64_next, _ = reference.step(x[:, -1].double(), state64)
        for mode in mixer.modes:
            with context:
                y, state = mixer(x, mode=mode)
                y_next, _ = mixer.step(x[:, -1], state)
            what = f"{name} mode={mode!r} in {precision}"
            assert_close(f"{what}: output y", y.double(), y64, LOW_PRECISION_TOLERANCE)
            # late outputs are often smaller than early ones: judge the tail on its own scale too
            assert_close(f"{what}: last 256 outputs", y[:, -256:].double(), y64[:, -256:], LOW_PRECISION_TOLERANCE)
            assert_close(f"{what}: step after the sequence", y_next.double(), y64_next, LOW_PRECISION_TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode_then_training(name):
    """Decoding under inference_mode must not leave cached tensors that break a later backward."""
    mixer = make_mixer(name, torch.float32)
    x = fixed_weights((2, 9, D_MODEL), torch.float32, 8)
    with torch.inference_mode():
        y_inf, state = mixer(x)
        mixer.step(x[:, 0], state)
    y, _ = mixer(x)
    y.sum().backward()
    assert_close(f"{name}: output under inference_mode", y_inf.clone(), y.detach(), 1e-6)
