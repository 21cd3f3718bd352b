"""jaxrnn.rl: pre-step resets one step at a time agree with unroll(..., resets=); starts from
dones; gathering stored states; every step's state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import rl

B, T, I, H = 3, 9, 4, 5


@pytest.fixture
def key():
    return jax.random.key(0)


def _data(key, cell):
    kp, kx, kh, kr = jax.random.split(key, 4)
    params = cell.init(kp, input_size=I)
    xs = jax.random.normal(kx, (B, T, I))
    h0 = jax.tree.map(lambda a: jax.random.normal(kh, a.shape, a.dtype), cell.initial_state((B,)))
    resets = jax.random.bernoulli(kr, 0.3, (B, T)).at[0, 0].set(True).at[1, 4].set(True)
    return params, xs, h0, resets


CELLS = {
    "lstm": lambda: jaxrnn.lstm(H),
    "gru": lambda: jaxrnn.gru(H),
    "min_gru": lambda: jaxrnn.zoo.min_gru(H),
    "stack": lambda: jaxrnn.stack([jaxrnn.gru(H), jaxrnn.lstm(H)]),
}


def test_reset_where_against_numpy(key):
    h = (jax.random.normal(key, (B, H)), jax.random.normal(jax.random.key(1), (B, 2, H)))
    flags = jnp.array([True, False, True])
    out = rl.reset_where(flags, h)
    for a, o in zip(h, out):
        want = np.array(a)
        want[np.array(flags)] = 0.0
        np.testing.assert_array_equal(np.asarray(o), want)
    start = (jnp.full((H,), 2.0), jnp.full((B, 2, H), -1.0))
    out = rl.reset_where(flags, h, start)
    np.testing.assert_array_equal(np.asarray(out[0][0]), 2.0)
    np.testing.assert_array_equal(np.asarray(out[0][1]), np.asarray(h[0][1]))
    np.testing.assert_array_equal(np.asarray(out[1][2]), -1.0)


def test_reset_where_errors(key):
    h = jnp.zeros((B, H))
    with pytest.raises(ValueError, match="`flags` must have the state's batch shape"):
        rl.reset_where(jnp.zeros((B + 1,), bool), h)
    with pytest.raises(TypeError, match="`flags` must be a boolean"):
        rl.reset_where(jnp.zeros((B,)), h)
    with pytest.raises(TypeError, match="`reset_state` must have the structure"):
        rl.reset_where(jnp.zeros((B,), bool), h, (h, h))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_by_step_equals_unroll_with_resets(key, name):
    """A rollout of rl.step with pre-step resets is what unroll(..., resets=) computes, from
    a random initial state, across segment boundaries."""
    cell = CELLS[name]()
    params, xs, h0, resets = _data(key, cell)
    h, ys = h0, []
    for t in range(T):
        h, y = rl.step(cell, params, h, xs[:, t], reset=resets[:, t])
        ys.append(y)
    h_ref, ys_ref = jaxrnn.unroll(cell, params, h0, xs, resets=resets)
    np.testing.assert_allclose(np.stack(ys, 1), ys_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(h_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the post-step done (resets shifted one step early) gives other outputs
    early = jnp.concatenate([resets[:, 1:], jnp.zeros((B, 1), bool)], 1)
    _, ys_early = jaxrnn.unroll(cell, params, h0, xs, resets=early)
    assert float(jnp.abs(ys_early - ys_ref).max()) > 1e-3


def test_step_starts_from_initial_state(key):
    cell = jaxrnn.lstm(H)
    params = cell.init(key, input_size=I)
    x = jnp.ones((B, I))
    h1, y1 = rl.step(cell, params, None, x)
    h2, y2 = cell.step(params, cell.initial_state((B,)), x)
    np.testing.assert_array_equal(y1, y2)


def _starts_loop(dones, first):
    d = np.asarray(dones)
    out = np.zeros_like(d)
    for b in range(d.shape[0]):
        prev = bool(first[b])
        for t in range(d.shape[1]):
            out[b, t] = prev
            prev = bool(d[b, t])
    return out, d[:, -1]


def test_episode_starts_against_loop(key):
    dones = jax.random.bernoulli(key, 0.3, (B, T))
    first = jnp.array([True, False, True])
    starts, nxt = rl.episode_starts(dones, first)
    want, want_next = _starts_loop(dones, first)
    np.testing.assert_array_equal(np.asarray(starts), want)
    np.testing.assert_array_equal(np.asarray(nxt), want_next)
    s_T, n_T = rl.episode_starts(dones.T, first, time_major=True)
    np.testing.assert_array_equal(np.asarray(s_T).T, want)
    np.testing.assert_array_equal(np.asarray(n_T), want_next)
    # one step: the starts are `first`, the next first is the done
    s1, n1 = rl.episode_starts(dones[:, :1], first)
    np.testing.assert_array_equal(np.asarray(s1[:, 0]), np.asarray(first))
    np.testing.assert_array_equal(np.asarray(n1), np.asarray(dones[:, 0]))


def test_episode_starts_errors():
    with pytest.raises(ValueError, match="`first` must have the batch shape"):
        rl.episode_starts(jnp.zeros((B, T), bool), jnp.zeros((B + 1,), bool))
    with pytest.raises(TypeError, match="must be boolean"):
        rl.episode_starts(jnp.zeros((B, T)), jnp.zeros((B,), bool))


def test_take_states(key):
    h = jaxrnn.LSTMState(jax.random.normal(key, (B, H)), jax.random.normal(jax.random.key(2), (B, H)))
    idx = jnp.array([2, 0])
    out = rl.take_states(h, idx)
    assert isinstance(out, jaxrnn.LSTMState)
    np.testing.assert_array_equal(out.h, np.asarray(h.h)[[2, 0]])
    np.testing.assert_array_equal(out.c, np.asarray(h.c)[[2, 0]])
    with pytest.raises(ValueError, match="share their first 1"):
        rl.take_states((jnp.zeros((B, H)), jnp.zeros((B + 1, H))), idx)
    with pytest.raises(TypeError, match="`index` must be integer"):
        rl.take_states(h, jnp.array([0.0]))


@pytest.mark.parametrize("name", ["lstm", "min_gru", "stack"])
def test_unroll_states(key, name):
    cell = CELLS[name]()
    params, xs, h0, resets = _data(key, cell)
    h, ys, hs = rl.unroll_states(cell, params, h0, xs, resets=resets)
    h_ref, ys_ref = jaxrnn.unroll(cell, params, h0, xs, resets=resets)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    # hs[:, t] is the state after step t: compare with a loop of the cell's own step
    hh = h0
    for t in range(T):
        hh = jax.tree.map(lambda a: jnp.where(resets[:, t].reshape((B,) + (1,) * (a.ndim - 1)), 0.0, a), hh)
        hh, _ = cell.step(params, hh, xs[:, t])
        for a, b in zip(jax.tree.leaves(hh), jax.tree.leaves(jax.tree.map(lambda s: s[:, t], hs))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(h_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # replaying the second half from the stored state gives the same outputs (chunked replay)
    k = 5
    mid = jax.tree.map(lambda s: s[:, k - 1], hs)
    _, ys2 = jaxrnn.unroll(cell, params, mid, xs[:, k:], resets=resets[:, k:])
    np.testing.assert_allclose(ys2, ys_ref[:, k:], rtol=1e-5, atol=1e-6)


def test_unroll_states_time_major_and_errors(key):
    cell = jaxrnn.gru(H)
    params, xs, h0, resets = _data(key, cell)
    _, ys, hs = rl.unroll_states(cell, params, h0, xs, resets=resets)
    _, ys_T, hs_T = rl.unroll_states(cell, params, h0, jnp.swapaxes(xs, 0, 1), resets=resets.T, time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(ys_T, 0, 1), ys, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jnp.swapaxes(hs_T, 0, 1), hs, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="`resets` must be boolean of shape"):
        rl.unroll_states(cell, params, h0, xs, resets=resets[:, :-1])
    with pytest.raises(ValueError, match="`xs` must be"):
        rl.unroll_states(cell, params, h0, xs[0])
