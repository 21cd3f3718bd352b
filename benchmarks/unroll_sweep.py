"""Which scan ``unroll`` factor to use by default, on this backend: measured.

For LSTM and GRU at a few shapes ``B x T x I x H``, times ``jaxrnn.unroll`` with
``unroll`` in 1, 2, 4, 8, 16, 32 (fwd, and fwd+bwd = gradient of ``mean(ys**2)``
with respect to the parameters and the inputs), float32, in interleaved rounds in one
process (medians), and prints for each unroll the geometric mean over cases of its time
relative to ``unroll=1``. The smallest unroll whose fwd+bwd geometric mean is within 3%
of the fastest is the measured choice for :func:`jaxrnn.default_unroll` on this
backend. With torch installed, ``torch.nn``
(cuDNN on a GPU, oneDNN on the CPU; ``peers.make_torch``) is timed in the same rounds
for scale.

Usage::

    python benchmarks/unroll_sweep.py                      # default shapes for the backend
    python benchmarks/unroll_sweep.py --shapes 16x256x256x256 --unrolls 1,8,16 --json r.json
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, print_table, write_json  # noqa: E402

from peers import DEFAULT_SHAPES, make_torch, parse_shapes  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


#: Geometric means within this fraction of the fastest count as a tie, which goes to the
#: smaller unroll (a smaller program, compiled faster): differences of a few percent
#: are within the spread of the rounds.
TIE = 0.03


def choose(summary, base):
    """``(fastest, choice)``: the unroll with the smallest fwd+bwd geometric mean, and the
    smallest unroll within :data:`TIE` of it."""
    key = f"fwd+bwd geomean vs unroll={base}"
    fastest = min(summary, key=lambda r: r[key])
    choice = min(r["unroll"] for r in summary if r[key] <= fastest[key] * (1 + TIE))
    return fastest["unroll"], choice


def _mean_calls(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def jaxrnn_fns(kind, params, xs, unroll):
    H = params.w_hh.shape[-1]
    cell = jaxrnn.lstm(H) if kind == "lstm" else jaxrnn.gru(H)

    def forward(p, x):
        return jaxrnn.unroll(cell, p, None, x, unroll=unroll)[1]

    fwd = jax.jit(forward)
    grad = jax.jit(jax.grad(lambda p, x: jnp.mean(jnp.square(forward(p, x))), argnums=(0, 1)))
    return {"fwd": lambda: jax.block_until_ready(fwd(params, xs)),
            "fwd+bwd": lambda: jax.block_until_ready(grad(params, xs))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None, help="comma-separated BxTxIxH; default per backend: "
                   + "; ".join(f"{k}: {v}" for k, v in DEFAULT_SHAPES.items()))
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--unrolls", default="1,2,4,8,16,32")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per sample")
    p.add_argument("--no-torch", action="store_true", help="do not time torch.nn for scale")
    p.add_argument("--json", default=None, help="default: benchmarks/results/unroll_sweep_<device>.json")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    info = device_info()
    backend = "gpu" if info["backend"] == "gpu" else "cpu"
    shapes = parse_shapes(args.shapes or DEFAULT_SHAPES[backend])
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unrolls = [int(u) for u in args.unrolls.split(",") if u.strip()]
    if not unrolls or any(u < 1 for u in unrolls):
        p.error(f"`--unrolls` must be positive integers; got {args.unrolls!r}")
    if any(c not in ("lstm", "gru") for c in cells):
        p.error(f"`--cells` must be a subset of lstm,gru; got {args.cells!r}")
    try:
        import torch
    except ImportError:
        torch = None
    use_torch = torch is not None and not args.no_torch
    if use_torch:
        info["torch"] = torch.__version__
        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"{info['device']} ({info['backend']}) jax {info['jax']} | unrolls {unrolls} | "
          f"default_unroll() now {jaxrnn.default_unroll()}", flush=True)

    records = []
    t_start = time.perf_counter()
    for B, T, I, H in shapes:
        for kind in cells:
            rng = np.random.default_rng(0)
            xs_np = rng.standard_normal((B, T, I)).astype(np.float32)
            if use_torch:
                torch.manual_seed(0)
                module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, batch_first=True)
                _, net_params = jaxrnn.from_torch(module)
                params = net_params.layers[0]
            else:
                cell = jaxrnn.lstm(H) if kind == "lstm" else jaxrnn.gru(H)
                params = cell.init(jax.random.key(0), I)
            xs = jnp.asarray(xs_np)
            impls = {f"unroll={u}": jaxrnn_fns(kind, params, xs, u) for u in unrolls}
            if use_torch:
                impls["torch"] = make_torch(kind, module, xs_np, False,
                                            "cuda" if torch.cuda.is_available() else "cpu").fns
            first = {}
            for name, fns in impls.items():
                for mode, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    first[(name, mode)] = time.perf_counter() - t0
                    fn()
            pairs = [(n, m) for n in impls for m in ("fwd", "fwd+bwd")]
            calls = {k: max(1, min(200, math.ceil(args.min_time / max(_mean_calls(impls[k[0]][k[1]], 1), 1e-6))))
                     for k in pairs}
            samples = {k: [] for k in pairs}
            for r in range(args.rounds):
                k0 = r % len(pairs)
                for key in pairs[k0:] + pairs[:k0]:
                    samples[key].append(1e3 * _mean_calls(impls[key[0]][key[1]], calls[key]))
            for (name, mode), s in samples.items():
                records.append({"cell": kind, "B": B, "T": T, "I": I, "H": H, "impl": name,
                                "unroll": int(name.split("=")[1]) if name.startswith("unroll=") else None,
                                "mode": mode, "median_ms": statistics.median(s), "samples_ms": s,
                                "first_call_s": first[(name, mode)]})
            line = "  ".join(f"{r['impl']} {r['median_ms']:.2f}" for r in records[-2 * len(impls):]
                             if r["mode"] == "fwd+bwd")
            print(f"{kind} {B}x{T}x{I}x{H} fwd+bwd ms: {line}", flush=True)

    # Geometric mean over cases of time(unroll=u) / time(unroll=1), per mode.
    base = {(r["cell"], r["B"], r["T"], r["I"], r["H"], r["mode"]): r["median_ms"]
            for r in records if r["unroll"] == min(unrolls)}
    summary = []
    for u in unrolls:
        row = {"unroll": u}
        for mode in ("fwd", "fwd+bwd"):
            rel = [r["median_ms"] / base[(r["cell"], r["B"], r["T"], r["I"], r["H"], mode)]
                   for r in records if r["unroll"] == u and r["mode"] == mode]
            row[f"{mode} geomean vs unroll={min(unrolls)}"] = math.exp(statistics.fmean(map(math.log, rel)))
        summary.append(row)
    best, choice = choose(summary, min(unrolls))

    table = []
    for r in records:
        if r["mode"] != "fwd+bwd":
            continue
        fwd = next(q for q in records if q["mode"] == "fwd" and q["impl"] == r["impl"] and q["cell"] == r["cell"]
                   and (q["B"], q["T"], q["I"], q["H"]) == (r["B"], r["T"], r["I"], r["H"]))
        table.append({"cell": r["cell"], "BxTxIxH": f"{r['B']}x{r['T']}x{r['I']}x{r['H']}", "impl": r["impl"],
                      "fwd ms": fwd["median_ms"], "fwd+bwd ms": r["median_ms"]})
    print_table(table, ["cell", "BxTxIxH", "impl", "fwd ms", "fwd+bwd ms"], {"fwd ms": ".3f", "fwd+bwd ms": ".3f"},
                title=f"{info['device']}: medians of {args.rounds} interleaved rounds")
    cols = ["unroll"] + [k for k in summary[0] if k != "unroll"]
    print_table(summary, cols, {c: ".3f" for c in cols[1:]}, title="geometric mean over cases")
    print(f"\nfastest fwd+bwd on {info['backend']}: unroll={best}; the smallest unroll within {TIE:.0%} of it: "
          f"unroll={choice} (default_unroll() is {jaxrnn.default_unroll()}); total {time.perf_counter() - t_start:.0f} s")
    if not args.no_save or args.json:
        path = args.json or RESULTS / f"unroll_sweep_{device_slug(info)}.json"
        write_json(path, records, benchmark="unroll_sweep", env=info,
                   config={"shapes": [list(s) for s in shapes], "cells": cells, "unrolls": unrolls,
                           "rounds": args.rounds, "min_time": args.min_time},
                   summary=summary, best_unroll=best, choice=choice, tie=TIE)
        print(f"wrote {path}")
    return choice


if __name__ == "__main__":
    main(sys.argv[1:])
