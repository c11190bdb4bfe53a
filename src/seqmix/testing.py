"""Comparison helpers for proving two forms of a computation equal: outputs, states and gradients.

seqmix's own tests use them (the shared mixer harness and the op tests); they are public so that the
author of a new mixer or kernel can check it the same way::

    from seqmix.testing import outputs_and_grads, assert_all_close

    want = outputs_and_grads(my_scan_reference, {"log_a": log_a, "b": b, "initial_state": h0})
    got = outputs_and_grads(my_scan_fast, {"log_a": log_a, "b": b, "initial_state": h0})
    assert_all_close(got, want, tol=1e-10, what="my_scan_fast vs reference")

The gradients are those of a fixed random functional of every output (``sum_i <w_i, out_i>``), so
that a difference anywhere in the backward pass shows up in some gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from seqmix.state import map_state, state_tensors

__all__ = ["fixed_weights", "outputs_and_grads", "assert_close", "assert_all_close"]


def fixed_weights(shape: Sequence[int], dtype: torch.dtype, seed: int, device: Any = None) -> torch.Tensor:
    """A standard-normal tensor that depends only on ``shape`` and ``seed`` (drawn in float64 on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _leaf(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.detach().clone().requires_grad_(True)
    return t


def outputs_and_grads(
    fn: Callable[..., Any],
    inputs: Mapping[str, Any],
    *,
    params: Optional[Mapping[str, torch.Tensor]] = None,
    output_names: Optional[Sequence[str]] = None,
    seed: int = 99,
) -> dict[str, torch.Tensor]:
    """Call ``fn(*inputs.values())`` on fresh leaf copies; return its outputs and all gradients.

    ``inputs`` values may be tensors, (named) tuples of tensors such as states, ``None`` or plain
    values (chunk sizes, flags), passed positionally in order. Every floating-point tensor among them,
    and every tensor of ``params`` (e.g. ``dict(module.named_parameters())``), gets a gradient entry,
    named ``"grad of <name>"`` (``"grad of <name>[i]"`` inside tuples). Outputs (any nesting of tensors
    and tuples) are flattened and named by ``output_names`` or ``"output[i]"``. A gradient that
    autograd reports as unused is returned as zeros.
    """
    leaves = {name: (map_state(_leaf, v) if isinstance(v, (tuple, list)) else _leaf(v)) for name, v in inputs.items()}
    result = fn(*leaves.values())
    outputs = state_tensors(result)
    if output_names is not None and len(output_names) != len(outputs):
        raise ValueError(f"{len(output_names)} output names for {len(outputs)} outputs: {list(output_names)}")
    names = list(output_names) if output_names is not None else [f"output[{i}]" for i in range(len(outputs))]

    wrt: dict[str, torch.Tensor] = {}
    for name, v in leaves.items():
        tensors = state_tensors(v) if isinstance(v, (tuple, list)) else [v]
        for i, t in enumerate(tensors):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                wrt[f"{name}[{i}]" if isinstance(v, (tuple, list)) else name] = t
    wrt.update(params or {})

    loss = sum((o * fixed_weights(o.shape, o.dtype, seed + i, o.device)).sum() for i, o in enumerate(outputs))
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True) if wrt else ()
    out = {n: o.detach() for n, o in zip(names, outputs)}
    for (n, t), g in zip(wrt.items(), grads):
        out[f"grad of {n}"] = torch.zeros_like(t) if g is None else g
    return out


def assert_close(label: str, actual: torch.Tensor, expected: torch.Tensor, tol: float, floor: float = 0.0) -> None:
    """``max |actual - expected| <= tol * max(max |expected|, floor)``, relative to the tensor's own scale.

    ``floor`` keeps a quantity that is zero in theory (say, the query weights' gradient when one key
    makes softmax identically 1) from being judged on pure rounding noise.
    """
    assert actual.shape == expected.shape, f"{label}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{label}: dtype {actual.dtype} != {expected.dtype}"
    if expected.numel() == 0:
        return
    assert torch.isfinite(actual).all(), f"{label}: non-finite values"
    scale = max(expected.abs().max().item(), floor, torch.finfo(expected.dtype).tiny)
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f"{label}: max abs error {err:.3e} exceeds {tol:.0e} x scale {scale:.3e}"


def assert_all_close(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    tol: float,
    what: str,
    grad_floor: float = 0.0,
    grad_atol: float = 0.0,
) -> None:
    """``assert_close`` on every entry; each failure names the tensor.

    ``grad_floor``: a gradient smaller than ``grad_floor`` times the largest gradient in ``expected`` is
    compared against that floor instead of its own scale (absolute, not relative, agreement).
    ``grad_atol``: an absolute floor under that one, for cases whose every gradient is tiny (e.g. one
    token under an extreme decay), where rounding at the dtype's resolution is all that differs.
    """
    assert actual.keys() == expected.keys(), f"{what}: different tensors {sorted(set(actual) ^ set(expected))}"
    grads = [v for k, v in expected.items() if k.startswith("grad of") and v.numel()]
    floor = max(grad_floor * max((g.abs().max().item() for g in grads), default=0.0), grad_atol)
    for key, want in expected.items():
        assert_close(f"{what}: {key}", actual[key], want, tol, floor if key.startswith("grad of") else 0.0)


def load_peer_file(package: str, relative: str) -> Any:
    """One source file of an installed package, loaded without importing the package itself.

    flash-linear-attention's ``__init__`` imports triton, which a CPU machine may lack, while its naive
    reference files are plain PyTorch. Skips the calling test (or module) with the reason when the
    package, the file or something the file imports is missing.
    """
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed", allow_module_level=True)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        pytest.skip(f"this {package} version has no {relative}", allow_module_level=True)
    name = f"_peer_{package}_" + relative.replace("/", "_").removesuffix(".py")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except ImportError as err:
        pytest.skip(f"cannot load {package}'s {relative}: {err}", allow_module_level=True)
    return module
