"""A flax NNX model with a jaxrnn bidirectional LSTM, beside the same model on flax's own LSTM.

The task is ``classify_digits``'s: scikit-learn's 8x8 digits read row by row (8 steps of
8 pixels) and classified into 10 classes. The model, written once in flax NNX::

    rows [B, 8, 8] -> nnx.Linear(8, E) -> bidirectional LSTM(H) -> mean over time -> nnx.Linear(2H, 10)

is built twice, differing only in the recurrent layer:

* ``jaxrnn``: ``jaxrnn.nnx.RNN(jaxrnn.stack(jaxrnn.lstm(H), bidirectional=True), E)``;
* ``flax``: ``nnx.Bidirectional(nnx.RNN(nnx.OptimizedLSTMCell(E, H)), nnx.RNN(...))``.

Both start as the *same function*: the flax cells' initial weights are converted with
``jaxrnn.interop.flax.from_flax`` and the input and output layers are copied (the
first logits agree to ~1e-7). They do not stay identical: jaxrnn keeps PyTorch's two
LSTM bias vectors (``b_ih``, ``b_hh``) where flax has one, and Adam moves each of the
two by a full step, so the runs drift apart from the first update, and their
accuracies agree only as two runs of one model do. Both train with ``nnx.Optimizer``
(Adam, cosine decay) in one ``nnx.jit`` step; their epochs alternate, so a busy
machine slows both alike. The time of each, compilation apart, is printed.

Run::

    python examples/flax_nnx.py              # both models' test accuracy and training time
    python examples/flax_nnx.py --smoke      # a few seconds, for the tests
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
from flax import nnx

import jaxrnn
import jaxrnn.nnx
from jaxrnn.interop.flax import from_flax

NUM_CLASSES = 10


# ----------------------------------------------------------------------------- data


def load_data(test_fraction: float = 0.2, seed: int = 0):
    """Digits as ``[N, 8, 8]`` float32 row sequences in [0, 1]; a stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                                        random_state=seed)
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------- models


class FlaxClassifier(nnx.Module):
    """Input layer, flax's bidirectional ``OptimizedLSTMCell``, mean over time, head."""

    def __init__(self, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(8, embed, rngs=rngs)
        self.rnn = nnx.Bidirectional(nnx.RNN(nnx.OptimizedLSTMCell(embed, hidden, rngs=rngs)),
                                     nnx.RNN(nnx.OptimizedLSTMCell(embed, hidden, rngs=rngs)))
        self.head = nnx.Linear(2 * hidden, NUM_CLASSES, rngs=rngs)

    def __call__(self, xs):
        ys = self.rnn(self.embed(xs))                      # [B, T, 2H]
        return self.head(ys.mean(axis=1))


class JaxrnnClassifier(nnx.Module):
    """The same model with a jaxrnn bidirectional LSTM stack as the recurrent layer."""

    def __init__(self, embed: int, hidden: int, *, rngs: nnx.Rngs, rnn_params=None):
        self.embed = nnx.Linear(8, embed, rngs=rngs)
        net = jaxrnn.stack(jaxrnn.lstm(hidden), bidirectional=True)
        if rnn_params is None:
            self.rnn = jaxrnn.nnx.RNN(net, embed, rngs=rngs)
        else:
            self.rnn = jaxrnn.nnx.RNN.from_params(net, rnn_params)
        self.head = nnx.Linear(2 * hidden, NUM_CLASSES, rngs=rngs)

    def __call__(self, xs):
        _, ys = self.rnn(self.embed(xs))                   # [B, T, 2H]
        return self.head(ys.mean(axis=1))


def twin_models(embed: int, hidden: int, seed: int):
    """The flax model and a jaxrnn one holding the same initial weights."""
    flax_model = FlaxClassifier(embed, hidden, rngs=nnx.Rngs(seed))
    _, forward = from_flax(flax_model.rnn.forward_rnn.cell)
    _, backward = from_flax(flax_model.rnn.backward_rnn.cell)
    rnn_params = jaxrnn.StackParams((jaxrnn.Bidirectional(forward, backward),))
    ours = JaxrnnClassifier(embed, hidden, rngs=nnx.Rngs(seed + 1), rnn_params=rnn_params)
    nnx.update(ours.embed, nnx.state(flax_model.embed))
    nnx.update(ours.head, nnx.state(flax_model.head))
    return {"jaxrnn": ours, "flax": flax_model}


# ----------------------------------------------------------------------------- training


def _loss(model, xs, labels):
    logits = model(xs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


@nnx.jit
def train_step(model, optimizer, xs, labels):
    (loss, _), grads = nnx.value_and_grad(_loss, has_aux=True)(model, xs, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model, xs, labels):
    loss, logits = _loss(model, xs, labels)
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def main(
    embed: int = 32,
    hidden_size: int = 64,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    seed: int = 0,
    json_path: str | None = None,
    verbose: bool = True,
) -> dict:
    """Trains both models, epochs alternating; returns (and saves) accuracy and time of each."""
    say = print if verbose else (lambda *a, **k: None)
    x_train, y_train, x_test, y_test = load_data(seed=seed)
    say(f"digits: {len(x_train)} train, {len(x_test)} test sequences of 8 rows x 8 pixels")
    models = twin_models(embed, hidden_size, seed)
    steps_per_epoch = len(x_train) // batch_size
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    optimizers = {name: nnx.Optimizer(m, optax.adam(schedule), wrt=nnx.Param) for name, m in models.items()}
    seconds = {name: 0.0 for name in models}
    compile_seconds = {}     # each model's first step, compilation included, timed on its own
    initial = {name: evaluate(model, x_test, y_test) for name, model in models.items()}
    say("before training, test loss " + ", ".join(f"{name} {float(initial[name][0]):.6f}" for name in models))
    rng = np.random.default_rng(seed)
    history = {name: [] for name in models}
    for epoch in range(epochs):
        perm = rng.permutation(len(x_train))
        idx = [perm[i * batch_size:(i + 1) * batch_size] for i in range(steps_per_epoch)]
        batches = [(x_train[i], y_train[i]) for i in idx]
        for name, model in models.items():
            t0 = time.perf_counter()
            for i, (xb, yb) in enumerate(batches):
                if epoch == 0 and i == 0:
                    jax.block_until_ready(train_step(model, optimizers[name], xb, yb))
                    compile_seconds[name] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    continue
                loss = train_step(model, optimizers[name], xb, yb)
            jax.block_until_ready(loss)
            seconds[name] += time.perf_counter() - t0
            history[name].append(float(loss))
        say(f"epoch {epoch + 1:3d}/{epochs}: train loss " +
            ", ".join(f"{name} {history[name][-1]:.4f}" for name in models))
    results = {"example": "flax_nnx", "models": {}}
    for name, model in models.items():
        test_loss, test_acc = evaluate(model, x_test, y_test)
        results["models"][name] = {
            "test_accuracy": float(test_acc),
            "test_loss": float(test_loss),
            "initial_test_loss": float(initial[name][0]),
            "train_seconds": seconds[name],
            "compile_seconds": compile_seconds[name],
            "train_loss_per_epoch": history[name],
        }
        say(f"{name:>7}: test accuracy {float(test_acc):.4f}, training {seconds[name]:.2f} s "
            f"(+ {compile_seconds[name]:.2f} s first step with compilation)")
    ratio = seconds["jaxrnn"] / seconds["flax"]
    results["time_ratio_jaxrnn_over_flax"] = ratio
    say(f"jaxrnn / flax training time: {ratio:.2f}x")
    results.update(
        epochs=epochs, steps=epochs * steps_per_epoch,
        config=dict(embed=embed, hidden_size=hidden_size, epochs=epochs, batch_size=batch_size,
                    learning_rate=learning_rate, seed=seed, train_size=len(x_train), test_size=len(x_test)),
        device=jax.devices()[0].device_kind,
        versions={"jax": jax.__version__, "jaxrnn": jaxrnn.__version__, "flax": _flax_version()},
    )
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def _flax_version() -> str:
    import flax

    return flax.__version__


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-2, help="start of the cosine decay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="results JSON (default: examples/results/flax_nnx.json)")
    p.add_argument("--smoke", action="store_true", help="tiny settings, a few seconds")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    kw = dict(embed=args.embed, hidden_size=args.hidden_size, epochs=args.epochs, batch_size=args.batch_size,
              learning_rate=args.learning_rate, seed=args.seed)
    json_path = args.json
    if args.smoke:
        kw.update(embed=8, hidden_size=8, epochs=2)
    elif json_path is None:
        json_path = "examples/results/flax_nnx.json"
    main(**kw, json_path=json_path, verbose=not args.quiet)
