"""Time series: CSV reading, the ETT borders, training-row normalisation, windows, metrics, baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix.data.timeseries import (ETTH_BORDERS, baseline_metrics, make_windows, mean_forecast, mse_mae,
                                    persistence_forecast, read_csv_series, split_rows, train_stats, window_count,
                                    window_starts)
from seqmix.errors import UserError

STAGED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "timeseries" / "ETT-small" / "ETTh1.csv"


def write_csv(path: Path, n: int = 40) -> Path:
    """Row i holds (i, 100 + 2 i, -i): every value says which row it came from."""
    lines = ["date,a,b,c"] + [f"2020-01-01 {i:02d}:00,{i},{100 + 2 * i},{-i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_csv(tmp_path):
    s = read_csv_series(write_csv(tmp_path / "s.csv"))
    assert s.columns == ["a", "b", "c"] and s.values.shape == (40, 3)
    assert s.values[7].tolist() == [7, 114, -7] and s.dates[7] == "2020-01-01 07:00"
    assert read_csv_series(tmp_path / "s.csv", columns=["c", "a"]).values[3].tolist() == [-3, 3]


def test_missing_file_and_bad_rows_name_themselves(tmp_path):
    with pytest.raises(UserError, match=r"absent\.csv.*does not exist.*data\.path"):
        read_csv_series(tmp_path / "absent.csv")
    path = write_csv(tmp_path / "s.csv", 5)
    path.write_text(path.read_text().replace("3,106,-3", "3,oops,-3"))
    with pytest.raises(UserError, match="line 5"):
        read_csv_series(path)
    with pytest.raises(UserError, match="unknown column.*'z'.*a, b, c"):
        read_csv_series(write_csv(tmp_path / "t.csv", 5), columns=["z"])


def test_borders_put_each_target_row_in_its_split(tmp_path):
    values = torch.tensor(read_csv_series(write_csv(tmp_path / "s.csv")).values)
    L, H = 4, 2
    rows = split_rows([20, 30, 40], L, 40)
    assert rows == {"train": (0, 20), "valid": (16, 30), "test": (26, 40)}
    for split, targets in (("train", range(L, 20)), ("valid", range(20, 30)), ("test", range(30, 40))):
        starts = window_starts(rows[split], L, H)
        assert len(starts) == window_count(rows[split][1] - rows[split][0], L, H)
        x, y = make_windows(values, starts, L, H)
        assert x.shape == (len(starts), L, 3) and y.shape == (len(starts), H, 3)
        # every target row of the split is forecast at some horizon step, and none outside it
        assert set(y[:, :, 0].long().flatten().tolist()) == set(targets)
        assert torch.equal(x[:, :, 0], torch.as_tensor(starts)[:, None] + torch.arange(L).double())  # x reads [s, s + L)
    assert [len(window_starts(rows[s], L, H)) for s in ("train", "valid", "test")] == [15, 9, 9]


def test_border_errors():
    with pytest.raises(UserError, match="increasing"):
        split_rows([30, 20, 40], 4, 40)
    with pytest.raises(UserError, match="has 30 data rows"):
        split_rows([10, 20, 40], 4, 30)


def test_normalisation_uses_training_rows_only(tmp_path):
    values = read_csv_series(write_csv(tmp_path / "s.csv")).values
    mean, std = train_stats(values, 20)
    np.testing.assert_allclose(mean, [9.5, 119.0, -9.5])
    np.testing.assert_allclose(std, [np.sqrt((20**2 - 1) / 12), 2 * np.sqrt((20**2 - 1) / 12), np.sqrt((20**2 - 1) / 12)])
    changed = values.copy()
    changed[20:] *= 1000  # validation and test rows do not move the statistics
    np.testing.assert_array_equal(train_stats(changed, 20)[0], mean)
    flat = np.ones((10, 1))
    assert train_stats(flat, 10)[1].tolist() == [1.0]  # a constant channel is not divided by zero


def test_mse_mae_hand_checked():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 0.0], [4.0, 7.0]])
    mse, mae = mse_mae(pred, target)
    assert mse == pytest.approx((0 + 4 + 1 + 9) / 4) and mae == pytest.approx((0 + 2 + 1 + 3) / 4)


def test_persistence_and_mean_baselines_hand_checked():
    series = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])  # one channel, a ramp
    x, y = make_windows(series, np.array([0]), 3, 2)  # x = 1, 2, 3; y = 4, 5
    assert persistence_forecast(x, 2).flatten().tolist() == [3.0, 3.0]
    assert mean_forecast(x, 2).flatten().tolist() == [2.0, 2.0]
    m = baseline_metrics(series, np.array([0]), 3, 2)
    assert m["persistence_mse"] == pytest.approx((1 + 4) / 2) and m["persistence_mae"] == pytest.approx(1.5)
    assert m["mean_mse"] == pytest.approx((4 + 9) / 2) and m["mean_mae"] == pytest.approx(2.5)
    # over two windows the sums are pooled: starts 0 and 1 (y = 4, 5 and 5, 6 on the ramp 1..6)
    ramp = torch.arange(1.0, 7.0)[:, None]
    two = baseline_metrics(ramp, np.array([0, 1]), 3, 2, batch_size=1)
    assert two["persistence_mse"] == pytest.approx((1 + 4 + 1 + 4) / 4)


@pytest.mark.skipif(not STAGED.is_file(), reason="ETTh1 not staged in ../shared/data/timeseries")
def test_etth1_windows_and_persistence_match_the_literature():
    s = read_csv_series(STAGED)
    assert s.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    mean, std = train_stats(s.values, ETTH_BORDERS[0])
    values = torch.tensor((s.values - mean) / std)
    for H, n_test, mse, mae in ((96, 2785, 1.2944, 0.7132), (336, 2545, 1.3299, 0.7460)):
        rows = split_rows(ETTH_BORDERS, 96, len(s.values))
        assert len(window_starts(rows["train"], 96, H)) == 8640 - 96 - H + 1
        starts = window_starts(rows["test"], 96, H)
        assert len(starts) == n_test  # the test-set sizes the Autoformer code base logs
        m = baseline_metrics(values, starts, 96, H)
        # these round to the "Repeat" row of DLinear (Zeng et al. 2023): 1.295 / 0.713 and 1.330 / 0.746
        assert m["persistence_mse"] == pytest.approx(mse, abs=1e-4)
        assert m["persistence_mae"] == pytest.approx(mae, abs=1e-4)
