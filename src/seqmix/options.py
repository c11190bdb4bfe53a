"""Validation of mixer constructor options: one place, one wording.

Every check fails at once with a ValueError that names the option, the value it got and what is
allowed, so a typo in a config shows up at build time rather than as a shape error deep in a forward.
"""

from __future__ import annotations

from typing import Any

__all__ = ["positive_int", "boolean", "number", "heads", "layer_position"]


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def positive_int(name: str, value: Any, hint: str = "") -> int:
    """``value`` as a positive int (bools are rejected: ``True`` is not a size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int{_hint(hint)}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def number(name: str, value: Any, *, minimum: float = float("-inf"), strict: bool = False, hint: str = "") -> float:
    """``value`` as a float that is ``>= minimum`` (``> minimum`` when ``strict``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"{'>' if strict else '>='} {minimum:g}" if minimum != float("-inf") else "a real number"
        raise ValueError(f"{name} must be a number {bound}{_hint(hint)}, got {value!r}")
    return float(value)


def heads(d_model: int, n_heads: Any, *, rotary: bool = False, default_head_dim: int = 64) -> tuple[int, int]:
    """Resolve ``n_heads`` (``None``: heads of about ``default_head_dim`` channels); return ``(n_heads, head_dim)``.

    ``n_heads`` must divide ``d_model``; with ``rotary`` the head dimension must be even.
    """
    if n_heads is None:
        n_heads = next(n for n in range(max(1, d_model // default_head_dim), 0, -1) if d_model % n == 0)
    n_heads = positive_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model, got d_model={d_model}, n_heads={n_heads}")
    head_dim = d_model // n_heads
    if rotary and head_dim % 2:
        raise ValueError(
            f"rotary=True needs an even head dimension d_model // n_heads, got {head_dim} "
            f"(d_model={d_model}, n_heads={n_heads}); choose another n_heads or pass rotary=False"
        )
    return n_heads, head_dim


def layer_position(layer_idx: Any, n_layers: Any) -> tuple[int, int]:
    """Check a mixer's depth options (filled in per layer by the models): ``0 <= layer_idx < n_layers``."""
    n_layers = positive_int("n_layers", n_layers, "the depth of the model this mixer sits in")
    if not isinstance(layer_idx, int) or isinstance(layer_idx, bool) or not 0 <= layer_idx < n_layers:
        raise ValueError(f"layer_idx must be an int in [0, n_layers - 1] = [0, {n_layers - 1}], got {layer_idx!r}")
    return layer_idx, n_layers
