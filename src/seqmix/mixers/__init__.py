"""Token mixers: one nn.Module per mixer, all behind the contract in ``base.py``."""

from seqmix.mixers.base import Mixer
from seqmix.mixers.registry import MixerSpec, build_mixer, get_spec, list_mixers, mixer_options

__all__ = ["Mixer", "MixerSpec", "build_mixer", "get_spec", "list_mixers", "mixer_options"]
