"""Custom cells: what a user-written cell costs under ``jaxrnn.unroll``, fwd+bwd.

Measures, side by side in one process (interleaved rounds, medians, float32), the gradient
of ``mean(ys ** 2)`` with respect to the params and the inputs:

* an LSTM written as a plain function (``step`` only: ``x @ W + h @ U + b``,
  ``jax.nn.sigmoid``, ``jnp.split``) under ``jaxrnn.unroll`` (hoisted automatically), against
  a hand-written ``jax.lax.scan`` of the same function, ``hoist=False``, and flax's
  ``nn.RNN(OptimizedLSTMCell)``;
* the same LSTM as an object with ``project``/``update``, against the built-in
  ``jaxrnn.lstm`` with ``custom_vjp=False`` (and with its fused custom VJP);
* the zoo cells against the built-in LSTM/GRU of the same size, as ratios;
* with ``--baseline-rev REV``, the built-in LSTM and GRU against the same cells of the
  package at git revision ``REV`` (an A/B of the built-in path, in this process).

Shapes are B×T×I×H, issue 2's: 1×1000×128×128 and 32×128×256×256 by default.
``--quick`` runs fewer rounds. Writes ``benchmarks/results/custom_cells_<device>.{json,md}``.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, format_table, import_baseline, write_json  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn import zoo  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------ the user's LSTM
def lstm_step(params, h, x):
    """An LSTM as a user writes it."""
    w, u, b = params
    hh, c = h
    z = x @ w + hh @ u + b
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    hh = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (hh, c), hh


class SplitLSTM:
    """The same LSTM as an object with ``project`` and ``update``."""

    def __init__(self, hidden_size):
        self.hidden_size = self.output_size = hidden_size

    def project(self, params, xs):
        w, _, b = params
        return xs @ w + b

    def update(self, params, h, gx):
        _, u, _ = params
        hh, c = h
        i, f, g, o = jnp.split(gx + hh @ u, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        hh = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (hh, c), hh

    def step(self, params, h, x):
        return self.update(params, h, self.project(params, x))


def _user_params(B, I, H, seed=0):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    u = lambda *shape: jnp.asarray(rng.uniform(-s, s, shape), jnp.float32)
    return (u(I, 4 * H), u(H, 4 * H), u(4 * H)), (jnp.zeros((B, H)), jnp.zeros((B, H)))


def _grad_fn(run):
    """``run(params, xs) -> ys``: jitted gradient of mean(ys^2) w.r.t. params and xs."""
    return jax.jit(jax.grad(lambda p, xs: jnp.mean(run(p, xs) ** 2), argnums=(0, 1)))


def build(B, T, I, H, baseline=None):
    """{name: (fn, args)} for one shape."""
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, I)), jnp.float32)
    p_user, h0 = _user_params(B, I, H)
    impls = {}

    def hand_scan(p, xs):
        return jnp.swapaxes(jax.lax.scan(lambda h, x: lstm_step(p, h, x), h0, jnp.swapaxes(xs, 0, 1))[1], 0, 1)

    impls["user fn: lax.scan"] = (_grad_fn(hand_scan), (p_user, xs))
    impls["user fn: jaxrnn.unroll"] = (_grad_fn(lambda p, xs: jaxrnn.unroll(lstm_step, p, h0, xs)[1]), (p_user, xs))
    impls["user fn: hoist=False"] = (_grad_fn(lambda p, xs: jaxrnn.unroll(lstm_step, p, h0, xs, hoist=False)[1]),
                                     (p_user, xs))
    split = SplitLSTM(H)
    impls["user project/update"] = (_grad_fn(lambda p, xs: jaxrnn.unroll(split, p, h0, xs)[1]), (p_user, xs))

    import flax.linen as nn

    for name, fcell in (("flax OptimizedLSTMCell", nn.OptimizedLSTMCell(H)), ("flax GRUCell", nn.GRUCell(H))):
        model = nn.RNN(fcell)
        variables = model.init(jax.random.key(0), xs)
        impls[name] = (_grad_fn(lambda v, xs, model=model: model.apply(v, xs)), (variables, xs))

    def builtin(cell, **kw):
        params = cell.init(jax.random.key(0), I)
        return _grad_fn(lambda p, xs: jaxrnn.unroll(cell, p, None, xs, **kw)[1]), (params, xs)

    impls["jaxrnn.lstm"] = builtin(jaxrnn.lstm(H))
    impls["jaxrnn.lstm custom_vjp=False"] = builtin(jaxrnn.lstm(H), custom_vjp=False)
    impls["jaxrnn.gru"] = builtin(jaxrnn.gru(H))
    impls["zoo.peephole_lstm"] = builtin(zoo.peephole_lstm(H))
    impls["zoo.layernorm_lstm"] = builtin(zoo.layernorm_lstm(H))
    impls["zoo.layernorm_gru"] = builtin(zoo.layernorm_gru(H))
    impls["zoo.gru_original"] = builtin(zoo.gru_original(H))
    impls["zoo.min_gru (sequential)"] = builtin(zoo.min_gru(H))
    if baseline is not None:
        for kind in ("lstm", "gru"):
            cell = getattr(baseline, kind)(H)
            params = cell.init(jax.random.key(0), I)
            impls[f"baseline {kind}"] = (
                _grad_fn(lambda p, xs, cell=cell: baseline.unroll(cell, p, None, xs)[1]), (params, xs))
    return impls


def measure(impls: dict, rounds: int, min_time: float) -> dict:
    """Median ms per call of each implementation, over interleaved rounds."""
    for fn, args in impls.values():  # compile and warm up
        jax.block_until_ready(fn(*args))
        jax.block_until_ready(fn(*args))
    calls = {}
    for name, (fn, args) in impls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        calls[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    samples = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, args = impls[name]
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                out = fn(*args)
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - t0) / calls[name] * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


RATIOS = [
    ("user fn: jaxrnn.unroll", "flax OptimizedLSTMCell", 1.0),
    ("user fn: jaxrnn.unroll", "user fn: lax.scan", 1.1),
    ("user project/update", "jaxrnn.lstm custom_vjp=False", 1.15),
    ("user fn: hoist=False", "user fn: lax.scan", None),
    ("jaxrnn.lstm", "flax OptimizedLSTMCell", None),
    ("zoo.peephole_lstm", "jaxrnn.lstm", None),
    ("zoo.layernorm_lstm", "jaxrnn.lstm", None),
    ("zoo.layernorm_gru", "jaxrnn.gru", None),
    ("zoo.gru_original", "jaxrnn.gru", None),
    ("zoo.min_gru (sequential)", "jaxrnn.gru", None),
    ("jaxrnn.lstm", "baseline lstm", 1.0),
    ("jaxrnn.gru", "baseline gru", 1.0),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x1000x128x128,32x128x256x256", help="B×T×I×H, comma-separated")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 9; 3 with --quick)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per sample (calls are repeated)")
    ap.add_argument("--baseline-rev", default=None, help="a git revision whose built-in cells to A/B against")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/custom_cells_<device>)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    baseline = import_baseline(args.baseline_rev) if args.baseline_rev else None
    info = device_info()
    records, lines = [], []
    for shape in args.shapes.split(","):
        B, T, I, H = (int(v) for v in shape.lower().split("x"))
        print(f"== B{B} T{T} I{I} H{H}", flush=True)
        med = measure(build(B, T, I, H, baseline), rounds, args.min_time)
        rows = [dict(impl=k, ms=v) for k, v in med.items()]
        print(format_table(rows, ["impl", "ms"], {"ms": ".2f"}), flush=True)
        ratio_rows = []
        for a, b, bound in RATIOS:
            if a in med and b in med:
                r = med[a] / med[b]
                ratio_rows.append(dict(ratio=f"{a} / {b}", value=r, bound=bound,
                                       ok=None if bound is None else r <= bound))
        print(format_table(ratio_rows, ["ratio", "value", "bound", "ok"], {"value": ".3f"}), flush=True)
        records.append(dict(shape=[B, T, I, H], median_ms=med, ratios=ratio_rows))
        lines.append(f"### B×T×I×H = {B}×{T}×{I}×{H}\n\n```\n{format_table(rows, ['impl', 'ms'], {'ms': '.2f'})}\n\n"
                     f"{format_table(ratio_rows, ['ratio', 'value', 'bound', 'ok'], {'value': '.3f'})}\n```\n")
    stem = pathlib.Path(args.out) if args.out else RESULTS / f"custom_cells_{device_slug(info)}"
    write_json(stem.with_suffix(".json"), records, device=info, rounds=rounds, min_time_s=args.min_time,
               baseline_rev=args.baseline_rev, loss="grad of mean(ys**2) w.r.t. params and xs, float32")
    header = (f"# Custom cells, fwd+bwd (float32), median ms of {rounds} interleaved rounds in one process\n\n"
              f"Device: {info.get('device_kind', info)}; jax {jax.__version__}."
              f" Baseline revision: {args.baseline_rev or 'none'}.\n\n")
    stem.with_suffix(".md").write_text(header + "\n".join(lines))
    print(f"wrote {stem}.json/.md")
    return records


if __name__ == "__main__":
    main()
