"""Resets (episode boundaries) against their definition: each segment gives exactly what
running it alone gives, from the reset state, in either direction.

The reference cuts every sequence at its resets and its length and runs each segment by
itself with :func:`jaxrnn.reference.python_unroll` (a Python loop with no resets at all):
forward, the first segment starts from ``h`` (from the reset state if ``resets[0]``), every
other from the reset state; in reverse, the segment processed first (the last in time)
starts from ``h``, every other from the reset state. Values and gradients (params, ``h``,
``xs`` and ``reset_state``) of every built-in cell on its fused path (custom VJP, the CPU's
in-place buffer, batch- and time-major, remat) and of custom cells.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.reference import python_stack, python_unroll
from test_open_cells import MGU, lstm_fn, lstm_fn_params

B, T, I = 3, 6, 3
LENGTHS = np.array([T, 0, 4])
RESETS = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 1]], bool)  # past length: ignored


def segments(L, r):
    starts = [0] + [t for t in range(1, L) if r[t]]
    return [(s, e) for s, e in zip(starts, starts[1:] + [L])] if L else []


def segment_reference(cell, params, h, xs, reset_state, reverse):
    """Every sequence cut at its resets, each segment run alone (no resets, no lengths)."""
    ys_all, h_all = [], []
    for b in range(B):
        take = lambda tree: jax.tree.map(lambda a: a[b], tree)
        hb, rb = take(h), take(reset_state)
        L, r = int(LENGTHS[b]), RESETS[b]
        segs = segments(L, r)
        pieces = {}
        if not reverse:
            state = rb if (L and r[0]) else hb
            order = segs
        else:
            state, order = hb, segs[::-1]
        for k, (s, e) in enumerate(order):
            if k:
                state = rb
            state, y = python_unroll(cell, params, state, xs[b, s:e], reverse=reverse)
            pieces[s] = y
        out = jax.eval_shape(lambda: python_unroll(cell, params, hb, xs[b, :1])[1])
        ys = [pieces[s] for s, _ in segs] + [jnp.zeros((T - L,) + out.shape[1:], out.dtype)]
        ys_all.append(jnp.concatenate(ys, axis=0))
        h_all.append(state)
    return jax.tree.map(lambda *a: jnp.stack(a), *h_all), jnp.stack(ys_all)


def _random_tree(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), tree)


def _check(cell, params, h, xs, reset_state, reverse, assert_close, time_major=False, **opts):
    w = jnp.asarray(np.random.default_rng(3).standard_normal(
        jax.eval_shape(lambda: python_unroll(cell, params, h, xs))[1].shape), jnp.float32)

    def loss(run, params, h, xs, rs):
        hT, ys = run(params, h, xs, rs)
        return jnp.sum(jnp.sin(ys) * w) + sum(jnp.sum(jnp.cos(l)) for l in jax.tree.leaves(hT))

    def ours(params, h, xs, rs):
        if not time_major:
            return jaxrnn.unroll(cell, params, h, xs, seq_lengths=jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS),
                                 reset_state=rs, reverse=reverse, **opts)
        hT, ys = jaxrnn.unroll(cell, params, h, jnp.swapaxes(xs, 0, 1), seq_lengths=jnp.asarray(LENGTHS),
                               resets=jnp.asarray(RESETS.T), reset_state=rs, reverse=reverse, time_major=True, **opts)
        return hT, jnp.swapaxes(ys, 0, 1)

    ref_fn = lambda p, h, xs, rs: segment_reference(cell, p, h, xs, rs, reverse)
    assert_close(jax.jit(ours)(params, h, xs, reset_state), ref_fn(params, h, xs, reset_state), err_msg=str(opts))
    got = jax.jit(jax.value_and_grad(functools.partial(loss, ours), argnums=(0, 1, 2, 3)))(params, h, xs, reset_state)
    ref = jax.value_and_grad(functools.partial(loss, ref_fn), argnums=(0, 1, 2, 3))(params, h, xs, reset_state)
    assert_close(got, ref, err_msg=f"gradients {opts}")


CELL_OPTS = [("rnn_tanh", {}), ("rnn_relu", dict(time_major=True)), ("gru", {}), ("gru", dict(remat=4)),
             ("lstm", {}), ("lstm", dict(custom_vjp=False)), ("lstm_proj", dict(time_major=True))]


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name,opts", CELL_OPTS, ids=[f"{n}-{'-'.join(o) or 'fused'}" for n, o in CELL_OPTS])
def test_builtin_cells_match_segments(name, opts, reverse, make_cell, random_params, random_state, normal,
                                      assert_close):
    cell = make_cell(name, hidden_size=4)
    params = random_params(cell, I, seed=1)
    h = random_state(cell, (B,), seed=2)
    reset_state = random_state(cell, (B,), seed=5)
    xs = normal((B, T, I), seed=4)
    _check(cell, params, h, xs, reset_state, reverse, assert_close, **opts)


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_custom_cells_match_segments(reverse, assert_close, normal):
    params = lstm_fn_params()
    h = _random_tree({"h": jnp.zeros((B, 4)), "c": jnp.zeros((B, 4))}, 1)
    _check(lstm_fn, params, h, normal((B, T, I), seed=4), _random_tree(h, 7), reverse, assert_close)
    cell = MGU(split=True)
    params = cell.init(jax.random.key(0), I)
    h = _random_tree(cell.initial_state((B,)), 2)
    _check(cell, params, h, normal((B, T, I), seed=5), _random_tree(h, 8), reverse, assert_close, remat=2)


def test_default_reset_state_is_zeros(assert_close, normal):
    cell = jaxrnn.lstm(4)
    params = cell.init(jax.random.key(0), I)
    h = jax.tree.map(lambda a: a + 1.0, cell.initial_state((B,)))
    xs = normal((B, T, I))
    kw = dict(seq_lengths=jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS))
    assert_close(jaxrnn.unroll(cell, params, h, xs, **kw),
                 jaxrnn.unroll(cell, params, h, xs, reset_state=cell.initial_state((B,)), **kw))
    # and a reset state without batch dimensions broadcasts
    rs = jaxrnn.LSTMState(jnp.full((4,), 0.5), jnp.full((4,), -0.5))
    full = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, 4)), rs)
    assert_close(jaxrnn.unroll(cell, params, h, xs, reset_state=rs, **kw),
                 jaxrnn.unroll(cell, params, h, xs, reset_state=full, **kw))


def test_no_reset_equals_no_resets(assert_close, normal):
    cell = jaxrnn.gru(4)
    params = cell.init(jax.random.key(0), I)
    xs = normal((B, T, I))
    assert_close(jaxrnn.unroll(cell, params, None, xs, resets=jnp.zeros((B, T), bool), seq_lengths=LENGTHS),
                 jaxrnn.unroll(cell, params, None, xs, seq_lengths=LENGTHS))


@pytest.mark.slow
def test_stacks_and_torch_nets_with_resets(assert_close, normal):
    """A bidirectional stack (built-in and custom cells) and a from_torch net reset every
    layer and direction: equal to the Python loops layer by layer (whose resets match the
    segment definition, above)."""
    net = jaxrnn.stack([jaxrnn.lstm(4, proj_size=2), MGU(split=True)], bidirectional=True, head=3)
    params = net.init(jax.random.key(0), I)
    xs = normal((B, T, I))
    kw = dict(seq_lengths=jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS))
    h = _random_tree(net.initial_state((B,)), 3)
    f = lambda run, p, h: jnp.sum(jnp.sin(run(p, h, xs, **kw)[1]))
    assert_close(jax.jit(functools.partial(net, **kw))(params, h, xs), python_stack(net, params, h, xs, **kw))
    assert_close(jax.jit(jax.grad(functools.partial(f, net), argnums=(0, 1)))(params, h),
                 jax.grad(functools.partial(f, functools.partial(python_stack, net)), argnums=(0, 1))(params, h))
    torch = pytest.importorskip("torch")
    tnet, tparams = jaxrnn.from_torch(torch.nn.GRU(I, 4, num_layers=2, bidirectional=True, batch_first=True))
    _, ys = tnet(tparams, None, xs, jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS))
    _, ys_ref = python_stack(tnet.net, tparams, None, xs, **kw)
    assert_close(ys, ys_ref)
