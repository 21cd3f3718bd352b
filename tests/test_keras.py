"""Keras 3 interop: ``from_keras`` nets give Keras' outputs and states (1e-5) on masked,
ragged batches with random non-zero weights and initial states; ``to_keras`` round-trips;
configurations without a counterpart raise naming the option."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend; these tests need "
                "KERAS_BACKEND=jax.", allow_module_level=True)

import jaxrnn  # noqa: E402
from jaxrnn.interop.keras import KerasParams, KerasRNN, from_keras, to_keras  # noqa: E402

L = keras.layers
B, T, I = 5, 6, 3
TOL = dict(atol=1e-5, rtol=1e-5)

# Every kind of mask in one batch: full, right-padded, left-padded (Keras' pad_sequences
# default), a hole in the middle, and empty.
MASK = np.array([
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 1],
    [1, 0, 1, 1, 0, 1],
    [0, 0, 0, 0, 0, 0],
], bool)


def randomize(model, seed=0):
    """Every weight (biases included) U(-0.6, 0.6)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def inputs(seed=1, mask=MASK):
    """Inputs with the masked steps zeroed (so that a ``Masking(0.0)`` layer finds ``mask``)."""
    xs = np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)
    return np.where(mask[..., None], xs, 0.0).astype(np.float32)


def random_state(units, lstm, seed):
    rng = np.random.default_rng(seed)
    s = [rng.standard_normal((B, units)).astype(np.float32) for _ in range(2 if lstm else 1)]
    return s


def as_jaxrnn_state(s):
    return jaxrnn.LSTMState(*map(jnp.asarray, s)) if len(s) == 2 else jnp.asarray(s[0])


def flat_state(s):
    return [s.h, s.c] if isinstance(s, jaxrnn.LSTMState) else [s]


@functools.partial(jax.jit, static_argnums=0)
def call(net, params, h, xs, mask=None, seq_lengths=None):
    """``net(params, h, xs, ...)`` under one ``jit`` (one compilation per net, not per op)."""
    return net(params, h, xs, mask=mask, seq_lengths=seq_lengths)


def close(actual, expected, msg=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=msg, **TOL)


LAYERS = [
    pytest.param(lambda **kw: L.SimpleRNN(4, **kw), id="simple_tanh"),
    pytest.param(lambda **kw: L.SimpleRNN(4, activation="relu", **kw), id="simple_relu"),
    pytest.param(lambda **kw: L.GRU(4, **kw), id="gru"),
    pytest.param(lambda **kw: L.GRU(4, reset_after=False, **kw), id="gru_reset_before"),
    pytest.param(lambda **kw: L.LSTM(4, **kw), id="lstm"),
]


@pytest.mark.slow
@pytest.mark.parametrize("make, return_sequences", [
    pytest.param(*m.values, rs, id=f"{m.id}-{'seq' if rs else 'last'}", marks=m.marks)
    for rs in (True, False) for m in (LAYERS if rs else LAYERS[-1:])])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_layer(make, return_sequences, go_backwards):
    """A single layer called with Keras' ``mask`` and a random ``initial_state``, against the
    converted net with the same mask; outputs and final states (``return_state``)."""
    layer = make(go_backwards=go_backwards, return_sequences=return_sequences, return_state=True)
    layer.build((None, None, I))
    randomize(layer)
    lstm = isinstance(layer, L.LSTM)
    xs, h0 = inputs(), random_state(4, lstm, seed=2)
    out_k, *state_k = layer(xs, initial_state=h0, mask=MASK)
    net, params = from_keras(layer)
    (state,), ys = call(net, params, (as_jaxrnn_state(h0),), xs, MASK)
    close(ys, out_k, "outputs")
    for a, e in zip(flat_state(state), state_k):
        close(a, e, "state")


def test_no_mask_and_seq_lengths():
    """Without a mask the whole sequence runs; ``seq_lengths`` is the mask ``t < length``."""
    layer = L.LSTM(4, return_sequences=True, go_backwards=True)
    layer.build((None, None, I))
    randomize(layer, seed=23)
    xs, h0 = inputs(seed=24, mask=np.ones((B, T), bool)), random_state(4, True, seed=25)
    net, params = from_keras(layer)
    close(call(net, params, (as_jaxrnn_state(h0),), xs)[1], layer(xs, initial_state=h0), "no mask")
    lengths = np.array([6, 3, 0, 1, 4])
    close(call(net, params, None, xs, seq_lengths=lengths)[1],
          layer(xs, mask=np.arange(T)[None] < lengths[:, None]), "seq_lengths")


@pytest.mark.parametrize("zero_output_for_mask, unroll, go_backwards", [
    (False, False, True), (True, False, False), (False, True, False), (True, True, True),
])
@pytest.mark.slow
def test_masked_step_outputs(zero_output_for_mask, unroll, go_backwards):
    """What Keras returns at a masked step: zero, the previous output, or (before the first
    unmasked step) the initial state, or zero with ``unroll=True``."""
    layer = L.GRU(3, return_sequences=True, go_backwards=go_backwards, unroll=unroll,
                  zero_output_for_mask=zero_output_for_mask)
    layer.build((None, T, I))
    randomize(layer, seed=3)
    xs, h0 = inputs(seed=4), random_state(3, False, seed=5)
    want = layer(xs, initial_state=h0, mask=MASK)
    net, params = from_keras(layer)
    close(call(net, params, (jnp.asarray(h0[0]),), xs, MASK)[1], want)


@pytest.mark.parametrize("merge_mode, go_backwards, return_sequences", [
    ("concat", False, True), ("sum", False, True), ("ave", True, False), ("mul", True, True),
    ("concat", False, False),
])
def test_bidirectional(merge_mode, go_backwards, return_sequences):
    """``Bidirectional(LSTM)`` (its backward layer's sequence flipped back before merging),
    also with an inner ``go_backwards=True`` layer, from random initial states."""
    make = lambda go: L.LSTM(4, return_sequences=return_sequences, go_backwards=go, return_state=True)
    # Keras' own backward layer always has go_backwards=True: the other way round needs it given.
    layer = L.Bidirectional(make(go_backwards), backward_layer=make(not go_backwards) if go_backwards else None,
                            merge_mode=merge_mode)
    layer.build((None, None, I))
    randomize(layer, seed=6)
    xs = inputs(seed=7)
    h0 = random_state(4, True, seed=8) + random_state(4, True, seed=9)
    out_k, *state_k = layer(xs, initial_state=h0, mask=MASK)
    net, params = from_keras(layer)
    h = (jaxrnn.Bidirectional(as_jaxrnn_state(h0[:2]), as_jaxrnn_state(h0[2:])),)
    (state,), ys = call(net, params, h, xs, MASK)
    close(ys, out_k)
    for a, e in zip(flat_state(state.forward) + flat_state(state.backward), state_k):
        close(a, e, "state")


def test_bidirectional_own_backward_layer():
    """A user-given backward layer of another type and size (GRU under an LSTM forward)."""
    layer = L.Bidirectional(L.LSTM(4, return_sequences=True),
                            backward_layer=L.GRU(3, return_sequences=True, go_backwards=True))
    layer.build((None, None, I))
    randomize(layer, seed=10)
    xs = inputs(seed=11)
    net, params = from_keras(layer)
    close(call(net, params, None, xs, MASK)[1], layer(xs, mask=MASK))


def masking_model():
    return keras.Sequential([
        keras.Input((None, I)),
        L.Masking(0.0),
        L.Bidirectional(L.LSTM(4, return_sequences=True)),
        L.Dropout(0.3),
        L.GRU(5, go_backwards=True, return_sequences=True),
        L.SimpleRNN(3, use_bias=False),
        L.Dense(2, activation="softmax"),
    ])


def embedding_model():
    return keras.Sequential([
        keras.Input((None,), dtype="int32"),
        L.Embedding(7, I, mask_zero=True),
        L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum"),
        L.LSTM(3, return_sequences=True, dropout=0.2),
        L.Dense(2),
    ])


@pytest.mark.slow
@pytest.mark.parametrize("build", [masking_model, embedding_model])
def test_sequential(build):
    """A Sequential stack with its mask from ``Masking`` or ``Embedding(mask_zero=True)``,
    computed inside the net from ``xs``, and a Dense head; also under ``jit``."""
    model = randomize(build(), seed=12)
    if build is embedding_model:
        xs = np.where(MASK, np.random.default_rng(13).integers(1, 7, (B, T)), 0).astype(np.int32)
    else:
        xs = inputs(seed=13)
    net, params = from_keras(model)
    want = model(xs)
    close(jax.jit(net)(params, None, xs)[1], want)


@pytest.mark.slow
def test_sequential_without_biases_or_mask():
    """``use_bias=False`` everywhere (LSTM, both GRUs, the Dense head: a zero bias), an
    Embedding without ``mask_zero`` (no mask: every step runs); and its round trip."""
    model = randomize(keras.Sequential([
        keras.Input((None,), dtype="int32"),
        L.Embedding(9, I),
        L.LSTM(4, use_bias=False, return_sequences=True),
        L.GRU(3, use_bias=False, return_sequences=True),
        L.GRU(5, reset_after=False, use_bias=False),
        L.Dense(2, use_bias=False, activation="sigmoid"),
    ]), seed=14)
    xs = np.random.default_rng(15).integers(0, 9, (B, T)).astype(np.int32)
    net, params = from_keras(model)
    assert params.head.b.shape == (2,) and not np.asarray(params.head.b).any()
    want = model(xs)
    close(call(net, params, None, xs)[1], want)
    back = to_keras(net, params)
    assert from_keras(back)[0] == net
    close(back(xs), want, "round trip")


@pytest.mark.slow
def test_gradients_flow():
    """The net is differentiable, the mask's gather and scatter included: a small gradient
    step on the converted params lowers the loss."""
    layer = L.LSTM(4, return_sequences=True, go_backwards=True)
    layer.build((None, None, I))
    net, params = from_keras(randomize(layer, seed=16))
    xs = jnp.asarray(inputs(seed=17))
    loss = jax.jit(lambda p: jnp.sum(net(p, None, xs, mask=MASK)[1] ** 2))
    g = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(g))
    stepped = jax.tree.map(lambda p, d: p - 0.01 * d, params, g)
    assert float(loss(stepped)) < float(loss(params))


@pytest.mark.parametrize("build", [masking_model, embedding_model])
def test_to_keras_round_trip(build):
    """``to_keras`` rebuilds an equivalent model; converting it back gives the same net and
    the same params."""
    model = randomize(build(), seed=18)
    net, params = from_keras(model)
    back = to_keras(net, params)
    net2, params2 = from_keras(back)
    assert net2 == net
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
    xs = (np.where(MASK, np.random.default_rng(19).integers(1, 7, (B, T)), 0).astype(np.int32)
          if build is embedding_model else inputs(seed=19))
    close(back(xs), model(xs))


def test_to_keras_original_gru_unrolled():
    """The original GRU and ``unroll=True`` (Keras needs a fixed length: ``time_steps``)."""
    layer = L.GRU(4, reset_after=False, unroll=True, return_sequences=True)
    layer.build((None, T, I))
    randomize(layer, seed=20)
    net, params = from_keras(layer)
    back = to_keras(net, params, time_steps=T)
    assert from_keras(back)[0] == net
    xs = inputs(seed=21)
    close(back(xs), layer(xs))


def test_to_keras_from_jaxrnn_params(key):
    """Params made in jaxrnn (jaxrnn.gru's init: non-zero b_hh) export to Keras' bias [2, 3H]."""
    net = KerasRNN((jaxrnn.interop.keras.KerasLayer(jaxrnn.gru(4), return_sequences=True),))
    params = KerasParams(None, (jaxrnn.gru(4).init(key, I),))
    xs = inputs(seed=22)
    close(to_keras(net, params)(xs), call(net, params, None, xs)[1])


@pytest.mark.parametrize("make", [
    lambda: jaxrnn.stack([jaxrnn.gru(4), jaxrnn.lstm(3)], bidirectional=True, dropout=0.3, head=2),
    lambda: jaxrnn.stack([jaxrnn.rnn(4, nonlinearity="relu"), jaxrnn.zoo.gru_original(3)]),
    lambda: jaxrnn.lstm(5),
    lambda: jaxrnn.gru(4, bias=False),
])
@pytest.mark.slow
def test_to_keras_from_a_jaxrnn_net(make, key):
    """A jaxrnn cell or stack trained in jaxrnn exports to a Keras model giving its ``ys``
    (random non-zero biases; a bidirectional stack's backward direction; a head)."""
    net = make()
    params = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(3), a.shape, a.dtype, -0.3, 0.3),
                          net.init(key, I))
    model = to_keras(net, params)
    xs = inputs(seed=23, mask=np.ones((B, T), bool))
    close(model(xs), net(params, None, xs)[1] if hasattr(net, "cells") else jaxrnn.unroll(net, params, None, xs)[1])


def test_to_keras_refuses_what_keras_lacks(key):
    with pytest.raises(ValueError, match="`proj_size`"):
        to_keras(jaxrnn.lstm(4, proj_size=2), jaxrnn.lstm(4, proj_size=2).init(key, I))
    with pytest.raises(TypeError, match="`net` must be a KerasRNN"):
        to_keras(object(), None)
    with pytest.raises(TypeError, match="StackParams"):
        to_keras(jaxrnn.stack([jaxrnn.gru(4)]), jaxrnn.gru(4).init(key, I))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make, match", [
    (lambda: L.LSTM(4, activation="relu"), "`activation` must be tanh"),
    (lambda: L.SimpleRNN(4, activation="sigmoid"), "`activation` must be tanh or relu"),
    (lambda: L.GRU(4, activation=lambda x: x), "`activation` must be tanh"),
    (lambda: L.GRU(4, recurrent_activation="hard_sigmoid"), "`recurrent_activation` must be sigmoid"),
    (lambda: L.LSTM(4, recurrent_dropout=0.1), "`recurrent_dropout=0.1`"),
    (lambda: L.SimpleRNN(4, dtype="mixed_bfloat16"), "`dtype`"),
    (lambda: L.Bidirectional(L.LSTM(4), merge_mode=None), "`merge_mode`"),
])
def test_unsupported_layer_options(make, match):
    layer = make()
    layer.build((None, None, I))
    with pytest.raises(ValueError, match=match):
        from_keras(layer)


def test_stateful_is_refused():
    layer = L.GRU(4, stateful=True)
    layer.build((2, T, I))
    with pytest.raises(ValueError, match="`stateful=True`"):
        from_keras(layer)


def test_unsupported_models():
    with pytest.raises(ValueError, match="Conv1D"):
        from_keras(keras.Sequential([keras.Input((None, I)), L.Conv1D(2, 1), L.LSTM(3)]))
    with pytest.raises(ValueError, match="`activation` must be one of"):
        from_keras(keras.Sequential([keras.Input((None, I)), L.LSTM(3), L.Dense(2, activation="gelu")]))
    with pytest.raises(ValueError, match="follows the Dense head"):
        from_keras(keras.Sequential([keras.Input((None, I)), L.LSTM(3), L.Dense(2), L.Dense(2)]))
    with pytest.raises(ValueError, match="Embedding must be the first layer"):
        from_keras(keras.Sequential([keras.Input((None, I)), L.LSTM(3, return_sequences=True),
                                     L.Embedding(4, 2)]))
    with pytest.raises(ValueError, match="a Dense head must follow a recurrent layer"):
        from_keras(keras.Sequential([keras.Input((None, I)), L.Dense(2)]))
    with pytest.raises(ValueError, match="no recurrent layer"):
        from_keras(keras.Sequential([keras.Input((None, I)), L.Masking()]))
    with pytest.raises(ValueError, match="not built"):
        from_keras(L.LSTM(3))
    inp = keras.Input((None, I))
    with pytest.raises(ValueError, match="Conv1D 'conv' has no jaxrnn counterpart"):
        from_keras(keras.Model(inp, L.LSTM(3)(L.Conv1D(2, 1, name="conv")(inp))))
    with pytest.raises(TypeError, match="`layer_or_model` must be a Keras layer"):
        from_keras(object())


def test_call_errors():
    net, params = from_keras(randomize(masking_model()))
    xs = inputs()
    with pytest.raises(ValueError, match="computes its mask from `xs`"):
        net(params, None, xs, mask=MASK)
    with pytest.raises(ValueError, match=r"`xs` must have shape \[B, T, 3\]"):
        net(params, None, xs[..., :2])
    with pytest.raises(TypeError, match="`h` must be None or a tuple"):
        net(params, (None,), xs)
    with pytest.raises(TypeError, match=r"`params.layers\[1\]` must be GRUParams"):
        net(params._replace(layers=(params.layers[0], params.layers[2], params.layers[2])), None, xs)
    layer = L.LSTM(3)
    layer.build((None, None, I))
    net, params = from_keras(layer)
    with pytest.raises(ValueError, match="`mask` must have shape"):
        net(params, None, xs, mask=MASK[:, :3])
    with pytest.raises(ValueError, match="not both"):
        net(params, None, xs, mask=MASK, seq_lengths=np.ones(B, int))
    with pytest.raises(ValueError, match="proj_size"):
        to_keras(KerasRNN((jaxrnn.interop.keras.KerasLayer(jaxrnn.lstm(4, proj_size=2)),)),
                 KerasParams(None, (jaxrnn.lstm(4, proj_size=2).init(jax.random.key(0), I),)))
