"""Multivariate forecasting over any mixer: a lookback window in, a [horizon, channels] forecast out.

    x: [B, L, C]  --RevIN-->  x'  --SequenceRegressor (any mixers)-->  z  --readout-->  y': [B, H, C]  --RevIN^-1-->  y

The backbone is ``SequenceRegressor`` (vectors in, vectors out per position). Two readouts:

* ``"linear_time"`` (default): the backbone emits C values per position, ``z: [B, L, C]``, and one
  linear map over time turns the L positions into H steps for every channel,
  ``y'[b, h, c] = sum_t W[h, t] u[b, t, c] + w_h`` -- the temporal linear layer of DLinear (Zeng et
  al. 2023, "Are Transformers Effective for Time Series Forecasting?", arXiv:2205.13504) -- over
  ``u = x' + z`` with ``skip`` (default) or ``u = z`` without. With the skip the forecaster starts as
  RevIN + a linear map over time (the head starts near zero), the strong linear baseline of Li et al.
  2023 ("Revisiting Long-term Time Series Forecasting: An Investigation on Linear Mapping",
  arXiv:2305.10721), and the mixer learns what that map misses; without it every value must pass the
  backbone's final RMSNorm, which rescales each time step's features and so loses their amplitude.
  Every position contributes, so a causal mixer's early positions are used too.
* ``"last"``: the last position's state carries the whole window (the summary a causal recurrence
  builds); the backbone emits ``H * C`` values there, reshaped to ``[H, C]`` -- the classic
  sequence-to-vector RNN forecaster.

RevIN (Kim et al. 2022, "Reversible Instance Normalization for Accurate Time-Series Forecasting
against Distribution Shift", ICLR): each window is z-scored per channel with its own mean and standard
deviation (an optional learned per-channel affine map after it), and the forecast is mapped back with
the same statistics. It removes the level shift between the training months and the test months,
which otherwise dominates the error on ETT.

``channel_independent=True`` runs every channel as its own univariate sequence through the same
weights (batch ``B * C``, ``d_in = 1``), as PatchTST does (Nie et al. 2023, arXiv:2211.14730); the
default mixes the channels at every position (``d_in = C``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqmix import options
from seqmix.errors import UserError
from seqmix.models.config import RegressorConfig, StackConfig
from seqmix.models.pretrained import PretrainedMixin
from seqmix.models.regressor import SequenceRegressor

__all__ = ["ForecasterConfig", "Forecaster", "READOUTS"]

READOUTS = ("linear_time", "last")


@dataclass
class ForecasterConfig(StackConfig):
    """Configuration of a ``Forecaster``: the block stack plus the forecasting shape and options."""

    n_channels: int = 7  # C: variables observed and forecast at every time step
    lookback: int = 96  # L: time steps the model reads
    horizon: int = 96  # H: time steps it forecasts
    readout: str = "linear_time"  # "linear_time": a linear map over the L positions; "last": from the last position
    revin: bool = True  # per-window instance normalisation, undone on the forecast (Kim et al. 2022)
    revin_affine: bool = True  # RevIN's learned per-channel scale and shift
    channel_independent: bool = False  # every channel its own univariate sequence (shared weights), as in PatchTST
    skip: bool = True  # linear_time: the time map reads input + backbone output (a linear forecaster at init)

    def __post_init__(self) -> None:
        try:
            for name in ("n_channels", "lookback", "horizon"):
                options.positive_int(name, getattr(self, name))
            for name in ("revin", "revin_affine", "channel_independent", "skip"):
                options.boolean(name, getattr(self, name))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.readout not in READOUTS:
            raise UserError(f"readout must be one of {', '.join(map(repr, READOUTS))}, got {self.readout!r}")
        super().__post_init__()

    def backbone_config(self) -> RegressorConfig:
        """The ``SequenceRegressor`` behind the forecaster: inputs and outputs per position."""
        c = 1 if self.channel_independent else self.n_channels
        d_out = c * self.horizon if self.readout == "last" else c
        stack = {k: getattr(self, k) for k in StackConfig.__dataclass_fields__}
        return RegressorConfig(d_in=c, d_out=d_out, **stack)


class Forecaster(PretrainedMixin, nn.Module):
    """``x: [B, L, C]`` -> forecast ``[B, H, C]`` (float32); see the module docstring."""

    config_class = ForecasterConfig
    format_name = "seqmix.Forecaster"
    eps = 1e-5  # RevIN's variance floor (a flat window would otherwise divide by zero)

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        if not isinstance(config, ForecasterConfig):
            raise TypeError(f"Forecaster takes a ForecasterConfig, got {type(config).__name__}")
        self.config = config
        C = config.n_channels
        self.backbone = SequenceRegressor(config.backbone_config())
        # identity at initialisation: RevIN starts as plain per-window z-scoring
        self.revin_weight = nn.Parameter(torch.ones(C)) if config.revin and config.revin_affine else None
        self.revin_bias = nn.Parameter(torch.zeros(C)) if config.revin and config.revin_affine else None
        self.time_map = nn.Linear(config.lookback, config.horizon) if config.readout == "linear_time" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 3 \
                or tuple(x.shape[1:]) != (cfg.lookback, cfg.n_channels):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"inputs must be a float tensor [batch, lookback={cfg.lookback}, "
                             f"channels={cfg.n_channels}], got {got}")
        B, L, C = x.shape
        H = cfg.horizon
        # 1. RevIN: z-score each window and channel with its own statistics (float32: the error is measured there)
        x = x.float()
        if cfg.revin:
            mean = x.mean(dim=1, keepdim=True)  # [B, 1, C]
            std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)  # [B, 1, C]
            x = (x - mean) / std
            if self.revin_weight is not None:
                x = x * self.revin_weight + self.revin_bias
        # 2. the backbone, over channels jointly or one channel at a time
        if cfg.channel_independent:
            x = x.transpose(1, 2).reshape(B * C, L, 1)  # [B*C, L, 1]
        z, _ = self.backbone(x)  # [B', L, d_out]
        # 3. the readout
        if self.time_map is not None:
            u = z + x if cfg.skip else z  # [B', L, c]
            y = self.time_map(u.transpose(1, 2)).transpose(1, 2)  # [B', H, c]
        else:
            y = z[:, -1].reshape(z.shape[0], H, -1)  # [B', H, c]
        if cfg.channel_independent:
            y = y.reshape(B, C, H).transpose(1, 2)  # [B, H, C]
        # 4. undo RevIN with the window's own statistics
        if cfg.revin:
            if self.revin_weight is not None:
                y = (y - self.revin_bias) / (self.revin_weight + self.eps * self.eps)
            y = y * std + mean
        return y
