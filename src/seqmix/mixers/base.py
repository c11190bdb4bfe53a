"""The mixer contract every token mixer in seqmix fulfils.

A mixer maps ``x: [B, T, D]`` to ``y: [B, T, D]`` while carrying a state. It offers one or more
whole-sequence *modes* (``"chunk"``, ``"parallel"``, ``"scan"``, ``"fused"``, ``"recurrent"``...) and a
``step`` that consumes one token with an O(1) (or, for full attention, O(t)) state. All modes and the
loop over ``step`` compute the same function; ``tests/test_mixer_contract.py`` proves it for every
registered mixer.

State is plain data: a tensor, or a (named) tuple of tensors, every tensor with the batch dimension
first. No hidden module attributes hold sequence information, so a state can be detached, saved,
sliced, concatenated along the batch and passed between processes.

A state keeps the dtype it was created with (``init_state``'s, by default the input's). Under
``torch.autocast`` the projections run in low precision while the recurrence accumulates in the
state's dtype, so a float32 state stays float32 whichever mode or ``step`` produced it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from torch import nn

from seqmix.ops.precision import full_precision
from seqmix.state import State, state_tensors

__all__ = ["Mixer", "State", "full_precision", "PIECE_FLOATS"]

#: the widest activation of one piece of a long sequence on a CPU (4M floats, 16 MB in float32); see
#: ``Mixer._piece_len``
PIECE_FLOATS = 1 << 22


class Mixer(nn.Module):
    """Base class of all token mixers.

    Subclasses set ``modes`` (the first entry is the default) and implement ``_forward``, ``_step``,
    ``init_state`` and ``state_size``. The public ``forward`` and ``step`` validate their input, fill in
    the zero state and dispatch on the mode, so every subclass reports bad input the same way.
    """

    #: whole-sequence forms this mixer offers; the first is the default
    modes: ClassVar[tuple[str, ...]] = ()
    #: True when output t depends only on inputs <= t (required for ``step``)
    causal: bool = True
    #: states are at least this precise, so that recurrences accumulating over many steps run in float32
    #: even when the model computes in bfloat16/float16; None: the state takes the compute dtype (a KV
    #: cache, which only stores values, or a fused kernel that dictates its own precision)
    min_state_dtype: ClassVar[Optional[torch.dtype]] = torch.float32

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model

    # ------------------------------------------------------------------ public API
    def forward(
        self, x: torch.Tensor, state: Optional[State] = None, *, mode: Optional[str] = None
    ) -> tuple[torch.Tensor, State]:
        """Mix a whole sequence ``x: [B, T, D]``; ``state=None`` starts from the zero/empty state.

        Returns ``(y: [B, T, D], final_state)``.
        """
        self._check_input(x, ndim=3, what="x", layout="[batch, time, d_model]")
        mode = self.resolve_mode(mode)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=self.state_dtype(x.dtype))
        else:
            state = self.check_state(state, x.shape[0])
        piece = self._piece_len(x, mode)
        if piece is None:
            return self._forward(x, state, mode)
        ys = []
        # the streaming invariant makes this the same function; split (not slicing) so that backward
        # concatenates the pieces' input gradients once instead of zero-filling a [B, T, D] per piece
        for x_piece in x.split(piece, dim=1):
            y, state = self._forward(x_piece, state, mode)
            ys.append(y)
        return torch.cat(ys, dim=1), state

    def step(self, x_t: torch.Tensor, state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        """Consume one token ``x_t: [B, D]``; returns ``(y_t: [B, D], new_state)``."""
        if not self.causal:
            raise RuntimeError(
                f"{type(self).__name__} was built with causal=False; a non-causal mixer sees the whole "
                "sequence and has no step form. Build it with causal=True for streaming."
            )
        self._check_input(x_t, ndim=2, what="x_t", layout="[batch, d_model]")
        if state is None:
            state = self.init_state(x_t.shape[0], device=x_t.device, dtype=self.state_dtype(x_t.dtype))
        else:
            state = self.check_state(state, x_t.shape[0])
        return self._step(x_t, state)

    def init_state(
        self,
        batch_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> State:
        """The zero/empty state for ``batch_size`` sequences."""
        raise NotImplementedError

    def state_size(self, context_len: int) -> int:
        """Elements held per sequence for inference after ``context_len`` tokens."""
        raise NotImplementedError

    def check_state(self, state: State, batch_size: int) -> State:
        """Check ``state`` against ``init_state``'s layout and return it in that layout.

        Every tensor must match the layout's shape (batch first), except along dimensions that
        ``init_state`` creates empty: those grow with the context (a KV cache). A plain tuple is accepted
        where the layout is a named tuple (e.g. after serialisation).
        """
        kind, shapes = self._state_layout()
        expected = [(batch_size,) + shape for shape in shapes]
        given = [tuple(t.shape) for t in state_tensors(state)]
        ok = len(given) == len(expected) and all(
            len(g) == len(e) and all(gd == ed for gd, ed in zip(g, e) if ed != 0) for g, e in zip(given, expected)
        )
        if not ok:
            grows = " (* grows with the context)" if any(0 in e for e in expected) else ""
            raise ValueError(
                f"{type(self).__name__} expects a state of {len(expected)} tensor(s) shaped "
                f"{_layout(expected, template=True)} for batch {batch_size}{grows}, "
                f"got {len(given)} shaped {_layout(given)}"
            )
        if kind is not None and not isinstance(state, kind):
            state = kind(*state)
        return state

    def _state_layout(self) -> tuple[Optional[type], list[tuple[int, ...]]]:
        """(named-tuple type or None, per-tensor shapes without the batch dim), from ``init_state`` once."""
        layout = self.__dict__.get("_seqmix_state_layout")
        if layout is None:
            template = self.init_state(1, device=torch.device("meta"))
            kind = type(template) if isinstance(template, tuple) and hasattr(template, "_fields") else None
            layout = (kind, [tuple(t.shape[1:]) for t in state_tensors(template)])
            self.__dict__["_seqmix_state_layout"] = layout
        return layout

    def state_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        """The dtype of a fresh state for inputs of ``compute_dtype`` (see ``min_state_dtype``)."""
        if self.min_state_dtype is None:
            return compute_dtype
        return torch.promote_types(compute_dtype, self.min_state_dtype)

    def resolve_mode(self, mode: Optional[str]) -> str:
        """Return ``mode`` or the default one; reject a mode this mixer does not offer."""
        if mode is None:
            return self.modes[0]
        if mode not in self.modes:
            raise ValueError(
                f"{type(self).__name__} has no mode {mode!r}; available modes: {', '.join(self.modes)}"
            )
        return mode

    # ------------------------------------------------------------------ for subclasses
    def _piece_width(self) -> Optional[int]:
        """Floats per token that set the length of ``forward``'s CPU pieces; None (the default): no pieces.

        Usually the width of the mixer's widest activation, so that no activation of a piece exceeds
        ``PIECE_FLOATS``; a mixer may report the width whose pieces measured fastest. A mixer opts in
        only where running a long sequence as pieces that carry the state has been measured to pay.
        """
        return None

    def _piece_len(self, x: torch.Tensor, mode: str) -> Optional[int]:
        """Tokens per piece for ``x``, or None to run it in one ``_forward`` call.

        On a CPU, glibc serves every allocation of 32 MB or more by a fresh ``mmap``, so each wide
        activation of a long sequence is page-faulted anew (on a small VM that cost several times the
        arithmetic of the op that filled it). Pieces keep the widest activation under ``PIECE_FLOATS``
        floats, where freed memory is reused. A piece is a whole number of the mixer's chunks and at least
        one chunk; reference modes (``"recurrent"``) and other devices always run in one call.
        """
        width = self._piece_width()
        if width is None or x.device.type != "cpu" or mode == "recurrent":
            return None
        chunk = int(getattr(self, "chunk_size", 1))
        piece = max(chunk, PIECE_FLOATS // (width * x.shape[0]))
        piece -= piece % chunk
        return piece if x.shape[1] > piece else None

    def _forward(self, x: torch.Tensor, state: State, mode: str) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _param_like(self) -> torch.Tensor:
        """A parameter whose device and dtype define the defaults of ``init_state``."""
        return next(self.parameters())

    def _state_factory(self, device: Any, dtype: Any) -> dict[str, Any]:
        p = self._param_like()
        return {
            "device": p.device if device is None else device,
            "dtype": self.state_dtype(p.dtype) if dtype is None else dtype,
        }

    def _check_input(self, x: Any, *, ndim: int, what: str, layout: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
        if x.ndim != ndim or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__} expects {what} of shape {layout} with d_model={self.d_model}, "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
        if ndim == 3 and x.shape[1] == 0:
            raise ValueError(f"{what} must hold at least one time step, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, modes={self.modes}"


def _layout(shapes: list[tuple[int, ...]], template: bool = False) -> str:
    """Shapes as text; in a template a 0 dimension is one that grows with the context, shown as *."""
    dims = [", ".join("*" if template and d == 0 else str(d) for d in shape) for shape in shapes]
    return ", ".join(f"({d})" for d in dims) or "nothing"
