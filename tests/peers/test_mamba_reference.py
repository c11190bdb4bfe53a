"""Our Mamba mixer against mamba.py (``pip install mambapy``, Torres 2024), a public pure-PyTorch Mamba-1:
the same weights loaded into both give the same outputs over a sequence (their parallel scan and their
sequential loop) and the same decoding steps afterwards. Skipped when mambapy is not installed."""

from __future__ import annotations

import pytest
import torch

from seqmix import build_mixer
from seqmix.testing import assert_close, fixed_weights

mambapy_mamba = pytest.importorskip("mambapy.mamba")

D_MODEL, D_STATE, EXPAND, D_CONV = 32, 8, 2, 4


def pair(pscan: bool):
    torch.manual_seed(0)
    ours = build_mixer("mamba", d_model=D_MODEL, d_state=D_STATE, expand=EXPAND, d_conv=D_CONV, chunk_size=16)
    config = mambapy_mamba.MambaConfig(
        d_model=D_MODEL, n_layers=1, d_state=D_STATE, expand_factor=EXPAND, d_conv=D_CONV, pscan=pscan
    )
    theirs = mambapy_mamba.MambaBlock(config)
    state = {k.replace("conv.", "conv1d."): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)  # strict: every tensor maps one to one
    return ours, theirs


@pytest.mark.parametrize("pscan", [True, False], ids=["their-pscan", "their-loop"])
@pytest.mark.parametrize("mode", ["scan", "recurrent"])
def test_same_weights_same_outputs(mode, pscan):
    ours, theirs = pair(pscan)
    x = fixed_weights((2, 37, D_MODEL), torch.float32, seed=1)
    with torch.no_grad():
        y, _ = ours(x, mode=mode)
        y_ref = theirs(x)
    assert_close(f"mamba mode={mode!r} vs mambapy (pscan={pscan})", y, y_ref, 2e-5)


def test_same_decoding_steps():
    """mambapy's cache is (h [B, ED, N], last conv inputs [B, ED, d_conv - 1]): our MambaState's layout."""
    ours, theirs = pair(pscan=False)
    x = fixed_weights((2, 12, D_MODEL), torch.float32, seed=2)
    state = ours.init_state(2)
    cache = (state.ssm.clone(), state.conv.clone())
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = ours.step(x[:, t], state)
            y_ref, cache = theirs.step(x[:, t], cache)
            assert_close(f"mamba step {t} vs mambapy", y, y_ref, 2e-5)
        assert_close("final SSM state vs mambapy", state.ssm, cache[0], 2e-5)
        assert_close("final conv state vs mambapy", state.conv, cache[1], 2e-5)
