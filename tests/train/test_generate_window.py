"""``seqmix generate`` keeps an attention model within the context length it was trained on."""

from __future__ import annotations

import torch

from seqmix.generation import generate
from seqmix.models import LanguageModel, ModelConfig
from seqmix.train.commands import _generate_windowed


def _model(pattern):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=13, d_model=16, n_layers=2, pattern=[pattern]))


def test_a_window_larger_than_the_text_changes_nothing():
    model, prompt = _model("attention"), torch.tensor([[1, 2, 3]])
    expected = generate(model, prompt, 10, temperature=0)
    assert torch.equal(_generate_windowed(model, prompt, 10, 64, stop_token=None, temperature=0), expected)
    assert torch.equal(_generate_windowed(model, prompt, 10, 0, stop_token=None, temperature=0), expected)


@torch.no_grad()
def test_past_the_window_generation_restarts_from_the_last_half():
    model, prompt = _model("attention"), torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = _generate_windowed(model, prompt, 12, 8, stop_token=None, temperature=0)  # [2, 15]
    assert out.shape == (2, 15)
    assert torch.equal(out[:, :8], generate(model, prompt, 5, temperature=0))  # the first window: 3 + 5 tokens
    # the context was then cut to its last 4 tokens: token 8 is the greedy choice after out[:, 4:8]
    assert torch.equal(out[:, 8], model(out[:, 4:8])[0][:, -1].argmax(-1))
    assert torch.equal(out[:, 12], model(out[:, 8:12])[0][:, -1].argmax(-1))  # and again 4 tokens later


def test_stopped_sequences_keep_emitting_the_stop_token_across_windows():
    model, prompt = _model("attention"), torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = _generate_windowed(model, prompt, 12, 6, stop_token=None, temperature=0)
    stop = int(free[0, 4])  # a token the first sequence emits in its first window
    out = _generate_windowed(model, prompt, 12, 6, stop_token=stop, temperature=0)
    row = out[0, 3:].tolist()
    first = row.index(stop)
    assert all(t == stop for t in row[first:])
