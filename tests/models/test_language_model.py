"""LanguageModel: shapes, every registered mixer trains, hybrids, carried state, save/load and its errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from seqmix import detach_state, list_mixers
from seqmix.errors import UserError
from seqmix.models import LanguageModel, ModelConfig, load_config_json
from seqmix.models.pretrained import CONFIG_NAME, WEIGHTS_NAME

V = 23


def tiny_config(pattern=("attention",), n_layers=2, **overrides) -> ModelConfig:
    pattern = list(pattern)
    opts = {name: dict(spec.test_options) for spec in list_mixers() if (name := spec.name) in pattern}
    return ModelConfig(vocab_size=V, d_model=16, n_layers=n_layers, pattern=pattern, mixer_options=opts, **overrides)


def tokens(B=2, T=12, seed=0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def lm_loss(model, x):
    logits, _ = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))


# --------------------------------------------------------------------------- shapes and config
def test_forward_shapes_and_dtypes():
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(n_layers=3))
    logits, state = model(tokens(3, 7))
    assert logits.shape == (3, 7, V) and logits.dtype == torch.float32
    assert isinstance(state, list) and len(state) == 3
    step_logits, state = model.step(tokens(3, 1)[:, 0], state)
    assert step_logits.shape == (3, V)
    assert model.head.weight is model.embed.weight  # tied


def test_config_round_trip_and_errors():
    config = tiny_config(pattern=("mamba", "attention"), n_layers=4, dropout=0.1)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match=r"unknown mixer 'atention'.*did you mean 'attention'.*registered mixers: .*lstm"):
        ModelConfig(vocab_size=V, pattern=["atention"])
    with pytest.raises(UserError, match=r"mixer_options.attention: unknown option\(s\) heads; allowed: n_heads"):
        ModelConfig(vocab_size=V, mixer_options={"attention": {"heads": 2}})
    with pytest.raises(UserError, match=r"mixer_options.attention .*n_heads must divide d_model"):
        ModelConfig(vocab_size=V, d_model=30, mixer_options={"attention": {"n_heads": 4}})
    with pytest.raises(UserError, match=r"unknown ModelConfig key\(s\) 'n_layer'; allowed keys: d_model, n_layers, .*vocab_size"):
        ModelConfig.from_dict({"vocab_size": V, "n_layer": 2})
    with pytest.raises(UserError, match=r"mlp must be one of 'swiglu', 'none', got 'gelu'"):
        ModelConfig(vocab_size=V, mlp="gelu")
    with pytest.raises(UserError, match=r"dropout must be a number in \[0, 1\)"):
        ModelConfig(vocab_size=V, dropout=1.0)
    with pytest.raises(UserError, match="vocab_size must be a positive int"):
        ModelConfig(vocab_size=0)
    with pytest.raises(UserError, match="mixers must be causal; mixer_options make attention non-causal"):
        LanguageModel(ModelConfig(vocab_size=V, d_model=16, mixer_options={"attention": {"causal": False}}))


def test_hybrid_pattern_cycles_over_layers():
    config = tiny_config(pattern=("mamba", "mamba", "attention"), n_layers=7)
    model = LanguageModel(config)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["Mamba", "Mamba", "Attention", "Mamba", "Mamba", "Attention", "Mamba"]
    logits, state = model(tokens())
    assert logits.shape == (2, 12, V) and len(state) == 7


def test_mlp_none_and_untied_head():
    model = LanguageModel(tiny_config(mlp="none", tie_embeddings=False))
    assert all(b.mlp is None for b in model.blocks)
    assert model.head.weight is not model.embed.weight
    assert model(tokens())[0].shape == (2, 12, V)


def test_residual_projection_init_scaled_by_depth():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=V, d_model=64, n_layers=8, mixer_options={"attention": {"n_heads": 2}}))
    assert abs(model.embed.weight.std().item() - 0.02) < 0.002
    w_out = torch.cat([b.mlp.w_out.weight.flatten() for b in model.blocks])
    assert abs(w_out.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)


def test_bad_tokens_and_state_fail_clearly():
    model = LanguageModel(tiny_config())
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 23\)"):
        model(torch.tensor([[1, 23]]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"shape \[batch, time\]"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"one mixer state per layer \(2\)"):
        model(tokens(), state=[None])


# --------------------------------------------------------------------------- every mixer
@pytest.mark.parametrize("name", [spec.name for spec in list_mixers()])
def test_every_mixer_trains_in_a_language_model(name):
    """Each registered mixer builds into a 2-layer model whose gradient is a descent direction:
    a small step along -grad lowers the loss (float64, so the first-order term dominates)."""
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(pattern=(name,))).double()
    x = tokens(2, 20)
    loss = lm_loss(model, x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite gradient"
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    assert norm > 0, f"{name}: zero gradient"
    lr = 1e-3 / norm
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
        new_loss = lm_loss(model, x)
    assert new_loss < loss, f"{name}: loss {loss.item():.8f} -> {new_loss.item():.8f} after a gradient step"
    # and a real optimiser step in float32 runs
    model = model.float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lm_loss(model, x).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- carried state
@pytest.mark.parametrize("pattern", [("attention",), ("lstm",), ("mamba", "attention"), ("retnet", "mingru")])
def test_state_carried_across_calls_equals_one_call(pattern):
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(pattern=pattern, n_layers=3)).double()
    x = tokens(2, 21)
    full, final = model(x)
    first, state = model(x[:, :8])
    second, state = model(x[:, 8:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-10, atol=1e-10)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bfloat16_autocast_forward_backward():
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(pattern=("mamba", "attention")))
    x = tokens()
    ref, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x.reshape(-1))
    loss.backward()
    assert logits.dtype == torch.float32
    assert (logits - ref).abs().max() < 0.05 * ref.abs().max()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(pattern=("mamba", "attention"), n_layers=3, tie_embeddings=True))
    model.save_pretrained(tmp_path / "ck", extra={"tokenizer": {"kind": "byte"}, "step": 7})
    loaded = LanguageModel.from_pretrained(tmp_path / "ck")
    x = tokens()
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    assert loaded.head.weight is loaded.embed.weight
    assert loaded.config == model.config
    header = load_config_json(tmp_path / "ck")
    assert header["format"] == "seqmix.LanguageModel" and header["extra"]["step"] == 7
    assert sorted(os.listdir(tmp_path / "ck")) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left


def test_save_load_untied_and_bfloat16(tmp_path):
    model = LanguageModel(tiny_config(tie_embeddings=False)).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = LanguageModel.from_pretrained(tmp_path)
    assert loaded.head.weight.dtype == torch.bfloat16 and loaded.head.weight is not loaded.embed.weight
    torch.testing.assert_close(loaded(tokens())[0], model(tokens())[0], rtol=0, atol=0)


def test_no_pickle_in_checkpoint(tmp_path):
    LanguageModel(tiny_config()).save_pretrained(tmp_path)
    blob = (tmp_path / WEIGHTS_NAME).read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    json.loads(blob[8 : 8 + header_len])  # a safetensors file: JSON header + raw bytes, nothing to unpickle


@pytest.fixture
def saved(tmp_path):
    LanguageModel(tiny_config()).save_pretrained(tmp_path / "ck")
    return tmp_path / "ck"


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:-100]), r"model.safetensors' is truncated"),
        (lambda d: (d / WEIGHTS_NAME).unlink(), r"model.safetensors' is missing"),
        (lambda d: (d / CONFIG_NAME).unlink(), r"config.json' is missing"),
        (lambda d: (d / CONFIG_NAME).write_text('{"format": "seqmix.Lang'), r"config.json' is not valid JSON"),
        (lambda d: _edit_json(d / CONFIG_NAME, lambda j: j["config"].update(d_model=32)), r"does not fit this model config: tensor .* has shape"),
        (lambda d: _edit_json(d / CONFIG_NAME, lambda j: j["config"].update(n_layers=3)), r"does not fit this model config \(missing tensors 'blocks.2"),
        (lambda d: _edit_json(d / CONFIG_NAME, lambda j: j["config"].update(colour="red")), r"unknown ModelConfig key\(s\) 'colour'"),
        (lambda d: _edit_json(d / CONFIG_NAME, lambda j: j.update(format="something.else")), r"holds format 'something.else'"),
        (lambda d: _edit_json(d / CONFIG_NAME, lambda j: j.update(format_version=99)), r"format_version 99"),
    ],
    ids=["truncated", "no-weights", "no-config", "bad-json", "shape", "layers", "unknown-key", "format", "version"],
)
def test_bad_checkpoints_give_one_line_user_errors(saved, damage, message):
    damage(saved)
    with pytest.raises(UserError, match=message) as info:
        LanguageModel.from_pretrained(saved)
    assert "\n" not in str(info.value)


def test_corrupt_bytes_without_checksum_are_caught(saved):
    """A damaged safetensors header is reported even when config.json records no checksum."""
    _edit_json(saved / CONFIG_NAME, lambda j: j.pop("weights"))
    blob = bytearray((saved / WEIGHTS_NAME).read_bytes())
    blob[8:16] = b"garbage!"
    (saved / WEIGHTS_NAME).write_bytes(bytes(blob))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        LanguageModel.from_pretrained(saved)


def test_flipped_byte_is_caught_by_the_checksum(saved):
    blob = bytearray((saved / WEIGHTS_NAME).read_bytes())
    blob[-3] ^= 0xFF
    (saved / WEIGHTS_NAME).write_bytes(bytes(blob))
    with pytest.raises(UserError, match="is corrupt: its SHA-256 differs"):
        LanguageModel.from_pretrained(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        LanguageModel.from_pretrained(tmp_path / "nowhere")


def test_crash_during_save_keeps_previous_checkpoint(saved, monkeypatch):
    """A write that dies half-way leaves the old files under their names, loadable, and no temp file."""
    before = LanguageModel.from_pretrained(saved)
    other = LanguageModel(tiny_config())
    import seqmix.models.pretrained as pretrained

    real_replace = os.replace

    def crash(src, dst):
        raise KeyboardInterrupt("simulated crash before the rename")

    monkeypatch.setattr(pretrained.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(saved)
    monkeypatch.setattr(pretrained.os, "replace", real_replace)
    assert sorted(os.listdir(saved)) == [CONFIG_NAME, WEIGHTS_NAME]
    after = LanguageModel.from_pretrained(saved)
    x = tokens()
    torch.testing.assert_close(after(x)[0], before(x)[0], rtol=0, atol=0)


def test_unserialisable_extra_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        LanguageModel(tiny_config()).save_pretrained(tmp_path / "ck", extra={"bad": object()})
    assert not (tmp_path / "ck").exists()
