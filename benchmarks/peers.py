"""jaxrnn against its peers: torch.nn.LSTM/GRU, flax nn.RNN and jax.experimental.rnn.

For every shape ``B x T x I x H`` (batch, time, input size, hidden size), cell (LSTM,
GRU) and precision (float32, half), this times in one process:

* ``fwd``: the outputs ``ys`` of one layer run over the whole sequence from a zero
  state;
* ``fwd+bwd``: the gradient of ``mean(ys**2)`` with respect to the parameters and the
  inputs (in half precision times a static loss scale ``B*T``, so that float16
  gradients do not underflow: see :func:`loss_scale`).

Implementations (all fed the same inputs, and the same weights, copied from the torch
module, so that their outputs can be checked against each other before timing):

* ``jaxrnn``: ``jaxrnn.unroll`` with ``jaxrnn.lstm/gru`` (fused custom VJP), jitted;
* ``jaxrnn_autodiff``: the same with ``custom_vjp=False`` (fwd+bwd only: its forward
  is the same program), to show what the custom VJP gains;
* ``torch``: ``torch.nn.LSTM/GRU`` (oneDNN on the CPU, cuDNN on a GPU), batch_first,
  ``fwd`` under ``torch.no_grad()``, ``fwd+bwd`` with ``torch.autograd.grad``;
* ``flax``: ``nn.RNN(nn.OptimizedLSTMCell(H))`` / ``nn.RNN(nn.GRUCell(H))``, jitted
  ``apply`` and ``jax.grad`` of it;
* ``jax_cudnn``: ``jax.experimental.rnn.lstm`` (LSTM on a GPU only).

Half precision means ``compute_dtype=jnp.bfloat16`` cells for jaxrnn (bfloat16 matrix
products, float32 state and gate arithmetic), ``dtype=jnp.bfloat16`` cells for flax
(everything but the parameters in bfloat16), a ``.half()`` module for torch on a GPU
and a ``.to(torch.bfloat16)`` module on the CPU, float16 for ``jax_cudnn`` (which has
no bfloat16). Implementations that fail to build or run are skipped with a note.

Timing: each function is called once (trace + compile, or oneDNN/cuDNN set-up; reported
as ``first call``) and once more to warm up, then ``--rounds`` rounds go round-robin over
all (implementation, mode) pairs, the order rotating each round; in each round a pair
runs enough back-to-back calls to last ``--min-time`` seconds and records the mean time
per call. The table reports the median over rounds and its ratio to torch and to flax
(``< 1`` is faster). Every call waits for its result (``block_until_ready`` /
``torch.cuda.synchronize``).

On a loaded machine wall-clock times of multi-threaded code are mostly noise (a thread
waiting at a barrier for a descheduled sibling). ``--clock cpu`` times the process's
CPU time instead; it is meaningful only when everything runs on one thread::

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/peers.py --torch-threads 1 --clock cpu --quick

Usage::

    python benchmarks/peers.py                                 # default shapes for the backend
    python benchmarks/peers.py --quick                         # a short, rough run
    python benchmarks/peers.py --shapes 32x128x256x256 --cells lstm --precisions float32 \\
        --json benchmarks/results/peers_cpu.json --md benchmarks/results/peers_cpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

IMPLS = ("jaxrnn", "jaxrnn_autodiff", "torch", "flax", "jax_cudnn")
MODES = ("fwd", "fwd+bwd")
DEFAULT_SHAPES = {
    "cpu": "32x128x256x256,1x1000x128x128",
    "gpu": "64x512x512x512,16x256x256x256,1x1000x128x128",
}


# --------------------------------------------------------------------------- set-up


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``"32x128x256x256,1x1000x128x128"`` -> ``[(B, T, I, H), ...]``."""
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"`--shapes` entries must look like BxTxIxH with positive ints; got {item!r}.")
        shapes.append(tuple(int(p) for p in parts))
    if not shapes:
        raise ValueError("`--shapes` is empty.")
    return shapes


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(torch_device: str) -> dict:
    """Device, versions and thread counts, for the JSON."""
    import flax
    import jaxlib
    import torch

    dev = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "jax_device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_device": torch_device,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "jaxrnn": getattr(jaxrnn, "__version__", "?"),
        },
        "platform": platform.platform(),
    }
    if torch_device == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["versions"]["cudnn"] = torch.backends.cudnn.version()
        info["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return info


@dataclasses.dataclass
class Impl:
    """One implementation of one case: a name, its dtype and a callable per mode."""

    name: str
    dtype: str
    fns: dict  # mode -> zero-argument callable that runs and waits for the result
    outputs: Optional[Callable[[], np.ndarray]] = None  # fwd ys as float32 numpy, for the check
    grads: Optional[Callable[[], tuple]] = None  # (dxs, dw_hh) as float32 numpy, for the check
    first_call_s: dict = dataclasses.field(default_factory=dict)


def _block(tree):
    return jax.block_until_ready(tree)


def loss_scale(B, T, half):
    """The static loss scale of a case: 1 in float32; ``B * T`` in half precision, so that
    the loss is ``mean(ys**2)`` summed over batch and time. Without it, float16 gradients
    of a mean over millions of outputs (``2 y / (B T H)``, ~1e-7) underflow to zero in
    torch's cuDNN backward, as mixed-precision training's loss scaling prevents."""
    return float(B * T) if half else 1.0


def _loss(ys, scale):
    return jnp.mean(jnp.square(ys.astype(jnp.float32))) * scale


def make_jaxrnn(kind, module, xs_np, half, unroll, custom_vjp, scale=1.0):
    """jaxrnn.unroll with the torch module's weights."""
    _, sparams = jaxrnn.from_torch(module)
    params = sparams.layers[0]
    H = module.hidden_size
    cd = jnp.bfloat16 if half else jnp.float32
    cell = jaxrnn.lstm(H, compute_dtype=cd) if kind == "lstm" else jaxrnn.gru(H, compute_dtype=cd)
    xs = jnp.asarray(xs_np)

    def forward(p, x):
        return jaxrnn.unroll(cell, p, None, x, unroll=unroll, custom_vjp=custom_vjp)[1]

    fwd = jax.jit(forward)
    grad = jax.jit(jax.grad(lambda p, x: _loss(forward(p, x), scale), argnums=(0, 1)))
    name = "jaxrnn" if custom_vjp else "jaxrnn_autodiff"
    fns = {"fwd+bwd": lambda: _block(grad(params, xs))}
    if custom_vjp:  # the autodiff variant's forward is the same program
        fns = {"fwd": lambda: _block(fwd(params, xs)), **fns}

    def grads():
        gp, gx = grad(params, xs)
        return np.asarray(gx, np.float32), np.asarray(gp.w_hh, np.float32)

    return Impl(name, "bfloat16" if half else "float32", fns,
                outputs=lambda: np.asarray(fwd(params, xs), np.float32), grads=grads)


def make_torch(kind, module, xs_np, half, device, scale=1.0):
    """torch.nn.LSTM/GRU itself (a copy, moved to the device and dtype)."""
    import copy

    import torch

    m = copy.deepcopy(module).to(device)
    dtype = torch.float32
    if half:
        dtype = torch.float16 if device == "cuda" else torch.bfloat16
        m = m.to(dtype)
    x = torch.from_numpy(xs_np).to(device=device, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    params = list(m.parameters())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            out, _ = m(x)
        sync()
        return out

    def fwdbwd():
        out, _ = m(xg)
        loss = out.float().square().mean() * scale
        g = torch.autograd.grad(loss, [xg] + params)
        sync()
        return g

    def grads():
        g = fwdbwd()
        w_hh = [gi for gi, (n, _) in zip(g[1:], m.named_parameters()) if n == "weight_hh_l0"][0]
        return g[0].float().cpu().numpy(), w_hh.float().cpu().numpy()

    return Impl("torch", str(dtype).replace("torch.", ""), {"fwd": fwd, "fwd+bwd": fwdbwd},
                outputs=lambda: fwd().float().cpu().numpy(), grads=grads)


def flax_variables(kind, module):
    """The torch module's weights as flax OptimizedLSTMCell / GRUCell variables."""
    sd = {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}
    H = module.hidden_size
    w_ih, w_hh, b_ih, b_hh = sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"]
    blk = lambda a, k: a[k * H:(k + 1) * H]
    cell = {}
    if kind == "lstm":
        for k, g in enumerate("ifgo"):
            cell["i" + g] = {"kernel": blk(w_ih, k).T}
            cell["h" + g] = {"kernel": blk(w_hh, k).T, "bias": blk(b_ih, k) + blk(b_hh, k)}
    else:  # torch gates r, z, n; b_hn stays inside r * (W_hn h + b_hn), as flax's `hn` bias
        cell["ir"] = {"kernel": blk(w_ih, 0).T, "bias": blk(b_ih, 0) + blk(b_hh, 0)}
        cell["iz"] = {"kernel": blk(w_ih, 1).T, "bias": blk(b_ih, 1) + blk(b_hh, 1)}
        cell["in"] = {"kernel": blk(w_ih, 2).T, "bias": blk(b_ih, 2)}
        cell["hr"] = {"kernel": blk(w_hh, 0).T}
        cell["hz"] = {"kernel": blk(w_hh, 1).T}
        cell["hn"] = {"kernel": blk(w_hh, 2).T, "bias": blk(b_hh, 2)}
    return {"params": {"cell": jax.tree.map(jnp.asarray, cell)}}


def make_flax(kind, module, xs_np, half, flax_unroll, scale=1.0):
    import flax.linen as nn

    H = module.hidden_size
    dtype = jnp.bfloat16 if half else None
    cell = nn.OptimizedLSTMCell(H, dtype=dtype) if kind == "lstm" else nn.GRUCell(H, dtype=dtype)
    model = nn.RNN(cell, unroll=flax_unroll)
    variables = flax_variables(kind, module)
    xs = jnp.asarray(xs_np)
    want = jax.tree.map(lambda a: a.shape, model.init(jax.random.key(0), xs[:1, :2]))
    got = jax.tree.map(lambda a: a.shape, variables)
    if want != got:
        raise ValueError(f"flax variables mismatch: expected {want}, built {got}")
    fwd = jax.jit(model.apply)
    grad = jax.jit(jax.grad(lambda v, x: _loss(model.apply(v, x), scale), argnums=(0, 1)))

    def grads():
        gv, gx = grad(variables, xs)
        c = gv["params"]["cell"]
        gates = "ifgo" if kind == "lstm" else "rzn"
        dw_hh = np.concatenate([np.asarray(c["h" + g]["kernel"], np.float32).T for g in gates], 0)
        return np.asarray(gx, np.float32), dw_hh

    return Impl("flax", "bfloat16" if half else "float32",
                {"fwd": lambda: _block(fwd(variables, xs)), "fwd+bwd": lambda: _block(grad(variables, xs))},
                outputs=lambda: np.asarray(fwd(variables, xs), np.float32), grads=grads)


def make_jax_cudnn(kind, module, xs_np, half, scale=1.0):
    from jax.experimental import rnn

    sd = {k: jnp.asarray(v.detach().cpu().float().numpy()) for k, v in module.state_dict().items()}
    I, H = module.input_size, module.hidden_size
    B, T = xs_np.shape[:2]
    dtype = jnp.float16 if half else jnp.float32
    # cuDNN's flat layout for one unidirectional layer: W_ih, W_hh, b_ih, b_hh.
    w = jnp.concatenate([sd[k].ravel() for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")])
    if w.size != rnn.get_num_params_in_lstm(I, H, 1, False):
        raise ValueError("unexpected cuDNN weight count")
    w = w.astype(dtype)
    xs = jnp.asarray(xs_np, dtype)
    lengths = jnp.full((B,), T, jnp.int32)
    zeros = jnp.zeros((1, B, H), dtype)

    def forward(w, x):
        return rnn.lstm(x, zeros, zeros, w, lengths, input_size=I, hidden_size=H, num_layers=1,
                        dropout=0.0, bidirectional=False)[0]

    fwd = jax.jit(forward)
    grad = jax.jit(jax.grad(lambda w, x: _loss(forward(w, x), scale), argnums=(0, 1)))

    def grads():
        gw, gx = grad(w, xs)
        dw_hh = np.asarray(gw[4 * H * I:4 * H * (I + H)], np.float32).reshape(4 * H, H)
        return np.asarray(gx, np.float32), dw_hh

    return Impl("jax_cudnn", "float16" if half else "float32",
                {"fwd": lambda: _block(fwd(w, xs)), "fwd+bwd": lambda: _block(grad(w, xs))},
                outputs=lambda: np.asarray(fwd(w, xs), np.float32), grads=grads)


# --------------------------------------------------------------------------- timing


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_calls(fn: Callable, n: int, clock: Callable = time.perf_counter) -> float:
    """Mean seconds per call over ``n`` back-to-back calls."""
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


def run_case(kind, shape, half, args, torch_device, log) -> dict:
    """Builds, checks and times every implementation for one case; returns its JSON record."""
    import torch

    B, T, I, H = shape
    torch.manual_seed(args.seed)
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, batch_first=True)
    xs_np = np.random.default_rng(args.seed).standard_normal((B, T, I)).astype(np.float32)
    gpu = jax.default_backend() == "gpu"
    scale = loss_scale(B, T, half)
    notes, impls = [], []

    builders = {
        "jaxrnn": lambda: make_jaxrnn(kind, module, xs_np, half, args.unroll, True, scale),
        "jaxrnn_autodiff": lambda: make_jaxrnn(kind, module, xs_np, half, args.unroll, False, scale),
        "torch": lambda: make_torch(kind, module, xs_np, half, torch_device, scale),
        "flax": lambda: make_flax(kind, module, xs_np, half, args.flax_unroll, scale),
        "jax_cudnn": lambda: make_jax_cudnn(kind, module, xs_np, half, scale),
    }
    for name in args.impls:
        if name == "jax_cudnn" and not gpu:
            notes.append(f"jax_cudnn skipped: jax.experimental.rnn needs cuDNN (backend is {jax.default_backend()}).")
            continue
        if name == "jax_cudnn" and kind != "lstm":
            notes.append("jax_cudnn skipped: jax.experimental.rnn has LSTM only.")
            continue
        try:
            impl = builders[name]()
            for mode, fn in impl.fns.items():  # first call: trace + compile or library set-up
                t0 = time.perf_counter()
                fn()
                impl.first_call_s[mode] = time.perf_counter() - t0
                fn()  # warm-up
            impls.append(impl)
        except Exception as e:  # a peer that cannot run this case is reported, not fatal
            msg = f"{name} skipped: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            notes.append(msg)
            log("  " + msg)

    # Correctness cross-check, against torch in float32 (computed here on the torch device).
    ref_impl = make_torch(kind, module, xs_np, False, torch_device, scale)
    ref_y = ref_impl.outputs()
    ref_dx, ref_dw = ref_impl.grads()
    f32_tol = 2e-2 if torch_device == "cuda" else 1e-4  # TF32 matmuls on GPUs (cuDNN and XLA)
    tol = 1.5e-1 if half else f32_tol
    checks = {}
    for impl in impls:
        if impl.name == "torch" and not half:
            continue
        rec = {}
        try:
            y = impl.outputs()
            rec["fwd_max_abs_diff"] = float(np.max(np.abs(y - ref_y)))
            if impl.grads is not None:
                dx, dw = impl.grads()
                rec["dx_max_rel_diff"] = float(np.max(np.abs(dx - ref_dx)) / max(np.max(np.abs(ref_dx)), 1e-30))
                rec["dw_hh_max_rel_diff"] = float(np.max(np.abs(dw - ref_dw)) / max(np.max(np.abs(ref_dw)), 1e-30))
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
        rec["tolerance"] = tol
        rec["ok"] = "error" not in rec and all(v <= tol for k, v in rec.items() if k.endswith("diff"))
        checks[impl.name] = rec
        parts = ", ".join(f"{k} {v:.2e}" for k, v in rec.items() if k.endswith("diff"))
        log(f"  check {impl.name} ({impl.dtype}) vs torch float32: {parts} "
            f"{'ok' if rec['ok'] else 'MISMATCH (tolerance %.0e)' % tol}")
    del ref_impl

    # Calibrate calls per sample, then interleaved rounds.
    pairs = [(impl, mode) for impl in impls for mode in impl.fns]
    calls, clock = {}, CLOCKS[args.clock]
    for impl, mode in pairs:
        t = time_calls(impl.fns[mode], 1, clock)
        calls[(impl.name, mode)] = max(1, min(args.max_calls, math.ceil(args.min_time / max(t, 1e-6))))
    samples = {(impl.name, mode): [] for impl, mode in pairs}
    for r in range(args.rounds):
        k = r % max(len(pairs), 1)
        for impl, mode in pairs[k:] + pairs[:k]:
            samples[(impl.name, mode)].append(time_calls(impl.fns[mode], calls[(impl.name, mode)], clock) * 1e3)

    med = {key: statistics.median(v) for key, v in samples.items() if v}
    results = []
    for impl in impls:
        for mode in MODES:
            key = (impl.name, mode)
            if key not in med:
                continue
            rec = {
                "impl": impl.name,
                "dtype": impl.dtype,
                "mode": mode,
                "median_ms": med[key],
                "min_ms": min(samples[key]),
                "max_ms": max(samples[key]),
                "samples_ms": samples[key],
                "calls_per_sample": calls[key],
                "first_call_s": impl.first_call_s.get(mode),
            }
            for peer in ("torch", "flax"):
                if (peer, mode) in med:
                    rec[f"ratio_vs_{peer}"] = med[key] / med[(peer, mode)]
            results.append(rec)
    return {
        "cell": kind,
        "shape": {"B": B, "T": T, "I": I, "H": H},
        "precision": "half" if half else "float32",
        "loss_scale": scale,
        "check": checks,
        "results": results,
        "notes": notes,
    }


# --------------------------------------------------------------------------- output


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    env = report["environment"]
    cfg = report["config"]
    lines = [
        "# jaxrnn vs peers",
        "",
        f"Device: {env.get('gpu_name') or env['cpu_model']} ({env['backend']}; torch on {env['torch_device']}, "
        f"{env['torch_num_threads']} torch threads, {env['cpu_count']} CPUs). "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "",
        f"jaxrnn unroll={cfg['unroll']}, flax unroll={cfg['flax_unroll']}; {cfg['rounds']} interleaved rounds of "
        f">= {cfg['min_time']} s per sample; median ms ({cfg['clock']} clock) per call. Ratios are time / peer's time (< 1: faster). "
        "fwd+bwd = gradient of mean(ys**2) w.r.t. the parameters and the inputs (half precision: "
        "times the loss scale B*T).",
        "",
        "| cell | B×T×I×H | precision | impl | dtype | fwd ms | fwd ×torch | fwd ×flax "
        "| fwd+bwd ms | f+b ×torch | f+b ×flax | first call s (fwd / f+b) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        s = case["shape"]
        shape = f"{s['B']}×{s['T']}×{s['I']}×{s['H']}"
        by = {}
        for r in case["results"]:
            by.setdefault(r["impl"], {})[r["mode"]] = r
        for name, modes in by.items():
            f, b = modes.get("fwd", {}), modes.get("fwd+bwd", {})
            dtype = (f or b).get("dtype", "")
            lines.append(
                f"| {case['cell'].upper()} | {shape} | {case['precision']} | {name} | {dtype} "
                f"| {_fmt(f.get('median_ms'), '.2f')} | {_fmt(f.get('ratio_vs_torch'), '.2f')} "
                f"| {_fmt(f.get('ratio_vs_flax'), '.2f')} | {_fmt(b.get('median_ms'), '.2f')} "
                f"| {_fmt(b.get('ratio_vs_torch'), '.2f')} | {_fmt(b.get('ratio_vs_flax'), '.2f')} "
                f"| {_fmt(f.get('first_call_s'), '.2f')} / {_fmt(b.get('first_call_s'), '.2f')} |"
            )
    lines += ["", "Checks against torch float32 (max abs diff of ys; max relative diff of dL/dxs and dL/dW_hh):", ""]
    for case in report["cases"]:
        s = case["shape"]
        head = f"- {case['cell'].upper()} {s['B']}×{s['T']}×{s['I']}×{s['H']} {case['precision']}: "
        parts = []
        for name, rec in case["check"].items():
            diffs = "/".join(f"{rec[k]:.1e}" for k in ("fwd_max_abs_diff", "dx_max_rel_diff", "dw_hh_max_rel_diff")
                             if k in rec)
            parts.append(f"{name} {diffs or rec.get('error', '?')} {'ok' if rec['ok'] else 'MISMATCH'}")
        lines.append(head + ("; ".join(parts) or "nothing to check"))
        for note in case["notes"]:
            lines.append(f"  - {note}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None,
                   help="comma-separated BxTxIxH; default: " + "; ".join(f"{k}: {v}" for k, v in DEFAULT_SHAPES.items()))
    p.add_argument("--cells", default="lstm,gru", help="comma-separated from lstm, gru")
    p.add_argument("--precisions", default="float32,half", help="comma-separated from float32, half")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated from " + ", ".join(IMPLS))
    p.add_argument("--unroll", type=int, default=None, help="jaxrnn scan unroll (default jaxrnn.default_unroll())")
    p.add_argument("--flax-unroll", type=int, default=1, help="flax nn.RNN unroll (default 1, flax's default)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10; 3 with --quick)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per sample (default 0.1; 0.03 with --quick)")
    p.add_argument("--max-calls", type=int, default=50, help="most calls per sample")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time (default), or the process's CPU time: steadier on a loaded machine, "
                        "meaningful only when everything runs on one thread (see the module docstring)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a short run: 3 rounds of 0.03 s samples")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    args = p.parse_args(argv)

    import torch

    backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
    shapes = parse_shapes(args.shapes or DEFAULT_SHAPES[backend])
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    precisions = [c.strip() for c in args.precisions.split(",") if c.strip()]
    args.impls = [c.strip() for c in args.impls.split(",") if c.strip()]
    for flag, values, allowed in (("--cells", cells, ("lstm", "gru")), ("--precisions", precisions, ("float32", "half")),
                                  ("--impls", args.impls, IMPLS)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"`{flag}` must be a comma-separated subset of {allowed}; got {bad or values}")
    args.unroll = jaxrnn.default_unroll() if args.unroll is None else args.unroll
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.min_time = args.min_time if args.min_time is not None else (0.03 if args.quick else 0.1)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"

    def log(msg):
        print(msg, flush=True)

    env = environment(torch_device)
    log(f"{env['jax_device']} | {env.get('gpu_name') or env['cpu_model']} | torch on {torch_device}, "
        f"{env['torch_num_threads']} threads | " + " ".join(f"{k}={v}" for k, v in env["versions"].items()))
    if backend == "gpu" and torch_device != "cuda":
        log("WARNING: jax runs on a GPU but torch has no CUDA: torch ratios compare a GPU with the CPU.")
    config = {k: getattr(args, k) for k in ("unroll", "flax_unroll", "rounds", "min_time", "max_calls", "seed", "quick", "clock")}
    config.update(shapes=["x".join(map(str, s)) for s in shapes], cells=cells, precisions=precisions, impls=args.impls)
    report = {"benchmark": "peers", "environment": env, "config": config, "cases": []}
    t_start = time.perf_counter()
    for shape in shapes:
        for kind in cells:
            for prec in precisions:
                log(f"{kind.upper()} {'x'.join(map(str, shape))} {prec}")
                case = run_case(kind, shape, prec == "half", args, torch_device, log)
                for r in case["results"]:
                    ratios = " ".join(f"x{k[9:]} {r[k]:.2f}" for k in ("ratio_vs_torch", "ratio_vs_flax") if k in r)
                    log(f"  {r['impl']:16s} {r['dtype']:9s} {r['mode']:8s} {r['median_ms']:9.3f} ms  {ratios}")
                report["cases"].append(case)
    report["total_s"] = time.perf_counter() - t_start
    md = markdown(report)
    print()
    print(md)
    log(f"total {report['total_s']:.0f} s")
    for path, text in ((args.json, json.dumps(report, indent=1)), (args.md, md)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + ("" if text.endswith("\n") else "\n"))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
