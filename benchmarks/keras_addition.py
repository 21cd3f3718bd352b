"""Keras 3 (JAX backend) against jaxrnn on the ``addition_rnn`` example, side by side.

Both sides get the same 50,000 questions (``examples/addition.py``'s ``make_data``, same
seed and validation split) and the same model: LSTM(128) encoder, RepeatVector(4),
LSTM(128) decoder, a softmax over 12 characters. Each trains until its validation
per-character accuracy reaches the target (Keras' ``"accuracy"`` metric for this model),
checked at the end of every epoch; the wall time counts everything from the first
training call to the stop (compilation included), not the data generation.

Keras trains as in its example (``batch_size=32``, ``optimizer="adam"``, i.e. learning rate
1e-3); jaxrnn with the example's own defaults (see ``examples/addition.py``).

Needs ``pip install keras`` (optional; not a jaxrnn dependency). Run::

    python benchmarks/keras_addition.py                  # both, ~1-2 minutes on a CPU
    python benchmarks/keras_addition.py --only jaxrnn
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_example():
    spec = importlib.util.spec_from_file_location("addition_example", os.path.join(_ROOT, "examples", "addition.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_keras(example, *, num_questions: int, target: float, max_epochs: int, batch_size: int = 32,
              seed: int = 0, verbose: int = 2) -> dict:
    """Trains the Keras model until val accuracy >= ``target``; returns epochs, seconds, history."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"set KERAS_BACKEND=jax before importing keras; got {keras.backend.backend()!r}.")
    questions, answers = example.make_data(num_questions, seed=seed)
    n_val = int(num_questions * 0.1)
    n_train = num_questions - n_val
    vocab = len(example.CHARS)
    x = np.eye(vocab, dtype=np.float32)[questions]     # one-hot, as Keras' CharacterTable
    y = np.eye(vocab, dtype=np.float32)[answers]

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((questions.shape[1], vocab)),
        keras.layers.LSTM(128),
        keras.layers.RepeatVector(answers.shape[1]),
        keras.layers.LSTM(128, return_sequences=True),
        keras.layers.Dense(vocab, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

    class StopAtTarget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("val_accuracy", 0.0) >= target:
                self.model.stop_training = True

    t0 = time.perf_counter()
    hist = model.fit(x[:n_train], y[:n_train], batch_size=batch_size, epochs=max_epochs,
                     validation_data=(x[n_train:], y[n_train:]), callbacks=[StopAtTarget()], verbose=verbose)
    seconds = time.perf_counter() - t0
    val = hist.history["val_accuracy"]
    return {
        "val_char_accuracy": float(val[-1]),
        "epochs": len(val),
        "seconds": seconds,
        "reached_target": bool(val[-1] >= target),
        "batch_size": batch_size,
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        "keras": keras.__version__,
        "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()},
    }


def main(num_questions: int = 50_000, target: float = 0.99, max_epochs: int = 60, only: str = "both",
         json_path: str | None = None, seed: int = 0) -> dict:
    example = _load_example()
    results = {
        "benchmark": "keras_addition",
        "num_questions": num_questions,
        "target_val_char_accuracy": target,
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }
    if only in ("both", "keras"):
        print("== Keras 3, JAX backend")
        results["keras"] = run_keras(example, num_questions=num_questions, target=target, max_epochs=max_epochs,
                                     seed=seed)
    if only in ("both", "jaxrnn"):
        print("== jaxrnn (examples/addition.py)")
        r = example.main(num_questions=num_questions, target=target, max_epochs=max_epochs, seed=seed,
                         num_samples=3, progress=False)
        results["jaxrnn"] = {k: r[k] for k in ("val_char_accuracy", "val_seq_accuracy", "epochs", "seconds",
                                               "reached_target", "config", "history")}
    results["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    rows = [(name, results[name]) for name in ("keras", "jaxrnn") if name in results]
    print(f"\n{'':8} {'batch':>5} {'lr':>7} {'epochs':>6} {'val char acc':>12} {'seconds':>8} {'s/epoch':>8}")
    for name, r in rows:
        bs = r.get("batch_size", r.get("config", {}).get("batch_size"))
        lr = r.get("learning_rate", r.get("config", {}).get("learning_rate"))
        print(f"{name:8} {bs:>5} {lr:>7.0e} {r['epochs']:>6} {r['val_char_accuracy']:>12.4f} {r['seconds']:>8.1f} "
              f"{r['seconds'] / r['epochs']:>8.2f}")
    if len(rows) == 2:
        results["time_ratio_jaxrnn_over_keras"] = results["jaxrnn"]["seconds"] / results["keras"]["seconds"]
        print(f"jaxrnn / keras wall time: {results['time_ratio_jaxrnn_over_keras']:.2f}")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {json_path}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-questions", type=int, default=50_000)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--only", choices=("both", "keras", "jaxrnn"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(_ROOT, "benchmarks", "results", "keras_addition_cpu.json"))
    args = p.parse_args()
    main(args.num_questions, args.target, args.max_epochs, args.only, args.json, args.seed)
