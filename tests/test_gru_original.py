"""The original GRU (reset gate before the recurrent product): against a plain numpy loop
of its equations in float64, against Keras' ``GRU(reset_after=False)``, and through
``jaxrnn.unroll`` / ``jaxrnn.stack``."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrnn.zoo.gru_original import OriginalGRUCell, OriginalGRUParams, gru_original
from _compat import enable_x64

H, I = 5, 3


def random_params(H, I, seed=0, bias=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    u = lambda *shape: jnp.asarray(rng.uniform(-0.7, 0.7, shape), dtype)
    return OriginalGRUParams(u(3 * H, I), u(3 * H, H), u(3 * H) if bias else None, u(3 * H) if bias else None)


def numpy_step(p, h, x):
    """The equations of the docstring, written out gate by gate in float64."""
    p = [None if a is None else np.asarray(a, np.float64) for a in p]
    w_ih, w_hh, b_ih, b_hh = p
    Hh = w_hh.shape[1]
    b_ih = np.zeros(3 * Hh) if b_ih is None else b_ih
    b_hh = np.zeros(3 * Hh) if b_hh is None else b_hh
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    W = lambda w, g: w[g * Hh:(g + 1) * Hh]
    B = lambda b, g: b[g * Hh:(g + 1) * Hh]
    r = sig(x @ W(w_ih, 0).T + B(b_ih, 0) + h @ W(w_hh, 0).T + B(b_hh, 0))
    z = sig(x @ W(w_ih, 1).T + B(b_ih, 1) + h @ W(w_hh, 1).T + B(b_hh, 1))
    n = np.tanh(x @ W(w_ih, 2).T + B(b_ih, 2) + (r * h) @ W(w_hh, 2).T + B(b_hh, 2))
    return (1 - z) * n + z * h


def numpy_unroll(p, h0, xs, lengths=None, reverse=False):
    """``[B, T, I]`` in float64 with seq_lengths semantics (state frozen, outputs zero past it)."""
    xs, h = np.asarray(xs, np.float64), np.asarray(h0, np.float64).copy()
    B, T = xs.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    ys = np.zeros((B, T, h.shape[-1]))
    for b in range(B):
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            h[b] = numpy_step(p, h[b], xs[b, t])
            ys[b, t] = h[b]
    return h, ys


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_shape", [(), (2,), (2, 3)])
def test_step_matches_numpy(batch_shape, bias):
    cell = gru_original(H, bias=bias)
    p = random_params(H, I, bias=bias)
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.standard_normal(batch_shape + (H,)), jnp.float32)
    for t in range(4):
        x = jnp.asarray(rng.standard_normal(batch_shape + (I,)), jnp.float32)
        want = numpy_step(p, np.asarray(h, np.float64), np.asarray(x, np.float64))
        h, y = cell.step(p, h, x)
        np.testing.assert_allclose(np.asarray(h), want, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(h))


def test_project_update_is_step():
    """The hoisted projection over a whole sequence, then ``update`` per step, is ``step``."""
    cell = gru_original(H)
    p = random_params(H, I, seed=2)
    xs = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, I)), jnp.float32)
    gx = cell.project(p, xs)
    assert gx.shape == (2, 6, 3 * H)
    h1 = h2 = jnp.asarray(np.random.default_rng(4).standard_normal((2, H)), jnp.float32)
    for t in range(6):
        h1, _ = cell.step(p, h1, xs[:, t])
        h2, _ = cell.update(p, h2, gx[:, t])
        np.testing.assert_allclose(np.asarray(h1), np.asarray(h2), atol=1e-6, rtol=1e-6)


def test_differs_from_torch_gru():
    """Same weights, different candidate: a check that the reset gate really is applied first."""
    import jaxrnn

    p = random_params(H, I, seed=5)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, I)), jnp.float32)
    h = jnp.asarray(np.random.default_rng(7).standard_normal((2, H)), jnp.float32)
    ours, _ = gru_original(H).step(p, h, x)
    torch_like, _ = jaxrnn.gru(H).step(jaxrnn.GRUParams(*p), h, x)
    assert float(jnp.abs(ours - torch_like).max()) > 1e-3


def test_gradients_float64():
    with enable_x64(True):
        cell = gru_original(3)
        p = random_params(3, 2, seed=8, dtype=np.float64)
        h = jnp.asarray(np.random.default_rng(9).standard_normal((2, 3)))
        x = jnp.asarray(np.random.default_rng(10).standard_normal((2, 2)))
        check_grads(jax.jit(lambda p, h, x: cell.step(p, h, x)[0]), (p, h, x), order=1, modes=("rev",))


def test_init_options(key):
    import jaxrnn

    cell = gru_original(H)
    assert isinstance(cell, OriginalGRUCell) and isinstance(cell, jaxrnn.RecurrentCell)
    assert hash(cell) == hash(gru_original(H))
    p = cell.init(key, I)
    assert [a.shape for a in p] == [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]
    bound = 1 / np.sqrt(H)
    assert all(float(jnp.abs(a).max()) <= bound for a in p)
    assert float(jnp.abs(p.b_ih).max()) > 0
    q = gru_original(H, init="orthogonal").init(key, I)
    assert float(jnp.abs(q.b_ih).max()) == 0 and float(jnp.abs(q.b_hh).max()) == 0
    for g in range(3):
        block = np.asarray(q.w_hh[g * H:(g + 1) * H])
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    r = gru_original(H, bias=False).init(key, I)
    assert r.b_ih is None and r.b_hh is None
    h, y = gru_original(H, bias=False).step(r, None, jnp.ones((I,)))
    assert h.shape == (H,)
    assert gru_original(H).initial_state((2, 3)).shape == (2, 3, H)
    assert gru_original(H).output_size == H


def test_errors(key):
    with pytest.raises(ValueError, match="`hidden_size`"):
        gru_original(0)
    with pytest.raises(ValueError, match="`init`"):
        gru_original(4, init="xavier")
    cell = gru_original(H)
    p = cell.init(key, I)
    with pytest.raises(ValueError, match="`x` must have feature size 3"):
        cell.step(p, None, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"`h` must have shape \[2, 5\]"):
        cell.step(p, jnp.ones((2, 4)), jnp.ones((2, I)))
    with pytest.raises(ValueError, match="`params.w_hh`"):
        cell.step(p._replace(w_hh=jnp.ones((3 * H, H + 1))), None, jnp.ones((I,)))
    with pytest.raises(TypeError, match="`params` must be OriginalGRUParams"):
        cell.step(tuple(p), None, jnp.ones((I,)))
    with pytest.raises(ValueError, match="`params.b_ih` must be None"):
        gru_original(H, bias=False).step(p, None, jnp.ones((I,)))


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras is imported with the {keras.backend.backend()!r} backend; these tests need KERAS_BACKEND=jax.")
    return keras


@pytest.mark.slow
@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_keras_gru_reset_before(use_bias):
    """Keras' ``GRU(reset_after=False)``: kernel ``[I, 3H]`` in gate order z, r, h and one
    bias ``[3H]``; its outputs and final state, from a random initial state."""
    keras = _keras()
    rng = np.random.default_rng(11)
    layer = keras.layers.GRU(H, reset_after=False, use_bias=use_bias, return_sequences=True, return_state=True)
    layer.build((None, None, I))
    weights = [rng.uniform(-0.7, 0.7, w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    xs = rng.standard_normal((3, 7, I)).astype(np.float32)
    h0 = rng.standard_normal((3, H)).astype(np.float32)
    ys_k, h_k = layer(xs, initial_state=[h0])

    kernel, rec = weights[0], weights[1]
    bias = weights[2] if use_bias else None
    zrn_to_rzn = lambda w: np.concatenate([w[..., H:2 * H], w[..., :H], w[..., 2 * H:]], axis=-1)
    p = OriginalGRUParams(jnp.asarray(zrn_to_rzn(kernel).T), jnp.asarray(zrn_to_rzn(rec).T),
                          None if bias is None else jnp.asarray(zrn_to_rzn(bias)),
                          None if bias is None else jnp.zeros(3 * H))
    cell = gru_original(H, bias=use_bias)
    h, ys = jnp.asarray(h0), []
    for t in range(xs.shape[1]):
        h, y = cell.step(p, h, jnp.asarray(xs[:, t]))
        ys.append(y)
    np.testing.assert_allclose(np.stack(ys, 1), np.asarray(ys_k), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_k), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_ragged(reverse):
    """Through ``jaxrnn.unroll`` with ragged lengths (one of them 0), a random initial state
    and both directions, against the numpy loop."""
    import jaxrnn

    cell = gru_original(H)
    p = random_params(H, I, seed=12)
    rng = np.random.default_rng(13)
    xs = jnp.asarray(rng.standard_normal((4, 6, I)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((4, H)), jnp.float32)
    lengths = jnp.array([6, 3, 0, 1])
    h, ys = jaxrnn.unroll(cell, p, h0, xs, seq_lengths=lengths, reverse=reverse)
    h_want, ys_want = numpy_unroll(p, h0, xs, lengths, reverse)
    np.testing.assert_allclose(np.asarray(ys), ys_want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(h), h_want, atol=1e-5, rtol=1e-5)


def test_bidirectional_stack_with_builtin():
    """In a bidirectional ``jaxrnn.stack`` under a built-in LSTM, against the numpy loop for
    the first layer (the stack's first-layer output is the two directions concatenated)."""
    import jaxrnn

    net = jaxrnn.stack([gru_original(H), jaxrnn.lstm(4)], bidirectional=True, head=2)
    params = net.init(jax.random.key(1), I)
    f, b = random_params(H, I, seed=14), random_params(H, I, seed=15)
    params = params._replace(layers=(jaxrnn.Bidirectional(f, b),) + params.layers[1:])
    xs = jnp.asarray(np.random.default_rng(16).standard_normal((3, 5, I)), jnp.float32)
    lengths = jnp.array([5, 2, 0])
    h, ys = jax.jit(lambda p, x, n: net(p, None, x, seq_lengths=n))(params, xs, lengths)
    assert ys.shape == (3, 5, 2)
    hf, _ = numpy_unroll(f, np.zeros((3, H)), xs, lengths)
    hb, _ = numpy_unroll(b, np.zeros((3, H)), xs, lengths, reverse=True)
    np.testing.assert_allclose(np.asarray(h[0].forward), hf, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(h[0].backward), hb, atol=1e-5, rtol=1e-5)
