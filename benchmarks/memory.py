"""Memory of an LSTM's gradient against sequence length, with and without remat.

For ``T`` from a thousand to tens of thousands of steps, this compiles the gradient
(with respect to the parameters) of two losses of ``jaxrnn.unroll(jaxrnn.lstm(H), ...)``:

* ``many2many``: ``mean(ys**2)`` over every output;
* ``many2one``: ``mean(h_T**2)`` of the final state only;

once with ``remat=False`` (the fused backward pass keeps per-step residuals: gate
pre-activations and the previous state, ``O(T)``) and once with ``remat=True``
(chunked checkpointing: chunks of ``ceil(sqrt(T))`` steps, only the state at chunk
boundaries is kept and each chunk's forward is recomputed in the backward pass), and
reads XLA's compiled memory plan (``jax.jit(grad).lower(...).compile().memory_analysis()``):
``temp`` (scratch buffers, the part remat acts on), ``argument`` (params and ``xs``) and
``output`` (the gradients). Nothing is run, so long sequences cost only a compile.

For each series it fits the growth of ``temp`` with ``T`` (the exponent between the
two largest ``T``) and the linear term in floats per step per sequence, which says
where the bytes go: ``I`` floats per step is a copy of the inputs, ``H`` a stacked
``[T, B, H]`` output, ``~7H`` the no-remat residuals (4H gate pre-activations, h and c
of the previous step, the outputs).

What it found (jax 0.10.2, XLA:CPU, read from XLA's buffer assignment): without remat
the gradient keeps ~8H floats per step per sequence at B=1: one ``[T, 4H]`` buffer
that holds in turn the hoisted input projection, the saved gate activations and the
backward's gate gradients (on the CPU the LSTM writes each over the last, in place),
and ``[T, H]`` buffers: the saved ``h`` and ``c`` of every step, the outputs'
cotangent and the shifted ``h`` of the weight-gradient product. (Before the in-place
passes it was ~19H: three separate ``[T, 4H]`` buffers; before that buffer stayed
batch-major for batch-major inputs, ~10H, with a copy of it among XLA's buffers.) With remat, many-to-one keeps
only chunk-sized buffers plus one ``[T, B, I]`` copy of the inputs (the time-major,
chunked ``xs`` that the outer scan iterates over), so ``temp`` grows like ``sqrt(T)``
plus ``I`` floats per step; many-to-many also keeps the stacked outputs ``ys`` and their
cotangent (``2H`` floats per step), which the loss needs whatever the recurrence does.

``--train-long T`` then actually trains (a few ``optax.adam`` steps) an LSTM on one
sequence of ``T`` steps with ``remat=True`` and reports the time per step and the peak
resident memory of the process.

Usage::

    python benchmarks/memory.py                      # T = 1k..64k, B = 1 and 8, H = 128
    python benchmarks/memory.py --quick
    python benchmarks/memory.py --train-long 100000  # also train on a 100k-step sequence
    python benchmarks/memory.py --T 1000 8000 --B 4 --json m.json --plot m.png
"""

from __future__ import annotations

import argparse
import math
import pathlib
import resource
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, print_table, save_figure, write_json  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LOSSES = ("many2many", "many2one")
MB = 2**20


def make_loss(cell: jaxrnn.Cell, kind: str, remat) -> callable:
    def loss(params, xs):
        h, ys = jaxrnn.unroll(cell, params, None, xs, remat=remat)
        if kind == "many2many":
            return jnp.mean(ys**2)
        return jnp.mean(h.h**2)

    return loss


def compiled_memory(cell: jaxrnn.Cell, params, B: int, T: int, I: int, kind: str, remat) -> dict:
    """Compiles ``grad(loss)`` for ``xs: [B, T, I]``; returns its memory plan and compile time."""
    xs = jax.ShapeDtypeStruct((B, T, I), jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(make_loss(cell, kind, remat))).lower(params, xs).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("this backend gives no memory_analysis() for compiled programs")
    return dict(temp_bytes=int(m.temp_size_in_bytes), argument_bytes=int(m.argument_size_in_bytes),
                output_bytes=int(m.output_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes),
                compile_s=compile_s)


def sweep(cfg) -> list[dict]:
    cell = jaxrnn.lstm(cfg.H)
    params = cell.init(jax.random.key(0), input_size=cfg.I)
    plan = [(B, T, kind, remat) for B in cfg.B for kind in cfg.losses for remat in (False, True) for T in cfg.T]
    records = []
    start = time.perf_counter()
    for i, (B, T, kind, remat) in enumerate(plan, 1):
        rec = dict(cell="lstm", H=cfg.H, I=cfg.I, B=B, T=T, loss=kind, remat=remat,
                   chunk=int(math.ceil(math.sqrt(T))) if remat else None)
        rec.update(compiled_memory(cell, params, B, T, cfg.I, kind, remat))
        # Sizes for reading the numbers: the input, one stacked [T, B, H] output, and the
        # per-step residuals of the fused backward pass (4H pre-activations + h, c).
        rec.update(xs_bytes=4 * B * T * cfg.I, ys_bytes=4 * B * T * cfg.H,
                   residual_bytes=4 * B * T * 6 * cfg.H)
        records.append(rec)
        print(f"[{i:3d}/{len(plan)} {time.perf_counter() - start:6.1f}s] B={B} T={T:<6d} {kind:9s} "
              f"remat={str(remat):5s} temp {rec['temp_bytes'] / MB:9.2f} MB  argument "
              f"{rec['argument_bytes'] / MB:8.2f} MB  (compile {rec['compile_s']:.2f} s)", flush=True)
    return records


def growth(records: list[dict], cfg) -> list[dict]:
    """Per series (B, loss, remat): how ``temp`` grows between the two largest T."""
    out = []
    for B in cfg.B:
        for kind in cfg.losses:
            for remat in (False, True):
                rs = sorted((r for r in records if (r["B"], r["loss"], r["remat"]) == (B, kind, remat)),
                            key=lambda r: r["T"])
                if len(rs) < 2:
                    continue
                a, b = rs[-2], rs[-1]
                exponent = math.log(b["temp_bytes"] / a["temp_bytes"]) / math.log(b["T"] / a["T"])
                per_step = (b["temp_bytes"] - a["temp_bytes"]) / (b["T"] - a["T"]) / (4 * B)
                out.append(dict(B=B, loss=kind, remat=remat, T_from=a["T"], T_to=b["T"],
                                temp_from_MB=a["temp_bytes"] / MB, temp_to_MB=b["temp_bytes"] / MB,
                                exponent=exponent, floats_per_step=per_step, reading=_reading(per_step, cfg)))
    return out


def _reading(per_step: float, cfg) -> str:
    """Which ``[T, B, ·]`` buffers a linear term of ``per_step`` floats/step/sequence matches."""
    I, H = cfg.I, cfg.H
    if per_step < 0.25 * min(I, H):
        return "sublinear (no per-step buffer)"
    candidates = {(m, n): m * I + n * H for m in range(0, 3) for n in range(0, 25)}
    (m, n), value = min(candidates.items(), key=lambda kv: (abs(kv[1] - per_step), kv[0]))
    name = " + ".join(f"{c}{s}" if c > 1 else s for c, s in ((m, "I"), (n, "H")) if c) or "0"
    return f"~{name} floats/step" + ("" if abs(value - per_step) < 0.15 * per_step else " (rough)")


def report(records: list[dict], fits: list[dict], cfg) -> None:
    rows = [dict(r, temp_MB=r["temp_bytes"] / MB, argument_MB=r["argument_bytes"] / MB,
                 output_MB=r["output_bytes"] / MB, xs_MB=r["xs_bytes"] / MB, ys_MB=r["ys_bytes"] / MB) for r in records]
    fmt = {k: ".2f" for k in ("temp_MB", "argument_MB", "output_MB", "xs_MB", "ys_MB")}
    print_table(rows, ["B", "T", "loss", "remat", "chunk", "temp_MB", "argument_MB", "output_MB", "xs_MB", "ys_MB"],
                fmt, title=f"Compiled memory of grad(loss) w.r.t. params, LSTM H={cfg.H}, I={cfg.I}, float32 "
                           "(xs_MB, ys_MB: size of the input and of one stacked output, for reference)")
    print_table(fits, ["B", "loss", "remat", "T_from", "T_to", "temp_from_MB", "temp_to_MB", "exponent",
                       "floats_per_step", "reading"],
                {"temp_from_MB": ".2f", "temp_to_MB": ".2f", "exponent": ".2f", "floats_per_step": ".1f"},
                title=f"Growth of temp (exponent: temp ~ T^e between the two largest T; floats_per_step: the "
                      f"linear term per sequence; I={cfg.I}, H={cfg.H})")


def plot(records: list[dict], path, env: dict, cfg) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.B), figsize=(5.5 * len(cfg.B), 4), squeeze=False)
    for ax, B in zip(axes[0], cfg.B):
        for kind, color in zip(cfg.losses, ("C0", "C1")):
            for remat, style in ((False, "--"), (True, "-")):
                rs = sorted((r for r in records if (r["B"], r["loss"], r["remat"]) == (B, kind, remat)),
                            key=lambda r: r["T"])
                ax.plot([r["T"] for r in rs], [r["temp_bytes"] / MB for r in rs], style, marker="o", ms=3,
                        color=color, label=f"{kind}, remat={remat}")
        rs = sorted((r for r in records if r["B"] == B and r["loss"] == cfg.losses[0] and not r["remat"]),
                    key=lambda r: r["T"])
        ax.plot([r["T"] for r in rs], [r["xs_bytes"] / MB for r in rs], ":", color="gray", label="size of xs")
        rs = sorted((r for r in records if r["B"] == B and r["loss"] == cfg.losses[-1] and r["remat"]),
                    key=lambda r: r["T"])
        if rs:
            ref = rs[0]["temp_bytes"] / MB / math.sqrt(rs[0]["T"])
            ax.plot([r["T"] for r in rs], [ref * math.sqrt(r["T"]) for r in rs], "-.", color="silver",
                    label="∝ sqrt(T)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(cfg.T, [str(T) for T in cfg.T])
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("compiled temp memory of grad (MB)")
        ax.set_title(f"LSTM H={cfg.H}, I={cfg.I}, B={B}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{env['device']} ({env['backend']}), jax {env['jax']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- a real long run


def _rss_mb() -> tuple[Optional[float], float]:
    """``(current RSS, peak RSS)`` of this process in MB (current is None off Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    try:
        status = pathlib.Path("/proc/self/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None, peak


def train_long(T: int, cfg) -> dict:
    """A few Adam steps of an LSTM on one ``T``-step sequence, ``remat=True``.

    The task: read ``T`` noisy inputs and output, from the final state, the sum of the
    first input channel scaled to unit variance (a long-range summary), through a linear
    read-out. A few steps don't learn it; they show the cost of a step.
    """
    import optax

    B, I, H = cfg.train_B, cfg.train_I, cfg.H
    cell = jaxrnn.lstm(H)
    k_p, k_w, k_x = jax.random.split(jax.random.key(0), 3)
    params = {"lstm": cell.init(k_p, input_size=I), "w": jax.random.normal(k_w, (H,)) / math.sqrt(H)}
    xs = jax.random.normal(k_x, (B, T, I), jnp.float32)
    target = xs[..., 0].sum(axis=1) / math.sqrt(T)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    remat = not cfg.train_no_remat

    def loss_fn(p, xs, target):
        h, _ = jaxrnn.unroll(cell, p["lstm"], None, xs, remat=remat)
        return jnp.mean((h.h @ p["w"] - target) ** 2)

    def step(p, s, xs, target):
        loss, g = jax.value_and_grad(loss_fn)(p, xs, target)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    rss_before, _ = _rss_mb()
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, xs, target).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    times, losses = [], []
    for _ in range(cfg.train_steps):
        t0 = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, xs, target)
        loss = float(loss)  # waits for the step
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        print(f"  step {len(times)}/{cfg.train_steps}: loss {loss:.5f}, {times[-1]:.2f} s", flush=True)
    rss_after, peak = _rss_mb()
    out = dict(T=T, B=B, I=I, H=H, remat=remat, chunk=int(math.ceil(math.sqrt(T))) if remat else None,
               steps=cfg.train_steps, compile_s=compile_s, step_s=times, median_step_s=float(np.median(times)),
               us_per_timestep=1e6 * float(np.median(times)) / T, losses=losses,
               temp_bytes=int(m.temp_size_in_bytes) if m else None,
               argument_bytes=int(m.argument_size_in_bytes) if m else None,
               rss_before_compile_MB=rss_before, rss_after_MB=rss_after, peak_rss_MB=peak)
    print(f"train-long: T={T}, B={B}, I={I}, H={H}, remat={remat}: compile {compile_s:.1f} s, median step "
          f"{out['median_step_s']:.2f} s ({out['us_per_timestep']:.1f} µs per time step, fwd + "
          f"{'recompute + ' if remat else ''}bwd), "
          f"compiled temp {out['temp_bytes'] / MB:.1f} MB, RSS {rss_before:.0f} MB before compiling -> peak "
          f"{peak:.0f} MB; loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Without --json/--plot the results go to benchmarks/results/memory_<device>.json and .png "
               "(unless --no-save).")
    p.add_argument("--quick", action="store_true", help="T = 1024 4096 16384, B = 1")
    p.add_argument("--T", nargs="+", type=int, default=None, help="sequence lengths (default 1024 4096 16384 65536)")
    p.add_argument("--B", nargs="+", type=int, default=None, help="batch sizes (default 1 8)")
    p.add_argument("--I", type=int, default=32, help="input size")
    p.add_argument("--H", type=int, default=128, help="hidden size")
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    p.add_argument("--train-long", type=int, default=0, metavar="T",
                   help="also train an LSTM on one sequence of T steps with remat (e.g. 100000)")
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--train-B", type=int, default=1)
    p.add_argument("--train-I", type=int, default=8)
    p.add_argument("--train-no-remat", action="store_true", help="train without remat (to compare)")
    p.add_argument("--skip-sweep", action="store_true", help="only --train-long")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--no-save", action="store_true", help="don't write the default results files")
    cfg = p.parse_args(argv)
    cfg.T = sorted(set(cfg.T or ((1024, 4096, 16384) if cfg.quick else (1024, 4096, 16384, 65536))))
    cfg.B = sorted(set(cfg.B or ((1,) if cfg.quick else (1, 8))))
    if min(cfg.T) < 1 or min(cfg.B) < 1:
        p.error("--T and --B values must be positive")
    if cfg.train_long < 0 or cfg.train_steps < 1:
        p.error("--train-long must be >= 0 and --train-steps >= 1")
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the sweep (and ``--train-long``); returns ``{"env", "config", "records", "growth", "train_long"}``."""
    cfg = parse_args(argv)
    env = device_info()
    print(f"device: {env['device']} ({env['backend']}, {env['cpu_count']} CPUs)  jax {env['jax']}  "
          f"jaxrnn {env['jaxrnn']}", flush=True)
    records, fits = [], []
    if not cfg.skip_sweep:
        records = sweep(cfg)
        fits = growth(records, cfg)
        report(records, fits, cfg)
    long_run = train_long(cfg.train_long, cfg) if cfg.train_long else None
    config = {k: v for k, v in vars(cfg).items() if k not in ("json", "plot", "no_save")}
    out = dict(benchmark="memory", env=env, config=config, records=records, growth=fits, train_long=long_run)
    json_path, plot_path = cfg.json, cfg.plot
    if not cfg.no_save:
        slug = device_slug(env)
        json_path = json_path or RESULTS / f"memory_{slug}.json"
        plot_path = plot_path or (RESULTS / f"memory_{slug}.png" if records else None)
    if json_path:
        print(f"wrote {write_json(json_path, records, benchmark='memory', env=env, config=config, growth=fits, train_long=long_run)}")
    if plot_path and records:
        print(f"wrote {plot(records, plot_path, env, cfg)}")
    return out


if __name__ == "__main__":
    main()
