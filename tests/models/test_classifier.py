"""SequenceClassifier: shapes, pooling, padding, bidirectional dependence on the future, save/load."""

from __future__ import annotations

import pytest
import torch

from seqmix import get_spec, list_mixers
from seqmix.errors import UserError
from seqmix.models import Bidirectional, ClassifierConfig, SequenceClassifier
from seqmix.models.bidirectional import reverse_within_lengths

V = 17


def classifier(pattern=("mamba",), **overrides) -> SequenceClassifier:
    torch.manual_seed(0)
    opts = {name: dict(get_spec(name).test_options) for name in pattern}
    config = ClassifierConfig(vocab_size=V, d_model=16, n_layers=2, pattern=list(pattern), mixer_options=opts,
                              n_classes=3, **overrides)
    return SequenceClassifier(config).double().eval()


def tokens(B=2, T=10, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes(pooling, bidirectional):
    model = classifier(pooling=pooling, bidirectional=bidirectional)
    assert model(tokens(4, 9)).shape == (4, 3)


def test_last_pooling_of_a_causal_model_ignores_nothing_before_and_everything_after():
    model = classifier(("lstm",), pooling="last")
    x = tokens()
    y = model(x)
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % V
    assert not torch.allclose(model(x2), y)  # the first token reaches the last position
    # last pooling at length t equals the classifier run on the first t tokens only
    lengths = torch.tensor([6, 10])
    y_len = model(x, lengths)
    torch.testing.assert_close(y_len[0], model(x[:1, :6])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_len[1], y[1], rtol=1e-10, atol=1e-10)


def test_mean_pooling_with_padding_equals_unpadded():
    model = classifier(("retnet",), pooling="mean")
    x = tokens()
    y = model(x, torch.tensor([4, 10]))
    torch.testing.assert_close(y[0], model(x[:1, :4])[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [spec.name for spec in list_mixers()])
def test_bidirectional_output_depends_on_future_tokens(name):
    """With every registered mixer, changing input 1 changes position 0's output only in the
    bidirectional model (input 1, not the last one: windowed mixers such as swa and gated_conv look
    back only a few tokens in the reversed direction too)."""
    pattern = (name,)
    for bidirectional in (False, True):
        model = classifier(pattern, bidirectional=bidirectional)
        h = torch.nn.Embedding(V, 16).double()(tokens())  # any input sequence
        block = model.blocks[0]
        y, _ = block(h)
        h2 = h.clone()
        h2[:, 1] += 1.0
        y2, _ = block(h2)
        changed = not torch.allclose(y[:, 0], y2[:, 0])
        assert changed == bidirectional, f"{pattern} bidirectional={bidirectional}: position 0 changed={changed}"
        assert isinstance(block.mixer, Bidirectional) == bidirectional


def test_bidirectional_padding_never_reaches_real_tokens():
    model = classifier(("mamba",), bidirectional=True, pooling="mean")
    x = tokens()
    lengths = torch.tensor([7, 10])
    y = model(x, lengths)
    x_pad = x.clone()
    x_pad[0, 7:] = (x_pad[0, 7:] + 5) % V  # change only the padding of sequence 0
    torch.testing.assert_close(model(x_pad, lengths), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y[0], model(x[:1, :7])[0], rtol=1e-10, atol=1e-10)


def test_reverse_within_lengths():
    x = torch.arange(10).view(2, 5, 1)
    out = reverse_within_lengths(x, torch.tensor([3, 5]))[..., 0]
    assert out.tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    assert torch.equal(reverse_within_lengths(reverse_within_lengths(x, torch.tensor([3, 5])), torch.tensor([3, 5])), x)


def test_native_non_causal_attention_is_not_wrapped():
    torch.manual_seed(0)
    config = ClassifierConfig(vocab_size=V, d_model=16, n_layers=1, mixer_options={"attention": {"n_heads": 2, "causal": False}},
                              bidirectional=True)
    model = SequenceClassifier(config)
    assert not isinstance(model.blocks[0].mixer, Bidirectional)
    assert model(tokens()).shape == (2, 2)
    with pytest.raises(ValueError, match="would attend to the padding"):
        model(tokens(), torch.tensor([3, 10]))


def test_bidirectional_mixer_has_no_step():
    model = classifier(bidirectional=True)
    with pytest.raises(RuntimeError, match="no step form"):
        model.blocks[0].mixer.step(torch.zeros(1, 16, dtype=torch.float64))


def test_config_errors_and_bad_lengths():
    with pytest.raises(UserError, match=r"pooling must be one of 'last', 'mean', got 'max'"):
        ClassifierConfig(vocab_size=V, pooling="max")
    with pytest.raises(UserError, match="n_classes must be a positive int"):
        ClassifierConfig(vocab_size=V, n_classes=0)
    with pytest.raises(ValueError, match=r"lengths must hold one integer in \[1, 10\]"):
        classifier()(tokens(), torch.tensor([0, 3]))


def test_save_load_round_trip(tmp_path):
    model = classifier(("lstm", "attention"), bidirectional=True, pooling="mean")
    model.save_pretrained(tmp_path)
    loaded = SequenceClassifier.from_pretrained(tmp_path).double()
    torch.testing.assert_close(loaded(tokens()), model(tokens()), rtol=0, atol=0)


def test_trains():
    model = classifier(("mingru",), bidirectional=True).float().train()
    x, labels = tokens(8, 6), torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bfloat16_autocast_gives_float32_logits():
    model = classifier(("mamba", "attention"), bidirectional=True).float()
    ref = model(tokens())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens())
    assert logits.dtype == torch.float32
    assert (logits - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
