"""generate(): prefill + step equals the full forward pass; sampling rules; stop token; batch; callback."""

from __future__ import annotations

import pytest
import torch

from seqmix import get_spec
from seqmix.generation import filter_logits, generate, sample_next
from seqmix.models import LanguageModel, ModelConfig

V = 19


def model_of(pattern, n_layers=2, seed=0) -> LanguageModel:
    torch.manual_seed(seed)
    opts = {name: dict(get_spec(name).test_options) for name in pattern}
    config = ModelConfig(vocab_size=V, d_model=16, n_layers=n_layers, pattern=list(pattern), mixer_options=opts)
    return LanguageModel(config).double().eval()


def prompt(B=2, T=5, seed=1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- generate == forward
@pytest.mark.parametrize(
    "pattern",
    [("attention",), ("lstm",), ("mamba",), ("retnet",), ("mingru",), ("linear_attention",), ("mamba", "attention")],
)
def test_generated_logits_equal_the_full_forward_pass(pattern):
    model = model_of(pattern, n_layers=3 if len(pattern) > 1 else 2)
    p = prompt()
    g = torch.Generator().manual_seed(3)
    tokens, logits = generate(model, p, 12, temperature=1.0, generator=g, return_logits=True)
    assert tokens.shape == (2, 17) and logits.shape == (2, 12, V)
    assert torch.equal(tokens[:, :5], p)
    with torch.no_grad():
        full, _ = model(tokens)
    # logits[:, i] predicted new token i, i.e. the forward output at position T - 1 + i
    torch.testing.assert_close(logits, full[:, 4:16], rtol=1e-9, atol=1e-9)


def test_greedy_is_deterministic_and_picks_argmax():
    model = model_of(("mamba",))
    a, logits = generate(model, prompt(), 8, temperature=0, return_logits=True)
    b = generate(model, prompt(), 8, temperature=0)
    assert torch.equal(a, b)
    assert torch.equal(a[:, 5:], logits.argmax(-1))


def test_same_generator_seed_same_samples_and_mode_restored():
    model = model_of(("attention",)).train()
    a = generate(model, prompt(), 10, generator=torch.Generator().manual_seed(5))
    b = generate(model, prompt(), 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert model.training  # put back in the mode it came in


# --------------------------------------------------------------------------- sampling rules
def _log_probs(*p):
    return torch.tensor([p], dtype=torch.float64).log()


def test_top_k_keeps_the_k_most_likely():
    z = _log_probs(0.1, 0.4, 0.05, 0.3, 0.15)
    kept = torch.isfinite(filter_logits(z, top_k=2))[0]
    assert kept.tolist() == [False, True, False, True, False]
    assert torch.isfinite(filter_logits(z, top_k=99)).all()


def test_top_p_keeps_the_smallest_nucleus():
    z = _log_probs(0.125, 0.5, 0.0625, 0.25, 0.0625)
    # sorted: 0.5, 0.25, 0.125, 0.0625, 0.0625
    assert torch.isfinite(filter_logits(z, top_p=0.5))[0].tolist() == [False, True, False, False, False]
    assert torch.isfinite(filter_logits(z, top_p=0.6))[0].tolist() == [False, True, False, True, False]
    assert torch.isfinite(filter_logits(z, top_p=0.75))[0].tolist() == [False, True, False, True, False]
    assert torch.isfinite(filter_logits(z, top_p=0.8))[0].tolist() == [True, True, False, True, False]
    assert torch.isfinite(filter_logits(z, top_p=0.01))[0].tolist() == [False, True, False, False, False]
    assert torch.isfinite(filter_logits(z, top_p=1.0)).all()
    # combined: top-k first, then the nucleus of what is left
    assert torch.isfinite(filter_logits(z, top_k=3, top_p=0.99))[0].tolist() == [True, True, False, True, False]


def test_sampling_never_leaves_the_support_and_covers_it():
    z = _log_probs(0.125, 0.5, 0.0625, 0.25, 0.0625).float().expand(4000, 5)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next(z, top_p=0.8, generator=g)
    assert set(drawn.tolist()) == {0, 1, 3}
    freq = torch.bincount(drawn, minlength=5).double() / 4000
    # renormalised nucleus: 0.125, 0.5, 0.25 over 0.875
    torch.testing.assert_close(freq[[0, 1, 3]], torch.tensor([1 / 7, 4 / 7, 2 / 7], dtype=torch.float64), atol=0.03, rtol=0)
    assert set(sample_next(z, top_k=1, generator=g).tolist()) == {1}


def test_temperature_sharpens():
    z = _log_probs(0.3, 0.7).float().expand(4000, 2)
    g = torch.Generator().manual_seed(0)
    cold = sample_next(z, temperature=0.25, generator=g).double().mean()  # share of token 1
    assert cold > 0.9  # 0.7^4 / (0.7^4 + 0.3^4) = 0.967


def test_generate_with_top_k_one_equals_greedy():
    model = model_of(("lstm",))
    assert torch.equal(generate(model, prompt(), 6, top_k=1), generate(model, prompt(), 6, temperature=0))


# --------------------------------------------------------------------------- stop, batch, callback
def test_stop_token_keeps_stopped_sequences_stopped_and_ends_early():
    model = model_of(("mingru",))
    p = prompt(B=3)
    greedy = generate(model, p, 10, temperature=0)
    stop = int(greedy[0, 7])  # a token sequence 0 emits greedily at its third new position
    out = generate(model, p, 10, temperature=0, stop_token=stop)
    assert stop in out[0, 5:].tolist()  # sequence 0 reaches it by construction
    for b in range(3):
        row = out[b, 5:].tolist()
        first = row.index(stop) if stop in row else len(row)
        assert row[:first] == greedy[b, 5 : 5 + first].tolist()  # unchanged until it stops
        assert all(t == stop for t in row[first:])  # then only the stop token


def test_all_stopped_ends_generation_early():
    model = model_of(("attention",))
    p = prompt(B=1)
    first = int(generate(model, p, 1, temperature=0)[0, -1])
    out = generate(model, p, 10, temperature=0, stop_token=first)
    assert out.shape == (1, 6) and int(out[0, -1]) == first


def test_batch_rows_equal_single_rows():
    model = model_of(("retnet",))
    p = prompt(B=3)
    batch = generate(model, p, 7, temperature=0)
    for b in range(3):
        assert torch.equal(batch[b : b + 1], generate(model, p[b : b + 1], 7, temperature=0))


def test_callback_sees_every_new_token_in_order():
    model = model_of(("mamba",))
    seen = []
    out = generate(model, prompt(), 6, temperature=0, callback=lambda i, t: seen.append((i, t.clone())))
    assert [i for i, _ in seen] == list(range(6))
    assert torch.equal(torch.stack([t for _, t in seen], 1), out[:, 5:])


def test_bad_arguments_fail_clearly():
    model = model_of(("attention",))
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        generate(model, prompt(), 3, temperature=-1)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        generate(model, prompt(), 3, top_k=0)
    with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
        generate(model, prompt(), 3, top_p=1.5)
    with pytest.raises(ValueError, match=r"stop_token must be a token id in \[0, 19\)"):
        generate(model, prompt(), 3, stop_token=19)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 19\)"):
        generate(model, torch.tensor([[3, 40]]), 3)
    with pytest.raises(ValueError, match=r"at least one token"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    assert generate(model, prompt(), 0).shape == (2, 5)
