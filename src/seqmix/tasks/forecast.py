"""Task kind ``forecast``: multivariate time-series forecasting (ETTh1 by default) with a ``Forecaster``.

Data (``seqmix.data.timeseries``): the standard borders (train [0, 8640), validation [8640 - L,
11520), test [11520 - L, 14400)), every channel z-scored with the training rows' statistics, every
window of a split at stride 1. Training draws ``batch_size`` windows uniformly at random from the
training windows (micro-batch i from ``numpy.random.default_rng([seed, rank, i])``); the loss is the
MSE on the normalised scale. Evaluation: MSE and MAE over every window of the split (normalised scale,
as reported in the literature), with the persistence and lookback-mean baselines on the same windows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from seqmix import options
from seqmix.errors import UserError
from seqmix.models.forecaster import ForecasterConfig
from seqmix.train.distributed import all_reduce_sum
from seqmix.train.config import FromData
from seqmix.train.kinds import BuildContext, Built, EvalContext, TaskKind

__all__ = ["KIND", "ForecastModelConfig", "ForecastDataConfig", "ForecastTask", "PreparedSeries", "prepare"]


@dataclass
class ForecastModelConfig(FromData, ForecasterConfig):
    """The ``Forecaster`` (``seqmix.models.forecaster``); channels, lookback and horizon 0 come from the data."""

    n_channels: int = 0  # variables per time step; 0 = the data's columns
    lookback: int = 0  # 0 = data.lookback
    horizon: int = 0  # 0 = data.horizon

    from_data: ClassVar[tuple[str, ...]] = ("n_channels", "lookback", "horizon")
    builds: ClassVar[type] = ForecasterConfig


@dataclass
class ForecastDataConfig:
    """A CSV time series, its split and the windows cut from it."""

    path: Optional[str] = None  # CSV with a header and a date column; None = ../shared/data/timeseries/ETT-small/ETTh1.csv (or $SEQMIX_DATA/...)
    columns: Optional[list[str]] = None  # numeric columns read and forecast (None = every column after the date)
    borders: list[int] = field(default_factory=lambda: [8640, 11520, 14400])  # row ends of train, validation, test (ETTh: 12/4/4 months)
    lookback: int = 96  # L: time steps the model reads
    horizon: int = 96  # H: time steps it forecasts
    normalize: bool = True  # z-score every channel with the training rows' mean and std (metrics on that scale)
    batch_size: int = 32  # windows per training micro-batch
    eval_batch_size: int = 256  # windows per evaluation batch

    def __post_init__(self) -> None:
        try:
            for name in ("lookback", "horizon", "batch_size", "eval_batch_size"):
                options.positive_int(f"data.{name}", getattr(self, name))
            options.boolean("data.normalize", self.normalize)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if (not isinstance(self.borders, (list, tuple)) or len(self.borders) != 3
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in self.borders)):
            raise UserError(f"data.borders must be three row counts [train end, validation end, test end], "
                            f"got {self.borders!r}")
        self.borders = list(self.borders)
        if self.columns is not None and (not isinstance(self.columns, (list, tuple)) or not self.columns):
            raise UserError(f"data.columns must be a non-empty list of column names or null, got {self.columns!r}")


@dataclass
class PreparedSeries:
    values: torch.Tensor  # [N, C] float32, normalised
    rows: dict[str, tuple[int, int]]  # split -> row range (see timeseries.split_rows)
    mean: np.ndarray  # [C] training-row statistics (zeros/ones when not normalising)
    std: np.ndarray  # [C]
    columns: list[str]
    sha256: str

    def starts(self, split: str, lookback: int, horizon: int) -> np.ndarray:
        from seqmix.data.timeseries import window_starts

        return window_starts(self.rows[split], lookback, horizon)


def prepare(cfg: ForecastDataConfig, path: Optional[str] = None) -> PreparedSeries:
    """Read, split and normalise the series of ``cfg`` (``path`` overrides ``cfg.path``)."""
    from seqmix.data.timeseries import read_csv_series, split_rows, train_stats, window_count

    series = read_csv_series(path if path is not None else cfg.path, cfg.columns)
    rows = split_rows(cfg.borders, cfg.lookback, len(series.values))
    for split, (a, b) in rows.items():
        if window_count(b - a, cfg.lookback, cfg.horizon) < 1:
            raise UserError(f"the {split} rows [{a}, {b}) hold no window of lookback {cfg.lookback} + horizon "
                            f"{cfg.horizon}; lower data.lookback/data.horizon or widen data.borders")
    C = series.values.shape[1]
    mean, std = train_stats(series.values, cfg.borders[0]) if cfg.normalize else (np.zeros(C), np.ones(C))
    values = torch.tensor((series.values - mean) / std, dtype=torch.float32)  # [N, C]
    return PreparedSeries(values, rows, mean, std, series.columns, series.sha256)


class ForecastTask:
    """Batches, loss and whole-split evaluation for the ``Trainer`` (see seqmix.train.trainer)."""

    def __init__(self, data: PreparedSeries, cfg: ForecastDataConfig, *, seed: int, rank: int = 0,
                 world_size: int = 1, device: Any = "cpu") -> None:
        self.data, self.cfg, self.seed, self.rank, self.world_size = data, cfg, seed, rank, world_size
        self.device = torch.device(device)
        self.train_starts = data.starts("train", cfg.lookback, cfg.horizon)
        self.valid_starts = data.starts("valid", cfg.lookback, cfg.horizon)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [B, L, C], y [B, H, C])``: random training windows (a pure function of seed, rank, index)."""
        from seqmix.data.timeseries import make_windows

        rng = np.random.default_rng([self.seed, self.rank, index])
        starts = self.train_starts[rng.integers(0, len(self.train_starts), size=self.cfg.batch_size)]
        x, y = make_windows(self.data.values, starts, self.cfg.lookback, self.cfg.horizon)
        return x.to(self.device), y.to(self.device)

    unit = "windows"  # n_items of a batch (the trainer logs windows and windows_per_s)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        pred = model(x)  # [B, H, C]
        return torch.nn.functional.mse_loss(pred.float(), y), int(x.shape[0])

    def rank_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_rank_state(self, tensors: Optional[dict[str, torch.Tensor]]) -> None:
        return None

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, autocast: Any = None) -> dict[str, float]:
        return evaluate_windows(model, self.data, self.valid_starts, self.cfg, self.device, autocast,
                                self.rank, self.world_size)


@torch.no_grad()
def evaluate_windows(model: torch.nn.Module, data: PreparedSeries, starts: np.ndarray, cfg: ForecastDataConfig,
                     device: torch.device, autocast: Any = None, rank: int = 0, world_size: int = 1,
                     baselines: bool = True) -> dict[str, float]:
    """MSE ("loss" too), MAE over every window at ``starts``, and the two baselines on the same windows."""
    from seqmix.data.timeseries import baseline_metrics, make_windows

    ctx = autocast if autocast is not None else contextlib.nullcontext
    se, ae = 0.0, 0.0
    chunks = [starts[i: i + cfg.eval_batch_size] for i in range(0, len(starts), cfg.eval_batch_size)]
    with ctx():
        for chunk in chunks[rank::world_size]:
            x, y = make_windows(data.values, chunk, cfg.lookback, cfg.horizon)
            err = model(x.to(device)).double() - y.to(device).double()  # [b, H, C]
            se += float(err.pow(2).sum())
            ae += float(err.abs().sum())
    se, ae = all_reduce_sum([se, ae], device)
    count = len(starts) * cfg.horizon * data.values.shape[1]
    out = {"loss": se / count, "mse": se / count, "mae": ae / count, "windows": len(starts)}
    if baselines:
        out.update(baseline_metrics(data.values, starts, cfg.lookback, cfg.horizon))
    return out


def build(ctx: BuildContext) -> Built:
    from seqmix.models.forecaster import Forecaster

    config, data_cfg = ctx.config, ctx.config.data
    data = prepare(data_cfg)
    model_cfg = config.model.resolve(data.values.shape[1], data_cfg.lookback, data_cfg.horizon)
    model = ctx.model(Forecaster, model_cfg)
    task = ForecastTask(data, data_cfg, seed=config.trainer.seed, rank=ctx.rank, world_size=ctx.world_size,
                        device=ctx.device)
    n = sum(p.numel() for p in model.parameters())
    flags = [f for f, on in (("RevIN", model_cfg.revin), ("channel-independent", model_cfg.channel_independent)) if on]
    describe = (f"model: {model_cfg.n_layers} layers {model_cfg.pattern} d_model {model_cfg.d_model}, readout "
                f"{model_cfg.readout}{', ' + ', '.join(flags) if flags else ''}, {n:,} parameters; data: "
                f"{len(data.columns)} channels, lookback {data_cfg.lookback}, horizon {data_cfg.horizon}, "
                f"{len(task.train_starts):,} training / {len(task.valid_starts):,} validation windows")
    return Built(model=model, task=task, describe=describe, record={"data_sha256": data.sha256})


def evaluate(ctx: EvalContext) -> dict:
    from seqmix.models.forecaster import Forecaster

    cfg = ctx.data_config()
    model = ctx.load(Forecaster)
    data = prepare(cfg, ctx.data)
    autocast = ctx.autocast()
    metrics = evaluate_windows(model, data, data.starts(ctx.split, cfg.lookback, cfg.horizon), cfg, ctx.device,
                               autocast)
    return {**metrics, "lookback": cfg.lookback, "horizon": cfg.horizon, "data_sha256": data.sha256}


def summary(m: dict) -> str:
    text = f"MSE {m['mse']:.4f}, MAE {m['mae']:.4f} over {int(m['windows']):,} windows"
    if "persistence_mse" in m:
        text += (f"; persistence MSE {m['persistence_mse']:.4f}, MAE {m['persistence_mae']:.4f}; "
                 f"lookback mean MSE {m['mean_mse']:.4f}, MAE {m['mean_mae']:.4f}")
    return text


KIND = TaskKind(
    name="forecast",
    description="multivariate time-series forecasting: ETTh1 with any mixer (MSE, MAE, persistence baseline)",
    model_config=ForecastModelConfig,
    data_config=ForecastDataConfig,
    build=build,
    evaluate=evaluate,
    summary=summary,
)
