"""The ``addition`` (Keras addition_rnn) and ``classify_digits`` examples: data, wiring, smoke runs."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

pytestmark = pytest.mark.slow  # the example scripts' smoke runs: outside the fast lane (`pytest -m "not slow"`)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def addition():
    return _load("addition")


@pytest.fixture(scope="module")
def digits():
    return _load("classify_digits")


# ----------------------------------------------------------------------------- addition


def test_addition_data_is_keras_format(addition):
    questions, answers = addition.make_data(3000, seed=3)
    assert questions.shape == (3000, 7) and answers.shape == (3000, 4)
    assert questions.dtype == answers.dtype == np.uint8
    keys = set()
    for q, y in zip(questions, answers):
        text = addition.decode(q)
        forward = text[::-1]                       # questions are stored reversed
        assert len(forward) == 7 and forward == forward.rstrip().ljust(7)
        a, b = forward.split("+")
        a, b = int(a), int(b.rstrip())
        assert 0 <= a < 1000 and 0 <= b < 1000
        assert addition.decode(y) == str(a + b).ljust(4)
        keys.add((min(a, b), max(a, b)))
    assert len(keys) == 3000                       # a+b and b+a count once
    again, _ = addition.make_data(3000, seed=3)
    np.testing.assert_array_equal(again, questions)
    forward_q, _ = addition.make_data(3000, seed=3, reverse=False)
    np.testing.assert_array_equal(forward_q[:, ::-1], questions)
    other, _ = addition.make_data(3000, seed=4)
    assert not np.array_equal(other, questions)


def test_addition_data_rejects_impossible_size(addition):
    with pytest.raises(ValueError, match="`num_questions`"):
        addition.make_data(56, digits=1)             # only 55 distinct pairs of 1-digit numbers


def test_addition_model_is_encoder_repeat_decoder(addition, assert_close):
    init, apply = addition.make_model(hidden_size=16, answer_length=4)
    params = init(jax.random.key(0))
    enc = params.encoder
    # Keras initialisation: zero biases but the forget gate (1 in total), Glorot dense, zero dense bias.
    np.testing.assert_allclose(np.asarray(enc.b_ih + enc.b_hh)[16:32], 1.0)
    np.testing.assert_allclose(np.asarray(enc.b_ih + enc.b_hh)[:16], 0.0)
    np.testing.assert_allclose(np.asarray(params.decoder.head.b), 0.0)
    # Non-zero everything (biases included) for the equivalence check below.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten([p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    enc = params.encoder
    questions, _ = addition.make_data(5, seed=1)
    logits = apply(params, jnp.asarray(questions))
    assert logits.shape == (5, 4, len(addition.CHARS))

    # The same computation written out by hand with plain cells.
    cell = jaxrnn.lstm(16)
    xs = jax.nn.one_hot(questions, len(addition.CHARS))
    state = None
    for t in range(xs.shape[1]):
        state, _ = cell.step(enc, state, xs[:, t])
    dec = params.decoder.layers[0]
    dstate, outs = None, []
    for _ in range(4):
        dstate, y = cell.step(dec, dstate, state.h)        # RepeatVector: the same input every step
        outs.append(y @ params.decoder.head.w.T + params.decoder.head.b)
    assert_close(logits, jnp.stack(outs, 1))


def test_addition_smoke(addition, tmp_path):
    out = tmp_path / "addition.json"
    returned = addition.main(num_questions=2_000, hidden_size=32, max_epochs=3, target=1.01, num_samples=2,
                             json_path=str(out), progress=False, verbose=False)
    results = json.loads(out.read_text())
    for k in ("val_char_accuracy", "val_seq_accuracy", "epochs", "seconds", "history", "config"):
        assert k in results
    assert (tmp_path / "addition.png").stat().st_size > 0
    hist = results["history"]
    assert results["epochs"] == 3 and not results["reached_target"]
    assert results["val_char_accuracy"] == returned["val_char_accuracy"] == hist["val_char_accuracy"][-1]
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert results["val_char_accuracy"] > 2.0 / 12          # chance is 1/12 per character
    assert 0.0 <= results["val_seq_accuracy"] <= results["val_char_accuracy"]


# ----------------------------------------------------------------------------- digits


def test_digits_data_split(digits):
    x_train, y_train, x_test, y_test = digits.load_data(seed=0)
    assert x_train.shape[1:] == x_test.shape[1:] == (8, 8)
    assert len(x_train) + len(x_test) == 1797 and abs(len(x_test) - 0.2 * 1797) < 1
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    # Stratified: every class keeps its share in the test set.
    share = np.bincount(y_test, minlength=10) / np.bincount(y_train, minlength=10)
    np.testing.assert_allclose(share, 0.25, atol=0.03)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_digits_model_uses_final_states(digits, cell, bidirectional, assert_close):
    init, apply = digits.make_model(cell, hidden_size=8, bidirectional=bidirectional)
    params = init(jax.random.key(1))
    params = params._replace(out=params.out._replace(b=jax.random.normal(jax.random.key(3), (10,))))
    xs = jax.random.uniform(jax.random.key(2), (3, 8, 8))
    logits = apply(params, xs)
    assert logits.shape == (3, 10)

    c = {"gru": jaxrnn.gru, "lstm": jaxrnn.lstm}[cell](8)
    final = lambda h: h.h if cell == "lstm" else h
    layer = params.rnn.layers[0]
    if bidirectional:
        hf, _ = jaxrnn.unroll(c, layer.forward, None, xs)
        hb, _ = jaxrnn.unroll(c, layer.backward, None, xs, reverse=True)
        feats = jnp.concatenate([final(hf), final(hb)], -1)
    else:
        h, _ = jaxrnn.unroll(c, layer, None, xs)
        feats = final(h)
    assert_close(logits, feats @ params.out.w.T + params.out.b)


def test_digits_smoke(digits, tmp_path):
    out = tmp_path / "digits.json"
    results = digits.main(cell="lstm", bidirectional=True, hidden_size=16, epochs=3, json_path=str(out),
                          progress=False, verbose=False)
    saved = json.loads(out.read_text())
    for k in ("test_accuracy", "train_accuracy", "epochs", "seconds", "history", "config"):
        assert k in saved
    assert saved["test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert (tmp_path / "digits.png").stat().st_size > 0
    hist = saved["history"]
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["eval_loss"][-1] < hist["eval_loss"][0]
    assert saved["test_accuracy"] > 0.3                      # chance is 0.1


def test_examples_name_bad_arguments(addition, digits):
    with pytest.raises(ValueError, match="`cell`"):
        digits.make_model("rnn")
    with pytest.raises(ValueError, match="`batch_size`"):
        addition.main(num_questions=200, batch_size=512, progress=False, verbose=False)
