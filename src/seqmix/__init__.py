"""seqmix: every important sequence mixer behind one contract.

Each mixer offers a parallel or chunkwise form for training and an O(1)-state ``step`` for streaming,
and tests prove the forms equal. Start with ``seqmix.list_mixers()`` and ``seqmix.build_mixer``.
"""

from seqmix.mixers import Mixer, MixerSpec, build_mixer, get_spec, list_mixers, mixer_options
from seqmix.state import detach_state, map_state, state_numel, state_tensors

__version__ = "0.1.0"

__all__ = [
    "Mixer",
    "MixerSpec",
    "build_mixer",
    "get_spec",
    "list_mixers",
    "mixer_options",
    "detach_state",
    "map_state",
    "state_numel",
    "state_tensors",
    "__version__",
]
