"""Writes the notebooks of this folder from the cell sources below, and runs them.

The notebooks are generated, not hand-edited: change a cell here, then::

    python examples/notebooks/_build.py                    # write the .ipynb files (no outputs)
    python examples/notebooks/_build.py --execute          # write, run, save them with outputs
    python examples/notebooks/_build.py --execute --small  # the same with JAXRNN_NOTEBOOK_SMALL=1
    python examples/notebooks/_build.py --execute quickstart   # only some notebooks

Running uses ``nbclient`` with the ``python3`` kernel. Progress bars print carriage
returns; the saved outputs keep only the last state of each bar, so the page a reader
sees on GitHub stays short.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent


def setup_cell(force_host_devices: bool = False) -> str:
    """The first code cell of every notebook: install jaxrnn if needed, show the devices."""
    devices = ""
    if force_host_devices:
        devices = '''
# On a CPU-only runtime, ask XLA for 8 virtual CPU devices so that the sharding below has
# something to split over (it must happen before JAX starts; GPUs and TPUs are unaffected).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
'''
    return f'''# Setup. jaxrnn is installed from its repository only when it is not importable (Colab),
# under constraints that hold the runtime's own JAX where it is: jaxrnn runs on Colab's jax,
# jaxlib, libtpu and flax, and upgrading them would leave a TPU runtime without its libtpu.
# JAXRNN_REPO: the git URL of the jaxrnn repository. Replace <org> with the owner of the
# repository you are reading this from (or set the JAXRNN_REPO environment variable).
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
{devices}
JAXRNN_REPO = os.environ.get("JAXRNN_REPO", "https://github.com/<org>/jaxrnn")
try:
    import jaxrnn
except ImportError:
    held = []
    for name in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax", "optax",
                 "orbax-checkpoint", "chex", "numpy"):
        try:
            held.append(f"{{name}}=={{importlib.metadata.version(name)}}")
        except importlib.metadata.PackageNotFoundError:
            pass
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\\n".join(held))
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-c", constraints.name,
                           f"git+{{JAXRNN_REPO}}"])
    import jaxrnn

import jax

# JAXRNN_NOTEBOOK_SMALL=1 shrinks every size (a quick smoke run, e.g. in the tests).
SMALL = os.environ.get("JAXRNN_NOTEBOOK_SMALL", "0") == "1"
print(f"jaxrnn {{jaxrnn.__version__}}, jax {{jax.__version__}}, backend: {{jax.default_backend()}}"
      f"{{' (small sizes)' if SMALL else ''}}")
print(jax.devices())
# Which accelerator this machine has, whatever JAX found: JAX falls back to the CPU quietly
# (one log line) when its GPU or TPU support does not match the runtime.
accelerator = ("GPU" if os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") else
               "TPU" if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
               or os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE") else None)
if jax.default_backend() != "cpu":
    print(f"Running on {{jax.device_count()}} {{jax.devices()[0].device_kind}} device(s).")
elif accelerator:
    print(f"WARNING: this machine has a {{accelerator}}, but JAX fell back to the CPU: everything below "
          f"runs on the CPU. Restart the runtime (Runtime > Restart session); if JAX still finds no "
          f"{{accelerator}}, its jax/jaxlib do not match this runtime.")
else:
    print("Running on the CPU (no GPU or TPU on this runtime).")'''


# =============================================================================== quickstart

QUICKSTART = [
    ("md", """# jaxrnn quickstart

Recurrent networks in JAX as plain functions and pytrees: a cell is a bundle of pure
functions, its parameters are a `NamedTuple` in PyTorch's layout, and everything that runs
over a sequence has the signature `(params, h, xs) -> (h, ys)`.

This notebook runs unchanged on a Colab CPU, GPU or TPU runtime (and locally). In Colab,
*File > Open notebook > GitHub* and paste the repository's URL; the first cell installs
jaxrnn. Set `JAXRNN_NOTEBOOK_SMALL=1` for a fast run with tiny sizes."""),
    ("code", setup_cell()),
    ("md", """## 1. A cell is a bundle of pure functions

`cell.init(key, input_size)` makes the parameters; `cell.step(params, h, x)` advances one
time step. Nothing is hidden in an object: `params` is a pytree you can print, save, pass
to `jax.grad` or to optax."""),
    ("code", """import jax.numpy as jnp

cell = jaxrnn.lstm(hidden_size=16)
params = cell.init(jax.random.key(0), input_size=3)   # LSTMParams(w_ih, w_hh, b_ih, b_hh), torch layout
print(cell)
print(jax.tree.map(jnp.shape, params))

x = jnp.ones((2, 3))                                  # one time step for a batch of 2
h, y = cell.step(params, None, x)                     # None: a zero initial state
print(type(h).__name__, "h:", h.h.shape, "c:", h.c.shape, "y:", y.shape)"""),
    ("md", """## 2. Sequences, ragged ones included

`jaxrnn.unroll` runs a cell over `xs` of shape `[B, T, input_size]` with one `lax.scan`.
With `seq_lengths` (a right-padded batch), each sequence's state stops at its own length
and the outputs past it are zero, so the final state `h` is the state at the true end of
every sequence."""),
    ("code", """xs = jax.random.normal(jax.random.key(1), (3, 6, 3))   # [B, T, input_size]
lengths = jnp.array([6, 4, 1])                         # the true length of each sequence

h, ys = jaxrnn.unroll(cell, params, None, xs, seq_lengths=lengths)
print("ys:", ys.shape)
print("sum |ys| per time step (zero past each length):")
print(jnp.abs(ys).sum(-1).round(2))

# The final state of sequence 1 is the state after its 4 real steps:
h_alone, _ = jaxrnn.unroll(cell, params, None, xs[1, :4])   # [T, I]: one unbatched sequence
print("h[1] == state after 4 steps:", bool(jnp.allclose(h.h[1], h_alone.h, atol=1e-6)))"""),
    ("md", """A network is the same kind of function: a stack of layers, mixed cell types,
bidirectional layers (the backward direction starts at each sequence's last *real*
element), dropout between layers and a dense head."""),
    ("code", """net = jaxrnn.stack([jaxrnn.gru(32), jaxrnn.lstm(16)], bidirectional=True, head=4)
net_params = net.init(jax.random.key(2), input_size=3)
forward = jax.jit(net)              # a network is a function: jit it like any other
h, ys = forward(net_params, None, xs, seq_lengths=lengths)
print(net)
print("ys:", ys.shape, "| one state per layer:", [type(s).__name__ for s in h])"""),
    ("md", """## 3. Gradients are just `jax.grad`

The gradient of a scan runs through jaxrnn's fused backward pass (the weight gradients are
one matrix product over the whole sequence, outside the loop). It is checked here against
finite differences."""),
    ("code", """from jax.test_util import check_grads

def loss(params, xs, lengths):
    h, ys = jaxrnn.unroll(cell, params, None, xs, seq_lengths=lengths)
    return jnp.mean(h.h ** 2) + jnp.mean(ys ** 2)

grads = jax.jit(jax.grad(loss))(params, xs, lengths)   # the same structure as params
print(jax.tree.map(lambda g: round(float(jnp.linalg.norm(g)), 4), grads))

check_grads(jax.jit(lambda p: loss(p, xs, lengths)), (params,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
print("check_grads against finite differences: ok")"""),
    ("md", """## 4. Training with optax: the adding problem

A classic long-range test for RNNs (Hochreiter & Schmidhuber, 1997): each time step holds a
random value in [0, 1] and a marker; exactly two steps are marked, and the network must
output the sum of the two marked values at the end of the sequence. Our sequences are
ragged (length `T/2` to `T`), so the answer is read at each sequence's own last step.
Always answering 1.0 (the mean) gives a mean squared error of 1/6; the LSTM gets far
below that once it has learned to remember the marked values (the loss sits on that
plateau for a while first)."""),
    ("code", """import functools

import numpy as np
import optax
from tqdm import tqdm

T = 10 if SMALL else 50             # longest sequence; lengths are T/2 .. T
HIDDEN = 16 if SMALL else 64
BATCH = 64
STEPS = 100 if SMALL else 2000


@functools.partial(jax.jit, static_argnums=(1, 2))
def make_batch(key, batch_size, T):
    kv, kl, k1, k2 = jax.random.split(key, 4)
    values = jax.random.uniform(kv, (batch_size, T))
    lengths = jax.random.randint(kl, (batch_size,), T // 2, T + 1)
    first = jax.random.randint(k1, (batch_size,), 0, lengths // 2)        # one mark in each half
    second = jax.random.randint(k2, (batch_size,), lengths // 2, lengths)
    t = jnp.arange(T)
    marks = ((t == first[:, None]) | (t == second[:, None])).astype(jnp.float32)
    xs = jnp.stack([values, marks], axis=-1) * (t < lengths[:, None])[..., None]   # zero padding
    return {"xs": xs, "seq_lengths": lengths, "targets": jnp.sum(values * marks, axis=1)}


example = make_batch(jax.random.key(0), 2, T)
print("xs[0, :6] (value, mark):\\n", example["xs"][0, :6].round(2))
print("lengths:", example["seq_lengths"], "targets:", example["targets"].round(3))"""),
    ("code", """net = jaxrnn.stack(jaxrnn.lstm(HIDDEN), head=1)
params = net.init(jax.random.key(1), input_size=2)


def loss_fn(params, batch):
    _, ys = net(params, None, batch["xs"], seq_lengths=batch["seq_lengths"])
    last = ys[jnp.arange(ys.shape[0]), batch["seq_lengths"] - 1, 0]   # output at each true last step
    return jnp.mean((last - batch["targets"]) ** 2)


tx = optax.adam(3e-3)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


losses = []
key = jax.random.key(2)
with tqdm(range(STEPS), desc="training", mininterval=2.0, file=sys.stdout) as bar:
    for step in bar:
        key, batch_key = jax.random.split(key)
        params, opt_state, loss = train_step(params, opt_state, make_batch(batch_key, BATCH, T))
        losses.append(loss)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
losses = np.asarray(jnp.stack(losses))
print(f"mean squared error: first step {losses[0]:.3f}, last 50 steps {losses[-50:].mean():.4f} "
      f"(always answering the mean: {1 / 6:.3f})")"""),
    ("code", """import matplotlib.pyplot as plt

smooth = np.convolve(losses, np.ones(50) / 50, mode="valid")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.semilogy(losses, alpha=0.25, label="per step")
ax.semilogy(np.arange(len(smooth)) + 49, smooth, label="moving average (50 steps)")
ax.axhline(1 / 6, ls="--", color="gray", label="always answer the mean")
ax.set(xlabel="step", ylabel="mean squared error", title=f"adding problem, LSTM({HIDDEN}), T up to {T}")
ax.legend()
plt.show()"""),
    ("code", """test = make_batch(jax.random.key(3), 5, T)
_, ys = jax.jit(net)(params, None, test["xs"], seq_lengths=test["seq_lengths"])
predictions = ys[jnp.arange(5), test["seq_lengths"] - 1, 0]
for length, target, prediction in zip(test["seq_lengths"], test["targets"], predictions):
    print(f"length {int(length):3d}: target {float(target):.3f}, prediction {float(prediction):.3f}")"""),
    ("md", """## Next

* `jaxrnn.train` wraps this loop: `TrainState`, `make_train_step`, `fit` (progress bar,
  evaluation, time budget) and checkpoints.
* `tpu_data_parallel.ipynb` trains on every device of the runtime (8 TPU cores) with
  `jaxrnn.parallel`.
* `scan_vs_loop.ipynb` measures why jaxrnn runs sequences as one `lax.scan`."""),
]


# =============================================================================== scan vs loop

SCAN_VS_LOOP = [
    ("md", """# Why an RNN in JAX runs as `lax.scan`: measured

Four ways to run the same LSTM cell over a sequence `xs` of shape `[B, T, I]`, timed on
whatever device this runtime has (the story of `benchmarks/scan_vs_loop.py`, measured
inline so the notebook needs only the installed package):

* **python_loop**: a Python `for` loop calling `cell.step` eagerly. Every step dispatches a
  dozen small operations from Python: nothing to compile, slow to run.
* **jit_unrolled**: `jax.jit` of that same loop. Tracing unrolls it into a program `T` steps
  long: fast to run, but the compile time (and the program) grows with `T`.
* **scan**: `jaxrnn.unroll` under `jit`: one `lax.scan` whose body is compiled once,
  whatever `T`; the input projection is one matrix product outside the loop.
* **scan_unroll8**: the same with `unroll=8`: 8 steps per loop iteration, fewer loop round
  trips (this is what jaxrnn picks by default on GPUs and TPUs).

For each, the compile time (`jax.jit(f).lower(...).compile()` of a fresh function) and the
steady-state time of a forward pass and of a gradient (after warm-up, waiting for the result
with `block_until_ready`, median of repeats). Set `JAXRNN_NOTEBOOK_SMALL=1` for tiny sizes."""),
    ("code", setup_cell()),
    ("code", """import statistics
import time

import jax.numpy as jnp

B, I, H = (8, 16, 32) if SMALL else (32, 64, 128)
TS = [4, 16] if SMALL else [16, 64, 256, 1024]
MAX_UNROLLED_T = 16 if SMALL else 256        # jit of the unrolled loop: compile grows with T
MAX_UNROLLED_GRAD_T = 4 if SMALL else 64
REPEATS = 3 if SMALL else 10
EAGER_BUDGET_S = 0.3 if SMALL else 3.0       # stop repeating the slow eager loop after this long
METHODS = ["python_loop", "jit_unrolled", "scan", "scan_unroll8"]
GRAD_METHODS = METHODS[:3] if SMALL else METHODS   # (small: skip the slowest gradient compile)

device = jax.devices()[0]
print(f"device: {device.device_kind} ({jax.default_backend()}); LSTM B={B}, I={I}, H={H}; T in {TS}")"""),
    ("code", """def loop_forward(cell, T):
    def forward(params, xs):
        h, ys = None, []
        for t in range(T):
            h, y = cell.step(params, h, xs[:, t])
            ys.append(y)
        return h, jnp.stack(ys, axis=1)
    return forward


def scan_forward(cell, unroll):
    def forward(params, xs):
        return jaxrnn.unroll(cell, params, None, xs, unroll=unroll)
    return forward


def build(method, cell, T):
    \"\"\"A fresh function for `method` (a new closure: no compilation cache is shared).\"\"\"
    if method in ("python_loop", "jit_unrolled"):
        return loop_forward(cell, T)
    return scan_forward(cell, 8 if method == "scan_unroll8" else 1)


def gradient(forward):
    return jax.grad(lambda params, xs: jnp.mean(forward(params, xs)[1] ** 2))


def median_ms(fn, *args, repeats=REPEATS, budget_s=None):
    jax.block_until_ready(fn(*args))                      # warm-up
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return 1e3 * statistics.median(times)


def compile_s(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0, compiled"""),
    ("code", """cell = jaxrnn.lstm(H)
params = cell.init(jax.random.key(0), input_size=I)
records = []
for T in TS:
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    for method in METHODS:
        rec = {"T": T, "method": method}
        if method == "python_loop":
            rec["run_ms"] = median_ms(build(method, cell, T), params, xs, budget_s=EAGER_BUDGET_S)
            if T <= 256 and method in GRAD_METHODS:
                rec["grad_ms"] = median_ms(gradient(build(method, cell, T)), params, xs, budget_s=EAGER_BUDGET_S)
        else:
            if method == "jit_unrolled" and T > MAX_UNROLLED_T:
                continue
            rec["compile_s"], fwd = compile_s(build(method, cell, T), params, xs)
            rec["run_ms"] = median_ms(fwd, params, xs)
            if method in GRAD_METHODS and (method != "jit_unrolled" or T <= MAX_UNROLLED_GRAD_T):
                rec["grad_compile_s"], grad = compile_s(gradient(build(method, cell, T)), params, xs)
                rec["grad_ms"] = median_ms(grad, params, xs)
        records.append(rec)
        fmt = lambda k, unit: f"{rec[k]:8.3f} {unit}" if k in rec else "       -  "
        print(f"T={T:<5d} {method:13s} compile {fmt('compile_s', 's')}  forward {fmt('run_ms', 'ms')}  "
              f"grad compile {fmt('grad_compile_s', 's')}  fwd+bwd {fmt('grad_ms', 'ms')}", flush=True)"""),
    ("code", """import matplotlib.pyplot as plt

panels = [("compile_s", "forward compile (s)"), ("run_ms", "forward (ms)"), ("grad_ms", "forward + backward (ms)")]
colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for ax, (key, label) in zip(axes, panels):
    for method in METHODS:
        points = [(r["T"], r[key]) for r in records if r["method"] == method and key in r]
        if points:
            ax.plot(*zip(*points), marker="o", color=colors[method], label=method)
    ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel=label)
    ax.grid(True, which="both", alpha=0.3)
axes[1].legend()   # python_loop compiles nothing: it is absent from the first panel
fig.suptitle(f"LSTM B={B}, I={I}, H={H} on {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
fig.tight_layout()
plt.show()"""),
    ("md", """## What the numbers say

The cell below reads the story off this run's measurements. What to expect:

* **scan compiles once**: its compile time hardly moves from the shortest to the longest
  sequence, while **jit of the unrolled loop** compiles a program as long as the sequence
  (and its gradient, twice that).
* **The eager Python loop** is the slowest to run by far: it pays Python and dispatch costs
  for every operation of every step, forward and backward.
* **unroll=8** trades a bigger loop body for fewer loop iterations. On GPUs and TPUs, where
  every loop iteration costs a few microseconds, it is usually faster; on a CPU the loop is
  cheap and the gain is small or negative (which is why `jaxrnn.default_unroll()` picks 1 on
  the CPU and 8 elsewhere)."""),
    ("code", """by = {(r["method"], r["T"]): r for r in records}
T_lo, T_hi = TS[0], TS[-1]
scan_lo, scan_hi = by[("scan", T_lo)], by[("scan", T_hi)]
print(f"scan compile: {scan_lo['compile_s']:.2f} s at T={T_lo} -> {scan_hi['compile_s']:.2f} s at T={T_hi} "
      f"(x{scan_hi['compile_s'] / scan_lo['compile_s']:.1f} for x{T_hi // T_lo} longer sequences)")
T_u = max(T for (m, T) in by if m == "jit_unrolled")
unrolled = by[("jit_unrolled", T_u)]
print(f"jit_unrolled compile at T={T_u}: {unrolled['compile_s']:.2f} s, "
      f"x{unrolled['compile_s'] / by[('scan', T_u)]['compile_s']:.1f} the scan's; "
      f"x{unrolled['compile_s'] / by[('jit_unrolled', T_lo)]['compile_s']:.1f} its own at T={T_lo}")
T_e = max(T for (m, T) in by if m == "python_loop" and "grad_ms" in by[(m, T)])
eager, scan = by[("python_loop", T_e)], by[("scan", T_e)]
print(f"python_loop at T={T_e}: forward x{eager['run_ms'] / scan['run_ms']:.0f} slower than scan, "
      f"fwd+bwd x{eager['grad_ms'] / scan['grad_ms']:.0f} slower")
for T in TS:
    s, u = by[("scan", T)], by[("scan_unroll8", T)]
    grad = f", fwd+bwd x{s['grad_ms'] / u['grad_ms']:.2f}" if "grad_ms" in u else ""
    print(f"T={T:<5d} unroll=8 vs 1: forward x{s['run_ms'] / u['run_ms']:.2f}{grad} (> 1: unroll=8 is faster)")"""),
]


# =============================================================================== data parallel

TPU_DATA_PARALLEL = [
    ("md", """# Data parallelism on every device of the runtime (8 TPU cores on a Colab TPU)

With `jaxrnn.parallel` (JAX's own `jax.sharding`; no `pmap`, no special step function):

1. `mesh = parallel.data_mesh()`: a one-axis mesh over all devices;
2. `parallel.replicate(state, mesh)`: a full copy of the params and optimizer state on every device;
3. `parallel.shard_batch(batch, mesh)`: the batch's leading axis split over the devices;
4. the ordinary single-device train step under `jax.jit`. The compiler (GSPMD) partitions
   it and inserts the all-reduce of the gradients: the gradient of the mean loss over the
   global batch, and so every update, is the single-device one.

On a Colab TPU runtime this uses its 8 cores; on a GPU runtime, its GPU(s); on a CPU runtime
the first cell asks XLA for 8 virtual CPU devices, which shows the mechanics but, sharing
the same cores, no speedup. Multi-host (TPU pods, GPU clusters): see `docs/distributed.md`.
Set `JAXRNN_NOTEBOOK_SMALL=1` for tiny sizes."""),
    ("code", setup_cell(force_host_devices=True)),
    ("code", """import time

import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxrnn import parallel, train

mesh = parallel.data_mesh()
N = mesh.shape["data"]
print(mesh)
print(f"{N} devices:", ", ".join(str(d) for d in mesh.devices))"""),
    ("md", """## The task: classify ragged noisy sine waves

Each sequence is a noisy sine wave whose frequency gives the class; sequences have lengths
from `T/4` to `T` (right-padded). A bidirectional LSTM reads them, and the class logits are
the head's outputs averaged over each sequence's real steps. Batches are made with numpy on
the host, as a real input pipeline would; every batch carries per-example `weights` (all 1
here) so that a padded last batch can be handled exactly (see below)."""),
    ("code", """NUM_CLASSES = 4
PER_DEVICE = 4 if SMALL else 16
BATCH = N * PER_DEVICE                 # the global batch: PER_DEVICE examples on each device
T = 32 if SMALL else 64
HIDDEN = 32 if SMALL else 64
STEPS = 40 if SMALL else 300


def make_batch(seed, batch_size):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, batch_size)
    lengths = rng.integers(T // 4, T + 1, batch_size)
    t = np.arange(T)
    freq = 0.04 * (1 + labels)                                  # cycles per step, by class
    phase = rng.uniform(0, 2 * np.pi, batch_size)
    signal = np.sin(2 * np.pi * freq[:, None] * t + phase[:, None]) + 0.5 * rng.normal(size=(batch_size, T))
    xs = (signal * (t < lengths[:, None]))[..., None]            # [B, T, 1], zero padding
    return {"xs": xs.astype(np.float32), "seq_lengths": lengths.astype(np.int32),
            "labels": labels.astype(np.int32), "weights": np.ones(batch_size, np.float32)}


net = jaxrnn.stack(jaxrnn.lstm(HIDDEN), bidirectional=True, head=NUM_CLASSES)
params = net.init(jax.random.key(0), input_size=1)


def loss_fn(params, batch, key=None):
    _, ys = net(params, None, batch["xs"], seq_lengths=batch["seq_lengths"])
    mask = train.sequence_mask(batch["seq_lengths"], ys.shape[1])[..., None]
    logits = jnp.sum(ys * mask, axis=1) / jnp.maximum(batch["seq_lengths"], 1)[:, None]
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    w = batch["weights"]
    loss = jnp.sum(w * per_example) / jnp.sum(w)
    accuracy = jnp.sum(w * (logits.argmax(-1) == batch["labels"])) / jnp.sum(w)
    return loss, {"accuracy": accuracy}


print(net, f"| global batch {BATCH} = {N} devices x {PER_DEVICE}, T={T}")"""),
    ("md", """## Placing the batch and the params

`shard_batch` splits every leaf of the batch along its leading axis: each device holds
`BATCH / N` rows. `replicate` puts a full copy of a pytree on every device."""),
    ("code", """batch = parallel.shard_batch(make_batch(0, BATCH), mesh)
xs = batch["xs"]
print("xs:", xs.shape, xs.sharding)
for shard in xs.addressable_shards[:8]:
    print(f"  {str(shard.device):24s} rows {shard.index[0].start or 0:4d}..{shard.index[0].stop or BATCH:4d}"
          f"  shape {shard.data.shape}")

replicated = parallel.replicate(params, mesh)
w = replicated.layers[0].forward.w_hh
print("w_hh:", w.shape, "fully replicated:", w.sharding.is_fully_replicated, "on", len(w.devices()), "devices")"""),
    ("md", """## The train step: written for one device

Nothing in it mentions devices. Because its inputs are sharded (the batch) and replicated
(the state), `jax.jit` compiles a program for all `N` devices with one all-reduce of the
gradients."""),
    ("code", """tx = optax.adam(3e-3)


@jax.jit
def train_step(state, batch):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return train.TrainState(params, opt_state, state.step + 1), {"loss": loss, **aux}


state = parallel.replicate(train.TrainState.create(params, tx), mesh)
hlo = train_step.lower(state, batch).compile().as_text()
print("all-reduce in the compiled step:", "all-reduce" in hlo)"""),
    ("md", """Checking the claim: the gradient on `N` devices equals the gradient of the same
batch on one device (up to float rounding: the sums are taken in a different order)."""),
    ("code", """grad_fn = jax.jit(jax.grad(lambda p, b: loss_fn(p, b)[0]))
host_batch = make_batch(1, BATCH)
g_one = grad_fn(params, host_batch)                                        # numpy in: one device
g_all = grad_fn(replicated, parallel.shard_batch(host_batch, mesh))         # N devices
diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_one), jax.tree.leaves(g_all)))
scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_one))
print(f"max |grad on 1 device - grad on {N} devices| = {diff:.2e} (largest gradient entry {scale:.2e})")"""),
    ("md", "## Training"),
    ("code", """history = {"loss": [], "accuracy": []}
with tqdm(range(STEPS), desc=f"training on {N} devices", mininterval=2.0, file=sys.stdout) as bar:
    for step in bar:
        batch = parallel.shard_batch(make_batch(100 + step, BATCH), mesh)
        state, metrics = train_step(state, batch)
        for k in history:
            history[k].append(metrics[k])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", acc=f"{float(metrics['accuracy']):.2f}")
history = {k: np.asarray(jnp.stack(v)) for k, v in history.items()}
tail = max(1, STEPS // 10)
print(f"last {tail} steps: loss {history['loss'][-tail:].mean():.3f}, "
      f"accuracy {history['accuracy'][-tail:].mean():.3f} (chance: {1 / NUM_CLASSES:.2f})")"""),
    ("code", """import matplotlib.pyplot as plt

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
ax1.plot(history["loss"])
ax1.set(xlabel="step", ylabel="cross-entropy", title=f"training loss, {N} devices")
ax2.plot(history["accuracy"])
ax2.axhline(1 / NUM_CLASSES, ls="--", color="gray", label="chance")
ax2.set(xlabel="step", ylabel="accuracy (training batch)", ylim=(0, 1.02))
ax2.legend()
fig.tight_layout()
plt.show()"""),
    ("md", """## A last batch that does not divide by the device count

`shard_batch` refuses a batch whose size does not divide by the number of devices, and says
so. `pad_batch` pads it (repeating the last example) and returns weights that are 0 on the
padding: with the weighted loss above, the padded batch gives exactly the loss and gradient
of the original one."""),
    ("code", """short = make_batch(2, BATCH + N // 2 + 1 if N > 1 else BATCH)
try:
    parallel.shard_batch(short, mesh)
except ValueError as e:
    print("ValueError:", e)

padded, weights = parallel.pad_batch(short, N)
padded["weights"] = weights
print(f"{short['xs'].shape[0]} examples padded to {padded['xs'].shape[0]}; weights sum to {weights.sum():.0f}")
eval_fn = jax.jit(loss_fn)
loss_short, _ = eval_fn(state.params, short)                               # one device, unpadded
loss_padded, _ = eval_fn(state.params, parallel.shard_batch(padded, mesh))  # N devices, padded
print(f"loss of the original batch {float(loss_short):.6f}, of the padded sharded batch {float(loss_padded):.6f}")"""),
    ("md", """## Throughput on 1, 2, 4, ... devices

The same global batch split over more devices (strong scaling). On TPU cores and GPUs the
steps per second grow with the devices (as long as each device still gets enough work).
The virtual CPU devices of a CPU runtime share the machine's few cores: there the numbers
show the overhead of splitting, or at best the use of a second core, and they are noisy;
they say nothing about how real devices scale."""),
    ("code", """def steps_per_second(n, steps=5 if SMALL else 20):
    sub_mesh = parallel.data_mesh(jax.devices()[:n])
    st = parallel.replicate(train.TrainState.create(params, tx), sub_mesh)
    b = parallel.shard_batch(make_batch(3, BATCH), sub_mesh)
    step = train_step                  # jit compiles anew for inputs placed on a different mesh
    st, m = step(st, b)
    st, m = step(st, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        st, m = step(st, b)
    jax.block_until_ready(m)
    return steps / (time.perf_counter() - t0)


counts = sorted({1, N}) if SMALL else [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= N]
rates = [steps_per_second(n) for n in counts]
for n, r in zip(counts, rates):
    print(f"{n:3d} device{'s' if n > 1 else ' '}: {r:8.1f} steps/s  ({r * BATCH:9.0f} examples/s, x{r / rates[0]:.2f})")
if jax.default_backend() == "cpu":
    print(f"(virtual CPU devices sharing {os.cpu_count()} cores: not a measure of scaling)")
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar([str(n) for n in counts], rates)
ax.set(xlabel="devices", ylabel="steps / s", title=f"global batch {BATCH} on {jax.devices()[0].platform}")
plt.show()"""),
    ("md", """## The same with `jaxrnn.train`

`make_train_step(..., mesh=mesh)` shards each batch itself, and `fit(..., mesh=mesh)` also
replicates the state; the loop, logging and evaluation are `fit`'s."""),
    ("code", """step = train.make_train_step(loss_fn, tx, mesh=mesh)
state0 = train.TrainState.create(net.init(jax.random.key(0), input_size=1), tx)
state, log = train.fit(state0, step, lambda epoch: (make_batch(1000 + i, BATCH) for i in range(10)),
                       key=None, num_steps=10, mesh=mesh, progress=False, log_every=5)
print({k: np.round(v, 3).tolist() for k, v in log.items() if k in ("step", "loss", "accuracy")})"""),
]


NOTEBOOKS = {
    "quickstart": QUICKSTART,
    "scan_vs_loop": SCAN_VS_LOOP,
    "tpu_data_parallel": TPU_DATA_PARALLEL,
}


def build(name: str) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in NOTEBOOKS[name]]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["accelerator"] = "TPU" if name == "tpu_data_parallel" else "GPU"  # Colab's runtime hint
    nb.metadata["colab"] = {"provenance": []}
    # Stable ids keep diffs small when a notebook is rebuilt.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:12]}-{i:02d}"
    return nb


def _collapse_carriage_returns(text: str) -> str:
    """Keeps what a terminal would show: on each line, the text after the last ``\\r``."""
    lines = text.split("\n")
    return "\n".join(line.rstrip("\r").split("\r")[-1] for line in lines)


def clean_outputs(nb: nbformat.NotebookNode) -> None:
    """Merges consecutive stream outputs and keeps only the last state of progress bars."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.get("outputs", []):
            if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                    and merged[-1]["name"] == out["name"]):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = _collapse_carriage_returns(out["text"])
        cell["outputs"] = merged
        cell.get("metadata", {}).pop("execution", None)


def execute(nb: nbformat.NotebookNode, *, small: bool, timeout: int = 1800) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    env_backup = os.environ.get("JAXRNN_NOTEBOOK_SMALL")
    os.environ["JAXRNN_NOTEBOOK_SMALL"] = "1" if small else "0"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        if env_backup is None:
            os.environ.pop("JAXRNN_NOTEBOOK_SMALL", None)
        else:
            os.environ["JAXRNN_NOTEBOOK_SMALL"] = env_backup
    clean_outputs(nb)
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=list(NOTEBOOKS), help=f"which notebooks ({', '.join(NOTEBOOKS)})")
    p.add_argument("--execute", action="store_true", help="run them and save the outputs")
    p.add_argument("--small", action="store_true", help="run with JAXRNN_NOTEBOOK_SMALL=1")
    args = p.parse_args(argv)
    for name in args.names:
        if name not in NOTEBOOKS:
            p.error(f"unknown notebook {name!r}; choose from {', '.join(NOTEBOOKS)}")
        nb = build(name)
        if args.execute:
            t0 = time.perf_counter()
            execute(nb, small=args.small)
            print(f"{name}: executed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
