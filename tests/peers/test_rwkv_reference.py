"""Our RWKV-4 against Hugging Face transformers' pure-PyTorch RWKV (``transformers.models.rwkv``).

- op level: ``rwkv_linear_attention_cpu`` (the stabilised WKV loop behind HF's CPU path) and our
  ``wkv4_scan`` / ``wkv4_recurrent`` on the same tensors: same outputs and the same ``(a, b, p)`` state;
- mixer level: HF's ``RwkvSelfAttention`` with our RWKV-4 mixer's weights loaded (HF names the mixes
  ``time_mix_key/value/receptance`` and stores them ``[1, 1, d]``): the same output and state for a fresh
  and for a carried state (token shift included).

HF's loop runs the keys in float32 (``key.float()``), so everything here is float32. Skipped when
transformers is not installed.
"""

from __future__ import annotations

import pytest
import torch

from seqmix import build_mixer
from seqmix.ops.rwkv4 import EMPTY_MAX, wkv4_recurrent, wkv4_scan
from seqmix.testing import assert_close

modeling_rwkv = pytest.importorskip("transformers.models.rwkv.modeling_rwkv")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("form", ["scan", "recurrent"])
@pytest.mark.parametrize("B,T,D,key_scale", [(2, 37, 8, 1.0), (1, 1, 4, 1.0), (2, 80, 6, 30.0)])
def test_wkv_matches_hf_cpu_loop(form, B, T, D, key_scale):
    g = torch.Generator().manual_seed(T)
    time_decay, u = torch.randn(D, generator=g), torch.randn(D, generator=g)
    k, v = torch.randn(B, T, D, generator=g) * key_scale, torch.randn(B, T, D, generator=g)
    state = (torch.randn(B, D, generator=g), torch.rand(B, D, generator=g) + 0.5, torch.randn(B, D, generator=g))
    o_ref, s_ref = modeling_rwkv.rwkv_linear_attention_cpu(time_decay, u, k, v, state=list(state), return_state=True)
    w = torch.exp(time_decay)  # HF negates exp(time_decay) inside; our op takes the positive rate
    o, s = wkv4_scan(w, u, k, v, state, 16) if form == "scan" else wkv4_recurrent(w, u, k, v, state)
    assert_close("WKV outputs vs HF rwkv_linear_attention_cpu", o, o_ref, 1e-5)
    for name, ours, theirs in zip("abp", s, s_ref):
        assert_close(f"WKV state {name} vs HF", ours, theirs, 1e-5)


def _hf_attention(mixer) -> torch.nn.Module:
    d = mixer.d_model
    config = transformers.RwkvConfig(
        vocab_size=8, hidden_size=d, attention_hidden_size=d, num_hidden_layers=1, context_length=128
    )
    hf = modeling_rwkv.RwkvSelfAttention(config, layer_id=0)
    with torch.no_grad():
        hf.time_decay.copy_(mixer.time_decay)
        hf.time_first.copy_(mixer.time_first)
        for ours, theirs in (("k", "key"), ("v", "value"), ("r", "receptance")):
            getattr(hf, f"time_mix_{theirs}").copy_(getattr(mixer, f"time_mix_{ours}").view(1, 1, d))
            getattr(hf, theirs).weight.copy_(getattr(mixer, theirs).weight)
        hf.output.weight.copy_(mixer.output.weight)
    return hf


@pytest.mark.parametrize("mode", ["scan", "recurrent"])
def test_rwkv4_mixer_matches_hf_self_attention(mode):
    torch.manual_seed(0)
    B, T, d = 2, 41, 16
    mixer = build_mixer("rwkv4", d_model=d, layer_idx=1, n_layers=3, chunk_size=16)
    hf = _hf_attention(mixer)
    x = torch.randn(B, T, d)
    with torch.no_grad():
        # HF's state: [ffn shift, attention shift, num, den, max], each [B, d, n_layers]
        hf_state = [torch.zeros(B, d, 1) for _ in range(4)] + [torch.full((B, d, 1), EMPTY_MAX)]
        y_ref, hf_state = hf(x[:, :20], state=hf_state, use_cache=True)
        y, state = mixer(x[:, :20], mode=mode)
        assert_close("RWKV-4 output vs HF RwkvSelfAttention (fresh state)", y, y_ref, 1e-5)
        # carried state: the rest of the sequence from the state both hold after 20 tokens
        y_ref, hf_state = hf(x[:, 20:], state=hf_state, use_cache=True)
        y, state = mixer(x[:, 20:], state, mode=mode)
    assert_close("RWKV-4 output vs HF RwkvSelfAttention (carried state)", y, y_ref, 1e-5)
    for name, ours, theirs in zip(("shift", "a", "b", "p"), state, hf_state[1:]):
        assert_close(f"RWKV-4 final state {name} vs HF", ours, theirs[..., 0], 1e-5)
