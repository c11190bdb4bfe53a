"""Token shift (RWKV's ``time_shift``): each token sees the one before it, with a streaming state.

Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", arXiv:2305.13048, Section 3.1:
RWKV mixes every input ``x_t`` with ``x_{t-1}``, by a fixed (RWKV-4) or data-dependent (RWKV-6)
interpolation. The reference code pads the sequence with one zero token in front; the streaming state
is simply the last token seen, so a sequence cut anywhere continues exactly (the zero state reproduces
the reference's zero padding).
"""

from __future__ import annotations

import torch

__all__ = ["token_shift"]


def token_shift(x: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x: [B, T, D]`` and the token before it ``last: [B, D]`` -> ``(x_prev: [B, T, D], new_last: [B, D])``.

    ``x_prev[:, t] = x[:, t - 1]`` with ``x[:, -1] = last``. ``new_last`` keeps the state's dtype (it may
    be more precise than ``x``) and is a copy, so the state does not keep ``x`` alive.
    """
    x_prev = torch.cat((last.to(x.dtype).unsqueeze(1), x[:, :-1]), dim=1)  # [B, T, D]
    return x_prev, x[:, -1].to(last.dtype, copy=True)
