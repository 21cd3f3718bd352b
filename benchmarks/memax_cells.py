"""jaxrnn against memax (the closest JAX peer) on the cells both have: LRU, S6, GRU, LSTM.

Every method runs on the same inputs ``[B, T, H]`` (input and output width ``H``) in one
process; fwd+bwd is the gradient of ``mean(y**2)`` with respect to the parameters and the
inputs. Each method is compiled first (compile seconds and the compiled program's
temporary memory, ``memory_analysis().temp_size_in_bytes``, recorded), then all are timed
in interleaved rounds (median of the rounds, ms).

memax (``memax.equinox``) runs one sequence per call, so it is ``vmap``-ed over the batch,
with all start flags False (no resets), its own initial state, and its own scan:
``semigroup_scan`` (a ``jax.lax.associative_scan``) for LRU and S6, ``set_action_scan``
(a ``lax.scan``) for GRU and LSTM. The cells are not all the same model:

* LRU: the same equations and parametrisation (Orvieto et al.) on both sides.
* S6: memax's ``S6`` is a diagonal recurrence of size ``H`` with an input-dependent step
  (after minimal-S6): no ``N``-wide state per channel, no convolution, no gate, no
  projections; jaxrnn's ``s6`` is Mamba's mixer (state ``[2H, 16]``, conv, gate, in/out
  projections). So the S6 rows are: memax's own equations written with
  ``jaxrnn.linear_scan`` (:func:`minimal_s6`, the same weights; checked against memax's
  outputs before timing), sequential and associative; then jaxrnn's ``s6`` at Mamba's
  defaults, and its smallest mixer (``state_size=1, expand=1, conv_size=1``), which still
  has the projections, convolution and gate memax's has not.
* GRU: memax's is the original GRU (``U_h (r ⊙ h)``), which is ``jaxrnn.zoo.gru_original``;
  the ``jaxrnn.gru`` (PyTorch's variant) row is given beside it.
* LSTM: memax's reads out ``h = o ⊙ c`` (no ``tanh``); ``jaxrnn.lstm`` is PyTorch's.

A second section measures the compiled fwd+bwd memory of jaxrnn's ``s6`` parallel form
against ``T`` (chunks of 64 steps), beside the same code with one chunk of ``T`` steps,
which holds every ``[T, B, E, N]`` state, at state sizes ``N`` = 16 and 64: a ``[T, B, E, N]``
term would make the growth per step grow with ``N``.

Usage::

    python benchmarks/memax_cells.py            # B=16, T=256, H=64, 5 rounds; s6 memory at T=512, 2048
    python benchmarks/memax_cells.py --B 8 --T 128 --H 32 --N-lru 32 --rounds 3   # a smaller run
    python benchmarks/memax_cells.py --quick    # 2 rounds, no memory sweep

Writes ``benchmarks/results/memax_cells_<device>.{json,md}`` (``--no-save``: nothing).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn.zoo.gru_original import gru_original
from jaxrnn.zoo.lru import lru
from jaxrnn.zoo.s6 import s6

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, device_slug, rel_rms, write_json  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _jaxrnn_case(cell, key, xs, mode="sequential"):
    params = cell.init(key, xs.shape[-1])

    def loss(params, xs):
        _, ys = jaxrnn.unroll(cell, params, None, xs, mode=mode)
        return jnp.mean(ys.astype(jnp.float32) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1)), (params, xs)


def _memax_case(module, xs):
    import equinox as eqx

    start = jnp.zeros(xs.shape[:2], bool)
    params, static = eqx.partition(module, eqx.is_inexact_array)

    def loss(params, xs):
        m = eqx.combine(params, static)
        h0 = m.initialize_carry()
        _, ys = jax.vmap(lambda x, s: m(h0, (x, s)))(xs, start)
        return jnp.mean(ys.astype(jnp.float32) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1)), (params, xs)


def _minimal_s6_params(module):
    """memax's ``S6`` weights as a plain tuple: ``(A_log, W_B, b_B, W_C, b_C, W_dt, b_dt)``."""
    lin = module.dt.layers[0]
    return (module.A_log, module.B.weight, module.B.bias, module.C.weight, module.C.bias, lin.weight, lin.bias)


def minimal_s6(params, xs, mode="sequential"):
    """memax's ``S6`` recurrence (minimal-S6), written with :func:`jaxrnn.linear_scan`::

        dt_t = softplus(W_dt x_t + b_dt),   Ā_t = exp(dt_t A),   A = -exp(A_log)
        h_t = Ā_t ⊙ h_{t-1} + (Ā_t - 1) / A ⊙ (W_B x_t + b_B) ⊙ x_t,   y_t = (W_C x_t + b_C) ⊙ h_t
    """
    A_log, W_B, b_B, W_C, b_C, W_dt, b_dt = params
    A = -jnp.exp(A_log)
    a = jnp.exp(jax.nn.softplus(xs @ W_dt.T + b_dt) * A)
    b = (a - 1.0) / A * (xs @ W_B.T + b_B) * xs
    _, hs = jaxrnn.linear_scan(a, b, mode=mode)
    return (xs @ W_C.T + b_C) * hs


def _minimal_s6_case(module, xs, mode):
    def loss(params, xs):
        return jnp.mean(minimal_s6(params, xs, mode) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1)), (_minimal_s6_params(module), xs)


def check_minimal_s6(H=8, T=20, B=3) -> float:
    """Relative RMS between memax's ``S6`` and :func:`minimal_s6` on the same weights."""
    from memax.equinox.semigroups.s6 import S6

    m = S6(H, H, key=jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (B, T, H))
    h0 = m.initialize_carry()
    want = jax.vmap(lambda x: m(h0, (x, jnp.zeros((T,), bool)))[1])(xs)
    got = minimal_s6(_minimal_s6_params(m), xs)
    return rel_rms(got, want)


def cases(B, T, H, N_lru):
    """``(cell, library, label, fn, args)`` for every method."""
    from memax.equinox.semigroups.lru import LRU
    from memax.equinox.semigroups.s6 import S6
    from memax.equinox.set_actions.gru import GRU
    from memax.equinox.set_actions.lstm import LSTM

    key = jax.random.key(0)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, H)), jnp.float32)
    memax_s6 = S6(H, H, key=key)  # its weights serve the rows of its equations on linear_scan too
    out = [
        ("LRU", "memax", f"LRU(N={N_lru}), associative_scan", *_memax_case(LRU(N_lru, H, key=key), xs)),
        ("LRU", "jaxrnn", f"lru(N={N_lru}), sequential", *_jaxrnn_case(lru(H, N_lru), key, xs)),
        ("LRU", "jaxrnn", f"lru(N={N_lru}), associative", *_jaxrnn_case(lru(H, N_lru), key, xs, "associative")),
        ("S6", "memax", f"S6(state [{H}]), associative_scan", *_memax_case(memax_s6, xs)),
        ("S6", "jaxrnn", f"memax's S6 equations on linear_scan (state [{H}]), sequential",
         *_minimal_s6_case(memax_s6, xs, "sequential")),
        ("S6", "jaxrnn", f"memax's S6 equations on linear_scan (state [{H}]), associative",
         *_minimal_s6_case(memax_s6, xs, "associative")),
        ("S6", "jaxrnn", f"s6 Mamba (state [{2 * H}, 16]), chunked",
         *_jaxrnn_case(s6(H), key, xs, "chunked")),
        ("S6", "jaxrnn", f"s6 N=1 expand=1 conv=1 (state [{H}, 1]), chunked",
         *_jaxrnn_case(s6(H, state_size=1, expand=1, conv_size=1), key, xs, "chunked")),
        ("GRU", "memax", "GRU (original), lax.scan", *_memax_case(GRU(H, key=key), xs)),
        ("GRU", "jaxrnn", "zoo.gru_original", *_jaxrnn_case(gru_original(H), key, xs)),
        ("GRU", "jaxrnn", "gru (PyTorch's)", *_jaxrnn_case(jaxrnn.gru(H), key, xs)),
        ("LSTM", "memax", "LSTM (h = o*c), lax.scan", *_memax_case(LSTM(H, key=key), xs)),
        ("LSTM", "jaxrnn", "lstm (PyTorch's)", *_jaxrnn_case(jaxrnn.lstm(H), key, xs)),
    ]
    return out


def run_cells(B, T, H, N_lru, rounds):
    records, compiled = [], []
    for cell, lib, label, fn, args in cases(B, T, H, N_lru):
        t0 = time.perf_counter()
        exe = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - t0
        mem = exe.memory_analysis()
        jax.block_until_ready(exe(*args))
        compiled.append((exe, args))
        records.append(dict(section="cells", cell=cell, library=lib, method=label, B=B, T=T, H=H,
                            compile_s=compile_s, temp_mib=None if mem is None else mem.temp_size_in_bytes / 2 ** 20,
                            times_ms=[]))
        print(f"compiled {lib:6s} {label}: {compile_s:.1f} s", flush=True)
    for _ in range(rounds):  # interleaved: every method once per round
        for rec, (exe, args) in zip(records, compiled):
            t0 = time.perf_counter()
            jax.block_until_ready(exe(*args))
            rec["times_ms"].append(1e3 * (time.perf_counter() - t0))
    for rec in records:
        rec["fwd_bwd_ms"] = statistics.median(rec["times_ms"])
    for cell in dict.fromkeys(r["cell"] for r in records):
        peer = next(r for r in records if r["cell"] == cell and r["library"] == "memax")
        for r in records:
            if r["cell"] == cell:
                r["time_vs_memax"] = r["fwd_bwd_ms"] / peer["fwd_bwd_ms"]
                if r["temp_mib"] is not None and peer["temp_mib"]:
                    r["memory_vs_memax"] = r["temp_mib"] / peer["temp_mib"]
    return records


def run_s6_memory(Ts, B, H, Ns, chunk):
    """Compiled fwd+bwd temporary memory of ``s6`` against ``T``, for each state size in
    ``Ns``: chunks of ``chunk`` steps and, for contrast, one chunk of ``T`` steps (all states
    held). A ``[T, B, E, N]`` term would make the growth per step proportional to ``N``."""
    records = []
    for N in Ns:
        for T in Ts:
            # The contrast runs a sequential scan inside its one chunk (its backward holds every
            # state either way; an associative scan over T steps compiles for minutes on a CPU).
            for label, K, mode in (("chunked", chunk, "chunked"), ("one chunk of T (all states)", T, "sequential")):
                cell = s6(H, state_size=N, chunk_size=K)
                params = jax.eval_shape(lambda: cell.init(jax.random.key(0), H))
                xs = jax.ShapeDtypeStruct((B, T, H), jnp.float32)

                def loss(p, xs):
                    _, ys = jaxrnn.unroll(cell, p, None, xs, mode=mode)
                    return jnp.mean(ys ** 2)

                mem = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile().memory_analysis()
                temp = None if mem is None else mem.temp_size_in_bytes
                records.append(dict(section="s6_memory", method=label, mode=mode, B=B, T=T, H=H, E=2 * H, N=N,
                                    chunk=K, temp_mib=None if temp is None else temp / 2 ** 20,
                                    all_states_mib=T * B * 2 * H * N * 4 / 2 ** 20))
                print(f"s6 memory N={N} T={T} {label}: {records[-1]['temp_mib']:.1f} MiB", flush=True)
    return records


def _growth_per_step(rows, chunked: bool) -> float:
    """Bytes of compiled temporaries added per step, between the shortest and longest ``T``."""
    rows = sorted((r for r in rows if (r["method"] == "chunked") == chunked), key=lambda r: r["T"])
    return (rows[-1]["temp_mib"] - rows[0]["temp_mib"]) * 2 ** 20 / (rows[-1]["T"] - rows[0]["T"])


def markdown(records, env, config) -> str:
    cells = [r for r in records if r["section"] == "cells"]
    mem = [r for r in records if r["section"] == "s6_memory"]
    lines = [f"# jaxrnn vs memax, fwd+bwd (B={config['B']}, T={config['T']}, H={config['H']})", "",
             f"{env['machine']}; jax {env['jax']}, memax {env['memax']}, equinox {env['equinox']}; "
             f"float32; median of {config['rounds']} interleaved rounds. Load average (1 min) "
             f"{env.get('load_start', float('nan')):.1f} at the start, {env.get('load_end', float('nan')):.1f} at the end.", "",
             "memax's S6 against its equations on jaxrnn.linear_scan (same weights, B=3, T=20, H=8): relative RMS "
             f"{env.get('minimal_s6_vs_memax_rel_rms', float('nan')):.1e}.", "",
             "| cell | library | method | fwd+bwd ms | / memax | compile s | temp MiB | / memax |",
             "|---|---|---|---|---|---|---|---|"]
    for r in cells:
        ratio = "" if r["library"] == "memax" else f"{r['time_vs_memax']:.2f}"
        mratio = "" if r["library"] == "memax" or r.get("memory_vs_memax") is None else f"{r['memory_vs_memax']:.2f}"
        lines.append(f"| {r['cell']} | {r['library']} | {r['method']} | {r['fwd_bwd_ms']:.1f} | {ratio} | "
                     f"{r['compile_s']:.1f} | {r['temp_mib']:.1f} | {mratio} |")
    if mem:
        lines += ["", f"## s6: compiled fwd+bwd temporary memory against T (B={mem[0]['B']}, M={mem[0]['H']}, "
                      f"E={mem[0]['E']}, chunk {mem[0]['chunk']})", "",
                  "| N | T | chunked: temp MiB | one chunk of T: temp MiB | all [T, B, E, N] states MiB |",
                  "|---|---|---|---|---|"]
        slopes = []
        for N in dict.fromkeys(r["N"] for r in mem):
            rows = [r for r in mem if r["N"] == N]
            for T in dict.fromkeys(r["T"] for r in rows):
                a = next(r for r in rows if r["T"] == T and r["method"] == "chunked")
                b = next(r for r in rows if r["T"] == T and r["method"] != "chunked")
                lines.append(f"| {N} | {T} | {a['temp_mib']:.1f} | {b['temp_mib']:.1f} | {a['all_states_mib']:.1f} |")
            slopes.append((N, _growth_per_step(rows, chunked=True), _growth_per_step(rows, chunked=False),
                           rows[0]["B"] * rows[0]["E"] * N * 4))
        lines += ["", "Growth per added step (bytes):", "",
                  "| N | chunked | one chunk of T | [B, E, N] state |", "|---|---|---|---|"]
        lines += [f"| {N} | {a:.0f} | {b:.0f} | {c} |" for N, a, b, c in slopes]
        if len(slopes) > 1:
            (n0, a0, _, c0), (n1, a1, _, c1) = slopes[0], slopes[-1]
            lines += ["", f"From N={n0} to N={n1} the chunked growth per step changes by {a1 - a0:.0f} bytes, where "
                          f"a [T, B, E, N] term would add {c1 - c0} bytes."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--N-lru", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memory-T", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    import equinox
    import memax  # noqa: F401
    from importlib.metadata import version

    env = device_info()
    try:
        import subprocess

        env["machine"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[1] \
            .splitlines()[0].strip()
    except Exception:
        env["machine"] = env["processor"]
    env["memax"], env["equinox"] = version("memax"), equinox.__version__
    err = check_minimal_s6()
    print(f"memax S6 vs its equations on jaxrnn.linear_scan: relative RMS {err:.1e}", flush=True)
    env["minimal_s6_vs_memax_rel_rms"] = err
    env["load_start"] = os.getloadavg()[0]
    records = run_cells(args.B, args.T, args.H, args.N_lru, rounds)
    if not args.quick:
        records += run_s6_memory(tuple(args.memory_T), B=4, H=16, Ns=(16, 64), chunk=64)
    env["load_end"] = os.getloadavg()[0]
    config = dict(B=args.B, T=args.T, H=args.H, N_lru=args.N_lru, rounds=rounds)
    md = markdown(records, env, config)
    print(md)
    if not args.no_save:
        slug = device_slug(env)
        write_json(RESULTS / f"memax_cells_{slug}.json", records, benchmark="memax_cells", env=env, config=config)
        (RESULTS / f"memax_cells_{slug}.md").write_text(md)


if __name__ == "__main__":
    main()
