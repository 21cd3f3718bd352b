"""A/B of this checkout against a git revision, in one process: has a change made the CPU slower?

Imports the ``jaxrnn`` package at ``--rev`` as ``jaxrnn_baseline`` (see
``_common.import_baseline``) next to the working tree's ``jaxrnn`` and times, interleaved round
by round (the order alternates), the same programs under both:

* the peer benchmark's four float32 cases (``benchmarks/peers.py``): the built-in LSTM and GRU
  at B×T×I×H = 32×128×256×256 and 1×1000×128×128, forward and fwd+bwd;
* the custom-cell benchmark's case (``benchmarks/custom_cells.py``): an LSTM written as a plain
  function (``jax.nn.sigmoid``, ``jnp.split``) under ``unroll``, at the same two shapes.

fwd+bwd is the gradient of ``mean(ys ** 2)`` with respect to the params and the inputs. Each
sample repeats a call for ``--min-time`` seconds; the reported ratio is the median over rounds
of new/base, the pair of samples taken next to each other (< 1: the checkout is faster).
Writes ``benchmarks/results/ab_<rev>_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, format_table, import_baseline, write_json  # noqa: E402

import jaxrnn  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAPES = ((32, 128, 256, 256), (1, 1000, 128, 128))


def user_lstm(p, h, x):
    """An LSTM as a user writes it: one step, the state a dict."""
    z = x @ p["w"] + h["h"] @ p["u"] + p["b"]
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * h["c"] + jax.nn.sigmoid(i) * jnp.tanh(g)
    hh = jax.nn.sigmoid(o) * jnp.tanh(c)
    return {"h": hh, "c": c}, hh


def programs(lib, B, T, I, H):
    """``{name: (fn, args)}`` for one package (the checkout's or the baseline's)."""
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    out = {}
    for kind in ("lstm", "gru"):
        cell = getattr(lib, kind)(H)
        params = cell.init(jax.random.key(0), I)
        out[kind] = (lambda p, xs, cell=cell: lib.unroll(cell, p, None, xs)[1], (params, xs))
    k = jax.random.split(jax.random.key(2), 3)
    p = {"w": 0.05 * jax.random.normal(k[0], (I, 4 * H)), "u": 0.05 * jax.random.normal(k[1], (H, 4 * H)),
         "b": 0.1 * jax.random.normal(k[2], (4 * H,))}
    h = {"h": jnp.zeros((B, H)), "c": jnp.zeros((B, H))}
    out["user-fn lstm"] = (lambda p, xs: lib.unroll(user_lstm, p, h, xs)[1], (p, xs))
    return out


def compiled(fn, args, mode):
    if mode == "fwd+bwd":
        fn = jax.grad(lambda p, xs, fn=fn: jnp.mean(fn(p, xs) ** 2), argnums=(0, 1))
    f = jax.jit(fn)
    run = lambda: jax.block_until_ready(f(*args))
    run(), run()
    return run


def sample(run, min_time):
    n, t0 = 0, time.perf_counter()
    while True:
        run()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return 1e3 * dt / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="the git revision to compare against (e.g. HEAD~3)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    ap.add_argument("--min-time", type=float, default=0.25, help="seconds per sample")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/ab_<rev>_<device>)")
    args = ap.parse_args(argv)
    baseline = import_baseline(args.rev)

    pairs = {}
    for B, T, I, H in SHAPES:
        new, old = programs(jaxrnn, B, T, I, H), programs(baseline, B, T, I, H)
        for name in new:
            for mode in ("fwd", "fwd+bwd"):
                pairs[(name, f"{B}×{T}×{I}×{H}", mode)] = (compiled(*new[name], mode), compiled(*old[name], mode))

    times = {key: ([], []) for key in pairs}
    for r in range(args.rounds):
        for key, runs in pairs.items():
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[key][i].append(sample(runs[i], args.min_time))

    records = []
    for (name, shape, mode), (tn, tb) in times.items():
        ratios = [a / b for a, b in zip(tn, tb)]
        q = statistics.quantiles(ratios, n=4)
        records.append(dict(impl=name, shape=shape, mode=mode, new_ms=statistics.median(tn),
                            base_ms=statistics.median(tb), ratio=statistics.median(ratios),
                            ratio_q1=q[0], ratio_q3=q[2]))
    info = device_info()
    stem = pathlib.Path(args.out) if args.out else RESULTS / f"ab_{args.rev}_{device_slug(info)}"
    config = dict(rev=args.rev, rounds=args.rounds, min_time=args.min_time, dtype="float32")
    write_json(stem.with_suffix(".json"), records, benchmark="ab_revision", env=info, config=config)
    table = format_table(records, ["impl", "shape", "mode", "new_ms", "base_ms", "ratio", "ratio_q1", "ratio_q3"],
                         {"new_ms": ".2f", "base_ms": ".2f", "ratio": ".3f", "ratio_q1": ".3f", "ratio_q3": ".3f"})
    head = (f"# This checkout against {args.rev}, float32, median ms of {args.rounds} interleaved rounds\n\n"
            f"`python benchmarks/ab_revision.py --rev {args.rev}`. Device: {info}.\n\n"
            "ratio = median over rounds of new/base (< 1: the checkout is faster); q1/q3 its quartiles.\n\n")
    stem.with_suffix(".md").write_text(head + "```\n" + table + "\n```\n")
    print(table)


if __name__ == "__main__":
    main()
