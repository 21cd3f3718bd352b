"""Keras 3 functional models: ``from_keras`` reads ``keras.Model(inputs, outputs)`` graphs
(chains, ``return_state`` feeding ``initial_state=``, several inputs, ``mask=`` in the call);
the nets give Keras' outputs (1e-5) on masked ragged batches (an empty sequence included)
with random non-zero weights and initial states; gradients match Keras'; ``to_keras``
round-trips; any other layer or op is refused by name."""

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
from jaxrnn.interop.keras import KerasGraph, from_keras, to_keras  # noqa: E402

L = keras.layers
B, T, I = 5, 6, 3
TOL = dict(atol=1e-5, rtol=1e-5)
# Keras' default initializers (orthogonal, Glorot) compile a jax program per weight shape,
# seconds per model; `randomize` sets every weight anyway.
FAST = dict(kernel_initializer="zeros", recurrent_initializer="zeros")
FAST_DENSE = dict(kernel_initializer="zeros")

# Full, right-padded, left-padded, a hole, empty.
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


def floats(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def masked_floats(seed, features=I, mask=MASK):
    """Inputs zero at the masked steps (so that ``Masking(0.0)`` finds ``mask``)."""
    return np.where(mask[..., None], floats(seed, *mask.shape, features), 0.0).astype(np.float32)


def masked_ids(seed, vocab=7, mask=MASK):
    return np.where(mask, np.random.default_rng(seed).integers(1, vocab, mask.shape), 0).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def call(net, params, h, inputs):
    """``net(params, h, inputs)`` under one ``jit`` (a compilation per net, not per op)."""
    return net(params, h, inputs)


def keras_out(model, inputs):
    """The Keras model's outputs, by its compiled predict function (much faster than eager
    calls of its recurrent layers)."""
    return model.predict_on_batch(inputs)


def close(actual, expected, msg=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=msg, **TOL)


def close_tree(actual, expected):
    actual, expected = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        close(a, e, f"output {i}")


def assert_round_trip(model, net, params, inputs):
    """``to_keras`` rebuilds a model that converts back to the same graph and params, and
    gives the same outputs as the original."""
    back = to_keras(net, params)
    net2, params2 = from_keras(back)
    assert net2 == net
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
    close_tree(keras_out(back, inputs), keras_out(model, inputs))


# --------------------------------------------------------------------------- chains


@functools.lru_cache(maxsize=None)  # built once per session: building compiles jax programs
def masking_chain():
    """Input -> Masking -> Bidirectional(LSTM) -> Dropout -> GRU (backwards) -> SimpleRNN -> Dense."""
    x = keras.Input((None, I))
    y = L.Masking(0.0)(x)
    y = L.Bidirectional(L.LSTM(4, return_sequences=True, **FAST))(y)
    y = L.Dropout(0.3)(y)
    y = L.GRU(5, go_backwards=True, return_sequences=True, **FAST)(y)
    y = L.SimpleRNN(3, activation="relu", **FAST)(y)
    return keras.Model(x, L.Dense(2, activation="softmax", **FAST_DENSE)(y)), masked_floats(10)


def embedding_chain():
    """Input(ids) -> Embedding(mask_zero) -> GRU(reset_after=False) -> Bidirectional(LSTM, sum)
    -> Dropout -> Dense on every step."""
    ids = keras.Input((None,), dtype="int32")
    y = L.Embedding(7, I, mask_zero=True, embeddings_initializer="zeros")(ids)
    y = L.GRU(4, reset_after=False, return_sequences=True, **FAST)(y)
    y = L.Bidirectional(L.LSTM(3, return_sequences=True, go_backwards=True, **FAST), merge_mode="sum",
                        backward_layer=L.LSTM(3, return_sequences=True, **FAST))(y)
    y = L.Dropout(0.2)(y)
    return keras.Model(ids, L.Dense(2, activation="tanh", **FAST_DENSE)(y)), masked_ids(11)


@pytest.mark.slow
@pytest.mark.parametrize("build", [masking_chain, embedding_chain])
def test_chain(build):
    """A chain with its mask from Masking / Embedding(mask_zero=True): Keras' outputs under
    ``jit``, and the round trip."""
    model, xs = build()
    randomize(model, seed=1)
    net, params = from_keras(model)
    assert isinstance(net, KerasGraph)
    h, ys = call(net, params, None, xs)
    close(ys, keras_out(model, xs))
    assert len(h) == len(net.recurrent_nodes) == sum(isinstance(k, (L.RNN, L.Bidirectional)) for k in model.layers)
    assert_round_trip(model, net, params, xs)


def test_h_argument_is_keras_initial_state():
    """``net(params, h, ...)`` starts a layer from ``h`` as Keras' ``initial_state=`` does
    (random states; final states as ``return_state`` gives them)."""
    lstm = L.LSTM(4, return_sequences=True, return_state=True, **FAST)
    gru = L.GRU(3, go_backwards=True, return_sequences=True, **FAST)
    x = keras.Input((None, I))
    y, _, _ = lstm(L.Masking(0.0)(x))
    plain = keras.Model(x, gru(y))
    h0, c0, g0 = keras.Input((4,)), keras.Input((4,)), keras.Input((3,))
    # Keras passes no implicit mask to a layer called with `initial_state=`: give it by hand.
    masked = L.Masking(0.0)(x)
    y, h, c = lstm(masked, initial_state=[h0, c0], mask=masked._keras_mask)
    with_states = keras.Model([x, h0, c0, g0], [gru(y, initial_state=g0, mask=masked._keras_mask), h, c])
    randomize(plain, seed=2)
    xs, states = masked_floats(12), [floats(13, B, 4), floats(14, B, 4), floats(15, B, 3)]
    net, params = from_keras(plain)
    h = (jaxrnn.LSTMState(jnp.asarray(states[0]), jnp.asarray(states[1])), jnp.asarray(states[2]))
    (s_lstm, _), ys = call(net, params, h, xs)
    out, h_k, c_k = keras_out(with_states, [xs] + states)
    close(ys, out)
    close(s_lstm.h, h_k, "final h")
    close(s_lstm.c, c_k, "final c")


# --------------------------------------------------------------------------- lstm_seq2seq


def seq2seq(num_encoder_tokens=5, num_decoder_tokens=6, latent_dim=8, masked=True):
    """keras-io's lstm_seq2seq (training model and both inference models), small; with a
    Masking layer on the encoder's inputs when ``masked``."""
    encoder_inputs = keras.Input(shape=(None, num_encoder_tokens))
    encoder = L.LSTM(latent_dim, return_state=True, **FAST)
    encoder_outputs, state_h, state_c = encoder(L.Masking(0.0)(encoder_inputs) if masked else encoder_inputs)
    encoder_states = [state_h, state_c]
    decoder_inputs = keras.Input(shape=(None, num_decoder_tokens))
    decoder_lstm = L.LSTM(latent_dim, return_sequences=True, return_state=True, **FAST)
    decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
    decoder_dense = L.Dense(num_decoder_tokens, activation="softmax", **FAST_DENSE)
    decoder_outputs = decoder_dense(decoder_outputs)
    model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)

    encoder_model = keras.Model(encoder_inputs, encoder_states)
    decoder_state_input_h = keras.Input(shape=(latent_dim,))
    decoder_state_input_c = keras.Input(shape=(latent_dim,))
    decoder_states_inputs = [decoder_state_input_h, decoder_state_input_c]
    decoder_outputs, state_h_dec, state_c_dec = decoder_lstm(decoder_inputs, initial_state=decoder_states_inputs)
    decoder_outputs = decoder_dense(decoder_outputs)
    decoder_model = keras.Model([decoder_inputs] + decoder_states_inputs,
                                [decoder_outputs, state_h_dec, state_c_dec])
    return randomize(model, seed=3), encoder_model, decoder_model


def one_hot(seed, n, mask):
    tokens = np.random.default_rng(seed).integers(0, n, mask.shape)
    return (np.eye(n, dtype=np.float32)[tokens] * mask[..., None]).astype(np.float32)


@pytest.fixture(scope="module")
def s2s():
    model, encoder_model, decoder_model = seq2seq()
    enc = one_hot(20, 5, MASK)
    dec = one_hot(21, 6, np.ones((B, 4), bool))
    return model, encoder_model, decoder_model, enc, dec


@pytest.mark.slow
def test_lstm_seq2seq(s2s):
    """The training model (two inputs, the encoder's states as the decoder's initial state),
    the encoder model (a list of states) and the decoder model (random initial states as
    inputs): Keras' outputs; the round trip."""
    model, encoder_model, decoder_model, enc, dec = s2s
    net, params = from_keras(model)
    assert net.nodes[2].initial_state == net.nodes[1].outputs[1:]  # encoder's (h, c) -> decoder
    close(call(net, params, None, [enc, dec])[1], keras_out(model, [enc, dec]))
    enet, eparams = from_keras(encoder_model)
    close_tree(call(enet, eparams, None, enc)[1], keras_out(encoder_model, enc))
    dnet, dparams = from_keras(decoder_model)
    states = [floats(22, B, 8), floats(23, B, 8)]
    close_tree(call(dnet, dparams, None, [dec] + states)[1], keras_out(decoder_model, [dec] + states))
    assert_round_trip(model, net, params, [enc, dec])
    assert_round_trip(decoder_model, dnet, dparams, [dec] + states)


def test_seq2seq_decoder_starts_from_encoder_states(s2s):
    """The initial_state wiring: the training model's output is the decoder model's run from
    the encoder model's states, not from zeros, and it changes with the encoder's input."""
    model, encoder_model, decoder_model, enc, dec = s2s
    (net, params), (enet, eparams), (dnet, dparams) = map(from_keras, (model, encoder_model, decoder_model))
    ys = call(net, params, None, [enc, dec])[1]
    states = call(enet, eparams, None, enc)[1]
    close(ys, call(dnet, dparams, None, [dec] + list(states))[1][0])
    zeros = [np.zeros((B, 8), np.float32)] * 2
    assert np.abs(np.asarray(ys) - np.asarray(call(dnet, dparams, None, [dec] + zeros)[1][0])).max() > 1e-3
    other = call(net, params, None, [one_hot(24, 5, MASK), dec])[1]
    assert np.abs(np.asarray(ys)[:4] - np.asarray(other)[:4]).max() > 1e-3  # row 4: empty encoder input
    close(ys[4], other[4], "an empty encoder sequence leaves zero states")


@pytest.mark.slow
def test_seq2seq_gradients_match_keras(s2s):
    """Gradients of a loss w.r.t. every weight and both inputs, against Keras' own
    (``stateless_call`` under ``jax.grad``), masked encoder included."""
    model, _, _, enc, dec = s2s
    net, params = from_keras(model)
    weights = floats(25, B, 4, 6)

    def loss(params, enc, dec):
        return jnp.sum(net(params, None, [enc, dec])[1] * weights)

    def keras_loss(trainable, enc, dec):
        out, _ = model.stateless_call(trainable, [v.value for v in model.non_trainable_variables], [enc, dec])
        return jnp.sum(out * weights)

    g, g_enc, g_dec = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, enc, dec)
    k, k_enc, k_dec = jax.jit(jax.grad(keras_loss, argnums=(0, 1, 2)))(
        [v.value for v in model.trainable_variables], enc, dec)
    close(g_enc, k_enc, "d/d encoder inputs")
    close(g_dec, k_dec, "d/d decoder inputs")
    for v, gk in zip(model.trainable_variables, k):
        p = g[v.path.split("/")[0]]
        if isinstance(p, jaxrnn.LSTMParams):  # Keras' one bias is b_ih + b_hh: both get its gradient
            mine = {"kernel": [p.w_ih.T], "recurrent_kernel": [p.w_hh.T], "bias": [p.b_ih, p.b_hh]}
        else:
            mine = {"kernel": [p.w.T], "bias": [p.b]}
        for a in mine[v.path.split("/")[-1]]:
            close(a, gk, v.path)


# --------------------------------------------------------------------------- inputs and masks


def masks_and_states():
    """Three inputs (x, a boolean mask, an initial state): ``GRU(x, mask=m, initial_state=h0)``,
    an LSTM fed the mask implicitly, a SimpleRNN with the same ``mask=`` on x, two outputs."""
    x = keras.Input((None, I), name="x")
    m = keras.Input((None,), dtype="bool", name="m")
    h0 = keras.Input((4,), name="h0")
    y = L.GRU(4, return_sequences=True, **FAST)(x, mask=m, initial_state=h0)
    y = L.LSTM(3, return_sequences=True, go_backwards=True, **FAST)(y)
    z = L.SimpleRNN(2, **FAST)(x, mask=m)
    return randomize(keras.Model([x, m, h0], [L.Dense(2, **FAST_DENSE)(y), z]), seed=4)


@pytest.mark.slow
def test_several_inputs_and_a_mask_in_the_call():
    """Inputs as Keras takes them (a list in ``model.inputs`` order, or a dict by name), the
    mask a boolean input (ragged, an empty row), x not zero at masked steps."""
    model = masks_and_states()
    xs, h0 = floats(30, B, T, I), floats(31, B, 4)
    net, params = from_keras(model)
    assert [i.name for i in net.inputs] == ["x", "m", "h0"]
    want = keras_out(model, [xs, MASK, h0])
    close_tree(call(net, params, None, [xs, MASK, h0])[1], want)
    close_tree(call(net, params, None, {"h0": h0, "m": MASK, "x": xs})[1], want)
    unmasked = call(net, params, None, [xs, np.ones((B, T), bool), h0])[1]
    assert np.abs(np.asarray(unmasked[1]) - np.asarray(want[1])).max() > 1e-3  # the mask does something
    assert_round_trip(model, net, params, [xs, MASK, h0])


def test_shared_layer_shares_params():
    """A layer called twice is one params entry; gradients from both calls add up there."""
    x1, x2 = keras.Input((None, I)), keras.Input((None, I))
    shared = L.GRU(3, return_sequences=True, **FAST)
    model = randomize(keras.Model([x1, x2], [shared(L.Masking(0.0)(x1)), shared(x2)]), seed=5)
    a, b = masked_floats(32), floats(33, B, T, I)
    net, params = from_keras(model)
    assert len(net.nodes) == 3 and list(params) == [shared.name]
    close_tree(call(net, params, None, [a, b])[1], keras_out(model, [a, b]))
    assert_round_trip(model, net, params, [a, b])


# --------------------------------------------------------------------------- errors


def test_unsupported_layers_and_ops_are_named():
    x = keras.Input((None, I))
    with pytest.raises(ValueError, match="Conv1D 'my_conv' has no jaxrnn counterpart"):
        from_keras(keras.Model(x, L.LSTM(3, **FAST)(L.Conv1D(2, 1, name="my_conv")(x))))
    y = L.LSTM(3, return_sequences=True, **FAST)(x)
    with pytest.raises(ValueError, match="Add 'my_add' has no jaxrnn counterpart"):
        from_keras(keras.Model(x, L.Add(name="my_add")([y, y])))
    with pytest.raises(ValueError, match=r"Add 'add\w*' has no jaxrnn counterpart"):
        from_keras(keras.Model(x, y + y))
    with pytest.raises(ValueError, match="TimeDistributed"):
        from_keras(keras.Model(x, L.TimeDistributed(L.Dense(2, **FAST_DENSE))(y)))
    with pytest.raises(ValueError, match="`activation` must be tanh"):
        from_keras(keras.Model(x, L.LSTM(3, activation="relu", **FAST)(x)))
    with pytest.raises(ValueError, match="`training=True`"):
        from_keras(keras.Model(x, L.Dropout(0.5)(L.GRU(2, **FAST)(x), training=True)))
    with pytest.raises(ValueError, match="no recurrent layer"):
        from_keras(keras.Model(x, L.Dense(2, **FAST_DENSE)(x)))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed"):
        from_keras(Subclassed())


def test_call_errors(s2s):
    model, _, decoder_model, enc, dec = s2s
    net, params = from_keras(model)
    with pytest.raises(ValueError, match=r"`inputs` must hold 2 arrays"):
        net(params, None, [enc])
    with pytest.raises(TypeError, match="`inputs` must be a list of 2 arrays"):
        net(params, None, enc)
    with pytest.raises(ValueError, match=r"`inputs\[.*\]` must have shape \[B, \?, 5\]"):
        net(params, None, [enc[..., :3], dec])
    with pytest.raises(ValueError, match="initial state comes from the graph"):
        net(params, (None, jaxrnn.LSTMState(jnp.zeros((B, 8)), jnp.zeros((B, 8)))), [enc, dec])
    with pytest.raises(ValueError, match="must have the keys"):
        net({k: v for k, v in params.items() if k != next(iter(params))}, None, [enc, dec])
    m = masks_and_states()
    mnet, mparams = from_keras(m)
    with pytest.raises(TypeError, match=r"`inputs\['m'\]` must be bool"):
        mnet(mparams, None, [floats(0, B, T, I), MASK.astype(np.float32), floats(1, B, 4)])
