"""minGRU, minLSTM and LRU: the parallel path (``parallel_unroll``) against the cells' own
``step`` in a Python loop, with ragged lengths (0 included), resets, reverse and random
initial and reset states; values and gradients. And each cell's ``step`` against its
equations written out in numpy (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.zoo.lru import LRUState, lru
from jaxrnn.zoo.mingru import g, log_g, min_gru, min_lstm
from _compat import enable_x64

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

T, BATCH, I = 37, (2, 3), 5


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


def step_loop(cell, params, h, xs, lengths, resets, reset_state, reverse):
    """``unroll``'s semantics as a loop of ``cell.step`` (time-major): a ``lax.scan`` over
    ``t`` whose body is the step with plain ``where`` masks, in the order ``reverse`` walks."""
    n_steps = xs.shape[0]
    if resets is not None:
        t = jnp.arange(n_steps)[:, None, None]
        if reverse:  # the state entering t comes from t + 1: reset if t + 1 starts a segment
            enter = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])]) & (t + 1 < lengths)
        else:
            enter = resets & (t < lengths)
    else:
        enter = jnp.zeros((n_steps,) + lengths.shape, bool)

    def body(h, inp):
        t, x, e = inp
        h = jax.tree.map(lambda r, s: jnp.where(e[..., None], r, s), reset_state, h)
        new, y = cell.step(params, h, x)
        valid = (t < lengths)[..., None]
        return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, h), jnp.where(valid, y, 0.0)

    return jax.lax.scan(body, h, (jnp.arange(n_steps), xs, enter), reverse=reverse)


def perturbed(params, seed, scale=0.3):
    """Params plus noise (non-zero biases everywhere)."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([p + scale * jnp.asarray(rng.standard_normal(p.shape), p.dtype) for p in leaves])


CELLS = {
    "min_gru": lambda: min_gru(4),
    "min_lstm": lambda: min_lstm(4),
    "min_gru_linear": lambda: min_gru(4, candidate="linear"),
    "lru": lambda: lru(I, 3, r_min=0.5, r_max=0.99),
    "min_gru_log": lambda: min_gru(4, log_space=True),
    "min_lstm_log": lambda: min_lstm(4, log_space=True),
}


def problem(name, seed=0):
    cell = CELLS[name]()
    params = cell.init(jax.random.key(seed), I)
    if not name.startswith("lru"):
        params = perturbed(params, seed)
    rng = np.random.default_rng(seed + 1)
    xs = jnp.asarray(rng.standard_normal((T,) + BATCH + (I,)), jnp.float32)
    state = lambda s: jax.tree.map(lambda z: jnp.asarray(rng.standard_normal(z.shape), jnp.float32), s)
    h = state(cell.initial_state(BATCH))
    r = state(cell.initial_state(BATCH))
    if name.endswith("_log"):  # the log-space form needs a state >= 0
        h = jnp.abs(h)
    lengths = rng.integers(0, T + 1, BATCH).astype(np.int32)
    lengths.flat[0], lengths.flat[1], lengths.flat[-1] = T, 0, T - 1
    resets = rng.random((T,) + BATCH) < 0.1
    resets[0, 0, 0] = True
    return cell, params, h, xs, jnp.asarray(lengths), jnp.asarray(resets), r


def _loss(fn, params, h, xs, lengths, resets, r):
    h_out, ys = fn(params, h, xs, lengths, resets, r)
    return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(h_out)), (h_out, ys)


def _value_and_grad(fn):
    return jax.jit(jax.value_and_grad(functools.partial(_loss, fn), argnums=(0, 1, 5), has_aux=True))


@functools.lru_cache(maxsize=None)
def _parallel(name, mode, reverse, with_resets):
    cell = CELLS[name]()
    return _value_and_grad(lambda params, h, xs, lengths, resets, r: cell.parallel_unroll(
        params, h, xs, seq_lengths=lengths, resets=resets if with_resets else None,
        reset_state=r if with_resets else None, reverse=reverse, mode=mode, chunk_size=8))


@functools.lru_cache(maxsize=None)
def _loop(name, reverse, with_resets):
    cell = CELLS[name]()
    return _value_and_grad(lambda params, h, xs, lengths, resets, r: step_loop(
        cell, params, h, xs, lengths, resets if with_resets else None, r, reverse))


# Every cell in both parallel modes and both directions; the sequential mode once (the LRU's
# complex pairs); the options of minGRU once each (compiles are slow on a CPU).
CASES = [("min_gru", "associative", False), ("min_gru", "chunked", True),
         ("min_lstm", "associative", True), ("min_lstm", "chunked", False),
         ("lru", "sequential", True), ("lru", "associative", False), ("lru", "chunked", True),
         ("min_gru_linear", "chunked", False), ("min_gru_log", "chunked", False), ("min_lstm_log", "chunked", True)]


@pytest.mark.parametrize("name, mode, reverse", CASES)
def test_parallel_equals_step_loop(name, mode, reverse):
    with_resets = not name.endswith("_log")  # the log-space form refuses resets
    cell, params, h, xs, lengths, resets, r = problem(name)
    args = (params, h, xs, lengths, resets, r)
    (_, (h_p, ys_p)), g_p = _parallel(name, mode, reverse, with_resets)(*args)
    (_, (h_l, ys_l)), g_l = _loop(name, reverse, with_resets)(*args)
    assert ys_p.shape == (T,) + BATCH + (cell.output_size,)
    assert rel_err(ys_p, ys_l) < 1e-5
    for a, b in zip(jax.tree.leaves(h_p), jax.tree.leaves(h_l)):
        assert rel_err(a, b) < 1e-5
    zero = np.asarray(lengths) == 0
    for a, b in zip(jax.tree.leaves(h_p), jax.tree.leaves(h)):   # zero length: the initial state
        np.testing.assert_allclose(np.asarray(a)[zero], np.asarray(b)[zero], rtol=1e-6)
    past = np.arange(T)[:, None, None] >= np.asarray(lengths)[None]
    assert not np.asarray(ys_p)[past].any()
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_l)):
        if with_resets or b.shape != h.shape:  # without resets the reset state has no gradient at all
            assert rel_err(a, b) < 1e-4


def test_min_gru_step_equations_float64():
    """minGRU and minLSTM ``step`` in float64 against the paper's equations in numpy."""
    with enable_x64(True):
        rng = np.random.default_rng(3)
        x = rng.standard_normal((3, I))
        h = rng.standard_normal((3, 4))
        sig = lambda v: 1 / (1 + np.exp(-v))
        gn = lambda v: np.where(v >= 0, v + 0.5, sig(v))
        for cell in (min_gru(4), min_lstm(4)):
            G = cell.num_gates
            w, b = rng.standard_normal((G * 4, I)), rng.standard_normal(G * 4)
            params = cell.params_type(jnp.asarray(w), jnp.asarray(b))
            k = x @ w.T + b
            if G == 2:
                z = sig(k[:, :4])
                want = (1 - z) * h + z * gn(k[:, 4:])
            else:
                f, i = sig(k[:, :4]), sig(k[:, 4:8])
                want = f / (f + i) * h + i / (f + i) * gn(k[:, 8:])
            h_new, y = cell.step(params, jnp.asarray(h), jnp.asarray(x))
            assert h_new.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(h_new), want, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(h_new))
        v = jnp.linspace(-30.0, 30.0, 101)
        np.testing.assert_allclose(np.asarray(log_g(v)), np.log(np.asarray(g(v))), rtol=1e-12, atol=1e-12)


def test_lru_step_equations_float64():
    """LRU ``step`` in float64 against numpy's complex arithmetic, and the ring initialisation."""
    with enable_x64(True):
        cell = lru(6, 10, r_min=0.4, r_max=0.9, max_phase=1.5)
        p = cell.init(jax.random.key(0), 6, dtype=jnp.float64)
        lam = np.exp(-np.exp(np.asarray(p.nu_log)) + 1j * np.exp(np.asarray(p.theta_log)))
        assert np.all(np.abs(lam) >= 0.4 - 1e-12) and np.all(np.abs(lam) <= 0.9 + 1e-12)
        assert np.all(np.angle(lam) >= -1e-12) and np.all(np.angle(lam) <= 1.5 + 1e-12)
        np.testing.assert_allclose(np.exp(np.asarray(p.gamma_log)), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-12)
        p = perturbed(p, 1, 0.1)
        rng = np.random.default_rng(4)
        x = rng.standard_normal((2, 6))
        h = rng.standard_normal((2, 10)) + 1j * rng.standard_normal((2, 10))
        lam = np.exp(-np.exp(np.asarray(p.nu_log)) + 1j * np.exp(np.asarray(p.theta_log)))
        B = (np.asarray(p.B_re) + 1j * np.asarray(p.B_im)) * np.exp(np.asarray(p.gamma_log))[:, None]
        Cm = np.asarray(p.C_re) + 1j * np.asarray(p.C_im)
        h_want = lam * h + x @ B.T
        y_want = (h_want @ Cm.T).real + np.asarray(p.D) * x
        (re, im), y = cell.step(p, LRUState(jnp.asarray(h.real), jnp.asarray(h.imag)), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(re) + 1j * np.asarray(im), h_want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(y), y_want, rtol=1e-12, atol=1e-12)


def test_project_update_equals_step():
    for name in ("min_gru", "min_lstm", "lru"):
        cell, params, h, xs, *_ = problem(name, seed=5)
        h1, y1 = cell.step(params, h, xs[0])
        h2, y2 = cell.update(params, h, cell.project(params, xs)[0])
        for a, b in zip(jax.tree.leaves((h1, y1)), jax.tree.leaves((h2, y2))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_log_space_precision_chunked_vs_whole():
    """At T=4096 the chunked log-space form stays close to the direct form; the paper's
    unchunked formula (one chunk of T) is printed for the record (issue 14: ~7e-4)."""
    cell = min_gru(8, log_space=True)
    direct = min_gru(8)
    params = perturbed(cell.init(jax.random.key(0), 4), 2, 0.5)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((4096, 4, 4)), jnp.float32)
    h0 = jnp.zeros((4, 8))
    run = jax.jit(lambda p, xs: (direct.parallel_unroll(p, h0, xs, mode="sequential")[1],
                                 cell.parallel_unroll(p, h0, xs, mode="chunked", chunk_size=64)[1],
                                 cell.parallel_unroll(p, h0, xs, mode="associative")[1]))
    ref, chunked, whole = run(params, xs)
    with enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        ref64 = direct.parallel_unroll(p64, jnp.zeros((4, 8), jnp.float64), jnp.asarray(xs, jnp.float64),
                                       mode="sequential")[1]
    e_direct, e_chunked, e_whole = (rel_err(x, ref64) for x in (ref, chunked, whole))
    print(f"relative error vs float64 at T=4096: direct {e_direct:.1e}, log-space chunked {e_chunked:.1e}, "
          f"log-space unchunked {e_whole:.1e}")
    assert e_direct < 1e-5
    assert e_chunked < 1e-4


def test_errors():
    with pytest.raises(ValueError, match="`candidate`"):
        min_gru(4, candidate="tanh")
    with pytest.raises(ValueError, match="`log_space=True`"):
        min_lstm(4, candidate="linear", log_space=True)
    with pytest.raises(ValueError, match="`input_size`"):
        lru(4, 8).init(jax.random.key(0), 5)
    with pytest.raises(ValueError, match="`r_min`"):
        lru(4, 8, r_min=0.9, r_max=0.5)
    cell = min_gru(4, log_space=True)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="`resets`"):
        cell.parallel_unroll(params, jnp.zeros((2, 4)), jnp.ones((5, 2, 3)), resets=jnp.zeros((5, 2), bool))
    with pytest.raises(ValueError, match="`mode`"):
        cell.parallel_unroll(params, jnp.zeros((2, 4)), jnp.ones((5, 2, 3)), mode="newton")
    with pytest.raises(ValueError, match="`params.w_ih`"):
        min_lstm(4).step(min_lstm(5).init(jax.random.key(0), 3), None, jnp.ones((3,)))
    with pytest.raises(TypeError, match="`params`"):
        min_lstm(4).step(params, None, jnp.ones((3,)))
    with pytest.raises(ValueError, match="`x`"):
        cell.step(params, None, jnp.ones((2, 4)))


# --------------------------------------------------------------------------- through jaxrnn.unroll / stack


@pytest.mark.parametrize("name, mode, reverse", [("min_gru", "associative", True), ("lru", "chunked", False),
                                                 ("min_lstm", "auto", True)])
def test_through_unroll_modes(name, mode, reverse):
    """``jaxrnn.unroll(cell, ..., mode=m)`` (batch-major, the lead's dispatch to
    ``parallel_unroll``) against ``mode="sequential"`` (the generic scan of the cell's
    ``update``), with lengths, resets and a reset state; values and gradients."""
    import jaxrnn

    cell, params, h, xs, lengths, resets, r = problem(name, seed=7)
    xs_b, resets_b = jnp.moveaxis(xs, 0, -2), jnp.moveaxis(resets, 0, -1)

    def loss(params, h, mode):
        h_out, ys = jaxrnn.unroll(cell, params, h, xs_b, seq_lengths=lengths, resets=resets_b, reset_state=r,
                                  reverse=reverse, mode=mode,
                                  chunk_size=8 if mode in ("chunked", "auto") else None)
        return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(h_out)), (h_out, ys)

    run = jax.jit(lambda p, h: [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, h, m)
                                for m in (mode, "sequential")])
    ((_, out_p), g_p), ((_, out_s), g_s) = run(params, h)
    assert out_p[1].shape == xs_b.shape[:-1] + (cell.output_size,)
    for a, b in zip(jax.tree.leaves(out_p), jax.tree.leaves(out_s)):
        assert rel_err(a, b) < 1e-5
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_s)):
        assert rel_err(a, b) < 1e-4


def test_through_stack_bidirectional():
    """A bidirectional ``jaxrnn.stack`` of minGRU -> LRU over ragged lengths: associative
    equals sequential (values and gradients)."""
    import jaxrnn

    net = jaxrnn.stack([min_gru(5), lru(10, 3)], bidirectional=True)
    params = net.init(jax.random.key(0), input_size=I)
    xs = jnp.asarray(np.random.default_rng(8).standard_normal((3, 11, I)), jnp.float32)
    lengths = jnp.array([11, 0, 6])

    def loss(params, mode):
        _, ys = net(params, None, xs, seq_lengths=lengths, mode=mode)
        return jnp.sum(jnp.sin(ys)), ys

    run = jax.jit(lambda p: [jax.value_and_grad(loss, has_aux=True)(p, m) for m in ("associative", "sequential")])
    ((_, ys_p), g_p), ((_, ys_s), g_s) = run(params)
    assert ys_p.shape == (3, 11, 20)
    assert rel_err(ys_p, ys_s) < 1e-5
    assert not np.asarray(ys_p)[1].any() and not np.asarray(ys_p)[2, 6:].any()
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_s)):
        assert rel_err(a, b) < 1e-4
