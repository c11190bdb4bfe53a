"""Multivariate time series for forecasting: the ETT benchmark's CSV files, borders, normalisation,
sliding windows, metrics and the naive baselines.

ETTh1 (Zhou et al. 2021, Informer, arXiv:2012.07436) is hourly: a ``date`` column and 7 numeric
columns (HUFL, HULL, MUFL, MULL, LUFL, LULL, OT). The standard protocol (Informer, Autoformer and
every later paper that reports ETTh1) uses the first 20 months only:

    train rows [0, 8640)    12 months       validation rows [8640 - L, 11520)    test rows [11520 - L, 14400)

with L the lookback. The ``- L`` lets the first validation/test window read its lookback from the end
of the previous split, so that every target row of [8640, 11520) (resp. [11520, 14400)) that has a
full horizon after it is forecast; targets never leave their split. The same is done here:
``split_rows`` returns those ranges. Every channel is z-scored with the mean and (population) standard
deviation of the TRAINING rows only, as scikit-learn's StandardScaler does in those code bases, and the
metrics are reported on that normalised scale, as the literature does.

A window starting at row s reads ``x = rows[s, s + L)`` and forecasts ``y = rows[s + L, s + L + H)``;
every start of a split is used (stride 1): ``n - L - H + 1`` windows for n rows -- 8449 training,
2785 test windows for ETTh1 at L = H = 96. (The reference code bases build their test loader with
``drop_last=True`` and so skip the last partial batch of test windows; here every window counts.)

Metrics: MSE and MAE averaged over every window, horizon step and channel. Baselines: persistence
(repeat the last observed value over the horizon) and the mean of the lookback window.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from seqmix.data.paths import shared_data_root
from seqmix.errors import UserError

__all__ = ["ETTH_BORDERS", "DEFAULT_ETTH1", "Series", "default_etth1_path", "read_csv_series", "split_rows",
           "train_stats", "window_count", "window_starts", "make_windows", "mse_mae", "persistence_forecast",
           "mean_forecast", "baseline_metrics"]

ETTH_BORDERS = (8640, 11520, 14400)  # 12, 4 and 4 months of 30 days x 24 hours
DEFAULT_ETTH1 = Path("timeseries") / "ETT-small" / "ETTh1.csv"
SPLITS = ("train", "valid", "test")


def default_etth1_path() -> Path:
    """``$SEQMIX_DATA/timeseries/ETT-small/ETTh1.csv``, else ``../shared/data/...`` beside the checkout."""
    return (shared_data_root() / DEFAULT_ETTH1).resolve()


@dataclass
class Series:
    """A CSV time series: the timestamps, the numeric columns and the file's digest."""

    dates: list[str]  # [N] the first column, as written
    values: np.ndarray  # [N, C] float64
    columns: list[str]  # [C] header names of the numeric columns
    sha256: str


def read_csv_series(path: Union[str, Path, None] = None, columns: Optional[Sequence[str]] = None) -> Series:
    """Read a 'date,col1,col2,...' CSV (``None``: ETTh1 from the shared data folder).

    ``columns`` picks numeric columns by name (default: every column after the first). A missing file,
    an unknown column or a value that is not a number is a ``UserError`` naming the file (and line).
    """
    path = Path(default_etth1_path() if path is None else path).expanduser()
    if not path.is_file():
        raise UserError(f"time-series file {str(path)!r} does not exist; give data.path a CSV with a header, a date "
                        f"column and numeric columns (e.g. ETTh1.csv of zhouhaoyi/ETDataset), or put it at "
                        f"../shared/data/{DEFAULT_ETTH1.as_posix()} beside the checkout (or under $SEQMIX_DATA)")
    blob = path.read_bytes()
    rows = list(csv.reader(io.StringIO(blob.decode("utf-8", errors="replace"))))
    rows = [r for r in rows if r]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"{str(path)!r} must hold a header row 'date,<columns...>' and at least one data row")
    header = [h.strip() for h in rows[0]]
    names = header[1:] if columns is None else list(columns)
    unknown = [c for c in names if c not in header[1:]]
    if unknown or not names:
        raise UserError(f"{str(path)!r}: unknown column(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                        f"its numeric columns are {', '.join(header[1:])}")
    index = [header.index(c) for c in names]
    values = np.empty((len(rows) - 1, len(names)), dtype=np.float64)  # [N, C]
    for i, row in enumerate(rows[1:]):
        try:
            values[i] = [float(row[j]) for j in index]
        except (ValueError, IndexError):
            raise UserError(f"{str(path)!r} line {i + 2}: expected {len(header)} comma-separated fields with numbers "
                            f"in columns {', '.join(names)}, got {','.join(row)[:80]!r}") from None
    if not np.isfinite(values).all():
        bad = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise UserError(f"{str(path)!r} line {bad + 2}: a value is not finite (nan or inf)")
    return Series(dates=[r[0] for r in rows[1:]], values=values, columns=names, sha256=hashlib.sha256(blob).hexdigest())


def split_rows(borders: Sequence[int], lookback: int, n_rows: int) -> dict[str, tuple[int, int]]:
    """``{"train": (0, b0), "valid": (b0 - L, b1), "test": (b1 - L, b2)}`` (see the module docstring)."""
    b0, b1, b2 = borders
    if not 0 < b0 < b1 < b2:
        raise UserError(f"data.borders must be three increasing positive row counts (train end, validation end, "
                        f"test end), got {list(borders)}")
    if b2 > n_rows:
        raise UserError(f"data.borders end at row {b2} but the file has {n_rows} data rows; lower data.borders")
    if lookback > b0:
        raise UserError(f"data.lookback {lookback} is longer than the training rows ({b0})")
    return {"train": (0, b0), "valid": (b0 - lookback, b1), "test": (b1 - lookback, b2)}


def train_stats(values: np.ndarray, train_end: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population standard deviation of rows ``[0, train_end)``; a constant
    channel gets std 1 (it would otherwise divide by zero)."""
    train = values[:train_end]
    mean, std = train.mean(axis=0), train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def window_count(n_rows: int, lookback: int, horizon: int) -> int:
    """Windows of ``lookback + horizon`` consecutive rows in ``n_rows`` rows at stride 1."""
    return max(n_rows - lookback - horizon + 1, 0)


def window_starts(rows: tuple[int, int], lookback: int, horizon: int) -> np.ndarray:
    """Every start row ``s`` in ``rows = (a, b)`` whose window ``[s, s + L + H)`` fits inside it."""
    a, b = rows
    return a + np.arange(window_count(b - a, lookback, horizon))


def make_windows(values: torch.Tensor, starts: Union[np.ndarray, torch.Tensor], lookback: int,
                 horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [B, L, C], y [B, H, C])`` for the windows starting at ``starts`` of ``values [N, C]``."""
    starts = torch.as_tensor(np.asarray(starts), dtype=torch.long)
    idx = starts[:, None] + torch.arange(lookback + horizon)  # [B, L + H]
    w = values[idx]  # [B, L + H, C]
    return w[:, :lookback], w[:, lookback:]


def mse_mae(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Mean squared and mean absolute error over every element (float64 sums)."""
    err = (pred.double() - target.double())
    return float(err.pow(2).mean()), float(err.abs().mean())


def persistence_forecast(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """The last observed value repeated: ``x [B, L, C]`` -> ``[B, H, C]``."""
    return x[:, -1:].expand(-1, horizon, -1)


def mean_forecast(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """The mean of the lookback window repeated: ``x [B, L, C]`` -> ``[B, H, C]``."""
    return x.mean(dim=1, keepdim=True).expand(-1, horizon, -1)


def baseline_metrics(values: torch.Tensor, starts: np.ndarray, lookback: int, horizon: int,
                     batch_size: int = 1024) -> dict[str, float]:
    """MSE/MAE of the persistence and lookback-mean forecasts over the windows at ``starts``."""
    sums = {"persistence": [0.0, 0.0], "mean": [0.0, 0.0]}
    count = 0
    for i in range(0, len(starts), batch_size):
        x, y = make_windows(values, starts[i: i + batch_size], lookback, horizon)
        for name, forecast in (("persistence", persistence_forecast), ("mean", mean_forecast)):
            err = forecast(x, horizon).double() - y.double()
            sums[name][0] += float(err.pow(2).sum())
            sums[name][1] += float(err.abs().sum())
        count += y.numel()
    out = {}
    for name, (se, ae) in sums.items():
        out[f"{name}_mse"], out[f"{name}_mae"] = se / max(count, 1), ae / max(count, 1)
    return out
