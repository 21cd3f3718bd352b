"""Forecasting noisy sine waves with a GRU layer feeding an LSTM layer.

Each series is one sine with a random amplitude, frequency and phase, plus noise::

    x_t = A sin(2 pi f t + phi) + eps_t,   A ~ U(0.5, 1.5), f ~ U(1/50, 1/10), phi ~ U(0, 2 pi),
                                           eps_t ~ N(0, 0.1^2)

The model sees the first ``context`` steps and forecasts the next ``horizon``. It is a
two-layer stack of *different* cells -- a GRU whose outputs are the inputs of an LSTM --
with a dense head giving one number per step::

    net = jaxrnn.stack([jaxrnn.gru(64), jaxrnn.lstm(64)], head=1)

Encoding and decoding use the same network (one-to-many forecasting)::

    h, ys = net(params, None, context)       # ys[:, t] predicts x[t + 1]; ys[:, -1] is the 1st forecast
    for k in range(1, horizon):              # autoregressive: feed the prediction back
        h, y = net.step(params, h, y)        # (a lax.scan over net.step)

Training minimises the MSE of the whole free-running forecast (the gradient flows through
the fed-back predictions, so the model learns to correct its own drift rather than only
the next step) plus the MSE of the encoder's one-step-ahead predictions over the context.

The naive baseline repeats the last observed value. Test MSEs are reported against the
noisy future (floor: the noise variance, 0.01) and against the noise-free sine.

Run::

    python examples/sines.py                 # 1500 steps: 1-2 minutes on a quiet 2-core CPU
    python examples/sines.py --smoke         # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn.train import TrainState, fit, make_eval_step, make_train_step, mean_squared_error

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NOISE = 0.1


# ----------------------------------------------------------------------------- data


def make_series(rng: np.random.Generator, n: int, length: int, noise: float = NOISE):
    """``(noisy, clean)``: float32 ``[n, length]`` sines with random amplitude, frequency, phase."""
    t = np.arange(length)[None, :]
    amplitude = rng.uniform(0.5, 1.5, size=(n, 1))
    frequency = rng.uniform(1 / 50, 1 / 10, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    clean = amplitude * np.sin(2 * np.pi * frequency * t + phase)
    noisy = clean + noise * rng.standard_normal(clean.shape)
    return noisy.astype(np.float32), clean.astype(np.float32)


# ----------------------------------------------------------------------------- model


def make_net(hidden_size: int = 64) -> jaxrnn.Stack:
    """A GRU layer feeding an LSTM layer, then a dense head to one value per step."""
    return jaxrnn.stack([jaxrnn.gru(hidden_size), jaxrnn.lstm(hidden_size)], head=1)


def forecast(net: jaxrnn.Stack, params, context: jax.Array, horizon: int):
    """Encodes ``context [B, C]``, then decodes ``horizon`` steps feeding predictions back.

    Returns:
      ``(one_step [B, C-1], future [B, horizon])``: the encoder's predictions of
      ``context[:, 1:]`` and the free-running forecast.
    """
    h, ys = net(params, None, context[..., None])          # ys: [B, C, 1]
    first = ys[:, -1]                                     # [B, 1], predicts x[C]

    def decode(carry, _):
        h, y = carry
        h, y = net.step(params, h, y)
        return (h, y), y[:, 0]

    _, rest = jax.lax.scan(decode, (h, first), None, length=horizon - 1)   # [horizon-1, B]
    future = jnp.concatenate([first, rest.T], axis=1)
    return ys[:, :-1, 0], future


# ----------------------------------------------------------------------------- training


def main(
    context: int = 60,
    horizon: int = 40,
    hidden_size: int = 64,
    batch_size: int = 64,
    steps: int = 1500,
    learning_rate: float = 3e-3,
    clip_norm: float = 1.0,
    eval_every: int = 250,
    test_size: int = 512,
    seed: int = 0,
    json_path: str | None = None,
    plot_path: str | None = os.path.join(RESULTS, "sines.png"),
    progress: bool = True,
) -> dict:
    """Trains the forecaster; returns (and saves) the results."""
    if horizon < 1 or context < 2:
        raise ValueError(f"`context` must be >= 2 and `horizon` >= 1; got {context} and {horizon}.")
    net = make_net(hidden_size)
    params = net.init(jax.random.key(seed), input_size=1)
    print(f"model: {net!r}, {sum(x.size for x in jax.tree.leaves(params)):,} parameters; "
          f"context {context}, horizon {horizon}")

    def loss_fn(params, batch, key):
        series = batch[0]
        one_step, future = forecast(net, params, series[:, :context], horizon)
        forecast_mse = mean_squared_error(future, series[:, context:])
        one_step_mse = mean_squared_error(one_step, series[:, 1:context])
        return forecast_mse + one_step_mse, {"forecast_mse": forecast_mse, "one_step_mse": one_step_mse}

    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(schedule))
    train_step = make_train_step(loss_fn, tx)  # the one jitted step
    eval_step = make_eval_step(loss_fn)

    rng = np.random.default_rng(seed)
    batches = (make_series(rng, batch_size, context + horizon) for _ in range(steps))
    test_noisy, test_clean = make_series(np.random.default_rng(seed + 12345), test_size, context + horizon)

    t0 = time.perf_counter()
    state, history = fit(TrainState.create(params, tx), train_step, batches, key=None, num_steps=steps,
                         eval_step=eval_step, eval_data=[(test_noisy,)], eval_every=eval_every,
                         log_every=min(25, eval_every), progress=progress)
    seconds = time.perf_counter() - t0

    _, pred = jax.jit(forecast, static_argnums=(0, 3))(net, state.params, jnp.asarray(test_noisy[:, :context]),
                                                        horizon)
    pred = np.asarray(pred)
    truth, clean = test_noisy[:, context:], test_clean[:, context:]
    naive = np.repeat(test_noisy[:, context - 1: context], horizon, axis=1)
    results = {
        "test_mse": float(np.mean((pred - truth) ** 2)),
        "naive_mse": float(np.mean((naive - truth) ** 2)),
        "test_mse_clean": float(np.mean((pred - clean) ** 2)),
        "naive_mse_clean": float(np.mean((naive - clean) ** 2)),
        "noise_variance": NOISE**2,
        "mse_by_horizon": np.mean((pred - truth) ** 2, axis=0).tolist(),
        "naive_mse_by_horizon": np.mean((naive - truth) ** 2, axis=0).tolist(),
        "steps": steps,
        "seconds": seconds,
        "history": {k: history[k] for k in ("step", "loss", "forecast_mse", "eval_step", "eval_forecast_mse")},
        "config": dict(context=context, horizon=horizon, hidden_size=hidden_size, batch_size=batch_size,
                       steps=steps, learning_rate=learning_rate, clip_norm=clip_norm, seed=seed,
                       model=repr(net)),
        "device": str(jax.devices()[0]),
        "versions": {"jax": jax.__version__, "jaxrnn": jaxrnn.__version__},
    }
    print(f"test MSE {results['test_mse']:.4f} (naive last value {results['naive_mse']:.4f}; noise floor "
          f"{NOISE**2:.4f}); against the clean sine {results['test_mse_clean']:.4f} "
          f"(naive {results['naive_mse_clean']:.4f}); {seconds:.0f} s")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        plot(test_noisy, test_clean, pred, results, context, plot_path)
    return results


def plot(noisy, clean, pred, results, context, path, num_series: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    t = np.arange(noisy.shape[1])
    tf = t[context:]
    for i, ax in enumerate(axes.flat[:num_series]):
        ax.plot(t[:context], noisy[i, :context], ".", ms=3, color="0.4", label="context (noisy)")
        ax.plot(tf, noisy[i, context:], ".", ms=3, color="C0", label="future (noisy)")
        ax.plot(t, clean[i], color="C0", lw=0.8, alpha=0.6, label="clean sine")
        ax.plot(tf, pred[i], color="C3", lw=1.5, label="forecast")
        ax.plot(tf, np.full_like(tf, noisy[i, context - 1], dtype=float), color="C2", ls=":", label="naive")
        ax.axvline(context - 0.5, color="k", lw=0.5)
        ax.set_title(f"test series {i}", fontsize=9)
    axes.flat[0].legend(fontsize=7)
    ax = axes.flat[4]
    ax.plot(np.arange(1, len(tf) + 1), results["mse_by_horizon"], color="C3", label="GRU -> LSTM")
    ax.plot(np.arange(1, len(tf) + 1), results["naive_mse_by_horizon"], color="C2", ls=":", label="naive")
    ax.axhline(results["noise_variance"], color="k", ls="--", lw=0.8, label="noise floor")
    ax.set_yscale("log")
    ax.set_xlabel("steps ahead")
    ax.set_title("test MSE by horizon", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes.flat[5]
    h = results["history"]
    ax.plot(h["step"], h["forecast_mse"], label="train forecast MSE")
    ax.plot(h["eval_step"], h["eval_forecast_mse"], "o-", label="test forecast MSE")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title("training", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(f"{results['config']['model']}: test MSE {results['test_mse']:.4f}, naive {results['naive_mse']:.4f}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=60)
    p.add_argument("--horizon", type=int, default=40)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(RESULTS, "sines.json"))
    p.add_argument("--plot", default=os.path.join(RESULTS, "sines.png"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny settings: a few seconds")
    a = p.parse_args()
    kw = dict(context=a.context, horizon=a.horizon, hidden_size=a.hidden_size, batch_size=a.batch_size,
              steps=a.steps, learning_rate=a.lr, eval_every=a.eval_every, seed=a.seed, json_path=a.json,
              plot_path=a.plot, progress=not a.no_progress)
    if a.smoke:
        kw.update(context=12, horizon=6, hidden_size=8, batch_size=8, steps=10, eval_every=5, test_size=16)
    main(**kw)
