"""seqmix next to the public implementations a CPU user would otherwise use, timed in one run.

Every peer sits in its own builder and is skipped with a reason when its package is missing or it
fails; seqmix mixers that are not registered yet are skipped the same way. All forward+backward
candidates are timed in interleaved rounds (``seqmix.bench.timing``), so the ratios hold on a busy
machine even when the absolute times do not. Shapes follow the issue's targets: B = 4, d_model = 256,
T = 4096, float32 (``--quick``: B = 2, d_model = 64, T = 128, for a smoke run).

Peers (each at d_model, with its package's own layer defaults where it has a layer):
- ``torch.nn.LSTM`` / ``torch.nn.GRU`` (hidden = d_model), also one token at a time for decoding;
- causal ``scaled_dot_product_attention`` with q/k/v/o projections, heads of 64 channels;
- mambapy ``MambaBlock`` (``pscan=True``: its parallel scan), and its ``step``;
- transformers ``MambaMixer`` and ``RwkvSelfAttention``: on CPU their pure-PyTorch paths run (no
  mamba_ssm / CUDA kernels), i.e. a sequential loop over time;
- xlstm's ``xlstm_large`` ``mLSTMLayer`` with mlstm_kernels' native chunkwise backends
  (``native_custbw``, ``native_autograd``; 4 heads) and ``sLSTMLayer`` with the ``vanilla`` backend;
- flash-linear-attention's naive reference functions (kernel only, with fla's layer-default head shapes;
  the package ``__init__`` needs triton, so each ``naive.py`` is loaded from its file).
The fla and SDPA peers get random q/k/v/gates, so they do less work than a seqmix mixer, which also
runs its projections: those ratios are conservative. The "kernel only" rows compare kernels like for
like: seqmix's chunkwise op on the very inputs fla's naive function gets, and every seqmix chunkwise op
at the xlstm layer's head shapes (4 heads, q/k D/8, v D/4) against that layer's kernel alone
(``chunkwise--native_custbw``), since the layer does several times less state work than seqmix's mixers
at their paper defaults. (mlstm_kernels 2.0.6's custbw backward is exact only for strongly negative input
gates, as at the layer's init; the timing does not depend on it.) fla 0.6's ``naive_chunk_rwkv6`` writes
in place into a tensor autograd saved; it runs under ``allow_mutation_on_saved_tensors``, which charges
it one copy of that tensor.

Ratios: "speed-up" = peer time / seqmix time (> 1: seqmix is faster); "growth" = time at the larger
size / time at the smaller; "memory" = peer peak bytes / seqmix peak bytes (``seqmix.bench.memory``).
A candidate whose warm-up call takes longer than ``--slow`` seconds (reference loops over T) is timed
once instead of ``--repeats`` times; the table marks such a figure with (n=1).

    python benchmarks/peers.py                      # target shapes (long: the naive peers loop over T)
    python benchmarks/peers.py --quick --json out.json
    python benchmarks/peers.py --mixers mamba,lstm  # only these seqmix mixers' rows
    python benchmarks/peers.py --filter mambapy     # only rows whose mixer or peer name contains "mambapy"
    python benchmarks/peers.py --exclude "transformers Mamba,recurrent"   # without the slowest loops
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmix import build_mixer
from seqmix.bench.memory import peak_memory
from seqmix.bench.timing import Timing, num_threads, reason, time_interleaved
from seqmix.mixers.registry import REGISTRY

CHUNKWISE = ["gla", "hgrn2", "retnet", "rwkv6", "deltanet", "mamba2", "linear_attention", "mlstm"]
FULL = dict(B=4, D=256, T=4096, T_long=16384, T_slstm=1024, contexts=(128, 8192))
QUICK = dict(B=2, D=64, T=128, T_long=512, T_slstm=64, contexts=(16, 256))


class Skip(Exception):
    """A candidate that cannot run here (package missing, mixer not registered); not an error."""


# --------------------------------------------------------------------------- candidates
def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _fwd_bwd(forward: Callable[[], Any], leaves: list[torch.Tensor],
             context: Callable[[], ContextManager] = contextlib.nullcontext) -> Callable[[], None]:
    """Forward, then backward of a dense random gradient; gradients reset before every call.

    ``forward`` may return a tensor or a tuple whose first entry is the output; ``context`` wraps each
    forward and backward.
    """
    with context():
        grad = torch.randn_like(_first(forward()).detach())

    def clear() -> None:
        for t in leaves:
            t.grad = None

    def run() -> None:
        clear()
        with context():
            _first(forward()).backward(grad)

    run.clear = clear  # type: ignore[attr-defined]  # a memory measurement starts from no gradients
    return run


def _leaves(module: nn.Module, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(module.parameters()) + list(tensors)


def _x(B: int, T: int, D: int) -> torch.Tensor:
    return torch.randn(B, T, D, requires_grad=True)  # [B, T, D]


def seqmix_fwd_bwd(name: str, B: int, T: int, D: int) -> Callable[[], None]:
    if name not in REGISTRY:
        raise Skip(f"seqmix has no mixer {name!r} yet")
    mixer, x = build_mixer(name, d_model=D), _x(B, T, D)
    return _fwd_bwd(lambda: mixer(x), _leaves(mixer, x))


_STEP_MIXERS: dict[tuple[str, int], nn.Module] = {}


def seqmix_step(name: str, context: int, D: int) -> Callable[[], Any]:
    """One step after ``context`` tokens; every context of a mixer shares one instance (only the state differs)."""
    if name not in REGISTRY:
        raise Skip(f"seqmix has no mixer {name!r} yet")
    if (name, D) not in _STEP_MIXERS:
        _STEP_MIXERS[(name, D)] = build_mixer(name, d_model=D).eval()
    mixer = _STEP_MIXERS[(name, D)]
    with torch.no_grad():
        _, state = mixer(torch.randn(1, context, D))  # prefill by the whole-sequence form
    x_t = torch.randn(1, D)  # [1, D]

    def run() -> None:
        with torch.no_grad():
            mixer.step(x_t, state)

    return run


class SDPALayer(nn.Module):
    """q/k/v/o projections around causal ``scaled_dot_product_attention``: attention as torch ships it."""

    def __init__(self, d_model: int, head_dim: int = 64) -> None:
        super().__init__()
        self.n_heads = max(1, d_model // head_dim)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model, bias=False), nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, K]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(B, T, D))


def sdpa(B: int, T: int, D: int) -> Callable[[], None]:
    layer, x = SDPALayer(D), _x(B, T, D)
    return _fwd_bwd(lambda: layer(x), _leaves(layer, x))


def torch_rnn(kind: str, B: int, T: int, D: int) -> Callable[[], None]:
    rnn, x = getattr(nn, kind)(D, D, batch_first=True), _x(B, T, D)
    return _fwd_bwd(lambda: rnn(x), _leaves(rnn, x))


def torch_lstm_step(context: int, D: int) -> Callable[[], Any]:
    rnn = nn.LSTM(D, D, batch_first=True)
    with torch.no_grad():
        _, state = rnn(torch.randn(1, context, D))
    x_t = torch.randn(1, 1, D)

    def run() -> None:
        with torch.no_grad():
            rnn(x_t, state)

    return run


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Skip(f"{module.split('.')[0]} is not installed ({reason(error)})") from None


def mambapy_block(D: int) -> nn.Module:
    mamba = _require("mambapy.mamba")
    return mamba.MambaBlock(mamba.MambaConfig(d_model=D, n_layers=1, d_state=16, expand_factor=2, d_conv=4,
                                              pscan=True))


def mambapy(B: int, T: int, D: int) -> Callable[[], None]:
    block, x = mambapy_block(D), _x(B, T, D)
    return _fwd_bwd(lambda: block(x), _leaves(block, x))


def mambapy_step(context: int, D: int) -> Callable[[], Any]:
    block = mambapy_block(D)
    d_inner = 2 * D
    cache = (torch.randn(1, d_inner, 16), torch.randn(1, d_inner, 3))  # (h [1, ED, N], conv inputs [1, ED, 3])

    def run() -> None:  # its state has a fixed size, so the context it stands for does not matter
        with torch.no_grad():
            block.step(torch.randn(1, D), cache)

    return run


def transformers_mamba(B: int, T: int, D: int) -> Callable[[], None]:
    mod = _require("transformers.models.mamba.modeling_mamba")
    cfg = mod.MambaConfig(hidden_size=D, state_size=16, expand=2, conv_kernel=4, num_hidden_layers=1,
                          use_mambapy=False)
    mixer, x = mod.MambaMixer(cfg, layer_idx=0), _x(B, T, D)
    return _fwd_bwd(lambda: mixer(x), _leaves(mixer, x))


def transformers_rwkv(B: int, T: int, D: int) -> Callable[[], None]:
    mod = _require("transformers.models.rwkv.modeling_rwkv")
    cfg = mod.RwkvConfig(hidden_size=D, attention_hidden_size=D, num_hidden_layers=1, context_length=T)
    layer, x = mod.RwkvSelfAttention(cfg, layer_id=0), _x(B, T, D)
    return _fwd_bwd(lambda: layer(x), _leaves(layer, x))


def xlstm_mlstm(backend: str, B: int, T: int, D: int) -> Callable[[], None]:
    model = _require("xlstm.xlstm_large.model")
    backends = _require("mlstm_kernels.torch.backend_module")
    cfg = model.mLSTMLayerConfig(
        embedding_dim=D, num_heads=_xlstm_heads(D)[0],
        mlstm_backend=backends.mLSTMBackendConfig(chunkwise_kernel=f"chunkwise--{backend}", mode="train",
                                                  autocast_kernel_dtype="float32", chunk_size=64))
    layer, x = model.mLSTMLayer(cfg), _x(B, T, D)
    return _fwd_bwd(lambda: layer(x), _leaves(layer, x))


def xlstm_slstm(B: int, T: int, D: int) -> Callable[[], None]:
    layer_mod = _require("xlstm.blocks.slstm.layer")
    layer = layer_mod.sLSTMLayer(layer_mod.sLSTMLayerConfig(embedding_dim=D, num_heads=4, backend="vanilla"))
    x = _x(B, T, D)
    return _fwd_bwd(lambda: layer(x), _leaves(layer, x))


def _fla_naive(path: str) -> Any:
    """fla's ``ops/<path>.py`` loaded from its file: the package __init__ needs triton, the file only torch."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        raise Skip("fla (flash-linear-attention) is not installed")
    file = Path(next(iter(spec.submodule_search_locations))) / "ops" / f"{path}.py"
    if not file.exists():
        raise Skip(f"this fla version has no ops/{path}.py")
    module_spec = importlib.util.spec_from_file_location(f"_fla_{path.replace('/', '_')}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _rand(*shape: int, fn: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    return fn(torch.randn(*shape)).detach().requires_grad_()


def _fla_heads(kernel: str, D: int) -> tuple[int, int, int]:
    """(heads, key width, value width) of fla's layer defaults at hidden size D, for the fla peer and
    for seqmix's kernel on the same inputs."""
    name = kernel.split()[0]
    if name == "hgrn2":  # HGRN2 runs on fla's GLA kernels: K = V = expand_ratio 128 (capped at D)
        return max(1, D // 128), min(128, D), min(128, D)
    shapes = {"gla": (4, D // 8, D // 4), "retnet": (8, D // 8, D // 4),  # retention runs on simple_gla
              "rwkv6": (4, D // 8, D // 4), "deltanet": (4, D // 4, D // 4), "linear_attention": (8, D // 8, D // 8)}
    return shapes[name]


def _retention_log_gamma(H: int) -> torch.Tensor:
    """RetNet's per-head decays ``log(1 - 2^(-5 - h))``: ``[H]``."""
    return torch.log(1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32)))


def fla(kernel: str, B: int, T: int, D: int) -> Callable[[], None]:
    """One fla naive function at its layer's default heads for hidden size D (see the table labels)."""
    logsig = lambda t: F.logsigmoid(t) / 16  # noqa: E731 - fla's GLA gate_logit_normalizer
    if kernel in ("gla", "hgrn2"):
        H, K, V = _fla_heads(kernel, D)
        fn = _fla_naive("gla/naive").naive_recurrent_gla
        q, k, v, g = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, V), _rand(B, T, H, K, fn=logsig)
        return _fwd_bwd(lambda: fn(q, k, v, g), [q, k, v, g])
    if kernel.startswith("retnet"):  # fla's retention runs on simple_gla
        H, K, V = _fla_heads(kernel, D)
        mod = _fla_naive("simple_gla/naive")
        decay = _retention_log_gamma(H)  # [H]
        q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, V)
        g = decay.expand(B, T, H).contiguous()
        fn = mod.naive_chunk_simple_gla if kernel.endswith("chunk") else mod.naive_recurrent_simple_gla
        return _fwd_bwd(lambda: fn(q, k, v, g), [q, k, v])
    if kernel.startswith("rwkv6"):  # [B, H, T, K] layout
        H, K, V = _fla_heads(kernel, D)
        q, k, v = _rand(B, H, T, K), _rand(B, H, T, K), _rand(B, H, T, V)
        w, u = _rand(B, H, T, K, fn=lambda t: -torch.exp(t - 2)), _rand(H, K)
        if kernel.endswith("chunk"):
            # fla 0.6's naive chunk writes in place into a tensor autograd saved; letting autograd keep
            # a copy on such writes makes it run (at the cost of that copy, charged to the peer)
            fn = _fla_naive("rwkv6/chunk_naive").naive_chunk_rwkv6
            return _fwd_bwd(lambda: fn(q, k, v, w, u), [q, k, v, w, u],
                            torch.autograd.graph.allow_mutation_on_saved_tensors)
        fn = _fla_naive("rwkv6/recurrent_naive").naive_recurrent_rwkv6
        return _fwd_bwd(lambda: fn(q, k, v, w, u), [q, k, v, w, u])
    if kernel.startswith("deltanet"):  # [B, H, T, K] layout, unit-norm keys
        H, K, _ = _fla_heads(kernel, D)
        mod = _fla_naive("delta_rule/naive")
        q, v = _rand(B, H, T, K), _rand(B, H, T, K)
        k, beta = _rand(B, H, T, K, fn=lambda t: F.normalize(t, dim=-1)), _rand(B, H, T, fn=torch.sigmoid)
        if kernel.endswith("chunk"):
            return _fwd_bwd(lambda: mod.delta_rule_chunkwise(q, k, v, beta), [q, k, v, beta])
        return _fwd_bwd(lambda: mod.delta_rule_recurrence(q, k, v, beta), [q, k, v, beta])
    if kernel.startswith("linear_attention"):  # [B, T, H, K], K = V
        H, K, _ = _fla_heads(kernel, D)
        mod = _fla_naive("linear_attn/naive")
        q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, K)
        fn = mod.naive_chunk_linear_attn if kernel.endswith("chunk") else mod.naive_recurrent_linear_attn
        return _fwd_bwd(lambda: fn(q, k, v), [q, k, v])
    raise Skip(f"fla has no naive reference for {kernel}")


def _xlstm_heads(D: int) -> tuple[int, int, int]:
    """(heads, key width, value width) of the xlstm peer's ``mLSTMLayer`` at hidden size D: the 4 heads
    ``xlstm_mlstm`` builds it with, and the layer's defaults ``qk_dim_factor`` 0.5, ``v_dim_factor`` 1."""
    return 4, D // 8, D // 4


def xlstm_kernel(B: int, T: int, D: int) -> Callable[[], None]:
    """mlstm_kernels' ``chunkwise--native_custbw`` alone on random inputs at the xlstm layer's shapes."""
    kernel = _require("mlstm_kernels.torch").get_mlstm_kernel("chunkwise--native_custbw")
    H, K, V = _xlstm_heads(D)
    q, k, v, i, f = _rand(B, H, T, K), _rand(B, H, T, K), _rand(B, H, T, V), _rand(B, H, T), _rand(B, H, T)
    return _fwd_bwd(lambda: kernel(q, k, v, i, f, chunk_size=64), [q, k, v, i, f])


KERNEL_OPS = {"gla": "gla_chunk", "hgrn2": "gla_chunk", "rwkv6": "gla_chunk with bonus",
              "retnet": "retention_chunk", "deltanet": "delta_chunk", "mamba2": "ssd_chunk",
              "linear_attention": "linear_attention_chunk", "mlstm": "mlstm_chunk"}


def seqmix_kernel(name: str, B: int, T: int, heads: tuple[int, int, int]) -> Callable[[], None]:
    """The chunkwise op behind mixer ``name`` (``KERNEL_OPS``) alone, on random inputs of ``heads`` =
    (H, K, V) in the [B, H, T, K] layout with a zero initial state: the like-for-like half of the
    "kernel only" rows, since the peers' kernels run no projections, feature maps or norms. The inputs
    are drawn as for the peer (``fla`` for gla, retnet, deltanet, linear_attention; the mLSTM's gates
    for mlstm)."""
    from seqmix.ops.delta import delta_chunk
    from seqmix.ops.gla import gla_chunk
    from seqmix.ops.linear_attention import linear_attention_chunk
    from seqmix.ops.mlstm import MLSTMCellState, mlstm_chunk
    from seqmix.ops.retention import retention_chunk
    from seqmix.ops.ssd import ssd_chunk

    if name not in KERNEL_OPS:
        raise Skip(f"no seqmix kernel row for {name}")
    H, K, V = heads
    q, k, v = _rand(B, H, T, K), _rand(B, H, T, K), _rand(B, H, T, V)
    S0 = torch.zeros(B, H, K, V)
    if name in ("gla", "hgrn2", "rwkv6"):
        g = _rand(B, H, T, K, fn=lambda t: F.logsigmoid(t) / 16)
        if name == "rwkv6":
            u = _rand(H, K)
            return _fwd_bwd(lambda: gla_chunk(q * K**-0.5, k, v, g, S0, bonus=u), [q, k, v, g, u])
        return _fwd_bwd(lambda: gla_chunk(q * K**-0.5, k, v, g, S0), [q, k, v, g])
    if name == "retnet":
        log_gamma = _retention_log_gamma(H)  # [H]
        return _fwd_bwd(lambda: retention_chunk(q * K**-0.5, k, v, log_gamma, None, S0, 64), [q, k, v])
    if name == "deltanet":
        k = _rand(B, H, T, K, fn=lambda t: F.normalize(t, dim=-1))
        beta = _rand(B, H, T, fn=torch.sigmoid)
        return _fwd_bwd(lambda: delta_chunk(q, k, v, beta, S0), [q, k, v, beta])
    if name == "linear_attention":
        state = (S0, torch.zeros(B, H, K))
        return _fwd_bwd(lambda: linear_attention_chunk(q * K**-0.5, k, v, state, normalize=False), [q, k, v])
    log_f = _rand(B, H, T)  # forget-gate pre-activations, as the xlstm peer draws them
    if name == "mamba2":
        return _fwd_bwd(lambda: ssd_chunk(q, k, v, F.logsigmoid(log_f), S0, 64), [q, k, v, log_f])
    i = _rand(B, H, T)  # mlstm: exponential input gate, sigmoid forget gate, as mlstm_kernels
    cell = MLSTMCellState(S0, torch.zeros(B, H, K), torch.zeros(B, H))
    return _fwd_bwd(lambda: mlstm_chunk(q * K**-0.5, k, v, i, F.logsigmoid(log_f), cell, 64), [q, k, v, i, log_f])


# --------------------------------------------------------------------------- comparisons
@dataclass
class Row:
    """One line of the table: side ``a`` (seqmix) against side ``b``."""

    section: str
    a_label: str
    b_label: str
    a: str  # candidate key
    b: str  # candidate key
    kind: str  # "speed-up" (b/a time), "growth" (a/b time, a at the larger size), "memory" (b/a peak bytes)
    target: Optional[float] = None  # speed-up/memory: ratio >= target; growth: ratio <= target
    target_text: str = ""
    a_value: Optional[float] = None  # seconds or bytes
    b_value: Optional[float] = None
    ratio: Optional[float] = None
    status: str = ""
    samples: tuple[int, int] = (0, 0)  # timed calls behind a_value and b_value (memory: 1 each)


def build_rows(s: dict[str, Any]) -> tuple[list[Row], dict[str, tuple[str, Callable[[], Callable]]]]:
    """The comparisons of the issue's targets at shapes ``s``, and the candidates they need."""
    B, D, T, TL, TS = s["B"], s["D"], s["T"], s["T_long"], s["T_slstm"]
    c0, c1 = s["contexts"]
    cands: dict[str, tuple[str, Callable[[], Callable]]] = {}

    def cand(key: str, build: Callable[[], Callable]) -> str:
        cands.setdefault(key, ("fwd_bwd" if "step" not in key else "step", build))
        return key

    def mine(name: str, t: int = T) -> str:
        return cand(f"seqmix {name} T={t}", lambda: seqmix_fwd_bwd(name, B, t, D))

    rows: list[Row] = []
    speed = f"fwd+bwd B={B} d={D} T={T}"
    k_sdpa = cand(f"SDPA T={T}", lambda: sdpa(B, T, D))
    k_mambapy = cand(f"mambapy T={T}", lambda: mambapy(B, T, D))
    rows.append(Row(speed, "mamba", "mambapy pscan", mine("mamba"), k_mambapy, "speed-up", 5.0, ">= 5x"))
    rows.append(Row("peak memory", "mamba", "mambapy pscan", mine("mamba"), k_mambapy, "memory", 3.0,
                    "<= 1/3 of its memory"))
    rows.append(Row(speed, "mamba", "transformers Mamba (torch path)", mine("mamba"),
                    cand(f"transformers Mamba T={T}", lambda: transformers_mamba(B, T, D)), "speed-up"))
    rows.append(Row(speed, "attention", "torch SDPA layer", mine("attention"), k_sdpa, "speed-up"))
    xl = {b: cand(f"xlstm mLSTM {b} T={T}", lambda b=b: xlstm_mlstm(b, B, T, D))
          for b in ("native_custbw", "native_autograd")}
    k_xlk = cand(f"mlstm_kernels custbw T={T}", lambda: xlstm_kernel(B, T, D))
    fla_refs = {"gla": ["gla"], "hgrn2": ["hgrn2"], "retnet": ["retnet chunk", "retnet recurrent"],
                "rwkv6": ["rwkv6 chunk", "rwkv6 recurrent"], "deltanet": ["deltanet chunk", "deltanet recurrent"],
                "linear_attention": ["linear_attention chunk", "linear_attention recurrent"]}
    for name in CHUNKWISE:
        rows.append(Row(speed, name, "torch SDPA layer (causal)", mine(name), k_sdpa, "speed-up", 1.0, "> 1x"))
        for b, key in xl.items():
            rows.append(Row(speed, name, f"xlstm mLSTM chunkwise--{b}", mine(name), key, "speed-up", 1 / 1.5,
                            ">= 0.67x (within 1.5x)"))
        for ref in fla_refs.get(name, []):
            rows.append(Row(speed, name, f"fla naive {ref}", mine(name),
                            cand(f"fla {ref} T={T}", lambda ref=ref: fla(ref, B, T, D)), "speed-up", 2.0, ">= 2x"))
        if name in ("gla", "retnet", "deltanet", "linear_attention"):
            ref = fla_refs[name][0]
            rows.append(Row(f"kernel only, fla's inputs, B={B} d={D} T={T}", f"{name} op", f"fla naive {ref}",
                            cand(f"seqmix op {name} T={T}",
                                 lambda name=name: seqmix_kernel(name, B, T, _fla_heads(name, D))),
                            cand(f"fla {ref} T={T}", lambda ref=ref: fla(ref, B, T, D)), "speed-up", 2.0, ">= 2x"))
        if name != "hgrn2":  # hgrn2 runs gla's op: that row is gla's
            H, K, V = _xlstm_heads(D)
            rows.append(Row(f"kernel only, xlstm's shapes (H={H} K={K} V={V}), B={B} T={T}", f"{name} op",
                            "mlstm_kernels chunkwise--native_custbw",
                            cand(f"seqmix op {name} xlstm shapes T={T}",
                                 lambda name=name: seqmix_kernel(name, B, T, _xlstm_heads(D))),
                            k_xlk, "speed-up", 1 / 1.5, ">= 0.67x (within 1.5x)"))
        rows.append(Row(f"growth T={T} -> {TL}", name, f"itself at T={T}", mine(name, TL), mine(name), "growth",
                        TL / T * 1.25, f"<= {TL / T * 1.25:g} (linear: {TL / T:g})"))
    rows.append(Row(speed, "lstm", "torch.nn.LSTM", mine("lstm"), cand(f"nn.LSTM T={T}",
                    lambda: torch_rnn("LSTM", B, T, D)), "speed-up", 1 / 1.2, ">= 0.83x (within 1.2x)"))
    rows.append(Row(speed, "gru", "torch.nn.GRU", mine("gru"), cand(f"nn.GRU T={T}",
                    lambda: torch_rnn("GRU", B, T, D)), "speed-up", 1.0, ">= 1x (no slower)"))
    rows.append(Row(f"fwd+bwd B={B} d={D} T={TS}", "slstm", "xlstm sLSTM vanilla", mine("slstm", TS),
                    cand(f"xlstm sLSTM T={TS}", lambda: xlstm_slstm(B, TS, D)), "speed-up", 2.0, ">= 2x"))
    rows.append(Row(speed, "rwkv4", "transformers RWKV (torch path)", mine("rwkv4"),
                    cand(f"transformers RWKV T={T}", lambda: transformers_rwkv(B, T, D)), "speed-up", 10.0, ">= 10x"))

    # decoding: one token, batch 1
    def step(name: str, c: int) -> str:
        return cand(f"seqmix step {name} ctx={c}", lambda: seqmix_step(name, c, D))

    decode = f"step latency, batch 1, d={D}"
    for name in REGISTRY:
        try:
            m = build_mixer(name, d_model=D)
            bounded = m.causal and m.state_size(c0) == m.state_size(c1)
        except Exception:  # noqa: BLE001 - a broken mixer shows up in its fwd+bwd rows
            bounded = False
        if bounded:
            rows.append(Row(decode, name, f"itself at ctx={c0}", step(name, c1), step(name, c0), "growth", 1.2,
                            f"<= 1.2 (ctx {c1} vs {c0})"))
    rows.append(Row(decode, "mamba", "mambapy step", step("mamba", c1),
                    cand(f"mambapy step ctx={c1}", lambda: mambapy_step(c1, D)), "speed-up", 1.0, ">= 1x"))
    rows.append(Row(decode, "lstm", "nn.LSTM one token", step("lstm", c1),
                    cand(f"nn.LSTM step ctx={c1}", lambda: torch_lstm_step(c1, D)), "speed-up", 1 / 1.2,
                    ">= 0.83x (within 1.2x)"))
    return rows, cands


def measure(rows: list[Row], cands: dict[str, tuple[str, Callable[[], Callable]]], repeats: int, steps: int,
            log: Callable[[str], None], slow: Optional[float] = None) -> dict[str, Any]:
    """Build the candidates the rows need, time them (interleaved), and fill in the rows."""
    needed = list(dict.fromkeys(k for r in rows for k in (r.a, r.b)))
    built: dict[str, Callable] = {}
    failed: dict[str, str] = {}
    for key in needed:
        try:
            built[key] = cands[key][1]()
        except Skip as why:
            failed[key] = f"skip: {why}"
        except Exception as error:  # noqa: BLE001
            failed[key] = f"error: {reason(error)}"
        log(f"built {key}: {failed.get(key, 'ok')}")
    timed: dict[str, Any] = {}
    for kind, n, warm in (("fwd_bwd", repeats, 1), ("step", steps, 5)):
        group = {k: fn for k, fn in built.items() if cands[k][0] == kind}
        log(f"timing {len(group)} {kind} candidates, {n} interleaved rounds")
        per_call = (lambda i, key: log(f"  call {i + 1}: {key}")) if kind == "fwd_bwd" else None
        # steps take microseconds: a shuffled order per round spreads cache effects of the neighbours
        timed.update(time_interleaved(group, repeats=n, warmup=warm, on_round=per_call, slow_seconds=slow,
                                      shuffle=kind == "step"))
    memory: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in rows if r.kind == "memory" for k in (r.a, r.b)):
        if key in built:
            try:
                getattr(built[key], "clear", lambda: None)()
                memory[key] = peak_memory(built[key])
            except Exception as error:  # noqa: BLE001
                memory[key] = error
    for key, result in timed.items():
        if isinstance(result, BaseException):
            failed[key] = f"error: {reason(result)}"

    for r in rows:
        values = memory if r.kind == "memory" else timed
        a, b = values.get(r.a), values.get(r.b)
        why = failed.get(r.a) or failed.get(r.b)
        if why or not isinstance(a, (Timing, int)) or not isinstance(b, (Timing, int)):
            r.status = why or "error: not measured"
            continue
        r.a_value = float(a.median if isinstance(a, Timing) else a)
        r.b_value = float(b.median if isinstance(b, Timing) else b)
        r.samples = tuple(len(v.samples) if isinstance(v, Timing) else 1 for v in (a, b))  # type: ignore[assignment]
        r.ratio = r.a_value / r.b_value if r.kind == "growth" else r.b_value / max(r.a_value, 1e-30)
        if r.target is None:
            r.status = "n/a"
        else:
            met = r.ratio <= r.target if r.kind == "growth" else r.ratio >= r.target
            r.status = "met" if met else "NOT met"
    return {"timings": {k: (v.as_dict() if isinstance(v, Timing) else reason(v)) for k, v in timed.items()},
            "peak_bytes": {k: (v if isinstance(v, int) else reason(v)) for k, v in memory.items()},
            "unavailable": failed}


def _fmt(value: Optional[float], kind: str, section: str, samples: int = 0, repeats: int = 0) -> str:
    if value is None:
        return "-"
    if kind == "memory":
        return f"{value / 2**20:,.1f} MiB"
    text = f"{value * 1e6:,.0f} us" if section.startswith("step") else f"{value * 1e3:,.1f} ms"
    return text + (f" (n={samples})" if 0 < samples < repeats else "")  # fewer samples: a slow candidate


def print_table(rows: list[Row], repeats: int) -> None:
    header = ["section", "seqmix", "peer / baseline", "seqmix", "peer", "ratio", "target", "status"]
    lines = [[r.section, r.a_label, r.b_label, _fmt(r.a_value, r.kind, r.section, r.samples[0], repeats),
              _fmt(r.b_value, r.kind, r.section, r.samples[1], repeats),
              "-" if r.ratio is None else f"{r.ratio:.2f} {r.kind}",
              r.target_text or "-", r.status if len(r.status) <= 110 else r.status[:107] + "..."] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths) + " | {}"
    print(fmt.format(*header))
    print("-|-".join("-" * w for w in widths) + "-|-------")
    for line in lines:
        print(fmt.format(*line))


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run of every row")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved fwd+bwd rounds (median reported)")
    parser.add_argument("--steps", type=int, default=200, help="interleaved single-step rounds (median)")
    parser.add_argument("--slow", type=float, default=60.0,
                        help="a candidate whose warm-up call takes longer than this many seconds is timed once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--mixers", default=None, help="comma-separated seqmix mixers: keep only their rows")
    parser.add_argument("--filter", default=None, help="keep rows whose seqmix or peer label contains this")
    parser.add_argument("--exclude", default=None,
                        help="comma-separated: drop rows whose seqmix or peer label contains any of these")
    parser.add_argument("--json", default=None, help="also write rows and raw timings to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="log each phase to stderr")
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else FULL
    torch.manual_seed(0)
    rows, cands = build_rows(shapes)
    if args.mixers:
        keep = {m.strip() for m in args.mixers.split(",")}
        rows = [r for r in rows if r.a_label in keep]
    if args.filter:
        rows = [r for r in rows if args.filter in r.a_label or args.filter in r.b_label]
    if args.exclude:
        drop = [d.strip() for d in args.exclude.split(",") if d.strip()]
        rows = [r for r in rows if not any(d in r.a_label or d in r.b_label for d in drop)]
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.verbose else (lambda msg: None)
    with num_threads(args.threads) as threads:
        print(f"torch {torch.__version__}, {threads} threads; float32; every candidate timed in "
              f"{args.repeats} interleaved rounds (step: {args.steps}); ratios are the figures to read")
        raw = measure(rows, cands, args.repeats, args.steps, log, args.slow)
    print_table(rows, args.repeats)
    result = {"shapes": {k: list(v) if isinstance(v, tuple) else v for k, v in shapes.items()},
              "torch": torch.__version__, "threads": threads, "repeats": args.repeats, "slow_s": args.slow,
              "rows": [asdict(r) for r in rows], **raw}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
