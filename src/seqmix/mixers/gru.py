"""The GRU (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
Machine Translation", arXiv:1406.1078) as a token mixer, in PyTorch's gate convention:

    r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1},      y_t = h_t  (or out_proj(h_t))

Deviation from the paper, on purpose: Cho et al. reset the state before the recurrent matmul
(``U (r * h)``); PyTorch and cuDNN reset after it (``r * (U h + b)``). We follow PyTorch so that its fused
kernel (mode ``"fused"``) and our ``step`` share the very same weights (see ``seqmix.ops.rnn``).

Initialisation: PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for input weights and biases; each of the three
recurrent ``H x H`` blocks random orthogonal, as in the RNN encoder-decoder line of work (Cho et al.
2014; Bahdanau et al. 2015, Appendix) that introduced the GRU.
"""

from __future__ import annotations

from torch import nn

from seqmix.mixers.elman import _FusedRNN
from seqmix.ops.rnn import gru_cell, gru_fused, gru_recurrent

__all__ = ["GRU"]


class GRU(_FusedRNN):
    """GRU mixer; modes ``"fused"`` and ``"recurrent"``; state ``h: [B, d_hidden]``.

    Args:
        d_model: input and output width.
        d_hidden: hidden width H (default ``d_model``); when it differs from ``d_model`` (or ``out_proj``
            is True) a linear map brings ``h`` back to ``d_model``.
        out_proj: force an output projection even when ``d_hidden == d_model``.
    """

    _gates = 3
    _cell = staticmethod(gru_cell)
    _fused = staticmethod(gru_fused)
    _loop = staticmethod(gru_recurrent)

    def _make_rnn(self, d_model: int, d_hidden: int) -> nn.RNNBase:
        return nn.GRU(d_model, d_hidden, batch_first=True)
