"""SequenceRegressor: step equals forward, streaming, causality, save/load, clear errors."""

from __future__ import annotations

import pytest
import torch

from seqmix import get_spec
from seqmix.errors import UserError
from seqmix.models import RegressorConfig, SequenceRegressor


def model_of(pattern, d_in=3, d_out=2, seed=0) -> SequenceRegressor:
    torch.manual_seed(seed)
    opts = {name: dict(get_spec(name).test_options) for name in pattern}
    config = RegressorConfig(d_in=d_in, d_out=d_out, d_model=16, n_layers=2, pattern=list(pattern), mixer_options=opts)
    return SequenceRegressor(config).double().eval()


@pytest.mark.parametrize("pattern", [("attention",), ("lstm",), ("mamba",), ("gla", "attention")])
def test_step_and_streaming_equal_forward(pattern):
    model = model_of(pattern)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        y, _ = model(x)
        assert y.shape == (2, 9, 2)
        # streaming: two calls with the carried state
        y1, s = model(x[:, :4])
        y2, _ = model(x[:, 4:], s)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-9, atol=1e-9)
        # one position at a time
        state, steps = model.init_state(2, dtype=torch.float64), []
        for t in range(9):
            y_t, state = model.step(x[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-9, atol=1e-9)


def test_causal_and_float32_output():
    model = model_of(("mamba",)).float()
    x = torch.randn(1, 8, 3)
    y, _ = model(x)
    x2 = x.clone()
    x2[:, 5] += 1.0
    y2, _ = model(x2)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


def test_save_and_load_round_trip(tmp_path):
    model = model_of(("lstm",)).float()
    model.save_pretrained(tmp_path / "m")
    again = SequenceRegressor.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(again(x)[0], model(x)[0])
    assert again.config == model.config


def test_bad_inputs_and_config():
    model = model_of(("attention",))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="d_in=3"):
        model(torch.zeros(2, 4, 5, dtype=torch.float64))
    with pytest.raises(UserError, match="d_in"):
        RegressorConfig(d_in=0)
