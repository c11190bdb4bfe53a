"""TTT-Linear: the hidden state is a linear model trained by gradient descent on each token.

Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States",
arXiv:2407.04620 (Section 2: TTT layers, mini-batch TTT, the dual form; Section 2.7 learnable eta), as
in the authors' PyTorch release (``ttt-lm-pytorch``, ``TTTLinear``).

Per head, the inner model is ``f(x; W, b) = x + LN(x W + b)`` (LayerNorm with weight ``gamma`` and bias
``beta`` over the head's ``F`` features, eps 1e-6) and the self-supervised loss of token ``j`` is
``l_j(W, b) = 1/2 || LN(k_j W + b) - (v_j - k_j) ||^2``, whose gradient w.r.t. ``Z = k_j W + b`` is
``g_j`` (written out in ``ln_l2_grad``). Tokens are grouped into mini-batches of ``b`` consecutive
positions; all gradients of a mini-batch are taken at its initial weights ``(W_0, b_0)``. For the
token at position ``i`` (``0 <= i < b``) of its mini-batch::

    G_i = sum_{j <= i} lr_j k_j^T g_j,      h_i = sum_{j <= i} lr_j g_j          # running sums
    W_i = W_0 - eta_i G_i,                  b_i = b_0 - eta_i h_i
    z_i = q_i + LN(q_i W_i + b_i)                                             # the output
    after the last position (i = b - 1): W_0 <- W_{b-1}, b_0 <- b_{b-1}, G = h = 0

``lr_j`` is the learnable per-token learning rate (``base_lr * sigmoid(theta x_j) / F`` in the paper,
computed by the mixer) and ``eta_i`` the per-position factor (``1 / (i + 1)`` plus a learnable offset,
clamped at 0), so ``W_i`` descends along the mean of the gradients seen so far in the mini-batch.

State, exact for streaming: ``TTTState(dW, db, G, h, pos)``: the mini-batch's initial weights as an
offset from the learned initial weights ``W_init, b_init`` (so that the zero state is the learned
initialisation), the running gradient sums of the current, partial mini-batch and the position ``pos``
in it (``[B]``, a whole number stored in the state's dtype). A loop over ``ttt_linear_step`` therefore
reproduces the mini-batch computation token by token, and a sequence may be cut anywhere. This is
the layout of the authors' decoding cache (``W1_states``, ``b1_states``, ``W1_grad``, ``b1_grad``).

Forms (the same signature): ``ttt_linear_recurrent`` (the spec, a loop of ``ttt_linear_step``) and
``ttt_linear_chunk``, the paper's dual form: per mini-batch
``Z_bar = q W_0 + b_0 - (tril(eta_i lr_j) * (q k^T) + tril(eta_i lr_j)) g`` as ``b x b`` matmuls, with a
Python loop over the ``T / b`` mini-batches only (the update is nonlinear in ``W`` through the
LayerNorm, so mini-batches are inherently sequential). Each sequence may start mid-mini-batch (its own
``pos``): inputs are scattered into a padded time axis where position ``p`` sits at index
``pos + t``, so mini-batch boundaries line up for the whole batch; padded tokens have ``lr = 0`` and
change nothing.

Shapes: ``q, k, v: [B, H, T, F]``, ``lr: [B, H, T]``; ``TTTParams`` hold ``W_init: [H, F, F]``,
``b_init: [H, F]``, ``ln_weight, ln_bias: [H, F]`` and ``eta: [b]``. Both forms return
``(z: [B, H, T, F], state)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "TTTParams",
    "TTTState",
    "ln_fwd",
    "ln_l2_grad",
    "ttt_linear_step",
    "ttt_linear_recurrent",
    "ttt_linear_chunk",
]


class TTTParams(NamedTuple):
    W_init: torch.Tensor  # [H, F, F] learned initial weights of the inner model
    b_init: torch.Tensor  # [H, F] learned initial bias
    ln_weight: torch.Tensor  # [H, F] LayerNorm weight inside f
    ln_bias: torch.Tensor  # [H, F] LayerNorm bias inside f
    eta: torch.Tensor  # [b] per-position factors of the mini-batch (>= 0)


class TTTState(NamedTuple):
    dW: torch.Tensor  # [B, H, F, F] mini-batch initial W minus W_init
    db: torch.Tensor  # [B, H, F] mini-batch initial b minus b_init
    G: torch.Tensor  # [B, H, F, F] running sum of lr_j k_j^T g_j in the current mini-batch
    h: torch.Tensor  # [B, H, F] running sum of lr_j g_j
    pos: torch.Tensor  # [B] position in the current mini-batch, 0 <= pos < b


def _per_head(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[H, F]`` viewed to broadcast against ``[B, H, ..., F]`` of ``ndim`` dimensions."""
    return p.view(p.shape[0], *([1] * (ndim - 3)), p.shape[1])


def _normalise(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    xc = x - x.mean(-1, keepdim=True)
    std = torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)
    return xc / std, std


def ln_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head LayerNorm of ``x: [B, H, ..., F]`` with ``weight, bias: [H, F]``."""
    x_hat, _ = _normalise(x, eps)
    return x_hat * _per_head(weight, x.ndim) + _per_head(bias, x.ndim)


def ln_l2_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``d/dz 1/2 ||LN(z) - target||^2`` in closed form (LayerNorm's backward), ``[B, H, ..., F]``.

    With ``x_hat = (z - mean) / std`` and ``d = (gamma x_hat + beta - target) gamma``:
    ``(F d - sum(d) - x_hat sum(d x_hat)) / (F std)``. Differentiable again (the outer training loop
    differentiates through it).
    """
    Fd = z.shape[-1]
    x_hat, std = _normalise(z, eps)
    w = _per_head(weight, z.ndim)
    d = (x_hat * w + _per_head(bias, z.ndim) - target) * w
    return (Fd * d - d.sum(-1, keepdim=True) - x_hat * (d * x_hat).sum(-1, keepdim=True)) / (Fd * std)


def _check(q, k, v, lr, params, state) -> None:
    B, H, T, Fd = q.shape
    b = params.eta.shape[0]
    want = {
        "k": (k, (B, H, T, Fd)), "v": (v, (B, H, T, Fd)), "lr": (lr, (B, H, T)),
        "W_init": (params.W_init, (H, Fd, Fd)), "b_init": (params.b_init, (H, Fd)),
        "ln_weight": (params.ln_weight, (H, Fd)), "ln_bias": (params.ln_bias, (H, Fd)), "eta": (params.eta, (b,)),
        "dW": (state.dW, (B, H, Fd, Fd)), "db": (state.db, (B, H, Fd)), "G": (state.G, (B, H, Fd, Fd)),
        "h": (state.h, (B, H, Fd)), "pos": (state.pos, (B,)),
    }  # fmt: skip
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


# --------------------------------------------------------------------------- the spec
def ttt_linear_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    lr_t: torch.Tensor,
    params: TTTParams,
    state: TTTState,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, TTTState]:
    """One token: ``q_t, k_t, v_t: [B, H, F]``, ``lr_t: [B, H]``."""
    dW, db, G, h, pos = state
    b = params.eta.shape[0]
    i = pos.long()  # [B]
    W = params.W_init + dW  # [B, H, F, F]: the mini-batch's initial weights
    bias = params.b_init + db  # [B, H, F]
    z = (k_t.unsqueeze(-2) @ W).squeeze(-2) + bias  # [B, H, F]
    g = ln_l2_grad(z, v_t - k_t, params.ln_weight, params.ln_bias, eps)  # [B, H, F]
    G = G + (lr_t.unsqueeze(-1) * k_t).unsqueeze(-1) * g.unsqueeze(-2)  # [B, H, F, F]
    h = h + lr_t.unsqueeze(-1) * g  # [B, H, F]
    eta = params.eta[i].view(-1, 1, 1)  # [B, 1, 1]
    W_t = W - eta.unsqueeze(-1) * G  # [B, H, F, F]
    out = (q_t.unsqueeze(-2) @ W_t).squeeze(-2) + bias - eta * h  # [B, H, F]
    out = q_t + ln_fwd(out, params.ln_weight, params.ln_bias, eps)
    # the mini-batch is complete after position b - 1: step to its final weights, clear the sums
    last = (i == b - 1).view(-1, 1, 1)  # [B, 1, 1]
    dW = torch.where(last.unsqueeze(-1), dW - eta.unsqueeze(-1) * G, dW)
    db = torch.where(last, db - eta * h, db)
    G = torch.where(last.unsqueeze(-1), torch.zeros_like(G), G)
    h = torch.where(last, torch.zeros_like(h), h)
    pos = torch.where(i == b - 1, 0, i + 1).to(pos.dtype)
    return out, TTTState(dW, db, G, h, pos)


def ttt_linear_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    params: TTTParams,
    initial_state: TTTState,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, TTTState]:
    """Reference: ``ttt_linear_step`` in a Python loop over time."""
    state = TTTState(*initial_state)
    _check(q, k, v, lr, params, state)
    outs = []
    for t in range(q.shape[2]):
        z_t, state = ttt_linear_step(q[:, :, t], k[:, :, t], v[:, :, t], lr[:, :, t], params, state, eps)
        outs.append(z_t)
    return torch.stack(outs, dim=2), state  # [B, H, T, F]


# --------------------------------------------------------------------------- fast form
def ttt_linear_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    params: TTTParams,
    initial_state: TTTState,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, TTTState]:
    """Mini-batch TTT in the dual form.

    1. Scatter the ``T`` tokens of sequence ``s`` to padded indices ``pos_s + t`` of a time axis of
       ``N * b`` slots (``N = ceil((T + b - 1) / b)``, enough for any ``pos``), so that every mini-batch
       boundary sits at a multiple of ``b`` for the whole batch.
    2. State-independent parts of all mini-batches at once: ``E[i, j] = eta_i lr_j`` (``j <= i``) and
       ``E * (q k^T)``.
    3. Loop over mini-batches: gradients ``g`` at the mini-batch's initial weights, the dual-form
       ``Z_bar`` and the next initial weights; the first mini-batch also continues the carried sums.
    4. Gather the real tokens back and apply ``z = q + LN(Z_bar)``.
    5. Final state per sequence: its last token sits in one of the last two mini-batches; if that token
       completed its mini-batch the state is the stepped weights with cleared sums, else the
       mini-batch's initial weights and its running sums.
    """
    state = TTTState(*initial_state)
    _check(q, k, v, lr, params, state)
    B, H, T, Fd = q.shape
    b = params.eta.shape[0]
    N = -(-(T + b - 1) // b)
    P = N * b

    # 1. spread into the padded time axis
    p = state.pos.long()  # [B]
    idx = p[:, None] + torch.arange(T, device=q.device)  # [B, T]

    def spread(x: torch.Tensor) -> torch.Tensor:
        index = idx.view(B, 1, T, *([1] * (x.ndim - 3))).expand_as(x)
        return x.new_zeros(B, H, P, *x.shape[3:]).scatter(2, index, x)

    qc, kc, vc = (spread(t).view(B, H, N, b, Fd) for t in (q, k, v))  # [B, H, N, b, F]
    lrc = spread(lr).view(B, H, N, b)  # [B, H, N, b], 0 at padded slots

    # 2. state-independent parts
    causal = torch.ones(b, b, dtype=torch.bool, device=q.device).tril()
    E = (params.eta[:, None] * lrc.unsqueeze(-2)).masked_fill(~causal, 0.0)  # [B, H, N, b, b]
    M = (qc @ kc.transpose(-1, -2)) * E + E  # [B, H, N, b, b]: multiplies g in Z_bar
    lr_k = lrc.unsqueeze(-1) * kc  # [B, H, N, b, F]
    target = vc - kc  # [B, H, N, b, F]
    eta_col = params.eta[:, None]  # [b, 1]
    eta_last = params.eta[-1]

    # 3. the mini-batches, in order
    dW, db = state.dW, state.db
    z_bars, kept = [], {}
    steps = zip(qc.unbind(2), kc.unbind(2), lr_k.unbind(2), lrc.unbind(2), target.unbind(2), M.unbind(2))
    for n, (q_n, k_n, lrk_n, lr_n, target_n, M_n) in enumerate(steps):
        W = params.W_init + dW  # [B, H, F, F]
        bias = (params.b_init + db).unsqueeze(-2)  # [B, H, 1, F]
        g = ln_l2_grad(k_n @ W + bias, target_n, params.ln_weight, params.ln_bias, eps)  # [B, H, b, F]
        z_bar = q_n @ W + bias - M_n @ g  # [B, H, b, F]
        G = lrk_n.transpose(-1, -2) @ g  # [B, H, F, F]
        h = (lr_n.unsqueeze(-2) @ g).squeeze(-2)  # [B, H, F]
        if n == 0:  # the carried partial mini-batch
            z_bar = z_bar - eta_col * (q_n @ state.G + state.h.unsqueeze(-2))
            G, h = G + state.G, h + state.h
        z_bars.append(z_bar)
        dW_next, db_next = dW - eta_last * G, db - eta_last * h
        if n >= N - 2:
            kept[n] = (dW, db, G, h, dW_next, db_next)
        dW, db = dW_next, db_next

    # 4. outputs of the real tokens
    z_bar = torch.stack(z_bars, dim=2).view(B, H, P, Fd)
    z_bar = z_bar.gather(2, idx.view(B, 1, T, 1).expand(B, H, T, Fd))  # [B, H, T, F]
    out = q + ln_fwd(z_bar, params.ln_weight, params.ln_bias, eps)

    # 5. final state
    in_last = ((p + T - 1) // b == N - 1).view(B, 1, 1)  # [B, 1, 1]: last token in mini-batch N-1
    done = ((p + T) % b == 0).view(B, 1, 1)  # it completed its mini-batch
    last, prev = kept[N - 1], kept.get(N - 2, kept[N - 1])

    def pick(j: int, mask: torch.Tensor) -> torch.Tensor:
        a, c = last[j], prev[j]
        return torch.where(mask if a.ndim == 3 else mask.unsqueeze(-1), a, c)

    dW_f = torch.where(done.unsqueeze(-1), pick(4, in_last), pick(0, in_last))
    db_f = torch.where(done, pick(5, in_last), pick(1, in_last))
    G_f = torch.where(done.unsqueeze(-1), torch.zeros_like(state.G), pick(2, in_last))
    h_f = torch.where(done, torch.zeros_like(state.h), pick(3, in_last))
    pos = ((p + T) % b).to(state.pos.dtype)
    return out, TTTState(dW_f, db_f, G_f, h_f, pos)
