"""Smoke runs of examples/char_lm.py, adding_problem.py and sines.py, and checks of their pieces.

Each example runs as a script (``--smoke``: tiny model and data) in this process, so the
argparse path, the JSON and the plot are exercised; the data and model helpers are
checked on their own against properties that a wrong implementation would break.
"""

import json
import math
import os
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest


pytestmark = pytest.mark.slow  # the example scripts' smoke runs: outside the fast lane (`pytest -m "not slow"`)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _module(name):
    """The example's globals, without running its ``__main__`` block."""
    return runpy.run_path(os.path.join(EXAMPLES, f"{name}.py"), run_name=f"examples_{name}")


def _run_smoke(name, tmp_path, monkeypatch, *extra):
    out_json, out_png = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    argv = [f"{name}.py", "--smoke", "--no-progress", "--json", str(out_json), "--plot", str(out_png), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(EXAMPLES, f"{name}.py"), run_name="__main__")
    assert out_png.stat().st_size > 1000
    with open(out_json) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- char_lm


def test_char_lm_smoke(tmp_path, monkeypatch):
    r = _run_smoke("char_lm", tmp_path, monkeypatch, "--temperature", "0.5", "1.0")
    for k in ("val_loss_nats", "steps", "seconds", "samples", "history"):
        assert k in r, k
    V = r["config"]["vocab_size"]
    assert r["steps"] == 12 and r["seconds"] > 0
    # Twelve Adam steps must already beat a uniform guess over the vocabulary.
    assert math.isfinite(r["val_loss_nats"]) and 0 < r["val_loss_nats"] < math.log(V)
    assert [s["temperature"] for s in r["samples"]] == [0.5, 1.0]
    for s in r["samples"]:
        assert s["text"].startswith(s["prime"]) and len(s["text"]) == len(s["prime"]) + 40


def test_char_lm_tbptt_batches_continue_each_stream():
    m = _module("char_lm")
    ids = np.arange(1000, dtype=np.int32)
    chunks = list(m["tbptt_batches"](ids, 4, 16, offset=3))
    stream_len = (1000 - 3 - 1) // 4
    assert len(chunks) == stream_len // 16
    for x, y in chunks:
        assert x.shape == y.shape == (4, 16)
        np.testing.assert_array_equal(y, x + 1)                 # targets: the next character
    for (x0, _), (x1, _) in zip(chunks, chunks[1:]):
        np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # each row continues itself
    np.testing.assert_array_equal(chunks[0][0][:, 0], 3 + np.arange(4) * stream_len)
    with pytest.raises(ValueError, match="too short"):
        next(m["tbptt_batches"](ids[:20], 4, 16))


def test_char_lm_vocab_and_stdlib_corpus():
    m = _module("char_lm")
    text = m["stdlib_corpus"](20_000)
    assert len(text) == 20_000 and text == m["stdlib_corpus"](20_000)   # deterministic
    vocab = m["Vocab"](text)
    assert all(" " <= c <= "~" or c in "\n\t" for c in vocab.chars)
    assert vocab.decode(vocab.encode(text[:500])) == text[:500]


# ----------------------------------------------------------------------------- adding problem


def test_adding_problem_smoke_ragged(tmp_path, monkeypatch):
    r = _run_smoke("adding_problem", tmp_path, monkeypatch, "--min-length", "10")
    assert set(r["test_mse"]) == {"rnn", "gru", "lstm", "bigru"}
    assert r["min_length"] == 10 and r["T"] == 20
    assert abs(r["chance_mse"] - 1 / 6) < 1e-9
    for name, mse in r["test_mse"].items():
        assert math.isfinite(mse) and mse > 0, name
        assert r["models"][name]["eval_mse"][-1] == mse
    assert "bidirectional=True" in r["models"]["bigru"]["model"]


def test_adding_problem_batch():
    m = _module("adding_problem")
    rng = np.random.default_rng(0)
    xs, lengths, target = m["make_batch"](rng, 256, 30, min_length=11)
    assert xs.shape == (256, 30, 2) and lengths.shape == target.shape == (256,)
    assert lengths.min() >= 11 and lengths.max() <= 30 and len(set(lengths.tolist())) > 5
    for b in range(256):
        L = int(lengths[b])
        marks = np.flatnonzero(xs[b, :, 1])
        assert len(marks) == 2 and marks[0] < L // 2 <= marks[1] < L
        assert not xs[b, L:].any()                                   # zero padding
        np.testing.assert_allclose(target[b], xs[b, marks, 0].sum(), rtol=1e-6)
    _, full, _ = m["make_batch"](rng, 8, 30)
    assert (full == 30).all()
    # The chance baseline: predicting 1.0 has MSE Var(U1 + U2) = 1/6.
    _, _, t = m["make_batch"](rng, 20_000, 30)
    assert abs(np.mean((t - 1.0) ** 2) - 1 / 6) < 0.01


@pytest.mark.parametrize("name", ["lstm", "bigru"])
def test_adding_problem_prediction_ignores_padding(name):
    """With `seq_lengths`, whatever sits in the padding never reaches the prediction."""
    m = _module("adding_problem")
    encoder = m["make_encoder"](name, 5)
    params = m["init_params"](jax.random.key(0), encoder)
    params = params._replace(head=params.head._replace(b=params.head.b + 0.3))
    xs, lengths, _ = m["make_batch"](np.random.default_rng(1), 6, 12, min_length=4)
    noisy = np.where(np.arange(12)[None, :, None] < lengths[:, None, None], xs, 7.0).astype(np.float32)
    predict = jax.jit(m["predict"], static_argnums=0)
    a = predict(encoder, params, jnp.asarray(xs), jnp.asarray(lengths))
    b = predict(encoder, params, jnp.asarray(noisy), jnp.asarray(lengths))
    np.testing.assert_allclose(a, b, atol=1e-6)
    # ... and equals running the sequence alone, cut to its length (shortest and longest).
    for i in (int(np.argmin(lengths)), int(np.argmax(lengths))):
        alone = predict(encoder, params, jnp.asarray(xs[i:i + 1, : lengths[i]]), None)
        np.testing.assert_allclose(a[i], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------- sines


def test_sines_smoke(tmp_path, monkeypatch):
    r = _run_smoke("sines", tmp_path, monkeypatch)
    for k in ("test_mse", "naive_mse", "test_mse_clean", "naive_mse_clean", "mse_by_horizon"):
        assert k in r, k
    assert len(r["mse_by_horizon"]) == r["config"]["horizon"] == 6
    assert all(math.isfinite(v) and v > 0 for v in (r["test_mse"], r["naive_mse"]))
    np.testing.assert_allclose(np.mean(r["mse_by_horizon"]), r["test_mse"], rtol=1e-5)
    assert "gru" in r["config"]["model"] and "lstm" in r["config"]["model"]


def test_sines_forecast_feeds_predictions_back():
    m = _module("sines")
    net = m["make_net"](6)
    assert [c.kind for c in net.cells] == ["gru", "lstm"]
    params = net.init(jax.random.key(0), input_size=1)
    noisy, clean = m["make_series"](np.random.default_rng(0), 3, 15)
    assert noisy.shape == clean.shape == (3, 15)
    context = jnp.asarray(noisy[:, :10])
    one_step, future = m["forecast"](net, params, context, 5)
    assert one_step.shape == (3, 9) and future.shape == (3, 5)
    # The same thing, one step at a time: read the context, then feed each prediction back.
    step = jax.jit(net.step)
    h, y = net.initial_state((3,)), None
    for t in range(10):
        h, y = step(params, h, context[:, t:t + 1])
        if t < 9:
            np.testing.assert_allclose(one_step[:, t], y[:, 0], atol=1e-5)
    manual = [y[:, 0]]
    for _ in range(4):
        h, y = step(params, h, y)
        manual.append(y[:, 0])
    np.testing.assert_allclose(future, jnp.stack(manual, axis=1), atol=1e-5)
