"""The gated RMSNorm of the SSD mixer Mamba-2 (``seqmix.ops.gated_norm``, hand-written backward) equals
``F.rms_norm(y * SiLU(z))`` with its weight: output and the gradients of y, z and the weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.gated_norm import gated_rms_norm
from seqmix.testing import assert_all_close, fixed_weights, outputs_and_grads

F64 = torch.float64


@pytest.mark.parametrize("shape", [(2, 7, 12), (3, 5), (1, 1, 1)])
def test_gated_rms_norm_equals_the_composite(shape):
    D = shape[-1]
    inputs = {"y": fixed_weights(shape, F64, 1) * 3.0, "z": fixed_weights(shape, F64, 2),
              "weight": fixed_weights((D,), F64, 3)}  # fmt: skip

    def reference(y, z, weight):
        return F.rms_norm(y * F.silu(z), (D,), weight, 1e-5)

    expected = outputs_and_grads(reference, inputs)
    actual = outputs_and_grads(lambda y, z, w: gated_rms_norm(y, z, w, 1e-5), inputs)
    assert_all_close(actual, expected, 1e-12, f"gated_rms_norm {shape}")


def test_tiny_activations_meet_eps():
    """With y * SiLU(z) far below sqrt(eps) the norm divides by sqrt(eps), not by the activation's size."""
    y, z, w = torch.full((2, 4), 1e-6, dtype=F64), torch.zeros(2, 4, dtype=F64) + 5.0, torch.ones(4, dtype=F64)
    out = gated_rms_norm(y, z, w, 1e-2)
    torch.testing.assert_close(out, y * F.silu(z) / (((y * F.silu(z)) ** 2).mean(-1, keepdim=True) + 1e-2).sqrt())


def test_low_precision_gate_follows_y():
    y, z = torch.randn(3, 8), torch.randn(3, 8).bfloat16()
    out = gated_rms_norm(y, z, torch.ones(8, dtype=torch.bfloat16), 1e-5)
    assert out.dtype == torch.float32
