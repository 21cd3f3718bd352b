"""Bad inputs fail at trace time, with a message naming the argument in backticks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

I, T, B = 3, 5, 2
LSTM = jaxrnn.lstm(4)
GRU = jaxrnn.gru(4)
NET = jaxrnn.stack([jaxrnn.gru(4), jaxrnn.lstm(3)], head=2)
BINET = jaxrnn.stack(jaxrnn.gru(4), num_layers=2, bidirectional=True)


def _params(cell, input_size=I):
    return cell.init(jax.random.key(0), input_size)


P_LSTM, P_GRU = _params(LSTM), _params(GRU)
P_NET, P_BINET = NET.init(jax.random.key(0), I), BINET.init(jax.random.key(0), I)
XS = jnp.ones((B, T, I))
Z = lambda *shape: jnp.zeros(shape)


def unroll(cell, params, h, xs, seq_lengths=None):
    return jaxrnn.unroll(cell, params, h, xs, seq_lengths=seq_lengths)


# (id, function, array arguments, exception, argument named in the message).
# The function is called eagerly and under jax.jit with the arguments traced.
CASES = [
    ("xs-rank", lambda xs: unroll(LSTM, P_LSTM, None, xs), (jnp.ones((I,)),), ValueError, "xs"),
    ("xs-features", lambda xs: unroll(LSTM, P_LSTM, None, xs), (jnp.ones((B, T, I + 1)),), ValueError, "xs"),
    ("xs-integer", lambda xs: unroll(LSTM, P_LSTM, None, xs), (jnp.ones((B, T, I), jnp.int32),), TypeError, "xs"),
    ("h-shape", lambda h: unroll(LSTM, P_LSTM, h, XS), (jaxrnn.LSTMState(Z(B + 1, 4), Z(B + 1, 4)),),
     ValueError, "h.h"),
    ("c-shape", lambda h: unroll(LSTM, P_LSTM, h, XS), (jaxrnn.LSTMState(Z(B, 4), Z(B, 5)),), ValueError, "h.c"),
    ("lstm-h-not-pair", lambda h: unroll(LSTM, P_LSTM, h, XS), (Z(B, 4),), TypeError, "h"),
    ("gru-h-pair", lambda h: unroll(GRU, P_GRU, h, XS), ((Z(B, 4), Z(B, 4)),), TypeError, "h"),
    ("gru-h-shape", lambda h: unroll(GRU, P_GRU, h, XS), (Z(B, 5),), ValueError, "h"),
    ("h-integer", lambda h: unroll(GRU, P_GRU, h, XS), (jnp.zeros((B, 4), jnp.int32),), TypeError, "h"),
    ("lengths-shape", lambda n: unroll(GRU, P_GRU, None, XS, n), (jnp.array([1, 2, 3]),), ValueError, "seq_lengths"),
    ("lengths-float", lambda n: unroll(GRU, P_GRU, None, XS, n), (jnp.array([1.0, 2.0]),), TypeError, "seq_lengths"),
    ("lengths-unbatched", lambda n: unroll(GRU, P_GRU, None, jnp.ones((T, I)), n), (jnp.array([2]),),
     ValueError, "seq_lengths"),
    ("params-type", lambda p: unroll(LSTM, p, None, XS), (P_GRU,), TypeError, "params"),
    ("params-size", lambda p: unroll(LSTM, p, None, XS), (_params(jaxrnn.lstm(5)),), ValueError, "params.w_ih"),
    ("params-proj", lambda p: unroll(jaxrnn.lstm(4, proj_size=2), p, None, XS), (P_LSTM,), ValueError,
     "params.w_hh"),
    ("params-bias", lambda p: unroll(jaxrnn.gru(4, bias=False), p, None, XS), (P_GRU,), ValueError, "params.b_ih"),
    ("params-integer", lambda p: unroll(GRU, p, None, XS), (P_GRU._replace(b_hh=jnp.zeros(12, jnp.int32)),),
     TypeError, "params.b_hh"),
    ("step-x", lambda x: GRU.step(P_GRU, None, x), (jnp.ones((B, I + 1)),), ValueError, "x"),
    ("step-h", lambda h: GRU.step(P_GRU, h, jnp.ones((B, I))), (Z(B + 1, 4),), ValueError, "h"),
    ("stack-layers", lambda p: NET(p, None, XS), (P_NET._replace(layers=P_NET.layers[:1]),), ValueError,
     "params.layers"),
    ("stack-layer-type", lambda p: NET(p, None, XS), (P_NET._replace(layers=P_NET.layers[::-1]),), TypeError,
     "params.layers[0]"),
    ("stack-not-bidirectional", lambda p: BINET(p, None, XS),
     (jaxrnn.StackParams(tuple(l.forward for l in P_BINET.layers)),), TypeError, "params.layers[0]"),
    ("stack-layer-input", lambda p: BINET(p, None, XS),
     (P_BINET._replace(layers=(P_BINET.layers[0], jaxrnn.Bidirectional(*[_params(jaxrnn.gru(4), 4)] * 2))),),
     ValueError, "params.layers[1].w_ih"),
    ("stack-head-missing", lambda p: NET(p, None, XS), (P_NET._replace(head=None),), TypeError, "params.head"),
    ("stack-head-extra", lambda p: BINET(p, None, XS), (P_BINET._replace(head=P_NET.head),), ValueError,
     "params.head"),
    ("stack-head-shape", lambda p: NET(p, None, XS), (P_NET._replace(head=P_NET.head._replace(b=Z(3))),),
     ValueError, "params.head.b"),
    ("stack-params-type", lambda p: NET(p, None, XS), (P_NET.layers,), TypeError, "params"),
    ("stack-h-count", lambda h: NET(P_NET, h, XS), ((Z(B, 4),),), TypeError, "h"),
    ("stack-h-layer", lambda h: NET(P_NET, h, XS), ((Z(B, 4), Z(B, 3)),), TypeError, "h[1]"),
    ("stack-h-direction", lambda h: BINET(P_BINET, h, XS), ((Z(B, 4), Z(B, 4)),), TypeError, "h[0]"),
    ("stack-xs", lambda xs: BINET(P_BINET, None, xs), (jnp.ones((B, T, I + 1)),), ValueError, "xs"),
    ("stack-lengths", lambda n: NET(P_NET, None, XS, seq_lengths=n), (jnp.array([[1, 2]]),), ValueError,
     "seq_lengths"),
    ("step-stack-x", lambda x: NET.step(P_NET, None, x), (jnp.ones((B, I + 1)),), ValueError, "x"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(case, jit):
    _, fn, args, exc, name = case
    with pytest.raises(exc, match=re.escape(f"`{name}`")):
        (jax.jit(fn) if jit else fn)(*args)


@pytest.mark.parametrize("lengths", [[T + 1, 1], [-1, 2]])
@pytest.mark.parametrize("jit", [False, True])
def test_lengths_outside_range_act_as_the_nearest_bound(lengths, jit):
    """One meaning, in jit or not (no host sync): a length above T acts as T, below 0 as 0."""
    clipped = np.clip(lengths, 0, T)
    run = lambda f: jax.jit(f)() if jit else f()
    got = run(lambda: jaxrnn.unroll(GRU, P_GRU, None, XS, seq_lengths=np.array(lengths)))
    want = jaxrnn.unroll(GRU, P_GRU, None, XS, seq_lengths=clipped)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    got = run(lambda: NET(P_NET, None, XS, seq_lengths=jnp.array(lengths)))
    want = NET(P_NET, None, XS, seq_lengths=clipped)
    np.testing.assert_array_equal(got[1], want[1])


def test_message_echoes_what_came():
    with pytest.raises(ValueError) as info:
        jaxrnn.unroll(GRU, P_GRU, None, jnp.ones((B, T, 7)))
    assert "(2, 5, 7)" in str(info.value) and "3" in str(info.value)


HYPERPARAMETERS = [
    ("hidden-size-0", lambda: jaxrnn.gru(0), ValueError, "hidden_size"),
    ("hidden-size-float", lambda: jaxrnn.lstm(4.0), ValueError, "hidden_size"),
    ("proj-size-gru", lambda: jaxrnn.GRUCell(4, proj_size=2), ValueError, "proj_size"),
    ("proj-size-large", lambda: jaxrnn.lstm(4, proj_size=4), ValueError, "proj_size"),
    ("proj-size-negative", lambda: jaxrnn.lstm(4, proj_size=-1), ValueError, "proj_size"),
    ("nonlinearity", lambda: jaxrnn.rnn(4, nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    ("init", lambda: jaxrnn.gru(4, init="xavier"), ValueError, "init"),
    ("compute-dtype", lambda: jaxrnn.gru(4, compute_dtype=jnp.int32), TypeError, "compute_dtype"),
    ("abstract-cell", lambda: jaxrnn.Cell(4), TypeError, "Cell"),
    ("input-size", lambda: GRU.init(jax.random.key(0), 0), ValueError, "input_size"),
    ("stack-empty", lambda: jaxrnn.stack([]), ValueError, "cells"),
    ("stack-not-cell", lambda: jaxrnn.stack([GRU, "lstm"]), TypeError, "cells[1]"),
    ("stack-num-layers", lambda: jaxrnn.stack([GRU, GRU], num_layers=3), ValueError, "num_layers"),
    ("stack-dropout", lambda: jaxrnn.stack(GRU, dropout=1.0), ValueError, "dropout"),
    ("stack-head", lambda: jaxrnn.stack(GRU, head=0), ValueError, "head"),
    ("unroll-cell", lambda: jaxrnn.unroll(BINET, P_BINET, None, XS), TypeError, "cell"),
    ("unroll-not-a-cell", lambda: jaxrnn.unroll("lstm", P_LSTM, None, XS), TypeError, "cell"),
    ("unroll-factor", lambda: jaxrnn.unroll(GRU, P_GRU, None, XS, unroll=0), ValueError, "unroll"),
    ("remat", lambda: jaxrnn.unroll(GRU, P_GRU, None, XS, remat=-2), ValueError, "remat"),
    ("step-bidirectional", lambda: BINET.step(P_BINET, None, jnp.ones((B, I))), ValueError, "step"),
]


@pytest.mark.parametrize("case", HYPERPARAMETERS, ids=[c[0] for c in HYPERPARAMETERS])
def test_bad_hyperparameter_names_it(case):
    _, fn, exc, name = case
    with pytest.raises(exc, match=re.escape(f"`{name}`")):
        fn()
