"""Cells: the step equations, initialisation schemes, biases, compute dtypes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.reference import python_unroll

CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm", "lstm_proj")


def numpy_step(cell, params, h, x):
    """PyTorch's equations, written out in float64 numpy, independent of jaxrnn."""
    p = {k: None if v is None else np.asarray(v, np.float64) for k, v in params._asdict().items()}
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    x = np.asarray(x, np.float64)
    hh = np.asarray(h[0] if cell.is_lstm else h, np.float64)
    gi = x @ p["w_ih"].T + (p["b_ih"] if cell.bias else 0.0)
    gh = hh @ p["w_hh"].T + (p["b_hh"] if cell.bias else 0.0)
    H = cell.hidden_size
    if cell.kind == "rnn_tanh":
        return np.tanh(gi + gh)
    if cell.kind == "rnn_relu":
        return np.maximum(gi + gh, 0.0)
    if cell.kind == "gru":
        r = sig(gi[..., :H] + gh[..., :H])
        z = sig(gi[..., H:2 * H] + gh[..., H:2 * H])
        n = np.tanh(gi[..., 2 * H:] + r * gh[..., 2 * H:])
        return (1.0 - z) * n + z * hh
    g = gi + gh
    i, f, gg, o = sig(g[..., :H]), sig(g[..., H:2 * H]), np.tanh(g[..., 2 * H:3 * H]), sig(g[..., 3 * H:])
    c = f * np.asarray(h[1], np.float64) + i * gg
    h_new = o * np.tanh(c)
    if cell.proj_size:
        h_new = h_new @ p["w_hr"].T
    return h_new, c


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", CELLS)
def test_step_matches_numpy_equations(name, bias, make_cell, random_params, random_state, normal, assert_close):
    cell = make_cell(name, 4, bias=bias)
    params, h, x = random_params(cell, 3), random_state(cell, (2,)), normal((2, 3), seed=3)
    new, y = jax.jit(cell.step)(params, h, x)
    expected = numpy_step(cell, params, h, x)
    if cell.is_lstm:
        assert isinstance(new, jaxrnn.LSTMState)
        assert_close(tuple(new), expected)
        assert_close(y, expected[0])
    else:
        assert_close(new, expected)
        assert_close(y, expected)
    if bias:
        assert params.b_ih is not None and float(jnp.abs(params.b_hh).min()) > 0


@pytest.mark.parametrize("name", ["gru", "lstm_proj"])
def test_step_batch_shapes(name, make_cell, random_params, normal, assert_close):
    """No batch dimension, one, several; h=None is the zero state."""
    cell = make_cell(name, 4)
    params = random_params(cell, 3)
    step = jax.jit(cell.step)
    xs = normal((2, 3, 3))
    h_multi, y_multi = step(params, None, xs)
    assert y_multi.shape == (2, 3, cell.output_size)
    assert jax.tree.leaves(h_multi)[-1].shape[:2] == (2, 3)
    assert_close((h_multi, y_multi), step(params, cell.initial_state((2, 3)), xs))
    h_single, y_single = step(params, None, xs[1, 2])
    assert y_single.shape == (cell.output_size,)
    assert_close((h_single, y_single), jax.tree.map(lambda a: a[1, 2], (h_multi, y_multi)))


@pytest.mark.parametrize("name", CELLS)
def test_uniform_init(name, make_cell, key):
    """torch's init: every tensor U(-1/sqrt(H), 1/sqrt(H)), float32, torch shapes."""
    cell = make_cell(name, 16)
    init = jax.jit(cell.init, static_argnums=1)
    params = init(key, 5)
    G, H, Ho = cell.num_gates, 16, cell.output_size
    shapes = dict(w_ih=(G * H, 5), w_hh=(G * H, Ho), b_ih=(G * H,), b_hh=(G * H,))
    if cell.is_lstm:
        shapes["w_hr"] = (Ho, H) if cell.proj_size else None
    assert type(params) is cell.params_type
    bound = 1.0 / math.sqrt(H)
    for field, shape in shapes.items():
        value = getattr(params, field)
        if shape is None:
            assert value is None
            continue
        assert value.shape == shape and value.dtype == jnp.float32, field
        assert float(jnp.abs(value).max()) <= bound, field
        assert float(jnp.abs(value).max()) > 0.75 * bound, field  # spread over the whole interval
    # Deterministic in the key, different across keys.
    assert_equal_trees(params, init(key, 5))
    assert not np.allclose(params.w_hh, init(jax.random.key(1), 5).w_hh)


def assert_equal_trees(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("name", CELLS)
def test_orthogonal_init(name, make_cell, key):
    """Each gate's recurrent block is orthogonal; biases start at zero."""
    cell = make_cell(name, 6, init="orthogonal")
    params = jax.jit(cell.init, static_argnums=1)(key, 3)
    H, Ho = cell.hidden_size, cell.output_size
    for g in range(cell.num_gates):
        block = np.asarray(params.w_hh[g * H:(g + 1) * H], np.float64)  # [H, Ho], Ho <= H
        np.testing.assert_allclose(block.T @ block, np.eye(Ho), atol=1e-5)
    blocks = [np.asarray(params.w_hh[g * H:(g + 1) * H]) for g in range(cell.num_gates)]
    if len(blocks) > 1:
        assert not np.allclose(blocks[0], blocks[1])  # gates drawn independently
    assert not np.any(np.asarray(params.b_ih)) and not np.any(np.asarray(params.b_hh))
    # Glorot-uniform input weights: bound sqrt(6 / (fan_in + fan_out)) per gate block.
    assert float(jnp.abs(params.w_ih).max()) <= math.sqrt(6.0 / (3 + H))


@pytest.mark.parametrize("init", ["uniform", "orthogonal"])
def test_forget_bias(init, key):
    H = 8
    cell = jaxrnn.lstm(H, forget_bias=1.0, init=init)
    params = cell.init(key, 3)
    np.testing.assert_array_equal(params.b_ih[H:2 * H], 1.0)
    np.testing.assert_array_equal(params.b_hh[H:2 * H], 0.0)
    # The other gates keep the scheme's biases.
    reference = jaxrnn.lstm(H, init=init).init(key, 3)
    for b, b_ref in ((params.b_ih, reference.b_ih), (params.b_hh, reference.b_hh)):
        np.testing.assert_array_equal(b[:H], b_ref[:H])
        np.testing.assert_array_equal(b[2 * H:], b_ref[2 * H:])
    assert jaxrnn.lstm(H, forget_bias=1.0, bias=False).init(key, 3).b_ih is None


@pytest.mark.parametrize("name", ["rnn_tanh", "gru", "lstm_proj"])
def test_no_bias(name, make_cell, key, normal, assert_close):
    cell = make_cell(name, 4, bias=False)
    params = cell.init(key, 3)
    assert params.b_ih is None and params.b_hh is None
    xs = normal((2, 4, 3))
    lengths = jnp.array([4, 2])
    biased_cell = make_cell(name, 4)
    zeros = jnp.zeros(params.w_ih.shape[0])

    @jax.jit
    def run(p, xs):
        return (jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths),
                python_unroll(cell, p, None, xs, seq_lengths=lengths),
                # bias=False is the same as zero biases.
                jaxrnn.unroll(biased_cell, p._replace(b_ih=zeros, b_hh=zeros), None, xs, seq_lengths=lengths))

    out, ref, zero_bias = run(params, xs)
    assert_close(out, ref)
    assert_close(out, zero_bias)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gru", "lstm_proj"])
def test_bfloat16_compute(name, make_cell, random_params, random_state, normal, tol, assert_close):
    """bf16 matrix products: finite, close to float32, params and state stay float32."""
    cell32 = make_cell(name, 8)
    cell16 = make_cell(name, 8, compute_dtype=jnp.bfloat16)
    assert cell16.compute_dtype == jnp.bfloat16 and hash(cell16) != hash(cell32)
    params = random_params(cell32, 4, scale=0.3)
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(cell16.init(jax.random.key(0), 4)))
    h0, xs, lengths = random_state(cell32, (3,)), normal((3, 6, 4)), jnp.array([6, 0, 4])

    @jax.jit
    def run(params):
        loss = lambda c, p: jnp.sum(jaxrnn.unroll(c, p, h0, xs, seq_lengths=lengths)[1] ** 2)
        return [(jaxrnn.unroll(c, params, h0, xs, seq_lengths=lengths), jax.grad(loss, argnums=1)(c, params))
                for c in (cell16, cell32)]

    ((h16, ys16), g16), ((h32, ys32), g32) = run(params)
    for leaf in jax.tree.leaves((h16, ys16, g16)):
        assert leaf.dtype == jnp.float32
        assert bool(jnp.isfinite(leaf).all())
    assert_close((h16, ys16), (h32, ys32), dtype=jnp.bfloat16)
    # Gradients are sums over steps and batch: compare relative to their scale.
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, **tol(jnp.bfloat16))
    assert float(jnp.abs(ys16 - ys32).max()) > 0  # bf16 really was used


def test_cells_are_static_and_hashable(key):
    a, b = jaxrnn.lstm(4, proj_size=2), jaxrnn.lstm(4, proj_size=2)
    assert a == b and hash(a) == hash(b) and a != jaxrnn.lstm(4)
    assert repr(a) == "lstm(hidden_size=4, proj_size=2)"
    assert a.output_size == 2 and a.hidden_size == 4 and a.kind == "lstm"
    assert jaxrnn.rnn(3, nonlinearity="relu").kind == "rnn_relu"
    traces = []

    @jax.jit
    def step(params, x):
        traces.append(1)
        return a.step(params, None, x)[1]

    params = a.init(key, 3)
    step(params, jnp.ones((2, 3)))
    step(jax.tree.map(lambda p: p + 1, params), jnp.zeros((2, 3)))
    assert len(traces) == 1  # new values, no retrace
