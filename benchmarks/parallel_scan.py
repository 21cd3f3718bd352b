"""Parallel in time vs sequential: ``linear_scan`` modes, minGRU and LRU against a GRU.

Two sections, each over a sweep of sequence lengths ``T`` at a fixed batch ``B`` and
width ``H``, forward and forward+backward (the gradient of ``mean(out**2)``):

* ``linear``: the diagonal recurrence ``h_t = a_t * h_{t-1} + b_t`` on ``[B, T, H]``:
  ``jaxrnn.linear.linear_scan`` in each mode (``sequential``, ``associative``,
  ``chunked``), a plain ``lax.scan`` of the same recurrence (autodiff, no masks: the
  baseline), and ``jnp.cumsum`` of ``b`` (one pass over the same tensor: the bandwidth
  floor of any scan);
* ``cells``: minGRU and LRU (``jaxrnn.zoo``, input size ``H``) over ``[B, T, H]`` with
  ``parallel_unroll`` in each mode, against ``jaxrnn.unroll(jaxrnn.gru(H), ...)``
  (sequential ``lax.scan``, the built-in fused GRU); gradients w.r.t. the parameters.

Each (section, T) compiles every method first (compile time recorded), then times them in
interleaved rounds (median of the rounds, ms). ``SECTIONS`` maps a section name to a
function ``(T, B, H) -> list of Case``; another section (e.g. Newton evaluation of a GRU)
is one more entry, and its ``Case.extra`` (iterations, errors) goes into the records.

Usage::

    python benchmarks/parallel_scan.py              # T = 256 .. 65,536, B=4, H=32 (CPU: ~10 min)
    python benchmarks/parallel_scan.py --quick      # T = 256, 4096; two rounds
    python benchmarks/parallel_scan.py --B 64 --H 256 --T 4096 --sections linear   # the issue's GPU shape

Writes ``benchmarks/results/parallel_scan_<device>.{json,md,png}`` (``--no-save``: nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn.linear import MODES, linear_scan
from jaxrnn.zoo.lru import lru
from jaxrnn.zoo.mingru import min_gru

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, print_table, save_figure, time_compile, write_json  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DEFAULT_T = (256, 1024, 4096, 16384, 65536)
QUICK_T = (256, 4096)


@dataclasses.dataclass
class Case:
    """One method at one ``T``: ``fwd(*args)`` and ``bwd(*args)`` (fwd+bwd) are plain
    functions (jitted here); ``baseline`` marks the sequential reference of its section."""

    method: str
    fwd: Callable
    bwd: Callable
    args: tuple
    baseline: bool = False
    parallel: bool = False
    extra: dict = dataclasses.field(default_factory=dict)


def _sq_mean(tree) -> jax.Array:
    return sum(jnp.mean(jnp.square(x)) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- sections


def linear_section(T: int, B: int, H: int) -> list:
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 0.999, (B, T, H)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((B, T, H)), jnp.float32)

    def lax_scan(a, b):  # the same recurrence, plainly: time-major lax.scan, autodiff
        def body(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        _, hs = jax.lax.scan(body, jnp.zeros((B, H), b.dtype), (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
        return jnp.swapaxes(hs, 0, 1)

    def grad_of(f):
        return lambda a, b: jax.grad(lambda a, b: _sq_mean(f(a, b)), argnums=(0, 1))(a, b)

    cases = [Case("lax.scan", lax_scan, grad_of(lax_scan), (a, b), baseline=True)]
    for mode in MODES:
        f = (lambda m: lambda a, b: linear_scan(a, b, mode=m)[1])(mode)
        cases.append(Case(f"linear_scan {mode}", f, grad_of(f), (a, b), parallel=mode != "sequential"))
    cumsum = lambda a, b: jnp.cumsum(b, axis=1)
    cases.append(Case("jnp.cumsum", cumsum, grad_of(cumsum), (a, b)))
    return cases


def cell_section(T: int, B: int, H: int) -> list:
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((B, T, H)), jnp.float32)
    gru = jaxrnn.gru(H)
    p_gru = gru.init(jax.random.key(0), H)
    gru_fwd = lambda p, xs: jaxrnn.unroll(gru, p, None, xs)[1]
    cases = [Case("gru unroll (sequential)", gru_fwd, jax.grad(lambda p, xs: _sq_mean(gru_fwd(p, xs))), (p_gru, xs),
                  baseline=True)]
    for name, cell in (("min_gru", min_gru(H)), ("lru", lru(H, H, r_min=0.9, r_max=0.999))):
        params = cell.init(jax.random.key(1), H)
        h0 = cell.initial_state((B,))
        for mode in MODES:
            fwd = (lambda c, m, h0: lambda p, xs: c.parallel_unroll(p, h0, jnp.swapaxes(xs, 0, 1), mode=m)[1])(
                cell, mode, h0)
            bwd = (lambda f: jax.grad(lambda p, xs: _sq_mean(f(p, xs))))(fwd)
            cases.append(Case(f"{name} {mode}", fwd, bwd, (params, xs), parallel=mode != "sequential"))
    return cases


#: name -> ``(T, B, H) -> [Case]``. Add a section here (e.g. "newton").
SECTIONS: dict = {"linear": linear_section, "cells": cell_section}


# --------------------------------------------------------------------------- timing


def _time_once(fn, args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return 1e3 * (time.perf_counter() - t0)


def run_section(name: str, T: int, B: int, H: int, rounds: int, budget_s: float) -> list:
    cases = SECTIONS[name](T, B, H)
    compiled = {}
    records = []
    for c in cases:
        for direction, fn in (("fwd", c.fwd), ("fwd+bwd", c.bwd)):
            compile_s, exe = time_compile(fn, *c.args)
            jax.block_until_ready(exe(*c.args))  # warm-up
            compiled[(c.method, direction)] = (exe, compile_s, c)
    samples = {k: [] for k in compiled}
    start = time.perf_counter()
    keys = list(compiled)
    for r in range(rounds):
        k0 = r % len(keys)
        for key in keys[k0:] + keys[:k0]:
            samples[key].append(_time_once(compiled[key][0], compiled[key][2].args))
        if r >= 1 and time.perf_counter() - start > budget_s:
            break
    for (method, direction), (exe, compile_s, c) in compiled.items():
        s = samples[(method, direction)]
        records.append({"section": name, "T": T, "B": B, "H": H, "method": method, "direction": direction,
                        "median_ms": statistics.median(s), "samples_ms": s, "compile_s": compile_s,
                        "baseline": c.baseline, "parallel": c.parallel, **c.extra})
    base = {d: r["median_ms"] for r in records for d in ("fwd", "fwd+bwd") if r["baseline"] and r["direction"] == d}
    for r in records:
        r["x_baseline"] = r["median_ms"] / base[r["direction"]]
    return records


def _family(method: str):
    """``("linear_scan", "chunked")`` for ``"linear_scan chunked"``; ``(method, None)`` otherwise."""
    head, _, mode = method.rpartition(" ")
    return (head, mode) if mode in MODES else (method, None)


#: A parallel mode counts as faster only below this fraction of the sequential time: on a
#: shared CPU, repeated runs of the same program differ by ~10%.
MARGIN = 0.9


def crossovers(records: list, section: str, direction: str) -> dict:
    """For each family with a sequential member (``linear_scan``, ``min_gru``, ``lru``), and
    against the section's baseline: the smallest ``T`` at which a parallel mode takes less
    than :data:`MARGIN` times the sequential time (None if never)."""
    rows = [r for r in records if r["section"] == section and r["direction"] == direction]
    Ts = sorted({r["T"] for r in rows})
    out = {}
    families = dict.fromkeys(_family(r["method"])[0] for r in rows if _family(r["method"])[1] == "sequential")
    for fam in families:
        out[f"{fam} parallel vs {fam} sequential"] = next((T for T in Ts if any(
            r["T"] == T and _family(r["method"]) == (fam, m) and r["median_ms"] < MARGIN * seq["median_ms"]
            for r in rows for m in ("associative", "chunked")
            for seq in rows if seq["T"] == T and _family(seq["method"]) == (fam, "sequential"))), None)
    base = next(r["method"] for r in rows if r["baseline"])
    out[f"any parallel vs {base}"] = next((T for T in Ts if any(
        r["T"] == T and r["parallel"] and r["x_baseline"] < MARGIN for r in rows)), None)
    return out


# --------------------------------------------------------------------------- output


def plot(records: list, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = sorted({r["section"] for r in records}, key=list(SECTIONS).index)
    fig, axes = plt.subplots(len(sections), 2, figsize=(11, 3.8 * len(sections)), squeeze=False)
    for i, section in enumerate(sections):
        for j, direction in enumerate(("fwd", "fwd+bwd")):
            ax = axes[i][j]
            rows = [r for r in records if r["section"] == section and r["direction"] == direction]
            for method in dict.fromkeys(r["method"] for r in rows):
                pts = sorted((r["T"], r["median_ms"]) for r in rows if r["method"] == method)
                style = "k--" if any(r["baseline"] for r in rows if r["method"] == method) else "o-"
                ax.plot(*zip(*pts), style, ms=3, label=method)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            B, H = rows[0]["B"], rows[0]["H"]
            ax.set_title(f"{section}, {direction} (B={B}, H={H})")
            ax.set_xlabel("T")
            ax.set_ylabel("median ms")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def markdown(records: list, info: dict, notes: list) -> str:
    lines = [f"# parallel_scan on {info['device']} ({info['backend']}, {info['cpu_count']} cores), jax {info['jax']}",
             "", *notes, ""]
    for section in dict.fromkeys(r["section"] for r in records):
        rows = [r for r in records if r["section"] == section]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for direction in ("fwd", "fwd+bwd"):
            header = ["T"] + methods
            lines += [f"## {section}, {direction}: median ms (x baseline)", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for T in sorted({r["T"] for r in rows}):
                cells = [str(T)]
                for m in methods:
                    r = next((q for q in rows if (q["T"], q["method"], q["direction"]) == (T, m, direction)), None)
                    cells.append("-" if r is None else f"{r['median_ms']:.3g} ({r['x_baseline']:.2f}x)")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=None, help=f"sequence lengths (default {DEFAULT_T})")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed rounds per (section, T)")
    p.add_argument("--quick", action="store_true", help=f"T = {QUICK_T}, 2 rounds")
    p.add_argument("--note", action="append", default=[], help="a line for the markdown report")
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="re-render the .md/.png (and summary) of a saved run")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.from_json:
        import json

        saved = json.loads(pathlib.Path(args.from_json).read_text())
        records, info, config = saved["records"], saved["env"], saved["config"]
        Ts, rounds, args.sections = config["T"], config["rounds"], config["sections"]
        args.B, args.H, args.json = config["B"], config["H"], args.from_json
        args.note = args.note or [n for n in saved.get("notes", [])[1:] if not n.startswith("- crossover")]
    else:
        Ts = args.T or (QUICK_T if args.quick else DEFAULT_T)
        rounds = 2 if args.quick else args.rounds
        info = device_info()
        print(f"{info['device']} ({info['backend']}, {info['cpu_count']} cores) jax {info['jax']} | B={args.B} "
              f"H={args.H} T={list(Ts)}", flush=True)
        records = []
        t0 = time.perf_counter()
        for section in args.sections:
            for T in Ts:
                recs = run_section(section, T, args.B, args.H, rounds, args.budget)
                records += recs
                print_table([r for r in recs], ["section", "T", "method", "direction", "median_ms", "x_baseline",
                                                 "compile_s"],
                            {"median_ms": ".3f", "x_baseline": ".2f", "compile_s": ".2f"},
                            title=f"{section} T={T} ({time.perf_counter() - t0:.0f} s so far)")
    notes = [f"Shapes: B={args.B}, H={args.H} (input size H for the cells), T = {', '.join(map(str, Ts))}; "
             f"float32; medians of up to {rounds} interleaved rounds.", *args.note]
    summary = {}
    for section in args.sections:
        for direction in ("fwd", "fwd+bwd"):
            for what, T_x in crossovers(records, section, direction).items():
                summary[f"{section} {direction}: {what}"] = T_x
                notes.append(f"- crossover, {section} {direction}, {what}: "
                             + (f"from T={T_x}" if T_x else f"none (no parallel mode under {MARGIN}x the sequential "
                                                               "time at any T measured)"))
    print("\n".join(notes))
    if not args.no_save or args.json:
        slug = device_slug(info)
        path = pathlib.Path(args.json) if args.json else RESULTS / f"parallel_scan_{slug}.json"
        write_json(path, records, benchmark="parallel_scan", env=info,
                   config={"T": list(Ts), "B": args.B, "H": args.H, "sections": args.sections, "rounds": rounds},
                   crossover=summary, notes=notes)
        path.with_suffix(".md").write_text(markdown(records, info, notes))
        plot(records, path.with_suffix(".png"))
        print(f"wrote {path} (.md, .png)")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
