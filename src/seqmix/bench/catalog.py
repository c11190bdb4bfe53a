"""The mixer catalogue behind ``seqmix list``: registry entries plus measured state sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from seqmix.mixers.registry import build_mixer, list_mixers

__all__ = ["MixerRow", "mixer_table"]


@dataclass(frozen=True)
class MixerRow:
    name: str  # registry name
    family: str  # family in the literature
    modes: tuple[str, ...]  # whole-sequence forms; the first is the default
    state_floats: int  # elements held per sequence after `context_len` tokens
    parameters: int  # trainable parameters at `d_model`, default options
    paper: str  # source paper

    def as_dict(self) -> dict:
        return asdict(self)


def mixer_table(d_model: int = 256, context_len: int = 4096) -> list[MixerRow]:
    """One row per registered mixer, built with default options at width ``d_model``."""
    if d_model <= 0 or context_len < 0:
        raise ValueError(f"need d_model > 0 and context_len >= 0, got d_model={d_model}, context_len={context_len}")
    rows = []
    for spec in list_mixers():
        mixer = build_mixer(spec.name, d_model=d_model)
        rows.append(
            MixerRow(
                name=spec.name,
                family=spec.family,
                modes=tuple(mixer.modes),
                state_floats=mixer.state_size(context_len),
                parameters=sum(p.numel() for p in mixer.parameters()),
                paper=spec.paper,
            )
        )
    return rows
