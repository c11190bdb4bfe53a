"""Task kind ``forecast``: the Forecaster (shapes, RevIN, readouts, every mixer), the model config, the
task's batches and evaluation, and a tiny run through ``seqmix train`` / ``seqmix eval`` that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix import get_spec, list_mixers
from seqmix.cli import main
from seqmix.data.timeseries import make_windows, persistence_forecast
from seqmix.errors import UserError
from seqmix.models.forecaster import Forecaster, ForecasterConfig
from seqmix.tasks.forecast import ForecastDataConfig, ForecastModelConfig, ForecastTask, evaluate_windows, prepare

L, H, C = 12, 5, 3


def forecaster(pattern=("gru",), **overrides) -> Forecaster:
    torch.manual_seed(0)
    opts = {name: dict(get_spec(name).test_options) for name in pattern}
    cfg = dict(d_model=16, n_layers=2, pattern=list(pattern), mixer_options=opts, n_channels=C, lookback=L, horizon=H)
    return Forecaster(ForecasterConfig(**{**cfg, **overrides})).eval()


def sine_csv(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Three channels: daily-period sines of different phases and levels plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    cols = [np.sin(2 * np.pi * t / 24 + p) * a + lvl for p, a, lvl in ((0, 1, 0), (1, 2, 5), (2, 0.5, -3))]
    values = np.stack(cols, 1) + 0.05 * rng.standard_normal((n, 3))
    lines = ["date,a,b,c"] + [f"t{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("readout", ["linear_time", "last"])
@pytest.mark.parametrize("channel_independent", [False, True])
def test_output_shape(readout, channel_independent):
    model = forecaster(readout=readout, channel_independent=channel_independent)
    assert model(torch.randn(4, L, C)).shape == (4, H, C)
    with pytest.raises(ValueError, match="lookback=12"):
        model(torch.randn(4, L + 1, C))


@pytest.mark.parametrize("readout", ["linear_time", "last"])
def test_revin_makes_the_forecast_equivariant_to_each_channels_scale_and_level(readout):
    """With RevIN, forecast(a x + b) = a forecast(x) + b per channel: the model sees only the shape."""
    model = forecaster(readout=readout).double()
    x = torch.randn(3, L, C, dtype=torch.float64)
    a, b = torch.tensor([2.0, 0.5, 10.0]), torch.tensor([-1.0, 30.0, 4.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x * a + b), model(x) * a + b, rtol=1e-4, atol=1e-4)
    plain = forecaster(readout=readout, revin=False)
    with torch.no_grad():
        assert not torch.allclose(plain(x.float() * a + b), plain(x.float()) * a + b, atol=1e-2)


def test_skip_makes_a_zero_headed_forecaster_revin_plus_a_linear_map_over_time():
    """With the backbone's head at zero the forecast is RLinear: denorm(W norm(x) + w) per channel."""
    model = forecaster(revin_affine=False)
    with torch.no_grad():
        model.backbone.head.weight.zero_()
        model.backbone.head.bias.zero_()
        x = torch.randn(4, L, C) * 3 + 2
        mean, std = x.mean(1, keepdim=True), torch.sqrt(x.var(1, keepdim=True, unbiased=False) + model.eps)
        W, w = model.time_map.weight, model.time_map.bias  # [H, L], [H]
        expected = (torch.einsum("hl,blc->bhc", W, (x - mean) / std) + w[:, None]) * std + mean
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        plain = forecaster(revin_affine=False, skip=False)  # without the skip the input never reaches the map
        plain.backbone.head.weight.zero_()
        plain.backbone.head.bias.zero_()
        torch.testing.assert_close(plain(x), plain.time_map.bias[:, None] * std + mean, rtol=1e-5, atol=1e-5)


def test_channel_independent_forecasts_permute_with_the_channels():
    model = forecaster(channel_independent=True)
    x = torch.randn(2, L, C)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, :, perm]), model(x)[:, :, perm])  # shared weights, no mixing


def test_last_readout_sees_the_whole_window():
    model = forecaster(("lstm",), readout="last", revin=False)
    x = torch.randn(1, L, C)
    x2 = x.clone()
    x2[:, 0] += 1.0  # the first observation reaches the forecast through the recurrence
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x2))


@pytest.mark.parametrize("name", [spec.name for spec in list_mixers()])
def test_every_mixer_forecasts(name):
    model = forecaster((name,), n_layers=1)
    with torch.no_grad():
        y = model(torch.randn(2, L, C))
    assert y.shape == (2, H, C) and torch.isfinite(y).all()


def test_model_config_takes_shapes_from_the_data():
    cfg = ForecastModelConfig(d_model=8, n_layers=1, pattern=["gru"])
    assert (cfg.n_channels, cfg.lookback, cfg.horizon) == (0, 0, 0)
    resolved = cfg.resolve(7, 96, 336)
    assert isinstance(resolved, ForecasterConfig) and (resolved.n_channels, resolved.horizon) == (7, 336)
    with pytest.raises(UserError, match="model.horizon is 96 but the data has 336"):
        ForecastModelConfig(horizon=96).resolve(7, 96, 336)
    with pytest.raises(UserError, match="^model.readout must be one of"):
        ForecastModelConfig(readout="first")
    with pytest.raises(UserError, match="data.borders must be three"):
        ForecastDataConfig(borders=[100, 200])


def test_task_batches_and_whole_split_evaluation(tmp_path):
    cfg = ForecastDataConfig(path=str(sine_csv(tmp_path / "s.csv")), borders=[300, 450, 600], lookback=L, horizon=H,
                             batch_size=8, eval_batch_size=7)
    data = prepare(cfg)
    train = data.values[:300].numpy()
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)  # normalised with the training rows' statistics
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    task = ForecastTask(data, cfg, seed=1)
    assert len(task.train_starts) == 300 - L - H + 1 and len(task.valid_starts) == 450 - 300 - H + 1
    x, y = task.batch(3)
    x2, y2 = ForecastTask(data, cfg, seed=1).batch(3)
    assert x.shape == (8, L, C) and y.shape == (8, H, C) and torch.equal(x, x2) and torch.equal(y, y2)

    class Persistence(torch.nn.Module):  # a model whose metrics are known: the persistence baseline
        def forward(self, x):
            return persistence_forecast(x, H)

    m = evaluate_windows(Persistence(), data, task.valid_starts, cfg, torch.device("cpu"))
    assert m["windows"] == len(task.valid_starts)
    assert m["mse"] == pytest.approx(m["persistence_mse"]) and m["mae"] == pytest.approx(m["persistence_mae"])
    xs, ys = make_windows(data.values, task.valid_starts, L, H)
    assert m["mse"] == pytest.approx(float((persistence_forecast(xs, H) - ys).double().pow(2).mean()))


def test_train_then_eval_through_the_cli_beats_persistence(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = {
        "task": "forecast",
        "model": {"d_model": 16, "n_layers": 1, "pattern": ["gru"], "mlp": "none"},
        "data": {"path": str(sine_csv(tmp_path / "s.csv")), "borders": [400, 500, 600], "lookback": 24,
                 "horizon": 8, "batch_size": 16},
        "optim": {"lr": 1e-2, "warmup_steps": 5, "weight_decay": 0.0},
        "trainer": {"out_dir": str(out), "max_steps": 80, "eval_interval": 0, "checkpoint_interval": 0,
                    "threads": 1, "progress": False, "tensorboard": False, "seed": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    main(["train", "--config", str(path)])
    capsys.readouterr()
    main(["eval", "--checkpoint", str(out), "--split", "test", "--format", "json"])
    m = json.loads(capsys.readouterr().out)
    assert m["windows"] == 100 + 24 - 24 - 8 + 1 and m["horizon"] == 8
    assert m["mse"] < 0.1 * m["persistence_mse"], m  # the periodic pattern is learnt (0.011 vs 1.38 when written)
    main(["eval", "--checkpoint", str(out)])
    assert "persistence MSE" in capsys.readouterr().out


def test_missing_data_file_names_itself(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"task": "forecast", "data": {"path": str(tmp_path / "none.csv")},
                                "trainer": {"out_dir": str(tmp_path / "r"), "progress": False}}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(path)])
    err = capsys.readouterr().err
    assert "none.csv" in err and "does not exist" in err and "Traceback" not in err
