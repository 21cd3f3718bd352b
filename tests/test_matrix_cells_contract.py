"""Issue 20's acceptance, for every matrix-state cell at once: ``unroll`` in ``mode="chunked"``
and ``mode="sequential"`` agree, and so do a ``stack`` of the cell and ``jaxrnn.nnx.RNN``
holding it, with resets (at t=0 and inside chunks), ragged lengths including 0 and a random
initial state; the gradients of a stack agree too. Each cell's own file checks it against its
references (fla-core's naive files, mlstm-kernels, float64 loops)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo import deltanet, gated_deltanet, gla, mamba2, mlstm
from test_zoo_deltanet import rel_rms

pytestmark = pytest.mark.slow

I = 16
CELLS = {
    "gated_deltanet": lambda: gated_deltanet(I, num_heads=2, head_dim=8, allow_neg_eigval=True),
    "deltanet": lambda: deltanet(I, num_heads=2),
    "gla": lambda: gla(I, num_heads=2),
    "mamba2": lambda: mamba2(I, state_size=8, head_dim=8),
    "mlstm": lambda: mlstm(I, num_heads=2, bias=True),
}


def tree_rel_rms(a, b) -> float:
    return max(rel_rms(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(y))


def random_like(tree, key, scale=0.5):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def data(B=3, T=21):
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([T, 0, 13])
    resets = jnp.zeros((B, T), bool).at[0, 0].set(True).at[0, 8].set(True).at[2, 5].set(True)
    return xs, lengths, resets


def nonzero(params, key):
    """The cell's params moved off their init (zero biases hide bugs)."""
    return jax.tree.map(lambda p, n: p + 0.1 * n, params, random_like(params, key, 1.0))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_stack_chunked_equals_sequential(name):
    net = jaxrnn.stack([CELLS[name](), CELLS[name]()])
    params = nonzero(net.init(jax.random.key(0), input_size=I), jax.random.key(5))
    xs, lengths, resets = data()
    h0 = random_like(net.initial_state((3,)), jax.random.key(2))

    def loss(p, h, mode):
        opts = dict(mode=mode, chunk_size=4) if mode == "chunked" else dict(mode=mode)
        h, ys = net(p, h, xs, seq_lengths=lengths, resets=resets, **opts)
        return jnp.sum(ys ** 2) + sum(jnp.sum(a ** 2) for a in jax.tree.leaves(h)), (h, ys)

    (_, out_c), g_c = jax.jit(jax.value_and_grad(lambda p, h: loss(p, h, "chunked"), argnums=(0, 1),
                                                 has_aux=True))(params, h0)
    (_, out_s), g_s = jax.jit(jax.value_and_grad(lambda p, h: loss(p, h, "sequential"), argnums=(0, 1),
                                                 has_aux=True))(params, h0)
    assert tree_rel_rms(out_c, out_s) <= 1e-5
    assert tree_rel_rms(g_c, g_s) <= 1e-4
    # The sequence of length 0 keeps its initial state and gives zero outputs.
    for a, b in zip(jax.tree.leaves(out_c[0]), jax.tree.leaves(h0)):
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(out_c[1][1]))) == 0.0


@pytest.mark.parametrize("name", sorted(CELLS))
def test_nnx_rnn_chunked_equals_sequential(name):
    nnx = pytest.importorskip("flax.nnx")
    import jaxrnn.nnx as jnnx

    cell = CELLS[name]()
    rnn = jnnx.RNN(cell, I, rngs=nnx.Rngs(0))
    rnn.params = nonzero(rnn.params, jax.random.key(6))
    xs, lengths, resets = data()
    h0 = random_like(cell.initial_state((3,)), jax.random.key(3))
    a = nnx.jit(lambda m, x, h: m(x, h, seq_lengths=lengths, resets=resets, mode="chunked", chunk_size=8))(rnn, xs, h0)
    b = nnx.jit(lambda m, x, h: m(x, h, seq_lengths=lengths, resets=resets, mode="sequential"))(rnn, xs, h0)
    assert tree_rel_rms(a, b) <= 1e-5
    # The module runs the functional cell on its params.
    c = jaxrnn.unroll(cell, rnn.params, h0, xs, seq_lengths=lengths, resets=resets, mode="chunked", chunk_size=8)
    assert tree_rel_rms(a, c) <= 1e-6


@pytest.mark.parametrize("name", sorted(CELLS))
def test_mixed_stack_runs_in_either_parallel_mode(name):
    """A stack of minGRU (associative or chunked) and a matrix-state cell (chunked only) runs
    with ``mode="associative"``: the matrix cell takes it as its chunked form. Both parallel
    modes agree with the sequential scan."""
    from jaxrnn.zoo import min_gru

    net = jaxrnn.stack([min_gru(I), CELLS[name]()])
    params = nonzero(net.init(jax.random.key(0), input_size=I), jax.random.key(7))
    xs, lengths, resets = data()
    h0 = random_like(net.initial_state((3,)), jax.random.key(4))
    run = lambda mode: jax.jit(lambda p, h: net(p, h, xs, seq_lengths=lengths, resets=resets, mode=mode))(params, h0)
    seq = run("sequential")
    assert tree_rel_rms(run("associative"), seq) <= 1e-5
    assert tree_rel_rms(run("chunked"), seq) <= 1e-5
