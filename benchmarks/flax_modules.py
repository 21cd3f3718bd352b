"""jaxrnn's flax modules: their overhead over the functional call, and their speed against flax's RNNs.

For every shape ``B x T x I x H`` and cell (LSTM, GRU) this times, in one process, the
gradient of ``mean(ys**2)`` with respect to the parameters and the inputs (fwd+bwd) of
one recurrent layer run over the whole sequence from a zero state, as programs
computing the same function from the same weights (six, counting one module twice):

* ``functional``: ``jax.jit(jax.grad(...))`` of ``jaxrnn.unroll(cell, params, None, xs)``;
* ``jaxrnn.nnx``: ``nnx.jit(nnx.grad(...))`` of a ``jaxrnn.nnx.RNN`` module, the way an
  NNX training step is written (the module goes through ``nnx.jit``'s graph mode, its
  default, at every call);
* ``jaxrnn.nnx(tree)``: the same with ``graph=False`` (flax's tree mode, which treats the
  module as a plain pytree instead of walking its graph at every call);
* ``jaxrnn.nnx(split)``: the same module split once (``nnx.split``) and merged inside a
  ``jax.jit(jax.grad(...))``, flax's advice for hot loops: the module without
  ``nnx.jit``'s per-call Python work;
* ``jaxrnn.linen``: ``jax.jit(jax.grad(...))`` of ``jaxrnn.linen.RNN(cell).apply``;
* ``flax.nnx``: ``nnx.jit(nnx.grad(...))`` of flax's ``nnx.RNN(nnx.OptimizedLSTMCell)``
  / ``nnx.RNN(nnx.GRUCell)``;
* ``flax.linen``: ``jax.jit(jax.grad(...))`` of ``nn.RNN(nn.OptimizedLSTMCell)`` /
  ``nn.RNN(nn.GRUCell)``.

The weights are one set, converted with :mod:`jaxrnn.interop.flax` (the GRU's ``b_hn`` is
zero, since flax's NNX GRUCell has none), and the gradients with respect to the inputs are
checked to agree (1e-4 relative) before timing. Bounds (issue 13): the modules' overhead
over the functional call at most 1.05x (``jaxrnn.nnx(tree)``, ``jaxrnn.nnx(split)``,
``jaxrnn.linen``), and each jaxrnn module at most 0.8x flax's own module of the same API.

``nnx.jit``'s graph mode costs a fixed time per call whatever the module computes (it walks
the module's graph in Python), so ``jaxrnn.nnx / functional`` is reported but not bounded:
the benchmark times that cost alone (``nnx.jit(nnx.grad(...))`` of a function that only sums
the params) for the jaxrnn module, for flax's module, and for a bare ``nnx.Module`` holding
the same four ``nnx.Param`` arrays as plain attributes, which shows what any module pays.

Timing: one compile and one warm-up call each, then ``--rounds`` interleaved rounds
(the order rotating), each program running back-to-back calls for ``--min-time`` seconds
per round; the median over rounds of the time per call is reported, with ratios.

On a loaded machine wall-clock times of multi-threaded code are mostly noise; ``--clock
cpu`` times the process's CPU time instead, meaningful only with XLA on one thread (as
``benchmarks/peers.py``)::

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/flax_modules.py --clock cpu

Usage::

    python benchmarks/flax_modules.py                 # issue 2's shapes, results into benchmarks/results/
    python benchmarks/flax_modules.py --quick         # a rough run
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_info, device_slug, format_table, write_json  # noqa: E402

import jaxrnn  # noqa: E402
import jaxrnn.linen  # noqa: E402
import jaxrnn.nnx  # noqa: E402
from jaxrnn.interop.flax import to_flax_linen, to_flax_nnx  # noqa: E402
from flax import nnx  # noqa: E402

#: Whether this flax has NNX's tree mode (``nnx.jit(..., graph=False)``; flax 0.11.2, Colab's,
#: has not): without it the ``jaxrnn.nnx(tree)`` program and its bound are left out.
TREE_MODE = "graph" in inspect.signature(nnx.jit).parameters
IMPLS = tuple(n for n in ("functional", "jaxrnn.nnx", "jaxrnn.nnx(tree)", "jaxrnn.nnx(split)", "jaxrnn.linen",
                          "flax.nnx", "flax.linen") if TREE_MODE or n != "jaxrnn.nnx(tree)")
DEFAULT_SHAPES = "32x128x256x256,1x1000x128x128"
#: (numerator, denominator, bound): the issue's acceptance ratios.
BOUNDS = tuple(b for b in (("jaxrnn.nnx(tree)", "functional", 1.05), ("jaxrnn.nnx(split)", "functional", 1.05),
                           ("jaxrnn.linen", "functional", 1.05),
                           ("jaxrnn.nnx", "flax.nnx", 0.8), ("jaxrnn.linen", "flax.linen", 0.8))
               if TREE_MODE or b[0] != "jaxrnn.nnx(tree)")
#: Ratios reported without a bound (see the module docstring).
REPORTED = (("jaxrnn.nnx", "functional"),)


def _loss(ys):
    return jnp.mean(ys ** 2)


def make_programs(kind: str, shape, seed: int = 0) -> dict:
    """``{name: (fn, args, dxs_of)}``: a compiled-on-first-call fwd+bwd program per implementation."""
    from flax import linen as nn
    from flax import nnx

    B, T, I, H = shape
    rng = np.random.default_rng(seed)
    cell = jaxrnn.lstm(H) if kind == "lstm" else jaxrnn.gru(H)
    bound = 1.0 / math.sqrt(H)
    params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-bound, bound, a.shape), jnp.float32),
                          cell.init(jax.random.key(seed), I))
    if kind == "gru":   # flax's NNX GRUCell has no b_hn
        params = params._replace(b_hh=params.b_hh.at[2 * H:].set(0.0))
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    programs = {}

    programs["functional"] = (
        jax.jit(jax.grad(lambda p, x: _loss(jaxrnn.unroll(cell, p, None, x)[1]), argnums=(0, 1))),
        (params, xs), lambda g: g[1])

    module = jaxrnn.nnx.RNN.from_params(cell, params)
    programs["jaxrnn.nnx"] = (
        nnx.jit(nnx.grad(lambda m, x: _loss(m(x)[1]), argnums=(0, 1))), (module, xs), lambda g: g[1])

    if TREE_MODE:
        programs["jaxrnn.nnx(tree)"] = (
            nnx.jit(nnx.grad(lambda m, x: _loss(m(x)[1]), argnums=(0, 1), graph=False), graph=False),
            (module, xs), lambda g: g[1])

    # The same module through nnx.split once and jax.jit (flax's advice for hot loops):
    # the module's own cost without nnx.jit's per-call graph traversal.
    graphdef, state = nnx.split(module)
    programs["jaxrnn.nnx(split)"] = (
        jax.jit(jax.grad(lambda st, x: _loss(nnx.merge(graphdef, st)(x)[1]), argnums=(0, 1))),
        (state, xs), lambda g: g[1])

    lin = jaxrnn.linen.RNN(cell)
    programs["jaxrnn.linen"] = (
        jax.jit(jax.grad(lambda v, x: _loss(lin.apply(v, x)[1]), argnums=(0, 1))),
        (jaxrnn.linen.variables(params), xs), lambda g: g[1])

    flax_nnx = nnx.RNN(to_flax_nnx(params))
    programs["flax.nnx"] = (
        nnx.jit(nnx.grad(lambda m, x: _loss(m(x)), argnums=(0, 1))), (flax_nnx, xs), lambda g: g[1])

    flax_cell = nn.OptimizedLSTMCell(H) if kind == "lstm" else nn.GRUCell(H)
    flax_lin = nn.RNN(flax_cell)
    programs["flax.linen"] = (
        jax.jit(jax.grad(lambda v, x: _loss(flax_lin.apply(v, x)), argnums=(0, 1))),
        ({"params": {"cell": to_flax_linen(params)}}, xs), lambda g: g[1])
    return programs


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def bare_module(arrays):
    """A bare ``nnx.Module`` holding ``arrays`` as ``nnx.Param`` attributes ``p0, p1, ...``."""
    from flax import nnx

    module = nnx.Module()
    for i, a in enumerate(arrays):
        setattr(module, f"p{i}", nnx.Param(a))
    return module


def nnx_jit_overhead_ms(modules: dict, clock, rounds: int = 7, calls: int = 200) -> dict:
    """Median time per call of ``nnx.jit(nnx.grad(f))`` on each module, where ``f`` only sums
    the params: what ``nnx.jit`` itself costs per call (its graph traversal in Python)."""
    from flax import nnx

    fn = nnx.jit(nnx.grad(lambda m: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(nnx.state(m, nnx.Param)))))
    out = {}
    for name, module in modules.items():
        jax.block_until_ready(fn(module))
        out[name] = statistics.median(1e3 * time_calls(fn, (module,), calls, clock) for _ in range(rounds))
    return out


def time_calls(fn, args, n: int, clock=time.perf_counter) -> float:
    """Mean seconds per call over ``n`` back-to-back calls, each waited on."""
    t0 = clock()
    for _ in range(n):
        jax.block_until_ready(fn(*args))
    return (clock() - t0) / n


def run_case(kind: str, shape, args, log) -> dict:
    programs = make_programs(kind, shape, args.seed)
    first, dxs = {}, {}
    for name, (fn, fargs, dxs_of) in programs.items():
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*fargs))
        first[name] = time.perf_counter() - t0
        dxs[name] = np.asarray(dxs_of(out))
        jax.block_until_ready(fn(*fargs))               # warm-up
    ref = dxs["functional"]
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    check = {name: float(np.max(np.abs(d - ref)) / scale) for name, d in dxs.items()}
    ok = all(v <= 1e-4 for v in check.values())
    log("  check dL/dxs vs functional (max rel diff): " + ", ".join(f"{k} {v:.1e}" for k, v in check.items())
        + ("  ok" if ok else "  MISMATCH"))
    calls, clock = {}, CLOCKS[args.clock]
    for name, (fn, fargs, _) in programs.items():
        t = time_calls(fn, fargs, 1, clock)
        calls[name] = max(1, min(args.max_calls, math.ceil(args.min_time / max(t, 1e-6))))
    names = list(programs)
    samples = {name: [] for name in names}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, fargs, _ = programs[name]
            samples[name].append(1e3 * time_calls(fn, fargs, calls[name], clock))
    med = {name: statistics.median(v) for name, v in samples.items()}
    jaxrnn_module = programs["jaxrnn.nnx"][1][0]
    overhead = nnx_jit_overhead_ms({"jaxrnn.nnx": jaxrnn_module, "flax.nnx": programs["flax.nnx"][1][0],
                                    "bare module": bare_module(jax.tree.leaves(jaxrnn_module.params))}, clock)
    log("  nnx.jit's own time per call (a grad of a sum of the params): "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in overhead.items()))
    ratios = {f"{a} / {b}": med[a] / med[b] for a, b in tuple((a, b) for a, b, _ in BOUNDS) + REPORTED}
    bounds = {f"{a} / {b}": {"ratio": med[a] / med[b], "bound": bound, "met": med[a] / med[b] <= bound}
              for a, b, bound in BOUNDS}
    return {
        "cell": kind, "shape": dict(zip("BTIH", shape)), "mode": "fwd+bwd",
        "median_ms": med, "samples_ms": samples, "calls_per_sample": calls, "first_call_s": first,
        "ratios": ratios, "bounds": bounds, "nnx_jit_overhead_ms": overhead, "check_dxs_max_rel_diff": check, "check_ok": ok,
    }


def markdown(report: dict) -> str:
    env, cfg = report["env"], report["config"]
    lines = [
        "# jaxrnn's flax modules: overhead and speed against flax",
        "",
        f"Device: {env['device']} ({env['cpu_count']} CPUs); jax {env['jax']}, flax {report['flax']}, "
        f"jaxrnn {env['jaxrnn']}. fwd+bwd = gradient of mean(ys**2) w.r.t. the parameters and the inputs, one "
        f"layer, zero initial state. {cfg['rounds']} interleaved rounds of >= {cfg['min_time']} s per sample; "
        f"median ms per call ({cfg['clock']} clock"
        + (f"; XLA_FLAGS={cfg['xla_flags']!r}" if cfg["xla_flags"] else "") + "). Bounds (issue 13): module / functional <= 1.05, "
        "jaxrnn module / flax's module of the same API <= 0.8.",
        "",
        "| cell | B×T×I×H | " + " | ".join(f"{n} ms" for n in IMPLS) + " | "
        + " | ".join(k for k in report["cases"][0]["ratios"]) + " |",
        "|---|---|" + "---|" * (len(IMPLS) + len(BOUNDS) + len(REPORTED)),
    ]
    for case in report["cases"]:
        s = case["shape"]
        cells = [f"{case['median_ms'][n]:.2f}" for n in IMPLS]
        ratios = [f"{b['ratio']:.3f}{'' if b['met'] else ' ✗'}" for b in case["bounds"].values()]
        ratios += [f"{case['ratios'][f'{a} / {b}']:.3f}" for a, b in REPORTED]
        lines.append(f"| {case['cell'].upper()} | {s['B']}×{s['T']}×{s['I']}×{s['H']} | " + " | ".join(cells + ratios)
                     + " |")
    lines += ["", "jaxrnn.nnx / functional (graph-mode nnx.jit) has no bound: it includes nnx.jit's own time per "
              "call, which any module pays (below, a bare nnx.Module with the same four nnx.Params)."]
    lines += ["", "nnx.jit's own time per call (nnx.jit(nnx.grad(sum of the params)) on the module, ms): "
              + "; ".join(f"{c['cell'].upper()} {c['shape']['B']}×{c['shape']['T']} "
                          + ", ".join(f"{k} {v:.2f}" for k, v in c["nnx_jit_overhead_ms"].items())
                          for c in report["cases"]) + "."]
    lines += ["", "✗: bound not met in this run. dL/dxs of every program agreed with the functional call to "
              + ", ".join(f"{max(c['check_dxs_max_rel_diff'].values()):.1e}" for c in report["cases"])
              + " (max relative difference, per case)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BxTxIxH")
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 9; 3 with --quick)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per sample (default 0.3; 0.05 with --quick)")
    p.add_argument("--max-calls", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time (default), or the process's CPU time: steadier on a loaded machine, "
                        "meaningful only when XLA runs on one thread (see the module docstring)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, help="default: benchmarks/results/flax_modules_<device>.json (not with --quick)")
    p.add_argument("--md", default=None, help="default: next to the JSON")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 9)
    args.min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.3)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if len(s) != 4:
            p.error(f"`--shapes` entries must look like BxTxIxH; got {s}")
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells or any(c not in ("lstm", "gru") for c in cells):
        p.error(f"`--cells` must be a subset of lstm,gru; got {args.cells!r}")
    import flax

    env = device_info()
    log = lambda msg: print(msg, flush=True)
    log(f"{env['device']} | jax {env['jax']} | flax {flax.__version__} | jaxrnn {env['jaxrnn']}")
    config = dict(shapes=[list(s) for s in shapes], cells=cells, rounds=args.rounds, min_time=args.min_time,
                  max_calls=args.max_calls, seed=args.seed, quick=args.quick, clock=args.clock,
                  xla_flags=os.environ.get("XLA_FLAGS", ""))
    report = {"benchmark": "flax_modules", "env": env, "flax": flax.__version__, "config": config, "cases": []}
    t_start = time.perf_counter()
    for shape in shapes:
        for kind in cells:
            log(f"{kind.upper()} {'x'.join(map(str, shape))}")
            case = run_case(kind, shape, args, log)
            rows = [{"impl": n, "median ms": case["median_ms"][n], "first call s": case["first_call_s"][n]}
                    for n in IMPLS]
            log(format_table(rows, ["impl", "median ms", "first call s"], {"median ms": ".2f", "first call s": ".2f"}))
            for key, b in case["bounds"].items():
                log(f"  {key}: {b['ratio']:.3f} (bound {b['bound']}) {'ok' if b['met'] else 'NOT MET'}")
            report["cases"].append(case)
    report["total_s"] = time.perf_counter() - t_start
    md = markdown(report)
    print()
    print(md)
    json_path = args.json or (None if args.quick else f"benchmarks/results/flax_modules_{device_slug(env)}.json")
    if json_path:
        cases = report.pop("cases")
        write_json(json_path, cases, **report)
        report["cases"] = cases
        md_path = args.md or os.path.splitext(json_path)[0] + ".md"
        with open(md_path, "w") as f:
            f.write(md)
        log(f"wrote {json_path} and {md_path}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
