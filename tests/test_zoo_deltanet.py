"""Gated DeltaNet / DeltaNet cells: unroll chunked vs sequential vs a Python loop of step, in
values and gradients, with resets, ragged lengths (incl. 0) and a random initial state; stack
and jaxrnn.nnx.RNN; errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo.deltanet import MatrixCellState, deltanet, gated_deltanet
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

F32 = 1e-5



CELLS = {
    "gdn": lambda: gated_deltanet(12, num_heads=2, head_dim=4, allow_neg_eigval=True, conv_bias=True),
    "deltanet": lambda: deltanet(12, num_heads=3),
    "gdn_noconv": lambda: gated_deltanet(12, num_heads=2, head_dim=4, use_short_conv=False, use_gate=False),
}


def random_state(cell, key, B):
    h = cell.initial_state((B,))
    k1, k2 = jax.random.split(key)
    return MatrixCellState(jax.random.normal(k1, h.S.shape), jax.random.normal(k2, h.conv.shape))


def python_loop(cell, params, h, xs, resets, lengths):
    """The per-step semantics by hand: reset to zeros, freeze past the length."""
    B, T = xs.shape[:2]
    zero = cell.initial_state((B,))
    ys = []
    for t in range(T):
        r = resets[:, t]
        h_in = jax.tree.map(lambda a, z: jnp.where(r.reshape((B,) + (1,) * (a.ndim - 1)), z, a), h, zero)
        h_new, y = cell.step(params, h_in, xs[:, t])
        live = (t < lengths)
        h = jax.tree.map(lambda a, b: jnp.where(live.reshape((B,) + (1,) * (a.ndim - 1)), a, b), h_new, h)
        ys.append(jnp.where(live[:, None], y, 0.0))
    return h, jnp.stack(ys, 1)


@pytest.mark.parametrize("name", list(CELLS))
def test_chunked_sequential_step_loop(key, name):
    cell = CELLS[name]()
    B, T, I = 3, 21, 7
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, input_size=I)
    xs = jax.random.normal(k2, (B, T, I))
    h0 = random_state(cell, k3, B)
    resets = np.zeros((B, T), bool)
    resets[0, 0] = resets[1, 8] = resets[1, 10] = resets[2, 5] = True
    resets = jnp.asarray(resets)
    lengths = jnp.array([T, 11, 0], jnp.int32)
    kw = dict(resets=resets, seq_lengths=lengths)
    h_ref, y_ref = python_loop(cell, params, h0, xs, resets, lengths)
    h_s, y_s = jaxrnn.unroll(cell, params, h0, xs, **kw)
    h_c, y_c = jaxrnn.unroll(cell, params, h0, xs, mode="chunked", chunk_size=4, **kw)
    for h, y in ((h_s, y_s), (h_c, y_c)):
        assert rel_rms(y, y_ref) <= F32
        assert rel_rms(h.S, h_ref.S) <= F32
        if h.conv.size:
            assert rel_rms(h.conv, h_ref.conv) <= F32
    np.testing.assert_allclose(np.asarray(h_c.S[2]), np.asarray(h0.S[2]), rtol=0, atol=0)

    def loss(mode, p, h):
        h, ys = jaxrnn.unroll(cell, p, h, xs, mode=mode, chunk_size=4 if mode == "chunked" else None, **kw)
        return jnp.sum(ys * jnp.cos(jnp.arange(ys.size).reshape(ys.shape))) + jnp.sum(h.S ** 2)

    g_s = jax.grad(lambda p, h: loss("sequential", p, h), argnums=(0, 1))(params, h0)
    g_c = jax.grad(lambda p, h: loss("chunked", p, h), argnums=(0, 1))(params, h0)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_s)):
        assert b.size == 0 or rel_rms(a, b) <= 1e-4 or np.abs(np.asarray(b)).max() < 1e-6


def test_reset_state_and_stack_nnx(key):
    cell = CELLS["gdn"]()
    B, T, I = 2, 13, 12
    params = cell.init(key, input_size=I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    resets = jnp.zeros((B, T), bool).at[0, 3].set(True).at[1, 0].set(True)
    r = random_state(cell, jax.random.key(2), B)
    _, y_s = jaxrnn.unroll(cell, params, None, xs, resets=resets, reset_state=r)
    _, y_c = jaxrnn.unroll(cell, params, None, xs, resets=resets, reset_state=r, mode="chunked", chunk_size=4)
    assert rel_rms(y_c, y_s) <= F32
    net = jaxrnn.stack([cell, CELLS["deltanet"]()])
    p = net.init(jax.random.key(3), input_size=I)
    _, ys1 = net(p, None, xs, seq_lengths=jnp.array([T, 5]), mode="chunked")
    _, ys2 = net(p, None, xs, seq_lengths=jnp.array([T, 5]))
    assert ys1.shape == (B, T, 12) and rel_rms(ys1, ys2) <= F32
    nnx = pytest.importorskip("flax.nnx")
    import jaxrnn.nnx as jnnx
    model = jnnx.RNN(cell, I, rngs=nnx.Rngs(0))
    _, ys = model(xs, seq_lengths=jnp.array([T, 5]))
    _, ys_ref = jaxrnn.unroll(cell, model.params, None, xs, seq_lengths=jnp.array([T, 5]))
    assert ys.shape == (B, T, 12) and rel_rms(ys, ys_ref) <= F32


def test_errors(key):
    cell = CELLS["gdn"]()
    params = cell.init(key, input_size=5)
    h = cell.initial_state((2,))
    xs = jnp.zeros((4, 2, 5))
    with pytest.raises(ValueError, match="`reverse"):
        cell.parallel_unroll(params, h, xs, reverse=True)
    with pytest.raises(ValueError, match="`mode`"):
        cell.parallel_unroll(params, h, xs, mode="scan")
    with pytest.raises(ValueError, match="params.q_proj"):
        cell.step(params._replace(q_proj=jnp.zeros((3, 5))), None, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="h.S"):
        cell.step(params, h._replace(S=jnp.zeros((2, 2, 4, 9))), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="`expand_v`"):
        gated_deltanet(8, head_dim=3, expand_v=0.5)
