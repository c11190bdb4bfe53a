"""Depth-dependent mixers get their layer position from the models, and check it."""

from __future__ import annotations

import pytest
import torch

from seqmix import build_mixer
from seqmix.models import LanguageModel, ModelConfig
from seqmix.testing import fixed_weights


@pytest.mark.parametrize("layer_idx,n_layers", [(0, 4), (2, 4), (3, 4)])
def test_hgrn2_forget_gate_lower_bound_follows_depth(layer_idx, n_layers):
    m = build_mixer("hgrn2", d_model=8, n_heads=2, layer_idx=layer_idx, n_layers=n_layers).double()
    assert m.lower_bound == layer_idx / n_layers
    with torch.no_grad():
        m.in_proj.weight.mul_(50.0)  # saturate the forget gate both ways
    proj = m.in_proj(fixed_weights((2, 30, 8), torch.float64, seed=1))
    _, _, _, log_alpha, _ = m._inputs(proj, torch.float64)
    f = log_alpha.exp()
    gamma = layer_idx / n_layers
    assert f.min() >= gamma - 1e-12 and f.max() <= 1.0
    assert f.min() < gamma + 1e-3  # the bound is reached


def test_an_explicit_lower_bound_overrides_the_depth():
    assert build_mixer("hgrn2", d_model=8, n_heads=2, lower_bound=0.25, layer_idx=3, n_layers=4).lower_bound == 0.25


def test_the_language_model_fills_in_each_layers_position():
    model = LanguageModel(ModelConfig(vocab_size=11, d_model=8, n_layers=3, pattern=["hgrn2", "hgrn", "rwkv6"],
                                      mixer_options={"hgrn2": {"n_heads": 2}, "rwkv6": {"n_heads": 2}}))
    mixers = [block.mixer for block in model.blocks]
    assert [m.layer_idx for m in mixers[:2]] == [0, 1] and mixers[1].n_layers == 3
    assert mixers[0].lower_bound == 0.0 and mixers[1].lower_bound == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", ["hgrn", "hgrn2", "rwkv4", "rwkv6"])
@pytest.mark.parametrize("layer_idx,n_layers", [(4, 4), (-1, 4), (True, 4), (0, 0)])
def test_a_bad_layer_position_names_the_allowed_range(name, layer_idx, n_layers):
    with pytest.raises(ValueError, match="layer_idx must be an int in|n_layers must be a positive int"):
        build_mixer(name, d_model=8, layer_idx=layer_idx, n_layers=n_layers)
