"""Training your own cell: a minimal gated unit written here in ten lines, next to a zoo cell
and the built-in GRU, on one forecasting task.

A cell is any function ``step(params, h, x) -> (h, y)``. This file writes one, the minimal
gated unit (Zhou et al. 2016: one gate where a GRU has two; a cell the core libraries leave
to their users, equinox#371), as a plain function::

    f  = σ(W_f x + b_f + U_f h)
    h~ = tanh(W_h x + b_h + U_h (f * h))
    h' = (1 - f) * h + f * h~

and trains it with ``jaxrnn.unroll`` exactly as a built-in cell: ragged batches
(``seq_lengths``), ``jit``, ``grad``. The input projection ``x @ W + b`` depends on ``x``
only, so ``unroll`` computes it for all time steps at once, outside the loop, without
being told. Beside it: the LSTM with peephole connections of ``jaxrnn.zoo`` (a cell object
with ``init``, ``initial_state`` and a ``project``/``update`` pair) and ``jaxrnn.gru``.

The task is ``examples/sines.py``'s noisy sines with a twist: each series shows a context
of its own length (``context_min`` to ``context``, right-padded), and the model forecasts
the next ``horizon`` values at once from the state at the true end of the context::

    h, _ = jaxrnn.unroll(cell, params, h0, context, seq_lengths=lengths)   # h: state at each length
    forecast = dense(h)                                                     # [B, horizon]

The naive baseline repeats the last observed value; the noise floor is 0.01.

Run::

    python examples/custom_cell.py             # ~1-2 minutes on a quiet 2-core CPU
    python examples/custom_cell.py --smoke     # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn.train import TrainState, fit, make_train_step, mean_squared_error
from jaxrnn.zoo import peephole_lstm

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NOISE = 0.1
MODELS = ("mgu", "peephole_lstm", "gru")


# ----------------------------------------------------------------------------- your own cell


class MGUParams(NamedTuple):
    w: jax.Array      # [I, 2H]: input weights of the gate f and the candidate h~
    u: jax.Array      # [H, 2H]: recurrent weights
    b: jax.Array      # [2H]


def mgu(params: MGUParams, h, x):
    """A minimal gated unit, ``(params, h, x) -> (h, y)``: all jaxrnn needs of a cell."""
    H = h.shape[-1]
    gx = x @ params.w + params.b                      # x only: hoisted out of the loop by unroll
    f = jax.nn.sigmoid(gx[..., :H] + h @ params.u[:, :H])
    candidate = jnp.tanh(gx[..., H:] + (f * h) @ params.u[:, H:])
    h = (1 - f) * h + f * candidate
    return h, h


def init_mgu(key, input_size: int, hidden_size: int) -> MGUParams:
    """PyTorch's RNN initialisation, U(±1/sqrt(H)) for every tensor."""
    bound = 1 / math.sqrt(hidden_size)
    k_w, k_u, k_b = jax.random.split(key, 3)
    u = lambda k, shape: jax.random.uniform(k, shape, minval=-bound, maxval=bound)
    return MGUParams(u(k_w, (input_size, 2 * hidden_size)), u(k_u, (hidden_size, 2 * hidden_size)),
                     u(k_b, (2 * hidden_size,)))


# ----------------------------------------------------------------------------- data


def make_batch(rng: np.random.Generator, n: int, context: int, context_min: int, horizon: int,
               noise: float = NOISE):
    """``(xs [n, context], lengths [n], targets [n, horizon], clean [n, horizon])``, float32.

    Series as in ``examples/sines.py``; series ``b`` shows its first ``lengths[b]`` values
    (zeros after them) and the targets are the ``horizon`` values that follow.
    """
    t = np.arange(context + horizon)[None, :]
    amplitude = rng.uniform(0.5, 1.5, size=(n, 1))
    frequency = rng.uniform(1 / 50, 1 / 10, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    clean = amplitude * np.sin(2 * np.pi * frequency * t + phase)
    noisy = clean + noise * rng.standard_normal(clean.shape)
    lengths = rng.integers(context_min, context + 1, size=n)
    future = lengths[:, None] + np.arange(horizon)[None, :]
    xs = np.where(np.arange(context)[None, :] < lengths[:, None], noisy[:, :context], 0.0)
    take = lambda a: np.take_along_axis(a, future, axis=1).astype(np.float32)
    return xs.astype(np.float32), lengths.astype(np.int32), take(noisy), take(clean)


# ----------------------------------------------------------------------------- models


class Params(NamedTuple):
    cell: Any
    w: jax.Array      # [horizon, H] dense head from the final state
    b: jax.Array      # [horizon]


def make_model(name: str, hidden_size: int, horizon: int):
    """``(init(key) -> Params, forecast(params, xs [B, T], lengths [B]) -> [B, horizon])``."""
    if name not in MODELS:
        raise ValueError(f"`name` must be one of {MODELS}; got {name!r}.")
    cells = {"peephole_lstm": peephole_lstm(hidden_size, forget_bias=1.0), "gru": jaxrnn.gru(hidden_size)}
    cell = mgu if name == "mgu" else cells[name]

    def init(key):
        k_cell, k_head = jax.random.split(key)
        if name == "mgu":
            p = init_mgu(k_cell, 1, hidden_size)
        else:
            p = cell.init(k_cell, 1)
        bound = 1 / math.sqrt(hidden_size)
        w = jax.random.uniform(k_head, (horizon, hidden_size), minval=-bound, maxval=bound)
        return Params(p, w, jnp.zeros((horizon,)))

    def forecast(params, xs, lengths):
        # A plain function has no initial_state: its state is given. Cell objects start from zeros.
        h0 = jnp.zeros((xs.shape[0], hidden_size)) if name == "mgu" else None
        h, _ = jaxrnn.unroll(cell, params.cell, h0, xs[..., None], seq_lengths=lengths)
        final = h.h if isinstance(h, jaxrnn.LSTMState) else h
        return final @ params.w.T + params.b

    return init, forecast


# ----------------------------------------------------------------------------- training


def train_one(name, *, hidden_size, context, context_min, horizon, batch_size, steps, learning_rate, clip_norm,
              eval_every, test, seed, progress):
    """Trains one model; returns its results and its test forecasts."""
    init, forecast = make_model(name, hidden_size, horizon)
    params = init(jax.random.key(seed))

    def loss_fn(params, batch, key):
        xs, lengths, targets = batch[:3]
        return mean_squared_error(forecast(params, xs, lengths), targets)

    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(schedule))
    rng = np.random.default_rng(seed)
    batches = (make_batch(rng, batch_size, context, context_min, horizon) for _ in range(steps))
    predict = jax.jit(forecast)          # one compiled forward for the evaluations and the final forecast

    def eval_step(params, batch):
        return {"loss": mean_squared_error(predict(params, *batch[:2]), batch[2])}

    t0 = time.perf_counter()
    state, history = fit(TrainState.create(params, tx), make_train_step(loss_fn, tx), batches, key=None,
                         num_steps=steps, eval_step=eval_step, eval_data=[test[:3]],
                         eval_every=eval_every, log_every=min(25, eval_every), progress=progress)
    seconds = time.perf_counter() - t0
    pred = np.asarray(predict(state.params, *test[:2]))
    return {
        "test_mse": float(np.mean((pred - test[2]) ** 2)),
        "test_mse_clean": float(np.mean((pred - test[3]) ** 2)),
        "mse_by_horizon": np.mean((pred - test[2]) ** 2, axis=0).tolist(),
        "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
        "seconds": seconds,
        "history": {k: history[k] for k in ("step", "loss", "eval_step", "eval_loss")},
    }, pred


def main(
    models=MODELS,
    hidden_size: int = 32,
    context: int = 60,
    context_min: int = 20,
    horizon: int = 20,
    batch_size: int = 64,
    steps: int = 600,
    learning_rate: float = 1e-2,
    clip_norm: float = 1.0,
    eval_every: int = 100,
    test_size: int = 512,
    seed: int = 0,
    json_path: str | None = None,
    plot_path: str | None = os.path.join(RESULTS, "custom_cell.png"),
    progress: bool = True,
) -> dict:
    """Trains each model of ``models`` on the same data; returns (and saves) the results."""
    if not 1 <= context_min <= context or horizon < 1:
        raise ValueError(f"`context_min` must lie in [1, context={context}] and `horizon` be >= 1; "
                         f"got {context_min} and {horizon}.")
    test = make_batch(np.random.default_rng(seed + 12345), test_size, context, context_min, horizon)
    last = test[0][np.arange(test_size), test[1] - 1][:, None]
    naive = np.repeat(last, horizon, axis=1)
    results = {
        "models": {},
        "naive_mse": float(np.mean((naive - test[2]) ** 2)),
        "naive_mse_by_horizon": np.mean((naive - test[2]) ** 2, axis=0).tolist(),
        "noise_variance": NOISE**2,
        "config": dict(models=list(models), hidden_size=hidden_size, context=context, context_min=context_min,
                       horizon=horizon, batch_size=batch_size, steps=steps, learning_rate=learning_rate,
                       clip_norm=clip_norm, seed=seed),
        "device": str(jax.devices()[0]),
        "versions": {"jax": jax.__version__, "jaxrnn": jaxrnn.__version__},
    }
    preds = {}
    for name in models:
        print(f"--- {name}")
        results["models"][name], preds[name] = train_one(
            name, hidden_size=hidden_size, context=context, context_min=context_min, horizon=horizon,
            batch_size=batch_size, steps=steps, learning_rate=learning_rate, clip_norm=clip_norm,
            eval_every=eval_every, test=test, seed=seed, progress=progress)
        r = results["models"][name]
        print(f"{name}: test MSE {r['test_mse']:.4f} (clean {r['test_mse_clean']:.4f}), "
              f"{r['parameters']:,} parameters, {r['seconds']:.0f} s")
    print(f"naive last value: test MSE {results['naive_mse']:.4f}; noise floor {NOISE**2:.4f}")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        plot(test, preds, results, plot_path)
    return results


def plot(test, preds, results, path, num_series: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, lengths, targets, clean = test
    horizon = targets.shape[1]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for i, ax in enumerate(axes.flat[:num_series]):
        n = int(lengths[i])
        ax.plot(np.arange(n), xs[i, :n], ".", ms=3, color="0.4", label=f"context ({n} steps)")
        tf = np.arange(n, n + horizon)
        ax.plot(tf, targets[i], ".", ms=3, color="C0", label="future (noisy)")
        ax.plot(tf, clean[i], color="C0", lw=0.8, alpha=0.6, label="clean sine")
        for k, (name, pred) in enumerate(preds.items()):
            ax.plot(tf, pred[i], color=f"C{k + 1}", lw=1.3, label=name)
        ax.axvline(n - 0.5, color="k", lw=0.5)
        ax.set_title(f"test series {i}", fontsize=9)
    axes.flat[0].legend(fontsize=7)
    ax = axes.flat[3]
    for k, (name, r) in enumerate(results["models"].items()):
        ax.plot(np.arange(1, horizon + 1), r["mse_by_horizon"], color=f"C{k + 1}", label=name)
    ax.plot(np.arange(1, horizon + 1), results["naive_mse_by_horizon"], color="0.5", ls=":", label="naive")
    ax.axhline(results["noise_variance"], color="k", ls="--", lw=0.8, label="noise floor")
    ax.set_yscale("log")
    ax.set_xlabel("steps ahead")
    ax.set_title("test MSE by horizon", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes.flat[4]
    for k, (name, r) in enumerate(results["models"].items()):
        h = r["history"]
        ax.plot(h["step"], h["loss"], color=f"C{k + 1}", lw=0.8, alpha=0.7, label=f"{name} train")
        ax.plot(h["eval_step"], h["eval_loss"], "o-", color=f"C{k + 1}", ms=3, label=f"{name} test")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title("training (MSE)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes.flat[5]
    names = list(results["models"])
    ax.bar(names + ["naive"], [results["models"][n]["test_mse"] for n in names] + [results["naive_mse"]],
           color=[f"C{k + 1}" for k in range(len(names))] + ["0.5"])
    ax.axhline(results["noise_variance"], color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_title("test MSE", fontsize=9)
    fig.suptitle(f"own cell (MGU, a plain function) vs zoo peephole_lstm vs built-in gru, "
                 f"H={results['config']['hidden_size']}, {results['config']['steps']} steps")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--context", type=int, default=60)
    p.add_argument("--context-min", type=int, default=20)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(RESULTS, "custom_cell.json"))
    p.add_argument("--plot", default=os.path.join(RESULTS, "custom_cell.png"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny settings: a few seconds")
    a = p.parse_args()
    kw = dict(models=tuple(a.models), hidden_size=a.hidden_size, context=a.context, context_min=a.context_min,
              horizon=a.horizon, batch_size=a.batch_size, steps=a.steps, learning_rate=a.lr,
              eval_every=a.eval_every, seed=a.seed, json_path=a.json, plot_path=a.plot,
              progress=not a.no_progress)
    if a.smoke:
        kw.update(hidden_size=8, context=12, context_min=4, horizon=4, batch_size=8, steps=10, eval_every=5,
                  test_size=16)
    main(**kw)
