"""Newton (quasi-DEER) GRU against the sequential GRU: time, iterations, errors, over T.

For each sequence length ``T``, a ``jaxrnn.gru(H)`` with PyTorch's initialisation (and a
random initial state) runs over ``[T, B, I]`` standard-normal inputs two ways:

* ``sequential``: ``jaxrnn.unroll(..., time_major=True)``, the library's ``lax.scan``;
* ``newton``: :func:`jaxrnn.newton.newton_unroll` with ``Newton()`` (diagonal Jacobian
  in closed form, doubling scan, tol 1e-5) or the options given.

Both are timed forward (``(h, ys)``) and forward+backward (the gradient of
``sum(sin(ys)) + sum(h**2)`` with respect to params, initial state and inputs), each
compiled once (compile time reported apart), in interleaved rounds in one process
(medians). Reported: the Newton iteration count of the forward solve, its final
residual, the largest difference of ``ys`` from the sequential result, the largest
gradient difference relative to each gradient's largest entry, and the time ratios
``newton / sequential`` (above 1: Newton is slower).

Usage::

    python benchmarks/newton_scan.py --quick     # T = 256, 1024; a smoke run
    python benchmarks/newton_scan.py             # T = 256 ... 65536, writes results/newton_scan_<device>.{json,md}
    python benchmarks/newton_scan.py --T 4096 --B 16 --H 128 --jacobian dense
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn.newton import Newton, newton_unroll

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, format_table, print_table, write_json  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
COLUMNS = ["T", "iters", "residual", "max |dys|", "max grad err", "seq fwd ms", "newton fwd ms", "fwd ratio",
           "seq fwd+bwd ms", "newton fwd+bwd ms", "fwd+bwd ratio", "newton compile s"]
FORMATS = {"residual": ".1e", "max |dys|": ".1e", "max grad err": ".1e", "seq fwd ms": ".1f",
           "newton fwd ms": ".1f", "fwd ratio": ".1f", "seq fwd+bwd ms": ".1f", "newton fwd+bwd ms": ".1f",
           "fwd+bwd ratio": ".1f", "newton compile s": ".1f"}


def _loss(out):
    h, ys = out
    return jnp.sum(jnp.sin(ys)) + jnp.sum(h ** 2)


def make_fns(cell, options):
    def seq(params, h, xs):
        return jaxrnn.unroll(cell, params, h, xs, time_major=True)

    def newton(params, h, xs):
        return newton_unroll(cell, params, h, xs, options=options)

    def newton_info(params, h, xs):
        return newton_unroll(cell, params, h, xs, options=options, return_info=True)

    grad = lambda f: jax.grad(lambda p, h, x: _loss(f(p, h, x)), argnums=(0, 1, 2))
    return {"seq fwd": seq, "newton fwd": newton_info, "seq fwd+bwd": grad(seq), "newton fwd+bwd": grad(newton)}


def _time(fn, args, min_time):
    """Median-free single sample: mean time of as many calls as fit in ``min_time`` (at least one)."""
    n, t0 = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(*args))
        n += 1
        if time.perf_counter() - t0 >= min_time:
            return 1e3 * (time.perf_counter() - t0) / n


def run_one(T, B, I, H, options, rounds, min_time, seed=0):
    cell = jaxrnn.gru(H)
    params = cell.init(jax.random.key(seed), I)
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    h0 = jnp.asarray(0.5 * rng.standard_normal((B, H)), jnp.float32)
    args = (params, h0, xs)
    compiled, compile_s = {}, {}
    for name, fn in make_fns(cell, options).items():
        t0 = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
    (h_s, ys_s) = compiled["seq fwd"](*args)
    (h_n, ys_n), info = compiled["newton fwd"](*args)
    g_s, g_n = compiled["seq fwd+bwd"](*args), compiled["newton fwd+bwd"](*args)
    grad_err = max(float(jnp.abs(a - b).max() / jnp.abs(b).max())
                   for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(g_s)) if float(jnp.abs(b).max()) > 0)
    for fn in compiled.values():  # warm-up
        jax.block_until_ready(fn(*args))
    samples = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, fn in compiled.items():
            samples[name].append(_time(fn, args, min_time))
    ms = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "T": T, "B": B, "I": I, "H": H,
        "iters": int(info.iterations), "residual": float(info.residual),
        "max |dys|": float(jnp.abs(ys_n - ys_s).max()), "max |dh|": float(jnp.abs(h_n - h_s).max()),
        "max grad err": grad_err,
        **{f"{name} ms": v for name, v in ms.items()},
        "fwd ratio": ms["newton fwd"] / ms["seq fwd"],
        "fwd+bwd ratio": ms["newton fwd+bwd"] / ms["seq fwd+bwd"],
        "seq compile s": compile_s["seq fwd"] + compile_s["seq fwd+bwd"],
        "newton compile s": compile_s["newton fwd"] + compile_s["newton fwd+bwd"],
        "samples_ms": samples,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=None, help="sequence lengths (default 256 ... 65536)")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--I", type=int, default=32)
    p.add_argument("--H", type=int, default=64)
    p.add_argument("--jacobian", default="diagonal", choices=["diagonal", "dense"])
    p.add_argument("--scan", default="doubling", choices=["doubling", "associative"])
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 2 with --quick)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per sample (default 0.5; 0.05 quick)")
    p.add_argument("--quick", action="store_true", help="T = 256, 1024, few rounds: a smoke run")
    p.add_argument("--note", default="", help="a line for the table's header (e.g. machine load)")
    p.add_argument("--json", default=None,
                   help="default: benchmarks/results/newton_scan_<device>.json (+ .md); not written with --quick")
    a = p.parse_args(argv)
    Ts = a.T or ([256, 1024] if a.quick else [256, 1024, 4096, 16384, 65536])
    rounds = a.rounds or (2 if a.quick else 5)
    min_time = a.min_time if a.min_time is not None else (0.05 if a.quick else 0.5)
    options = Newton(tol=a.tol, jacobian=a.jacobian, scan=a.scan)
    env = device_info()
    print(f"{env['device']} ({env['backend']}, {env['cpu_count']} CPUs), jax {env['jax']}; "
          f"GRU B={a.B} I={a.I} H={a.H}, {options}", flush=True)
    records = []
    for T in Ts:
        t0 = time.perf_counter()
        rec = run_one(T, a.B, a.I, a.H, options, rounds, min_time)
        records.append(rec)
        print(f"T={T}: {time.perf_counter() - t0:.0f} s; iters {rec['iters']}, fwd x{rec['fwd ratio']:.1f}, "
              f"fwd+bwd x{rec['fwd+bwd ratio']:.1f}", flush=True)
    title = (f"Newton (quasi-DEER) GRU vs sequential GRU on {env['device']} ({env['backend']}), B={a.B} I={a.I} "
             f"H={a.H}, {options}; ratios = newton / sequential (medians of {rounds} interleaved rounds)")
    print_table(records, COLUMNS, FORMATS, title=title)
    faster = [r["T"] for r in records if r["fwd+bwd ratio"] < 1.0]
    crossover = (f"Newton is faster (fwd+bwd) from T={min(faster)}" if faster else
                 f"no crossover: Newton is slower at every T measured (fwd+bwd x{min(r['fwd+bwd ratio'] for r in records):.1f}"
                 f" to x{max(r['fwd+bwd ratio'] for r in records):.1f})")
    print(crossover)
    out = {"benchmark": "newton_scan", "env": env, "note": a.note, "crossover": crossover,
           "config": {"B": a.B, "I": a.I, "H": a.H, "Ts": Ts, "options": str(options), "rounds": rounds,
                      "min_time": min_time}, "records": records}
    if not a.quick or a.json:
        path = pathlib.Path(a.json) if a.json else RESULTS / f"newton_scan_{device_slug(env)}.json"
        write_json(path, records, **{k: v for k, v in out.items() if k != "records"})
        md = [f"# {title}", "", a.note, "", "```", format_table(records, COLUMNS, FORMATS), "```", "", crossover, ""]
        path.with_suffix(".md").write_text("\n".join(md))
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return out


if __name__ == "__main__":
    main()
