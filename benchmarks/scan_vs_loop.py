"""Why an RNN in JAX should run as ``lax.scan`` under ``jit``: measured.

For the vanilla (tanh), GRU and LSTM cells and a sweep of sequence lengths ``T``,
four ways to run the same cell over a sequence ``xs`` of shape ``[B, T, I]``:

* ``python_loop``: a Python ``for`` loop calling ``cell.step`` eagerly, op by op::

      for t in range(T):
          h, y = cell.step(params, h, xs[:, t])

  Every step dispatches a dozen small operations from Python. Nothing is compiled up
  front, so its ``compile_s`` is the *first-call overhead* (first call minus a steady
  call: per-op compilation and caches warming up).
* ``jit_unrolled``: ``jax.jit`` of that same Python loop. The loop is traced and
  unrolled into a program ``T`` steps long: fast to run, but compile time (and program
  size) grows with ``T``.
* ``scan``: ``jaxrnn.unroll`` under ``jit`` with ``unroll=1``: one ``lax.scan`` whose
  body is compiled once, whatever ``T``; the input projection is one matrix product
  outside the loop, and the gradient is a fused backward scan.
* ``scan_unroll<k>``: the same with ``unroll=k`` (``k`` steps per loop iteration:
  fewer loop round trips, a ``k``-times larger body).

For each it measures the trace+compile time (``jax.jit(f).lower(...).compile()`` of a
freshly built function, so no trace cache hides it; for the scans the median of
``--compile-repeats`` such compiles, as one compile of a scan varies by 2-3x on a GPU;
on a GPU the first compile of a new matrix-product shape also autotunes it, and later
compiles in the process reuse that), the steady-state forward run time
(after warm-up, waited on with ``block_until_ready``, median of repeats) and the same
two numbers for the gradient of ``mean(ys**2)`` with respect to the parameters
(``grad_compile_s``, ``grad_run_ms``).

Usage::

    python benchmarks/scan_vs_loop.py            # full sweep (a few minutes on a CPU)
    python benchmarks/scan_vs_loop.py --quick    # T = 16, 64, 256, fewer repeats (~1 min)
    python benchmarks/scan_vs_loop.py --cells lstm --T 32 128 --json r.json --plot r.png

By default it prints a table and the checks of the story, and writes
``benchmarks/results/scan_vs_loop_<device>.json`` and ``.png`` (``--no-save`` writes
nothing unless ``--json``/``--plot`` are given).
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

import jaxrnn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, print_table, save_figure, time_compile, time_fn, write_json  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CELLS = {"rnn": lambda H: jaxrnn.rnn(H), "gru": lambda H: jaxrnn.gru(H), "lstm": lambda H: jaxrnn.lstm(H)}
BASE_METHODS = ("python_loop", "jit_unrolled", "scan")
DEFAULT_T = (16, 64, 256, 1024)
QUICK_T = (16, 64, 256)


# --------------------------------------------------------------------------- the four ways


def loop_forward(cell: jaxrnn.Cell, T: int) -> Callable:
    """``(params, xs) -> (h, ys)`` as a plain Python loop over ``cell.step``."""

    def forward(params, xs):
        h, ys = None, []
        for t in range(T):
            h, y = cell.step(params, h, xs[:, t])
            ys.append(y)
        return h, jnp.stack(ys, axis=1)

    return forward


def scan_forward(cell: jaxrnn.Cell, k: int) -> Callable:
    """``(params, xs) -> (h, ys)`` with ``jaxrnn.unroll(..., unroll=k)``."""

    def forward(params, xs):
        return jaxrnn.unroll(cell, params, None, xs, unroll=k)

    return forward


def loss_grad(forward: Callable) -> Callable:
    """The gradient of ``mean(ys**2)`` with respect to the parameters."""

    def loss(params, xs):
        return jnp.mean(forward(params, xs)[1] ** 2)

    return jax.grad(loss)


def method_names(k: int) -> tuple:
    return BASE_METHODS + (f"scan_unroll{k}",)


def build(method: str, cell: jaxrnn.Cell, T: int) -> Callable:
    """A fresh forward function for ``method`` (new closures: no cache is shared)."""
    if method in ("python_loop", "jit_unrolled"):
        return loop_forward(cell, T)
    if method == "scan":
        return scan_forward(cell, 1)
    if method.startswith("scan_unroll"):
        return scan_forward(cell, int(method[len("scan_unroll"):]))
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------- measuring


def measure_eager(fn: Callable, args: tuple, repeats: int, budget_s: float) -> tuple[float, float, float]:
    """``(first_call_s, run_ms, overhead_s)`` of an eager function."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first_s = time.perf_counter() - t0
    run_ms = time_fn(fn, *args, repeats=repeats, warmup=0, budget_s=budget_s)
    return first_s, run_ms, max(first_s - run_ms / 1e3, 0.0)


def measure_jit(make: Callable[[], Callable], args: tuple, repeats: int, warmup: int,
                compiles: int = 1) -> tuple[float, float, list]:
    """``(compile_s, run_ms, compile_samples_s)`` of ``jax.jit(make())``.

    ``compile_s`` is the median over ``compiles`` compiles, each of a freshly made
    function. Single compiles of a scan vary by 2-3x on a GPU (0.25-0.7 s seen on an
    H100, whatever T), which would swamp the flat-in-T claim; the repeats steady it.
    """
    samples, compiled = [], None
    for _ in range(max(1, compiles)):
        t, compiled = time_compile(make(), *args)
        samples.append(t)
    return statistics.median(samples), time_fn(compiled, *args, repeats=repeats, warmup=warmup), samples


def run_one(method: str, cell: jaxrnn.Cell, T: int, args: tuple, cfg: argparse.Namespace, do_grad: bool) -> dict:
    rec = {"method": method}
    if method == "python_loop":
        first, run_ms, overhead = measure_eager(build(method, cell, T), args, cfg.repeats, cfg.eager_budget)
        rec.update(compile_s=overhead, run_ms=run_ms, first_call_s=first)
        if do_grad:
            first, run_ms, overhead = measure_eager(loss_grad(build(method, cell, T)), args, cfg.repeats,
                                                    cfg.eager_budget)
            rec.update(grad_compile_s=overhead, grad_run_ms=run_ms, grad_first_call_s=first)
        rec["compile_kind"] = "eager first-call overhead (first call minus a steady call)"
    else:
        # Scans compile in well under a second: take the median of a few. The unrolled
        # loop's compile takes seconds and grows with T: once is enough.
        n = 1 if method == "jit_unrolled" else cfg.compile_repeats
        rec["compile_s"], rec["run_ms"], rec["compile_samples_s"] = measure_jit(
            lambda: build(method, cell, T), args, cfg.repeats, cfg.warmup, n)
        if do_grad:
            rec["grad_compile_s"], rec["grad_run_ms"], _ = measure_jit(
                lambda: loss_grad(build(method, cell, T)), args, cfg.repeats, cfg.warmup)
        rec["compile_kind"] = "jit lower+compile" + (f", median of {n}" if n > 1 else "")
    for key in ("grad_compile_s", "grad_run_ms"):
        rec.setdefault(key, None)
    return rec


def sweep(cfg: argparse.Namespace, env: dict) -> list[dict]:
    methods = [m for m in method_names(cfg.unroll_k) if m.rstrip("0123456789") in cfg.methods]
    plan = []
    for name in cfg.cells:
        for T in cfg.T:
            for m in methods:
                if m == "jit_unrolled" and T > cfg.max_unrolled_T:
                    continue
                plan.append((name, T, m))
    records = []
    key_p, key_x = jax.random.split(jax.random.key(0))
    start = time.perf_counter()
    for i, (name, T, method) in enumerate(plan, 1):
        cell = CELLS[name](cfg.H)
        params = cell.init(key_p, input_size=cfg.I)
        xs = jax.random.normal(key_x, (cfg.B, T, cfg.I), jnp.float32)
        do_grad = not ((method == "jit_unrolled" and T > cfg.max_unrolled_grad_T)
                       or (method == "python_loop" and T > cfg.max_eager_grad_T))
        rec = {"cell": name, "T": T}
        cpu0 = time.process_time()
        rec.update(run_one(method, cell, T, (params, xs), cfg, do_grad))
        rec["cpu_s"] = time.process_time() - cpu0  # CPU time of this whole measurement
        unroll = 1 if method == "scan" else int(method[11:]) if method.startswith("scan_unroll") else None
        rec.update(unroll=unroll, B=cfg.B, I=cfg.I, H=cfg.H, device=env["device"], backend=env["backend"])
        records.append(rec)
        print(f"[{i:3d}/{len(plan)} {time.perf_counter() - start:6.1f}s] {name:4s} T={T:<5d} {method:15s} "
              f"compile {_f(rec['compile_s'], 's')}  run {_f(rec['run_ms'], 'ms')}  |  grad: compile "
              f"{_f(rec['grad_compile_s'], 's')}  run {_f(rec['grad_run_ms'], 'ms')}  (cpu {rec['cpu_s']:.1f} s)",
              flush=True)
    return records


def _f(v: Optional[float], unit: str) -> str:
    if v is None:
        return "   skipped" if unit == "s" else "    skipped"
    return f"{v:7.3f} s" if unit == "s" else f"{v:8.3f} ms"


# --------------------------------------------------------------------------- reporting


def add_ratios(records: list[dict]) -> None:
    """Adds ``run_vs_scan``, ``grad_vs_scan`` and ``compile_vs_scan`` (this / scan, same cell and T)."""
    scan = {(r["cell"], r["T"]): r for r in records if r["method"] == "scan"}
    for r in records:
        s = scan.get((r["cell"], r["T"]))
        for key, ratio in (("run_ms", "run_vs_scan"), ("grad_run_ms", "grad_vs_scan"),
                           ("compile_s", "compile_vs_scan"), ("grad_compile_s", "grad_compile_vs_scan")):
            ok = s is not None and r.get(key) is not None and s.get(key)
            r[ratio] = r[key] / s[key] if ok else None
        r["us_per_step"] = 1e3 * r["run_ms"] / r["T"]


def story_checks(records: list[dict]) -> list[dict]:
    """The claims the benchmark exists to show, checked on this run's numbers."""
    checks = []
    by = {(r["cell"], r["method"], r["T"]): r for r in records}
    for cell in dict.fromkeys(r["cell"] for r in records):
        scan_T = sorted(T for (c, m, T) in by if c == cell and m == "scan")
        if len(scan_T) >= 2:
            lo, hi = by[(cell, "scan", scan_T[0])], by[(cell, "scan", scan_T[-1])]
            growth = hi["compile_s"] / lo["compile_s"]
            checks.append(dict(cell=cell, claim="scan compile time is flat in T", passed=growth < 2.0,
                               detail=f"{lo['compile_s']:.3f} s at T={scan_T[0]} -> {hi['compile_s']:.3f} s at "
                                      f"T={scan_T[-1]} (x{growth:.2f}, T x{scan_T[-1] // scan_T[0]})"))
        unr_T = sorted(T for (c, m, T) in by if c == cell and m == "jit_unrolled" and T in scan_T)
        if unr_T:
            T = unr_T[-1]
            u, s = by[(cell, "jit_unrolled", T)], by[(cell, "scan", T)]
            ratio = u["compile_s"] / s["compile_s"]
            grow = f", x{u['compile_s'] / by[(cell, 'jit_unrolled', unr_T[0])]['compile_s']:.1f} from T={unr_T[0]}" \
                if len(unr_T) > 1 else ""
            grad_T = [t for t in unr_T if by[(cell, "jit_unrolled", t)].get("grad_compile_s")]
            if grad_T:
                g = by[(cell, "jit_unrolled", grad_T[-1])]["grad_compile_s"]
                gs = by[(cell, "scan", grad_T[-1])].get("grad_compile_s")
                grow += f"; its gradient {g:.2f} s at T={grad_T[-1]}" + (f" vs scan's {gs:.2f} s" if gs else "")
            checks.append(dict(cell=cell, claim="jit of the unrolled loop compiles >= 3x slower than scan",
                               passed=ratio >= 3.0,
                               detail=f"at T={T}: {u['compile_s']:.2f} s vs {s['compile_s']:.2f} s "
                                      f"(x{ratio:.1f}{grow})"))
        eager_T = sorted(T for (c, m, T) in by if c == cell and m == "python_loop" and T in scan_T)
        if eager_T:
            T = eager_T[-1]
            e, s = by[(cell, "python_loop", T)], by[(cell, "scan", T)]
            ratio = e["run_ms"] / s["run_ms"]
            grad = ""
            if e.get("grad_run_ms") and s.get("grad_run_ms"):
                grad = f"; gradient x{e['grad_run_ms'] / s['grad_run_ms']:.0f}"
            checks.append(dict(cell=cell, claim="the eager Python loop runs >= 3x slower than scan",
                               passed=ratio >= 3.0,
                               detail=f"at T={T}: {e['run_ms']:.1f} ms vs {s['run_ms']:.2f} ms (x{ratio:.0f}{grad})"))
    return checks


def print_report(records: list[dict], checks: list[dict]) -> None:
    cols = ["cell", "T", "method", "compile_s", "compile_vs_scan", "run_ms", "run_vs_scan", "us_per_step",
            "grad_compile_s", "grad_run_ms", "grad_vs_scan"]
    fmt = {"compile_s": ".3f", "compile_vs_scan": ".1f", "run_ms": ".3f", "run_vs_scan": ".2f", "us_per_step": ".2f",
           "grad_compile_s": ".3f", "grad_run_ms": ".3f", "grad_vs_scan": ".2f"}
    print_table(records, cols, fmt, title="Results (run times: median ms; *_vs_scan: this method / scan, same cell "
                                          "and T; python_loop compile_s: first-call overhead)")
    print("\nStory checks:")
    for c in checks:
        print(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['cell']:4s} {c['claim']}: {c['detail']}")


def plot(records: list[dict], path, env: dict, cfg: argparse.Namespace) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(r["cell"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    rows = [("run_ms", "forward run (ms)"), ("grad_run_ms", "fwd+bwd run (ms)"), ("compile", "compile (s)")]
    fig, axes = plt.subplots(len(rows), len(cells), figsize=(4.2 * len(cells), 3.2 * len(rows)), squeeze=False)
    for j, cell in enumerate(cells):
        for i, (key, label) in enumerate(rows):
            ax = axes[i][j]
            for m in methods:
                rs = sorted((r for r in records if r["cell"] == cell and r["method"] == m), key=lambda r: r["T"])
                if key == "compile":
                    if m == "python_loop":
                        continue  # nothing is compiled up front
                    for k, style, suffix in (("compile_s", "-", " fwd"), ("grad_compile_s", "--", " grad")):
                        pts = [(r["T"], r[k]) for r in rs if r.get(k)]
                        if pts:
                            ax.plot(*zip(*pts), style, marker="o", ms=3, color=colors[m], label=m + suffix)
                else:
                    pts = [(r["T"], r[key]) for r in rs if r.get(key)]
                    if pts:
                        ax.plot(*zip(*pts), "-", marker="o", ms=3, color=colors[m], label=m)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            Ts = sorted({r["T"] for r in records})
            ax.set_xticks(Ts, [str(T) for T in Ts])
            ax.minorticks_off()
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{cell}  (B={cfg.B}, I={cfg.I}, H={cfg.H})")
            if j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"scan vs loop on {env['device']} ({env['backend']}), jax {env['jax']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Without --json/--plot the results go to benchmarks/results/scan_vs_loop_<device>.json and .png "
               "(unless --no-save). The table, the ratios to scan and the story checks are always printed.",
    )
    p.add_argument("--quick", action="store_true", help="T = 16 64 256, fewer repeats; gradients of jit_unrolled only at T=16 and of python_loop "
                        "up to T=64")
    p.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=["rnn", "gru", "lstm"])
    p.add_argument("--T", nargs="+", type=int, default=None, help=f"sequence lengths (default {DEFAULT_T})")
    p.add_argument("--methods", nargs="+", default=list(BASE_METHODS) + ["scan_unroll"],
                   choices=list(BASE_METHODS) + ["scan_unroll"])
    p.add_argument("--unroll-k", type=int, default=8, help="unroll factor of the scan_unroll<k> method")
    p.add_argument("--B", type=int, default=32, help="batch size")
    p.add_argument("--I", type=int, default=64, help="input size")
    p.add_argument("--H", type=int, default=128, help="hidden size")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 20; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 2; quick 1)")
    p.add_argument("--eager-budget", type=float, default=None,
                   help="seconds after which the eager loop stops repeating (default 5; quick 1)")
    p.add_argument("--max-unrolled-T", type=int, default=None,
                   help="largest T for jit_unrolled (its compile grows with T; default 256)")
    p.add_argument("--max-unrolled-grad-T", type=int, default=None,
                   help="largest T for jit_unrolled's gradient (its compile grows faster than linearly: "
                        "default 64; quick 16)")
    p.add_argument("--max-eager-grad-T", type=int, default=None,
                   help="largest T for python_loop's gradient (eager autodiff is slow; default 256; quick 64)")
    p.add_argument("--compile-repeats", type=int, default=3,
                   help="fresh compiles per scan measurement, median reported (default 3; jit_unrolled: 1)")
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="write a PNG here")
    p.add_argument("--no-save", action="store_true", help="don't write the default results files")
    p.add_argument("--check", action="store_true", help="exit with status 1 if a story check fails")
    cfg = p.parse_args(argv)
    q = cfg.quick
    cfg.T = sorted(set(cfg.T or (QUICK_T if q else DEFAULT_T)))
    if min(cfg.T) < 1:
        p.error(f"--T values must be positive; got {cfg.T}")
    cfg.repeats = cfg.repeats or (5 if q else 20)
    cfg.warmup = (1 if q else 2) if cfg.warmup is None else cfg.warmup
    cfg.eager_budget = cfg.eager_budget if cfg.eager_budget is not None else (1.0 if q else 5.0)
    cfg.max_unrolled_T = cfg.max_unrolled_T or 256
    cfg.max_unrolled_grad_T = cfg.max_unrolled_grad_T or (16 if q else 64)
    cfg.max_eager_grad_T = cfg.max_eager_grad_T or (64 if q else 256)
    if cfg.compile_repeats < 1:
        p.error(f"--compile-repeats must be positive; got {cfg.compile_repeats}")
    if cfg.unroll_k < 1:
        p.error(f"--unroll-k must be positive; got {cfg.unroll_k}")
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the benchmark; returns ``{"env", "config", "records", "checks"}``."""
    cfg = parse_args(argv)
    env = device_info()
    print(f"device: {env['device']} ({env['backend']}, {env['device_count']} device(s), {env['cpu_count']} CPUs)  "
          f"jax {env['jax']}  jaxlib {env['jaxlib']}  jaxrnn {env['jaxrnn']}  python {env['python']}")
    print(f"shapes: B={cfg.B} I={cfg.I} H={cfg.H}, T in {cfg.T}, cells {cfg.cells}; repeats {cfg.repeats}, "
          f"warm-up {cfg.warmup}; jit_unrolled up to T={cfg.max_unrolled_T} (gradient up to "
          f"T={cfg.max_unrolled_grad_T}); python_loop gradient up to T={cfg.max_eager_grad_T}", flush=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    records = sweep(cfg, env)
    add_ratios(records)
    checks = story_checks(records)
    print_report(records, checks)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmeasured in {wall:.1f} s wall, {cpu:.1f} s CPU; peak RSS {peak_mb:.0f} MB")
    config = {k: v for k, v in vars(cfg).items() if k not in ("json", "plot", "no_save", "check")}
    config.update(wall_s=wall, cpu_s=cpu, loss="mean(ys**2), gradient w.r.t. params")
    out = {"benchmark": "scan_vs_loop", "env": env, "config": config, "records": records, "checks": checks}
    json_path, plot_path = cfg.json, cfg.plot
    if not cfg.no_save:
        slug = device_slug(env)
        json_path = json_path or RESULTS / f"scan_vs_loop_{slug}.json"
        plot_path = plot_path or RESULTS / f"scan_vs_loop_{slug}.png"
    if json_path:
        print(f"wrote {write_json(json_path, records, benchmark='scan_vs_loop', env=env, config=config, checks=checks)}")
    if plot_path:
        print(f"wrote {plot(records, plot_path, env, cfg)}")
    if cfg.check and not all(c["passed"] for c in checks):
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
