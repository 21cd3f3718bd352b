"""S6 (the Mamba mixer): the chunked parallel form (every mode, both directions) against the
cell's own ``step`` in a loop, with ragged lengths (0 included), resets, random initial and
reset states (convolution buffer included), bfloat16 inputs; values and gradients. The
step against a float64 numpy loop of the equations; Mamba's initialisation; the compiled
memory of the parallel form against ``T``."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo.s6 import S6State, s6
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

T, BATCH, M = 29, (2, 3), 4
CELL = dict(state_size=3, expand=2, conv_size=3, bias=True, chunk_size=8)



def step_loop(cell, params, h, xs, lengths, resets, reset_state, reverse):
    """``unroll``'s semantics as a ``lax.scan`` of ``cell.step`` with plain ``where`` masks."""
    n = xs.shape[0]
    t = jnp.arange(n).reshape((n,) + (1,) * lengths.ndim)
    if reverse:
        enter = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])]) & (t + 1 < lengths)
    else:
        enter = resets & (t < lengths)
    ex = lambda m, a: m.reshape(m.shape + (1,) * (a.ndim - m.ndim))

    def body(h, inp):
        t, x, e = inp
        h = jax.tree.map(lambda r, s: jnp.where(ex(e, s), r, s), reset_state, h)
        new, y = cell.step(params, h, x)
        valid = t < lengths
        return jax.tree.map(lambda a, b: jnp.where(ex(valid, a), a, b), new, h), jnp.where(ex(valid, y), y, 0.0)

    return jax.lax.scan(body, h, (jnp.arange(n), xs, enter), reverse=reverse)


def random_params(cell, seed, scale=0.3):
    p = cell.init(jax.random.key(seed), M)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + scale * jnp.asarray(rng.standard_normal(a.shape), a.dtype), p)


def problem(seed=0, dtype=jnp.float32):
    cell = s6(M, **CELL)
    params = random_params(cell, seed)
    rng = np.random.default_rng(seed + 1)
    xs = jnp.asarray(rng.standard_normal((T,) + BATCH + (M,)), dtype)
    state = lambda: jax.tree.map(lambda z: jnp.asarray(rng.standard_normal(z.shape), jnp.float32),
                                 cell.initial_state(BATCH))
    h, r = state(), state()
    lengths = rng.integers(0, T + 1, BATCH).astype(np.int32)
    lengths.flat[0], lengths.flat[1], lengths.flat[-1] = T, 0, T - 1
    resets = rng.random((T,) + BATCH) < 0.12
    resets[0, 0, 0] = True
    resets[1, 0, 2] = True      # two segment starts one step apart: the conv buffer inside a segment
    return cell, params, h, xs, jnp.asarray(lengths), jnp.asarray(resets), r


def _loss(fn, params, h, xs, lengths, resets, r):
    h_out, ys = fn(params, h, xs, lengths, resets, r)
    return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(a)) for a in h_out), (h_out, ys)


def _vg(fn):
    return jax.jit(jax.value_and_grad(functools.partial(_loss, fn), argnums=(0, 1, 2, 5), has_aux=True))


@functools.lru_cache(maxsize=None)
def _parallel(mode, reverse):
    cell = s6(M, **CELL)
    return _vg(lambda p, h, xs, L, rs, r: cell.parallel_unroll(p, h, xs, seq_lengths=L, resets=rs, reset_state=r,
                                                               reverse=reverse, mode=mode))


@functools.lru_cache(maxsize=None)
def _loop(reverse):
    cell = s6(M, **CELL)
    return _vg(lambda p, h, xs, L, rs, r: step_loop(cell, p, h, xs, L, rs, r, reverse))


@pytest.mark.parametrize("mode, reverse, dtype", [("chunked", False, jnp.float32), ("sequential", True, jnp.bfloat16)])
def test_parallel_equals_step_loop(mode, reverse, dtype):
    cell, params, h, xs, lengths, resets, r = problem(0, dtype)
    args = (params, h, xs, lengths, resets, r)
    (_, (h_p, ys_p)), g_p = _parallel(mode, reverse)(*args)
    (_, (h_l, ys_l)), g_l = _loop(reverse)(*args)
    assert ys_p.shape == (T,) + BATCH + (M,)
    assert rel_rms(ys_p, ys_l) <= 1e-5
    for name, a, b in zip(("params", "h", "xs", "reset_state"), g_p, g_l):
        for x, y in zip(jax.tree.leaves((a,)), jax.tree.leaves((b,))):
            # a gradient for bfloat16 inputs is itself rounded to bfloat16
            assert rel_rms(x, y) <= (1e-2 if x.dtype == jnp.bfloat16 else 1e-5), name
    for a, b in zip(h_p, h_l):
        assert rel_rms(a, b) <= 1e-5
    zero = np.asarray(lengths) == 0
    for a, b in zip(h_p, h):  # a zero length returns the initial state exactly
        np.testing.assert_array_equal(np.asarray(a)[zero], np.asarray(b)[zero])
    past = np.arange(T)[:, None, None] >= np.asarray(lengths)[None]
    assert not np.asarray(ys_p)[past].any()
    assert float(jnp.abs(g_p[3].conv).max()) > 0        # the reset state's conv buffer is used


def numpy_loop(p, h_conv, h_ssm, xs):
    """The module docstring's equations in float64 numpy, one sequence ``xs`` ``[T, M]``."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    E = p.D.shape[0]
    R = p.dt_proj_w.shape[1]
    N = p.A_log.shape[1]
    silu = lambda v: v / (1 + np.exp(-v))
    conv, h = np.array(h_conv, np.float64), np.array(h_ssm, np.float64)
    out = []
    for x in np.asarray(xs, np.float64):
        xz = p.in_proj_w @ x + p.in_proj_b
        xt, z = xz[:E], xz[E:]
        window = np.concatenate([conv, xt[None]], axis=0)            # [K, E]
        u = silu((window * p.conv_w.T).sum(0) + p.conv_b)
        xd = p.x_proj_w @ u
        dt = np.log1p(np.exp(p.dt_proj_w @ xd[:R] + p.dt_bias))
        Bt, Ct = xd[R:R + N], xd[R + N:]
        A = -np.exp(p.A_log)
        h = np.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = (h @ Ct + p.D * u) * silu(z)
        out.append(p.out_proj_w @ y + p.out_proj_b)
        conv = window[1:]
    return conv, h, np.stack(out)


def test_against_float64_loop():
    cell, params, h, xs, *_ = problem(4)
    run = jax.jit(lambda p, h, xs: cell.parallel_unroll(p, h, xs, mode="chunked", chunk_size=5))
    (conv, ssm), ys = run(params, h, xs)
    for b in np.ndindex(*BATCH):
        conv64, ssm64, ys64 = numpy_loop(params, h.conv[b], h.ssm[b], xs[(slice(None),) + b])
        assert rel_rms(ys[(slice(None),) + b], ys64) <= 1e-5
        assert rel_rms(ssm[b], ssm64) <= 1e-5
        np.testing.assert_allclose(np.asarray(conv[b]), conv64, rtol=1e-6, atol=1e-6)


def test_mamba_init_and_through_unroll():
    cell = s6(32, dt_min=0.01, dt_max=0.05)
    p = cell.init(jax.random.key(0), 32, dtype=jnp.bfloat16)
    assert (cell.inner_size, cell.dt_rank) == (64, 2)
    for leaf in (p.A_log, p.D, p.dt_bias):
        assert leaf.dtype == jnp.float32
    assert p.in_proj_w.dtype == jnp.bfloat16 and p.in_proj_b is None
    np.testing.assert_allclose(np.exp(np.asarray(p.A_log)), np.tile(np.arange(1, 17), (64, 1)), rtol=1e-6)
    dt = np.asarray(jax.nn.softplus(p.dt_bias))                 # the inverse softplus round-trips
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert np.abs(np.asarray(p.dt_proj_w, np.float32)).max() <= 1 / math.sqrt(2) + 1e-3
    # jaxrnn.unroll, batch-major: the chunked form against the generic sequential path.
    cell, params, h, xs, lengths, resets, r = problem(6)
    xs_b, resets_b = jnp.moveaxis(xs, 0, -2), jnp.moveaxis(resets, 0, -1)
    run = jax.jit(lambda p: [jaxrnn.unroll(cell, p, h, xs_b, seq_lengths=lengths, resets=resets_b, reset_state=r,
                                           mode=m) for m in ("chunked", "sequential")])
    (h_c, ys_c), (h_s, ys_s) = run(params)
    assert ys_c.shape == BATCH + (T, M)
    for a, b in zip(jax.tree.leaves((h_c, ys_c)), jax.tree.leaves((h_s, ys_s))):
        assert rel_rms(a, b) <= 1e-5


def _grad_memory(T, E_over_M=8, M=8, N=64, B=2, chunk=64):
    """Temporary bytes of the compiled fwd+bwd of the chunked form at length ``T`` (sequential
    inside the chunks, which compiles 3x faster than the associative scan; the benchmark
    ``benchmarks/memax_cells.py`` measures that one)."""
    cell = s6(M, state_size=N, expand=E_over_M, chunk_size=chunk)
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0), M))
    xs = jax.ShapeDtypeStruct((T, B, M), jnp.float32)
    h = cell.initial_state((B,))

    def loss(p, xs):
        return jnp.sum(cell.parallel_unroll(p, h, xs, mode="sequential")[1] ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        pytest.skip("this backend reports no memory analysis")
    return stats.temp_size_in_bytes


def test_compiled_memory_has_no_T_by_E_by_N_term():
    """fwd+bwd temporary memory grows with ``T`` by less than half the ``B·E·N`` floats per
    step that holding all states would take (E=64, N=64: 32 KiB per step; the ``[T, B, E]``
    and ``[T, B, N]`` activations and cotangents take the rest)."""
    B, E, N = 2, 64, 64
    sizes = {T: _grad_memory(T) for T in (256, 1024)}
    per_step = (sizes[1024] - sizes[256]) / (1024 - 256)
    print(f"S6 fwd+bwd temp bytes: {sizes}; {per_step:.0f} bytes per step; all states: {B * E * N * 4} per step")
    assert per_step < 0.5 * B * E * N * 4


def test_errors():
    with pytest.raises(ValueError, match="`state_size`"):
        s6(4, state_size=0)
    with pytest.raises(ValueError, match="`dt_min`"):
        s6(4, dt_min=0.1, dt_max=0.01)
    cell = s6(4, state_size=2)
    with pytest.raises(ValueError, match="`input_size`"):
        cell.init(jax.random.key(0), 5)
    params = cell.init(jax.random.key(0), 4)
    with pytest.raises(ValueError, match="`x`"):
        cell.step(params, None, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="`params.x_proj_w`"):
        s6(4, state_size=3).step(params, None, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`h.ssm`"):
        cell.step(params, S6State(jnp.zeros((2, 3, 8)), jnp.zeros((2, 8, 3))), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`mode`"):
        cell.parallel_unroll(params, cell.initial_state((2,)), jnp.ones((3, 2, 4)), mode="newton")
