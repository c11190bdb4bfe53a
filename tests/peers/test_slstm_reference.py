"""seqmix's sLSTM equals the ``sLSTMLayer`` of the authors' ``xlstm`` package (vanilla PyTorch backend).

Same weights loaded into both; outputs and the final (h, c, n, m) and conv states agree in float64, from
the empty state and when a second chunk continues from the carried state. Skipped without ``xlstm``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("xlstm")
from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig  # noqa: E402

from seqmix import build_mixer  # noqa: E402
from seqmix.testing import assert_close  # noqa: E402

F64 = torch.float64


def _pair(d_model: int, n_heads: int, d_conv: int):
    torch.manual_seed(0)
    ours = build_mixer("slstm", d_model, n_heads=n_heads, d_conv=d_conv, recurrent_init="uniform").double()
    with torch.no_grad():  # non-trivial values everywhere (the package initialises R and b_i to zero)
        ours.bias.normal_()
        ours.norm_weight.uniform_(0.5, 1.5)
    config = sLSTMLayerConfig(embedding_dim=d_model, num_heads=n_heads, conv1d_kernel_size=d_conv, backend="vanilla")
    theirs = sLSTMLayer(config).double()
    cell = theirs.slstm_cell
    with torch.no_grad():
        if d_conv > 0:
            theirs.conv1d.conv.weight.copy_(ours.conv.weight)
            theirs.conv1d.conv.bias.copy_(ours.conv.bias)
        # the package feeds cat([fgate(x_conv), igate(x_conv), zgate(x), ogate(x)]) to the cell as (i, f, z, o)
        for module, w in zip((theirs.fgate, theirs.igate, theirs.zgate, theirs.ogate), ours.w_in):
            module.weight.copy_(w)  # [NH, DH_out, DH_in]
        cell._recurrent_kernel_.copy_(cell._recurrent_kernel_ext2int(ours.R.detach()))  # ext: [NH, DH, 4, DH]
        cell._bias_.copy_(cell._bias_ext2int(ours.bias.detach()))  # ext: [NH, 4, DH]
        theirs.group_norm.weight.copy_(ours.norm_weight - 1)  # the package stores the norm weight as 1 + w
    return ours, theirs


@pytest.mark.parametrize("d_model,n_heads,d_conv", [(16, 4, 4), (12, 2, 0), (16, 1, 2)])
def test_slstm_matches_xlstm_package(d_model, n_heads, d_conv):
    ours, theirs = _pair(d_model, n_heads, d_conv)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 23, d_model, generator=g, dtype=F64)
    with torch.no_grad():
        want1, st1 = theirs(x[:, :9], return_last_state=True)
        carried = {"conv_state": st1["conv_state"], "slstm_state": st1["slstm_state"]}
        want2, st2 = theirs(x[:, 9:], **carried, return_last_state=True)
        for mode in ours.modes:
            y1, s1 = ours(x[:, :9], mode=mode)
            y2, s2 = ours(x[:, 9:], s1, mode=mode)
            assert_close(f"{mode}: output, first chunk", y1, want1, 1e-10)
            assert_close(f"{mode}: output, continued chunk", y2, want2, 1e-10)
            for i, name in enumerate("hcnm"):
                got = getattr(s2, name).reshape(2, d_model)
                assert_close(f"{mode}: final {name}", got, st2["slstm_state"][i], 1e-10)
            if d_conv > 1:
                assert_close(f"{mode}: conv state", s2.conv, st2["conv_state"].transpose(1, 2), 1e-12)
