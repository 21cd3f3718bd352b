"""Data parallelism: steps/s of a jitted LSTM train step on 1, 2, 4 and 8 devices.

The step is the one a user writes (``jaxrnn.train.make_train_step``: value and grad of a
masked mean loss over a ragged batch, an Adam update), jitted once per device count;
params and optimizer state are replicated with :func:`jaxrnn.distributed.replicate` and the
batch is sharded over the devices with :func:`jaxrnn.distributed.shard_batch`. The compiler
inserts the gradient all-reduce. The batch is put on the devices once, before timing, so
the figures measure compute and communication, not host-to-device copies.

Scaling: ``--scaling strong`` (default) keeps the global batch fixed (each device gets
``B / n`` examples: the ideal is ``n`` times the 1-device steps/s); ``--scaling weak``
keeps the per-device batch fixed (the global batch grows with ``n``: the ideal is the
same steps/s on every ``n``, i.e. ``n`` times the examples/s).

Devices: on a GPU/TPU host the real accelerators are used (``jax.devices()``; only the
counts up to ``jax.device_count()`` are run). On the CPU, unless ``XLA_FLAGS`` already
sets it, the script asks XLA for 8 host devices
(``--xla_force_host_platform_device_count=8``). These are not 8 processors: they share
the machine's cores, so on a small CPU (2 cores, say) the table measures the *overhead*
of splitting a step over several devices (partitioned programs, all-reduces, thread
hand-offs), not a speedup. Real speedups need real devices.

Timing: the first call (trace + compile) is timed apart; after a warm-up step,
``--rounds`` rounds of ``--steps`` back-to-back steps are timed (waiting for the last
one) and the median time per step is reported.

Usage::

    python benchmarks/data_parallel.py                       # 1, 2, 4, 8 devices
    python benchmarks/data_parallel.py --quick               # small and short
    python benchmarks/data_parallel.py --scaling weak --json benchmarks/results/data_parallel_cpu.json
"""

from __future__ import annotations

import os
import sys

# Must happen before JAX initialises its CPU backend; harmless on GPU/TPU hosts.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse
import math
import pathlib
import re
import statistics
import time

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import device_info, print_table, write_json  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn import distributed, train  # noqa: E402


def make_batch(key, batch_size, T, input_size, num_classes):
    """A ragged sequence-classification batch (numpy, on the host)."""
    kx, ky, kl = jax.random.split(key, 3)
    return {
        "xs": np.asarray(jax.random.normal(kx, (batch_size, T, input_size)), np.float32),
        "labels": np.asarray(jax.random.randint(ky, (batch_size, T), 0, num_classes), np.int32),
        "seq_lengths": np.asarray(jax.random.randint(kl, (batch_size,), T // 2, T + 1), np.int32),
    }


def make_loss(net):
    def loss_fn(params, batch, key):
        _, logits = net(params, None, batch["xs"], seq_lengths=batch["seq_lengths"])
        return train.sequence_cross_entropy(logits, batch["labels"], batch["seq_lengths"])

    return loss_fn


def collectives(hlo: str) -> dict:
    """The collectives of a compiled program (its optimised HLO text): the count of each kind,
    and the elements all-reduced in all (a data-parallel gradient all-reduces each parameter
    once, so this equals the parameter count, plus the loss and metrics)."""
    out = {kind: len(re.findall(rf"\b{kind}(-start)?\(", hlo))
           for kind in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")}
    elements = 0
    for line in hlo.splitlines():
        m = re.search(r"= (\(.*?\)|\S+) all-reduce(-start)?\(", line)
        if m:
            elements += sum(math.prod(int(d) for d in dims.split(",") if d)
                            for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", m.group(1)))
    out["all_reduce_elements"] = elements
    return out


def bench(n, args, net, params, tx):
    mesh = distributed.data_mesh(jax.devices()[:n])
    batch_size = args.batch * n if args.scaling == "weak" else args.batch
    if batch_size % n:
        return {"devices": n, "note": f"global batch {batch_size} does not divide by {n}"}
    batch = make_batch(jax.random.key(1), batch_size, args.seq_len, args.input_size, args.classes)
    batch = distributed.shard_batch(batch, mesh)
    state = distributed.replicate(train.TrainState.create(params, tx), mesh)
    step = train.make_train_step(make_loss(net), tx, mesh=mesh)
    # The same step compiled apart (not jitted by make_train_step), for its collectives.
    plain = train.make_train_step(make_loss(net), tx, jit=False)  # (inputs already sharded)
    compiled = collectives(jax.jit(plain).lower(state, batch).compile().as_text())

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    per_step = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        per_step.append((time.perf_counter() - t0) / args.steps)
    t = statistics.median(per_step)
    return {
        "devices": n,
        "global_batch": batch_size,
        "per_device_batch": batch_size // n,
        "first_call_s": first,
        "step_ms": 1e3 * t,
        "steps_per_s": 1.0 / t,
        "examples_per_s": batch_size / t,
        "loss": float(metrics["loss"]),
        **{k.replace("-", "_"): v for k, v in compiled.items()},
    }


def main(argv=None):
    on_cpu = jax.default_backend() == "cpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts (capped at the devices present)")
    p.add_argument("--scaling", choices=["strong", "weak"], default="strong")
    p.add_argument("--batch", type=int, default=64 if on_cpu else 256,
                   help="global batch (strong scaling) or per-device batch (weak scaling)")
    p.add_argument("--seq-len", type=int, default=64 if on_cpu else 256)
    p.add_argument("--input-size", type=int, default=32 if on_cpu else 128)
    p.add_argument("--hidden", type=int, default=128 if on_cpu else 512)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes, few steps (a smoke run)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq_len, args.input_size, args.hidden = 16, 16, 8, 32
        args.steps, args.rounds = 3, 3

    available = jax.device_count()
    counts = [int(c) for c in args.devices.split(",") if c.strip()]
    skipped = [c for c in counts if c > available]
    counts = [c for c in counts if c <= available]

    env = device_info()
    print(f"device: {env['device']} x{available} ({env['backend']}), jax {env['jax']}, {env['cpu_count']} CPU cores")
    if on_cpu:
        print(f"NOTE: {available} *forced host* devices sharing {os.cpu_count()} CPU cores: this measures the overhead"
              " of data parallelism, not a speedup. Run on a GPU/TPU host for real scaling.")
    if skipped:
        print(f"skipped device counts {skipped}: only {available} devices")

    net = jaxrnn.stack(jaxrnn.lstm(args.hidden), num_layers=args.layers, head=args.classes)
    params = net.init(jax.random.key(0), args.input_size)
    tx = optax.adam(1e-3)
    rows = [bench(n, args, net, params, tx) for n in counts]
    base = next((r for r in rows if "step_ms" in r), None)
    for r in rows:
        if base is not None and "step_ms" in r:
            r["speedup"] = r["steps_per_s"] / base["steps_per_s"]
            r["throughput_speedup"] = r["examples_per_s"] / base["examples_per_s"]
    config = {k: v for k, v in vars(args).items() if k != "json"}
    title = (f"LSTM train step, {args.scaling} scaling, B={args.batch}{' per device' if args.scaling == 'weak' else ''}"
             f", T={args.seq_len}, I={args.input_size}, H={args.hidden}, layers={args.layers} ({env['backend']})")
    n_params = sum(int(a.size) for a in jax.tree.leaves(params))
    print(f"parameters: {n_params} elements (a data-parallel step all-reduces each once)")
    config["parameter_elements"] = n_params
    print_table(rows, ["devices", "global_batch", "per_device_batch", "first_call_s", "step_ms", "steps_per_s",
                       "examples_per_s", "speedup", "throughput_speedup", "all_gather", "all_reduce",
                       "all_reduce_elements", "all_to_all", "collective_permute"],
                {"first_call_s": ".2f", "step_ms": ".2f", "steps_per_s": ".1f", "examples_per_s": ".0f",
                 "speedup": ".2f", "throughput_speedup": ".2f"}, title=title)
    if args.json:
        path = write_json(args.json, rows, benchmark="data_parallel", env=env, config=config)
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
