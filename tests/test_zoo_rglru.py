"""RG-LRU: the parallel form (every linear_scan mode, both directions) against the cell's own
``step`` in a loop, with ragged lengths (0 included), resets, random initial and reset
states, bfloat16 inputs; values and gradients. Then against recurrentgemma's own JAX
``RGLRU`` with the same weights (segment starts via ``segment_pos``, a cache as the initial
state), its bounded sqrt derivative and its initialisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo.rglru import MAX_SQRT_GRADIENT, RGLRUParams, RGLRUState, rglru, sqrt_bound_derivative
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

T, BATCH, D, HEADS = 29, (2, 3), 6, 2



def step_loop(cell, params, h, xs, lengths, resets, reset_state, reverse):
    """``unroll``'s semantics as a ``lax.scan`` of ``cell.step`` with plain ``where`` masks."""
    n = xs.shape[0]
    t = jnp.arange(n).reshape((n,) + (1,) * lengths.ndim)
    if resets is None:
        enter = jnp.zeros((n,) + lengths.shape, bool)
    elif reverse:
        enter = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])]) & (t + 1 < lengths)
    else:
        enter = resets & (t < lengths)

    def body(h, inp):
        t, x, e = inp
        h = jax.tree.map(lambda r, s: jnp.where(e.reshape(e.shape + (1,) * (s.ndim - e.ndim)), r, s), reset_state, h)
        new, y = cell.step(params, h, x)
        valid = t < lengths
        keep = lambda a, b: jnp.where(valid.reshape(valid.shape + (1,) * (a.ndim - valid.ndim)), a, b)
        return jax.tree.map(keep, new, h), keep(y, jnp.zeros_like(y))

    return jax.lax.scan(body, h, (jnp.arange(n), xs, enter), reverse=reverse)


def random_params(cell, seed):
    """The cell's init plus noise: non-zero biases, gates away from their init."""
    p = cell.init(jax.random.key(seed), D)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + 0.4 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), p)


def problem(seed=0, dtype=jnp.float32):
    cell = rglru(D, num_heads=HEADS)
    params = random_params(cell, seed)
    rng = np.random.default_rng(seed + 1)
    xs = jnp.asarray(rng.standard_normal((T,) + BATCH + (D,)), dtype)
    state = lambda: RGLRUState(jnp.asarray(rng.standard_normal(BATCH + (D,)), jnp.float32),
                               jnp.asarray(rng.integers(0, 2, BATCH + (1,)), jnp.float32))
    h, r = state(), state()
    lengths = rng.integers(0, T + 1, BATCH).astype(np.int32)
    lengths.flat[0], lengths.flat[1], lengths.flat[-1] = T, 0, T - 1
    resets = rng.random((T,) + BATCH) < 0.15
    resets[0, 0, 0] = True
    return cell, params, h, xs, jnp.asarray(lengths), jnp.asarray(resets), r


def _loss(fn, params, h, xs, lengths, resets, r):
    h_out, ys = fn(params, h, xs, lengths, resets, r)
    return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(h_out.h)), (h_out, ys)


def _vg(fn):
    return jax.jit(jax.value_and_grad(functools.partial(_loss, fn), argnums=(0, 1, 5), has_aux=True))


@functools.lru_cache(maxsize=None)
def _parallel(mode, reverse):
    cell = rglru(D, num_heads=HEADS)
    return _vg(lambda p, h, xs, L, rs, r: cell.parallel_unroll(p, h, xs, seq_lengths=L, resets=rs, reset_state=r,
                                                               reverse=reverse, mode=mode, chunk_size=8))


@functools.lru_cache(maxsize=None)
def _loop(reverse):
    cell = rglru(D, num_heads=HEADS)
    return _vg(lambda p, h, xs, L, rs, r: step_loop(cell, p, h, xs, L, rs, r, reverse))


@pytest.mark.parametrize("mode, reverse, dtype", [("associative", False, jnp.float32),
                                                  ("chunked", True, jnp.bfloat16)])
def test_parallel_equals_step_loop(mode, reverse, dtype):
    cell, params, h, xs, lengths, resets, r = problem(0, dtype)
    args = (params, h, xs, lengths, resets, r)
    (_, (h_p, ys_p)), g_p = _parallel(mode, reverse)(*args)
    (_, (h_l, ys_l)), g_l = _loop(reverse)(*args)
    assert ys_p.shape == (T,) + BATCH + (D,) and ys_p.dtype == jnp.float32
    assert rel_rms(ys_p, ys_l) <= 1e-5
    for a, b in zip(jax.tree.leaves((h_p, g_p)), jax.tree.leaves((h_l, g_l))):
        assert rel_rms(a, b) <= 1e-5
    zero = np.asarray(lengths) == 0
    for a, b in zip(h_p, h):  # a zero length returns the initial state exactly
        np.testing.assert_array_equal(np.asarray(a)[zero], np.asarray(b)[zero])
    assert np.all(np.asarray(h_p.started)[~zero] == 1)
    past = np.arange(T)[:, None, None] >= np.asarray(lengths)[None]
    assert not np.asarray(ys_p)[past].any()


def test_multiplier_is_one_at_segment_starts():
    """Equations by hand at one step: ``started = 0`` uses multiplier 1, ``started = 1`` sqrt(1 - a²)."""
    cell, params, _, xs, *_ = problem(2)
    x = xs[0]
    a, m, u = cell.coefficients(params, x)
    h0 = jnp.asarray(np.random.default_rng(0).standard_normal(x.shape), jnp.float32)
    for s, want in ((0.0, a * h0 + u), (1.0, a * h0 + m * u)):
        new, y = cell.step(params, RGLRUState(h0, jnp.full(x.shape[:-1] + (1,), s)), x)
        np.testing.assert_allclose(np.asarray(new.h), np.asarray(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(m), np.sqrt(1 - np.asarray(a) ** 2), rtol=1e-5)


def test_through_unroll_batch_major():
    """``jaxrnn.unroll(..., mode="chunked")`` against the generic sequential path (lengths,
    resets); values (the gradients are compared in ``test_parallel_equals_step_loop``)."""
    cell, params, h, xs, lengths, resets, r = problem(3)
    xs_b, resets_b = jnp.moveaxis(xs, 0, -2), jnp.moveaxis(resets, 0, -1)

    run = jax.jit(lambda p: [jaxrnn.unroll(cell, p, h, xs_b, seq_lengths=lengths, resets=resets_b, reset_state=r,
                                           mode=m, **kw) for m, kw in (("chunked", dict(chunk_size=8)),
                                                                       ("sequential", {}))])
    (h_c, ys_c), (h_s, ys_s) = run(params)
    assert ys_c.shape == BATCH + (T, D)
    for a, b in zip(jax.tree.leaves((h_c, ys_c)), jax.tree.leaves((h_s, ys_s))):
        assert rel_rms(a, b) <= 1e-5


# --------------------------------------------------------------------------- recurrentgemma


def _reference():
    pytest.importorskip("einops")
    pytest.importorskip("jaxtyping")
    return pytest.importorskip("recurrentgemma.jax.layers")


def _rg_variables(p: RGLRUParams):
    return {"params": {"a_param": p.a_param, "input_gate": {"w": p.w_x, "b": p.b_x},
                       "a_gate": {"w": p.w_a, "b": p.b_a}}}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_against_recurrentgemma(dtype):
    """Same weights, segments marked by resets here and by ``segment_pos == 0`` there, a
    continued sequence (cache, ``started = 1``) and a fresh one; values and gradients."""
    layers = _reference()
    B, n = 4, 23
    cell = rglru(D, num_heads=HEADS)
    params = random_params(cell, 5)
    rng = np.random.default_rng(6)
    xs = jnp.asarray(rng.standard_normal((B, n, D)), dtype)
    h0 = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
    resets = rng.random((B, n)) < 0.15
    resets[:2, 0] = True                       # sequences 0, 1 start fresh; 2, 3 continue h0
    pos = np.zeros((B, n), np.int32)
    for b in range(B):
        p = 0 if resets[b, 0] else 7           # a continued sequence: segment_pos does not start at 0
        for t in range(n):
            p = 0 if resets[b, t] else p
            pos[b, t] = p
            p += 1
    started = jnp.asarray(1.0 - resets[:, :1], jnp.float32)
    module = layers.RGLRU(width=D, num_heads=HEADS)

    def ours(p, xs, h0):
        h, ys = jaxrnn.unroll(cell, p, RGLRUState(h0, started), xs, resets=jnp.asarray(resets), mode="chunked",
                              chunk_size=8)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(h.h)), (ys, h.h)

    def theirs(p, xs, h0):
        ys, h = module.apply(_rg_variables(p), xs, jnp.asarray(pos), h0)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(h)), (ys, h)

    if dtype == jnp.bfloat16:  # values only: the gradients are compared in float32 below
        out_o, out_t = jax.jit(ours)(params, xs, h0)[1], jax.jit(theirs)(params, xs, h0)[1]
        for a, b in zip(out_o, out_t):
            assert a.dtype == b.dtype == jnp.float32 and rel_rms(a, b) <= 1e-5
        return
    vg = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
    (_, out_o), g_o = vg(ours)(params, xs, h0)
    (_, out_t), g_t = vg(theirs)(params, xs, h0)
    assert out_o[0].dtype == out_t[0].dtype == jnp.float32
    for a, b in zip(jax.tree.leaves((out_o, g_o)), jax.tree.leaves((out_t, g_t))):
        assert rel_rms(a, b) <= 1e-5
    assert float(jnp.abs(g_o[0].a_param).max()) > 0


def test_sqrt_bound_derivative_and_init_match_recurrentgemma():
    layers = _reference()
    x = jnp.array([0.0, 1e-9, 1e-7, 1e-3, 0.5, 1.0])
    ours = jax.vmap(jax.grad(lambda v: sqrt_bound_derivative(v, MAX_SQRT_GRADIENT)))(x)
    theirs = jax.vmap(jax.grad(lambda v: layers.sqrt_bound_derivative(v, 1000.0)))(x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)
    assert float(ours.max()) == pytest.approx(MAX_SQRT_GRADIENT, rel=1e-6)
    # The ring: same uniform draw -> same a_param.
    key = jax.random.key(9)
    p = rglru(64, num_heads=4).init(key, 64)
    k_a = jax.random.split(key, 3)[0]
    ref = layers.rnn_real_param_init(min_rad=0.9, max_rad=0.999)(k_a, (64,))
    np.testing.assert_allclose(np.asarray(p.a_param), np.asarray(ref), rtol=1e-6)
    radius = np.exp(-np.asarray(jax.nn.softplus(p.a_param)))
    assert radius.min() >= 0.9 - 1e-6 and radius.max() <= 0.999 + 1e-6
    assert p.w_x.shape == (4, 16, 16) and not np.asarray(p.b_a).any()
    assert 0.7 < float(np.std(np.asarray(p.w_x))) * 8 < 1.3          # N(0, 1/D), D = 64


def test_errors():
    with pytest.raises(ValueError, match="`hidden_size`"):
        rglru(6, num_heads=4)
    with pytest.raises(ValueError, match="`min_rad`"):
        rglru(6, min_rad=0.99, max_rad=0.9)
    cell = rglru(6, num_heads=2)
    with pytest.raises(ValueError, match="`input_size`"):
        cell.init(jax.random.key(0), 5)
    params = cell.init(jax.random.key(0), 6)
    with pytest.raises(ValueError, match="`x`"):
        cell.step(params, None, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="`params.w_x`"):
        rglru(6, num_heads=3).step(params, None, jnp.ones((2, 6)))
    with pytest.raises(TypeError, match="`h`"):
        cell.step(params, jnp.zeros((2, 6)), jnp.ones((2, 6)))
    with pytest.raises(ValueError, match="`mode`"):
        cell.parallel_unroll(params, cell.initial_state((2,)), jnp.ones((3, 2, 6)), mode="newton")
