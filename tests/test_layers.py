"""Stacks: mixed cells, bidirectional layers, dropout, heads, step-by-step generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.reference import python_stack, python_unroll
from _compat import enable_x64

T, I = 6, 3


def random_stack_params(net, input_size, random_params, normal, seed=0):
    """Stack params with every tensor (biases included) random and non-zero."""
    layers, size = [], input_size
    for l, cell in enumerate(net.cells):
        if net.bidirectional:
            layers.append(jaxrnn.Bidirectional(random_params(cell, size, seed + 2 * l),
                                               random_params(cell, size, seed + 2 * l + 1)))
        else:
            layers.append(random_params(cell, size, seed + l))
        size = cell.output_size * net.num_directions
    head = None
    if net.head is not None:
        head = jaxrnn.DenseParams(normal((net.head, size), seed + 99), normal((net.head,), seed + 98))
    return jaxrnn.StackParams(tuple(layers), head)


def random_stack_state(net, batch_shape, random_state, seed=10):
    states = []
    for l, cell in enumerate(net.cells):
        if net.bidirectional:
            states.append(jaxrnn.Bidirectional(random_state(cell, batch_shape, seed + 4 * l),
                                               random_state(cell, batch_shape, seed + 4 * l + 2)))
        else:
            states.append(random_state(cell, batch_shape, seed + 4 * l))
    return tuple(states)


@pytest.fixture
def build(random_params, random_state, normal):
    """``build(net, batch_shape) -> (params, h0, xs)``, all random."""

    def make(net, batch_shape, *, T=T, time_major=False):
        shape = (T,) + batch_shape + (I,) if time_major else batch_shape + (T, I)
        return (random_stack_params(net, I, random_params, normal), random_stack_state(net, batch_shape, random_state),
                normal(shape, seed=5))

    return make


MIXED = [jaxrnn.gru(4), jaxrnn.lstm(5, proj_size=2)]


@pytest.mark.slow
@pytest.mark.parametrize("bidirectional,head", [(False, None), (True, 3)])
def test_mixed_stack_matches_python_loop(bidirectional, head, build, normal, assert_close):
    """GRU -> LSTM(proj) stack, ragged lengths, random h0: outputs, states and gradients."""
    net = jaxrnn.stack(MIXED, bidirectional=bidirectional, head=head)
    params, h0, xs = build(net, (3,))
    lengths = jnp.array([T, 0, 2])
    w_ys = normal((3, T, net.output_size), seed=6)

    def loss(run, params, h0, xs):
        h, ys = run(net, params, h0, xs, seq_lengths=lengths)
        return jnp.sum(ys * w_ys) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(h)), (h, ys)

    @jax.jit
    def both(params, h0, xs):
        g = lambda run: jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(run, params, h0, xs)
        return g(lambda net, *a, **k: net(*a, **k)), g(python_stack)

    ((_, (h, ys)), grads), ((_, ref), ref_grads) = both(params, h0, xs)
    assert ys.shape == (3, T, net.output_size)
    assert jax.tree.structure(h) == jax.tree.structure(h0)
    assert_close((h, ys), ref)
    assert_close(grads, ref_grads)
    if head is None:
        assert not np.any(np.asarray(ys[1])) and not np.any(np.asarray(ys[2, 2:]))
    # The zero-length row keeps every layer's initial state.
    for got, init in zip(jax.tree.leaves(h), jax.tree.leaves(h0)):
        np.testing.assert_array_equal(got[1], init[1])


@pytest.mark.slow
def test_mixed_bidirectional_stack_float64(build, normal):
    """The GRU -> LSTM(proj) bidirectional stack with a head in float64 (jax_enable_x64):
    outputs, states and gradients equal the Python loop's to 1e-12, and h=None gives
    float64 zero states."""
    net = jaxrnn.stack(MIXED, bidirectional=True, head=3)
    with enable_x64(True):
        params, h0, xs = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), build(net, (3,)))
        lengths = jnp.array([T, 0, 2])
        w_ys = jnp.asarray(normal((3, T, net.output_size), seed=6), jnp.float64)

        def loss(run, params, h0, xs):
            h, ys = run(net, params, h0, xs, seq_lengths=lengths)
            return jnp.sum(ys * w_ys) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(h))

        grad = lambda run: jax.value_and_grad(loss, argnums=(1, 2, 3))(run, params, h0, xs)
        got = jax.jit(lambda: grad(lambda net, *a, **k: net(*a, **k)))()
        ref = grad(python_stack)
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12)
        h, ys = net(params, None, xs, seq_lengths=lengths)
        assert ys.dtype == jnp.float64 and all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(h))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gru", "lstm_proj"])
def test_bidirectional_backward_never_sees_padding(name, make_cell, build, assert_close):
    """Each direction equals its cell run on the sequence's own (truncated) slice."""
    cell = make_cell(name, 4)
    net = jaxrnn.stack(cell, bidirectional=True)
    params, h0, xs = build(net, (4,))
    lengths = [T, 1, 3, 0]
    xs = xs.at[2, 3:].set(1e3).at[1, 1:].set(-1e3)  # loud padding: it must not leak in
    h, ys = jax.jit(net)(params, h0, xs, seq_lengths=jnp.array(lengths))
    H = cell.output_size
    for b, L in enumerate(lengths):
        p, s = params.layers[0], h0[0]
        pick = lambda tree: jax.tree.map(lambda a: a[b], tree)
        hf, yf = python_unroll(cell, p.forward, pick(s.forward), xs[b, :L])
        hb, yb_flipped = python_unroll(cell, p.backward, pick(s.backward), xs[b, :L][::-1])
        assert_close(ys[b, :L, :H], yf)
        assert_close(ys[b, :L, H:], yb_flipped[::-1])
        assert_close(pick(h[0].forward), hf)
        assert_close(pick(h[0].backward), hb)
        assert not np.any(np.asarray(ys[b, L:]))


@pytest.mark.slow
def test_several_batch_dims_and_time_major(build, assert_close):
    net = jaxrnn.stack(MIXED, bidirectional=True, head=2)
    params, h0, xs = build(net, (2, 3), time_major=True)
    lengths = jnp.array([[T, 0, 2], [1, 4, 3]])

    @jax.jit
    def run(params, h0, xs, lengths):
        out = net(params, h0, xs, seq_lengths=lengths, time_major=True)
        ref = python_stack(net, params, h0, jnp.moveaxis(xs, 0, 2), seq_lengths=lengths)
        return out, ref

    (h, ys), (h_ref, ys_ref) = run(params, h0, xs, lengths)
    assert ys.shape == (T, 2, 3, 2)
    assert_close(h, h_ref)
    assert_close(jnp.moveaxis(ys, 0, 2), ys_ref)


def test_unbatched_stack(build, assert_close):
    net = jaxrnn.stack(jaxrnn.lstm(4), num_layers=2, bidirectional=True)
    params, h0, xs = build(net, ())
    h, ys = net(params, h0, xs, seq_lengths=jnp.array(4))
    assert ys.shape == (T, 8)
    assert_close((h, ys), python_stack(net, params, h0, xs, seq_lengths=jnp.array(4)))


@pytest.mark.slow
def test_dropout(build, assert_close):
    """No key: deterministic and equal to dropout=0; a key: different, reproducible."""
    cells = [jaxrnn.gru(8), jaxrnn.lstm(4)]
    net = jaxrnn.stack(cells, dropout=0.5, head=2)
    plain = jaxrnn.stack(cells, head=2)
    params, h0, xs = build(net, (2,))
    lengths = jnp.array([T, 3])
    run = jax.jit(lambda net, key: net(params, h0, xs, seq_lengths=lengths, key=key)[1], static_argnums=0)
    k1, k2 = jax.random.split(jax.random.key(1))
    no_key = run(net, None)
    assert_close(no_key, run(plain, None))
    a, a_again, b = run(net, k1), run(net, k1), run(net, k2)
    np.testing.assert_array_equal(a, a_again)
    assert float(jnp.abs(a - no_key).max()) > 1e-2
    assert float(jnp.abs(a - b).max()) > 1e-2
    # The dropout key makes no difference to a dropout-free network.
    assert_close(run(plain, k1), no_key)


def test_dropout_is_only_between_layers(build, assert_close):
    net = jaxrnn.stack(jaxrnn.gru(4), dropout=0.5)
    params, h0, xs = build(net, (2,))
    assert_close(net(params, h0, xs, key=jax.random.key(3)), net(params, h0, xs))


def test_step_matches_call(build, assert_close):
    """One net.step is the network at T=1; a loop of net.step is the whole network."""
    net = jaxrnn.stack(MIXED + [jaxrnn.rnn(3)], head=2)
    params, h0, xs = build(net, (2,))

    @jax.jit
    def run(params, h0, xs):
        one = (net(params, h0, xs[:, :1]), net.step(params, h0, xs[:, 0]))
        h, ys = h0, []
        for t in range(T):
            h, y = net.step(params, h, xs[:, t])
            ys.append(y)
        return one, (h, jnp.stack(ys, axis=1)), net(params, h0, xs)

    ((h1, ys1), (h1_step, y1_step)), looped, whole = run(params, h0, xs)
    assert_close(h1, h1_step)
    assert_close(ys1[:, 0], y1_step)
    assert_close(looped, whole)
    assert y1_step.shape == (2, 2)


def test_step_rejects_bidirectional():
    net = jaxrnn.stack(jaxrnn.gru(4), bidirectional=True)
    params = net.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match="`step`"):
        net.step(params, None, jnp.zeros((2, I)))


def test_init_structure_and_none_state(key, assert_close, normal):
    net = jaxrnn.stack(jaxrnn.lstm(4, proj_size=2), num_layers=2, bidirectional=True, head=5)
    params = net.init(key, I)
    assert len(params.layers) == 2 and all(isinstance(p, jaxrnn.Bidirectional) for p in params.layers)
    assert params.layers[1].forward.w_ih.shape == (16, 4)  # previous layer: 2 directions x proj 2
    assert params.head.w.shape == (5, 4) and params.head.b.shape == (5,)
    assert net.output_size == 5 and net.num_layers == 2
    # Directions and layers are initialised independently.
    assert not np.allclose(params.layers[0].forward.w_hh, params.layers[0].backward.w_hh)
    assert not np.allclose(params.layers[0].forward.w_hh, params.layers[1].forward.w_hh)
    xs = normal((2, T, I))
    run = jax.jit(lambda h: net(params, h, xs))
    assert_close(run(None), run(net.initial_state((2,))))
