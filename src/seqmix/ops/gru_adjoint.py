"""The GRU's backward pass as one short loop over time, for PyTorch's fused CPU GRU forward.

PyTorch's CPU GRU (``torch.gru``, behind ``nn.GRU``) records each step's operations for autograd, and
its backward then replays that graph node by node: about 3x the fused LSTM's time here. Here the forward
is the same fused kernel, run without recording, and the backward is written out (the GRU of
``seqmix.ops.rnn``, PyTorch's gate convention)::

    r_t = sigmoid(a_r),  z_t = sigmoid(a_z),  n_t = tanh(a_n),  a_n = i_n + r_t g_t,  g_t = W_hn h_{t-1} + b_hn
    h_t = n_t + z_t (h_{t-1} - n_t)

1. Every ``h_{t-1}`` is known after the forward, so all gates are recomputed at once: two GEMMs over the
   whole sequence (input and recurrent halves) and element-wise work.
2. With ``d_t = dL/dh_t``, every pre-activation gradient is ``d_t`` times a coefficient that depends only
   on the gates::

       da_r = d_t (1 - z)(1 - n^2) g r (1 - r)      da_z = d_t (h_{t-1} - n) z (1 - z)
       da_n = d_t (1 - z)(1 - n^2)                  (recurrent side: da_n r)

   so the adjoint recurrence ``d_{t-1} = dL/dh_{t-1}|_out + d_t z_t + [da_r, da_z, da_n r] W_hh`` is, per
   step, one element-wise product of ``d_t`` with the step's coefficients ``[4, H]`` and one GEMM with
   ``[W_hh; I]`` (``[4H, H]``): two operations per step.
3. The weight and input gradients follow from all ``d_t`` at once: four GEMMs over the sequence.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["gru_fused_adjoint"]


def _fused_forward(x, w_ih, w_hh, b_ih, b_hh, h0):
    h_all, h_n = torch.gru(x, h0.unsqueeze(0), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, True)
    return h_all, h_n.squeeze(0)


class _GRUAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0):  # type: ignore[override]
        h_all, h_last = _fused_forward(x, w_ih, w_hh, b_ih, b_hh, h0)  # [B, T, H], [B, H]
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, h0, h_all)
        return h_all, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_all: Optional[torch.Tensor], grad_last: Optional[torch.Tensor]):  # type: ignore[override]
        x, w_ih, w_hh, b_ih, b_hh, h0, h_all = ctx.saved_tensors
        B, T, D = x.shape
        H = h0.shape[1]
        # 1. every step's gates, time-major [T, B, .]
        x_tm = x.transpose(0, 1).reshape(T * B, D)
        h_prev = torch.cat((h0.unsqueeze(0), h_all.transpose(0, 1)[:-1]), dim=0).reshape(T * B, H)
        gi = torch.addmm(b_ih, x_tm, w_ih.t())  # [T*B, 3H]
        gh = torch.addmm(b_hh, h_prev, w_hh.t())  # [T*B, 3H]
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        g = gh[:, 2 * H :]
        n = torch.tanh(torch.addcmul(gi[:, 2 * H :], r, g))
        # 2. per-step coefficients [r-part, z-part, n-part (recurrent side), z]: [T, B, 4, H]
        coef = x.new_empty(T * B, 4, H)
        dn = (1 - z) * (1 - n * n)  # da_n / d_t (input side)
        torch.mul(dn * g, r * (1 - r), out=coef[:, 0])
        torch.mul(h_prev - n, z * (1 - z), out=coef[:, 1])
        torch.mul(dn, r, out=coef[:, 2])  # recurrent side of the candidate
        coef[:, 3] = z
        coef = coef.view(T, B, 4, H)
        w4 = torch.cat((w_hh, torch.eye(H, dtype=w_hh.dtype, device=w_hh.device)), dim=0)  # [4H, H]
        # 3. the adjoint recurrence: d_{t-1} = out_grad_{t-1} + (d_t * coef_t) @ [W_hh; I]
        d_all = x.new_empty(T, B, H)  # dL/dh_t, total
        out_grad = grad_all.transpose(0, 1) if grad_all is not None else torch.zeros_like(d_all)  # [T, B, H]
        d = d_all[T - 1]
        torch.add(out_grad[T - 1], grad_last, out=d) if grad_last is not None else d.copy_(out_grad[T - 1])
        coef_t, d_views, out_views = coef.unbind(0), d_all.unbind(0), out_grad.unbind(0)
        for t in range(T - 1, 0, -1):
            scaled = torch.mul(d_views[t].unsqueeze(1), coef_t[t]).view(B, 4 * H)
            torch.addmm(out_views[t - 1], scaled, w4, out=d_views[t - 1])
        grad_h0 = torch.mm(torch.mul(d_all[0].unsqueeze(1), coef_t[0]).view(B, 4 * H), w4)
        # 4. pre-activation gradients of every step, then the GEMMs over the sequence
        d_flat = d_all.view(T * B, 1, H)
        coef_flat = coef.view(T * B, 4, H)
        d_rec = (d_flat * coef_flat[:, :3]).view(T * B, 3 * H)  # [da_r, da_z, da_n r]
        d_in = d_rec.clone()
        torch.mul(d_all.view(T * B, H), dn, out=d_in[:, 2 * H :])  # input side: da_n
        grad_x = torch.mm(d_in, w_ih).view(T, B, D).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_w_ih = torch.mm(d_in.t(), x_tm) if ctx.needs_input_grad[1] else None
        grad_w_hh = torch.mm(d_rec.t(), h_prev) if ctx.needs_input_grad[2] else None
        grad_b_ih = d_in.sum(0) if ctx.needs_input_grad[3] else None
        grad_b_hh = d_rec.sum(0) if ctx.needs_input_grad[4] else None
        return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_h0


def gru_fused_adjoint(x, w_ih, w_hh, b_ih, b_hh, initial_state):
    """``(h_all [B, T, H], h_T [B, H])`` by PyTorch's fused GRU kernel, differentiated by the loop above.

    Same function and signature as ``seqmix.ops.rnn.gru_recurrent``; all inputs share one dtype.
    """
    return _GRUAdjoint.apply(x, w_ih, w_hh, b_ih, b_hh, initial_state.contiguous())
