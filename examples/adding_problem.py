"""The adding problem (Hochreiter & Schmidhuber, 1997): which cells learn a long dependency?

Every input sequence has ``T`` steps (``T >= 100`` makes it hard) and two channels::

    values:  0.31 0.87 0.05 0.66 ... 0.42 0.19 0.93 ...     uniform on [0, 1]
    markers: 0    1    0    0    ... 0    1    0    ...     exactly two 1s, one in each half
    target:  0.87 + 0.19 = 1.06                             the sum of the two marked values

The model reads the whole sequence and regresses the target from its final state
(many-to-one, mean squared error). A model that ignores the markers can do no better than
predicting the mean, 1.0, whose MSE is the variance of a sum of two U(0, 1), 2/12 ~ 0.167:
the *chance baseline*. Beating it means carrying a value across ~T/2 steps.

Three cells get the same budget (steps, batch, learning rate, hidden size): a vanilla
tanh RNN (``jaxrnn.rnn``), a GRU and an LSTM; and a fourth model, a bidirectional GRU
encoder (``jaxrnn.stack(jaxrnn.gru(H), bidirectional=True)``) whose forward and backward
final states are concatenated. With ``--min-length L`` the sequences have random lengths
in ``[L, T]``, right-padded to ``T`` with zeros and run with ``seq_lengths``: the forward
state stops at each true end, and the backward direction starts there, so padding never
enters either (the markers are then placed in each half of the *true* length).

The final state, not the last output, feeds the regression head: with ``seq_lengths``
the state of every direction is the one at the end of its walk over the valid steps,
while ``ys[:, -1]`` would be padding (zero) for short sequences.

Run::

    python examples/adding_problem.py                     # T=100, a few minutes on a CPU
    python examples/adding_problem.py --T 200 --min-length 100   # ragged, padded to 200
    python examples/adding_problem.py --smoke             # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn.train import TrainState, fit, make_eval_step, make_train_step, mean_squared_error

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CHANCE_MSE = 1.0 / 6.0  # Var(U1 + U2) = 2 / 12: the MSE of always predicting 1.0
MODELS = ("rnn", "gru", "lstm", "bigru")


# ----------------------------------------------------------------------------- data


def make_batch(rng: np.random.Generator, batch_size: int, T: int, min_length: int | None = None):
    """A batch of adding-problem sequences.

    Returns:
      ``(xs, seq_lengths, target)``: float32 ``[B, T, 2]`` (values, markers; zero past each
      length), int32 ``[B]`` lengths (all ``T`` unless ``min_length`` is given) and float32
      ``[B]`` targets.
    """
    min_length = T if min_length is None else min_length
    lengths = rng.integers(min_length, T + 1, size=batch_size)
    values = rng.uniform(0.0, 1.0, size=(batch_size, T)).astype(np.float32)
    half = lengths // 2
    first = (rng.uniform(size=batch_size) * half).astype(np.int64)                   # in [0, L/2)
    second = half + (rng.uniform(size=batch_size) * (lengths - half)).astype(np.int64)  # in [L/2, L)
    rows = np.arange(batch_size)
    markers = np.zeros((batch_size, T), np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    valid = np.arange(T)[None, :] < lengths[:, None]
    xs = np.stack([values * valid, markers], axis=-1)
    target = values[rows, first] + values[rows, second]
    return xs, lengths.astype(np.int32), target.astype(np.float32)


# ----------------------------------------------------------------------------- model


class Params(NamedTuple):
    encoder: jaxrnn.StackParams
    head: jaxrnn.DenseParams  # final state(s) -> the predicted sum


def make_encoder(name: str, hidden_size: int) -> jaxrnn.Stack:
    if name == "rnn":
        return jaxrnn.stack(jaxrnn.rnn(hidden_size))
    if name == "gru":
        return jaxrnn.stack(jaxrnn.gru(hidden_size))
    if name == "lstm":
        return jaxrnn.stack(jaxrnn.lstm(hidden_size))
    if name == "bigru":
        return jaxrnn.stack(jaxrnn.gru(hidden_size), bidirectional=True)
    raise ValueError(f"`name` must be one of {MODELS}; got {name!r}.")


def final_features(encoder: jaxrnn.Stack, h) -> jax.Array:
    """The last layer's final state as a feature vector ``[B, F]``."""
    last = h[-1]
    hidden = lambda s: s.h if isinstance(s, jaxrnn.LSTMState) else s
    if encoder.bidirectional:
        return jnp.concatenate([hidden(last.forward), hidden(last.backward)], axis=-1)
    return hidden(last)


def init_params(key, encoder: jaxrnn.Stack) -> Params:
    k_enc, k_head = jax.random.split(key)
    features = encoder.output_size
    bound = 1.0 / np.sqrt(features)
    head = jaxrnn.DenseParams(jax.random.uniform(k_head, (1, features), minval=-bound, maxval=bound),
                              jnp.zeros((1,)))
    return Params(encoder.init(k_enc, input_size=2), head)


def predict(encoder: jaxrnn.Stack, params: Params, xs, seq_lengths):
    h, _ = encoder(params.encoder, None, xs, seq_lengths=seq_lengths)
    features = final_features(encoder, h)
    return (features @ params.head.w.T + params.head.b)[:, 0]


# ----------------------------------------------------------------------------- training


def train_one(name: str, *, T, min_length, hidden_size, batch_size, steps, learning_rate, clip_norm,
              eval_every, test_batch, seed, progress):
    encoder = make_encoder(name, hidden_size)
    params = init_params(jax.random.key(seed), encoder)

    def loss_fn(params, batch, key):
        xs, lengths, target = batch
        return mean_squared_error(predict(encoder, params, xs, lengths), target)

    tx = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))
    train_step = make_train_step(loss_fn, tx)  # the one jitted step
    eval_step = make_eval_step(loss_fn)
    rng = np.random.default_rng(seed + 1)  # same data stream for every model
    batches = (make_batch(rng, batch_size, T, min_length) for _ in range(steps))

    t0 = time.perf_counter()
    state, history = fit(TrainState.create(params, tx), train_step, batches, key=None, num_steps=steps,
                         eval_step=eval_step, eval_data=[test_batch], eval_every=eval_every,
                         log_every=min(50, eval_every), progress=progress)
    seconds = time.perf_counter() - t0
    return {
        "model": repr(encoder),
        "test_mse": history["eval_loss"][-1],
        "seconds": seconds,
        "eval_step": history["eval_step"],
        "eval_mse": history["eval_loss"],
        "train_step": history["step"],
        "train_mse": history["loss"],
    }


def main(
    T: int = 100,
    min_length: int | None = None,
    models: tuple = MODELS,
    hidden_size: int = 64,
    batch_size: int = 64,
    steps: int = 2000,
    learning_rate: float = 3e-3,
    clip_norm: float = 1.0,
    eval_every: int = 100,
    test_size: int = 1000,
    seed: int = 0,
    json_path: str | None = None,
    plot_path: str | None = os.path.join(RESULTS, "adding_problem.png"),
    progress: bool = True,
) -> dict:
    """Trains every model in ``models`` with the same budget; returns (and saves) the results."""
    if min_length is not None and not 2 <= min_length <= T:
        raise ValueError(f"`min_length` must lie in [2, T={T}]; got {min_length}.")
    test_batch = make_batch(np.random.default_rng(12345), test_size, T, min_length)
    ragged = "" if min_length is None else f", lengths in [{min_length}, {T}] padded to {T}"
    print(f"adding problem: T={T}{ragged}; {steps} steps of batch {batch_size}; chance MSE {CHANCE_MSE:.3f}")
    results = {"T": T, "min_length": min_length, "chance_mse": CHANCE_MSE, "steps": steps,
               "batch_size": batch_size, "hidden_size": hidden_size, "learning_rate": learning_rate,
               "models": {}}
    for name in models:
        r = train_one(name, T=T, min_length=min_length, hidden_size=hidden_size, batch_size=batch_size,
                      steps=steps, learning_rate=learning_rate, clip_norm=clip_norm, eval_every=eval_every,
                      test_batch=test_batch, seed=seed, progress=progress)
        results["models"][name] = r
        verdict = "learned it" if r["test_mse"] < 0.1 * CHANCE_MSE else (
            "not learned: chance level" if r["test_mse"] > 0.8 * CHANCE_MSE else "partly")
        print(f"{name:6s} {r['model']}: test MSE {r['test_mse']:.4f} ({verdict}), {r['seconds']:.0f} s")
    results["test_mse"] = {name: r["test_mse"] for name, r in results["models"].items()}
    results["device"] = str(jax.devices()[0])
    results["versions"] = {"jax": jax.__version__, "jaxrnn": jaxrnn.__version__}
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        plot(results, plot_path)
    return results


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results["models"].items():
        ax.plot(r["eval_step"], r["eval_mse"], "o-", ms=3, label=f"{name}: {r['test_mse']:.4f}")
    ax.axhline(results["chance_mse"], color="k", ls="--", lw=1, label="chance (predict 1.0)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("test MSE")
    ragged = "" if results["min_length"] is None else f", lengths {results['min_length']}-{results['T']}"
    ax.set_title(f"adding problem, T={results['T']}{ragged}")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=100, help="sequence length (padded length with --min-length)")
    p.add_argument("--min-length", type=int, default=None, help="random lengths in [min-length, T], padded")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(RESULTS, "adding_problem.json"))
    p.add_argument("--plot", default=os.path.join(RESULTS, "adding_problem.png"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny settings: a few seconds")
    a = p.parse_args()
    kw = dict(T=a.T, min_length=a.min_length, models=tuple(a.models), hidden_size=a.hidden_size,
              batch_size=a.batch_size, steps=a.steps, learning_rate=a.lr, eval_every=a.eval_every, seed=a.seed,
              json_path=a.json, plot_path=a.plot, progress=not a.no_progress)
    if a.smoke:
        kw.update(T=min(a.T, 20), min_length=None if a.min_length is None else min(a.min_length, 10),
                  hidden_size=8, batch_size=16, steps=20, eval_every=10, test_size=64)
    main(**kw)
