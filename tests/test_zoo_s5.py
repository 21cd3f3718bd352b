"""The LRU's S5 options: zero-order hold with a learned step and the HiPPO-diagonal
initialisation. The step against numpy's complex arithmetic in float64, the initialisation
against S5's own procedure (``s5/ssm_init.py``, reproduced below with the same random
draws), the parallel form against the step loop with ragged lengths, resets, random states
and bfloat16 inputs (values and gradients), and the default LRU unchanged."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _compat import enable_x64
from jaxrnn.zoo.lru import LRUState, hippo_diagonal, lru
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

T, BATCH, H, N = 23, (2, 3), 5, 4



# --------------------------------------------------------------------------- S5's ssm_init.py, as written there
# (lindermanlab/S5 at 3c18fdb, s5/ssm_init.py and s5/train.py; MIT licence), for the comparison.


def s5_make_DPLR_HiPPO(N):
    P = np.sqrt(1 + 2 * np.arange(N))
    A = P[:, np.newaxis] * P[np.newaxis, :]
    A = -(np.tril(A) - np.diag(np.arange(N)))
    P = np.sqrt(np.arange(N) + 0.5)
    S = A + P[:, np.newaxis] * P[np.newaxis, :]
    Lambda_real = np.mean(np.diagonal(S)) * np.ones_like(np.diagonal(S))
    Lambda_imag, V = np.linalg.eigh(S * -1j)
    return Lambda_real + 1j * Lambda_imag, V


def s5_trunc_standard_normal(key, shape):
    H, P, _ = shape
    Cs = []
    for i in range(H):
        key, skey = jax.random.split(key)
        Cs.append(jax.nn.initializers.lecun_normal()(skey, shape=(1, P, 2)))
    return np.array(Cs)[:, 0]


def s5_init_log_steps(key, H, dt_min, dt_max):
    log_steps = []
    for i in range(H):
        key, skey = jax.random.split(key)
        log_steps.append(jax.random.uniform(skey, shape=(1,)) * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
    return np.array(log_steps)


def s5_init(key, H, P, blocks):
    """S5's SSM parameters for state size ``P`` (after conjugate symmetry) as train.py builds them."""
    block_size = 2 * P // blocks
    Lambda, V = s5_make_DPLR_HiPPO(block_size)
    Lambda, V = Lambda[:block_size // 2], V[:, :block_size // 2]
    Lambda = (Lambda * np.ones((blocks, block_size // 2))).ravel()
    import scipy.linalg
    Vinv = scipy.linalg.block_diag(*([V.conj().T] * blocks))
    V = scipy.linalg.block_diag(*([V] * blocks))
    k_b, k_c, k_d, k_s = jax.random.split(key, 4)
    B = Vinv @ np.asarray(jax.nn.initializers.lecun_normal()(k_b, (2 * P, H)), np.float64)
    C_ = s5_trunc_standard_normal(k_c, (H, 2 * P, 2)).astype(np.float64)
    C = (C_[..., 0] + 1j * C_[..., 1]) @ V
    D = np.asarray(jax.random.normal(k_d, (H,)))
    log_step = s5_init_log_steps(k_s, P, 0.001, 0.1)[:, 0]
    return Lambda, B, C, D, log_step


def s5_apply(Lambda, B, C, D, log_step, xs):
    """S5's discretize_zoh + apply_ssm (conj_sym: 2 Re(C x)) + D u, one sequence, float64."""
    step = np.exp(log_step)
    Lambda_bar = np.exp(Lambda * step)
    B_bar = (1 / Lambda * (Lambda_bar - 1))[:, None] * B
    x = np.zeros(Lambda.shape, complex)
    ys = []
    for u in xs:
        x = Lambda_bar * x + B_bar @ u
        ys.append(2 * (C @ x).real + D * u)
    return np.stack(ys)


@pytest.mark.parametrize("blocks", [1, 2])
def test_hippo_zoh_equals_s5(blocks):
    """Same key: the LRU with ``init_scheme="hippo", discretization="zoh"`` and S5's own
    initialisation + ZOH + scan give the same outputs (float64)."""
    pytest.importorskip("scipy")
    key = jax.random.key(3)
    cell = lru(H, 2 * N, discretization="zoh", init_scheme="hippo", hippo_blocks=blocks)
    with enable_x64():
        params = cell.init(key, H, dtype=jnp.float64)
        Lambda, B, C, D, log_step = s5_init(key, H, 2 * N, blocks)
        xs = np.random.default_rng(0).standard_normal((T, H))
        want = s5_apply(Lambda, B, C, D, log_step, xs)
        _, ys = cell.parallel_unroll(params, cell.initial_state(()), jnp.asarray(xs), mode="associative")
        np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-9, atol=1e-9)
        # The parameters themselves: eigenvalues -1/2 + i|omega|, S5's steps.
        np.testing.assert_allclose(np.exp(np.asarray(params.nu_log)), 0.5, rtol=1e-12)
        np.testing.assert_allclose(np.exp(np.asarray(params.theta_log)), np.abs(Lambda.imag), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(params.log_step), log_step, rtol=1e-6)
        assert np.all(np.exp(np.asarray(params.log_step)) >= 0.001 - 1e-12)


def test_zoh_step_equations_float64():
    with enable_x64():
        cell = lru(H, N, discretization="zoh", r_min=0.5, r_max=0.95)
        p = cell.init(jax.random.key(1), H, dtype=jnp.float64)
        # init_scheme="ring" with zoh starts from the plain LRU's discrete lambda and input scale.
        lam = np.exp((-np.exp(np.asarray(p.nu_log)) + 1j * np.exp(np.asarray(p.theta_log))) * np.exp(np.asarray(p.log_step)))
        assert np.all(np.abs(lam) >= 0.5 - 1e-9) and np.all(np.abs(lam) <= 0.95 + 1e-9)
        Lc = -np.exp(np.asarray(p.nu_log)) + 1j * np.exp(np.asarray(p.theta_log))
        scale = np.exp(np.asarray(p.gamma_log)) * np.abs((lam - 1) / Lc)
        np.testing.assert_allclose(scale, np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-9)
        rng = np.random.default_rng(2)
        p = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.standard_normal(a.shape)), p)
        x = rng.standard_normal((2, H))
        h = rng.standard_normal((2, N)) + 1j * rng.standard_normal((2, N))
        Lc = -np.exp(np.asarray(p.nu_log)) + 1j * np.exp(np.asarray(p.theta_log))
        lam = np.exp(Lc * np.exp(np.asarray(p.log_step)))
        B = (np.asarray(p.B_re) + 1j * np.asarray(p.B_im)) * (np.exp(np.asarray(p.gamma_log)) * (lam - 1) / Lc)[:, None]
        h_want = lam * h + x @ B.T
        y_want = (h_want @ (np.asarray(p.C_re) + 1j * np.asarray(p.C_im)).T).real + np.asarray(p.D) * x
        (re, im), y = cell.step(p, LRUState(jnp.asarray(h.real), jnp.asarray(h.imag)), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(re) + 1j * np.asarray(im), h_want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(y), y_want, rtol=1e-12, atol=1e-12)


def step_loop(cell, params, h, xs, lengths, resets, reset_state):
    n = xs.shape[0]
    t = jnp.arange(n).reshape((n,) + (1,) * lengths.ndim)
    enter = resets & (t < lengths)

    def body(h, inp):
        t, x, e = inp
        h = jax.tree.map(lambda r, s: jnp.where(e[..., None], r, s), reset_state, h)
        new, y = cell.step(params, h, x)
        valid = (t < lengths)[..., None]
        return jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, h), jnp.where(valid, y, 0.0)

    return jax.lax.scan(body, h, (jnp.arange(n), xs, enter))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zoh_parallel_equals_step_loop(dtype):
    cell = lru(H, N, discretization="zoh", init_scheme="hippo", hippo_blocks=2)
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda a: a + 0.2 * jnp.asarray(rng.standard_normal(a.shape), a.dtype),
                          cell.init(jax.random.key(0), H))
    xs = jnp.asarray(rng.standard_normal((T,) + BATCH + (H,)), dtype)
    state = lambda: LRUState(*(jnp.asarray(rng.standard_normal(BATCH + (N,)), jnp.float32) for _ in range(2)))
    h, r = state(), state()
    lengths = rng.integers(0, T + 1, BATCH).astype(np.int32)
    lengths.flat[0], lengths.flat[1] = T, 0
    lengths = jnp.asarray(lengths)
    resets = jnp.asarray(rng.random((T,) + BATCH) < 0.15)

    def loss(fn, params, h, r):
        h_out, ys = fn(params, h, r)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(h_out.re)), (h_out, ys)

    par = lambda p, h, r: cell.parallel_unroll(p, h, xs, seq_lengths=lengths, resets=resets, reset_state=r,
                                               mode="chunked", chunk_size=8)
    loop = lambda p, h, r: step_loop(cell, p, h, xs, lengths, resets, r)
    if dtype == jnp.bfloat16:  # values only (gradients in float32 below)
        out_p, out_l = jax.jit(lambda p, h, r: (par(p, h, r), loop(p, h, r)))(params, h, r)
        for a, b in zip(jax.tree.leaves(out_p), jax.tree.leaves(out_l)):
            assert rel_rms(a, b) <= 1e-5
        return
    run = jax.jit(lambda p, h, r: [jax.value_and_grad(functools.partial(loss, f), argnums=(0, 1, 2), has_aux=True)(
        p, h, r) for f in (par, loop)])
    ((_, out_p), g_p), ((_, out_l), g_l) = run(params, h, r)
    for a, b in zip(jax.tree.leaves((out_p, g_p)), jax.tree.leaves((out_l, g_l))):
        assert rel_rms(a, b) <= 1e-5
    assert float(jnp.abs(g_p[0].log_step).max()) > 0      # the step is learned


def test_default_lru_unchanged():
    """Without the options: no ``log_step``, the same draws and transition as before."""
    cell = lru(H, N, r_min=0.4, r_max=0.9)
    assert cell == lru(H, N, r_min=0.4, r_max=0.9, discretization="none", init_scheme="ring")
    assert repr(cell) == "lru(hidden_size=5, state_size=4, r_min=0.4, r_max=0.9)"
    p = cell.init(jax.random.key(0), H)
    assert p.log_step is None and len(jax.tree.leaves(p)) == 8
    k1, k2, kb1, *_ = jax.random.split(jax.random.key(0), 7)
    u1 = jax.random.uniform(k1, (N,), jnp.float32, minval=1e-7)
    # the same draws: equal up to float32 rounding (the two sides compile apart, and XLA may
    # fuse a division or a log differently; bit-equality failed once in CI on jax 0.7.2)
    np.testing.assert_allclose(np.asarray(p.nu_log),
                               np.asarray(jnp.log(-0.5 * jnp.log(u1 * (0.9 ** 2 - 0.4 ** 2) + 0.4 ** 2))), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p.B_re), np.asarray(jax.random.normal(kb1, (N, H)) / math.sqrt(2 * H)),
                               rtol=1e-6)


def test_hippo_diagonal_and_errors():
    lam, V = hippo_diagonal(8)
    ref_lam, ref_V = s5_make_DPLR_HiPPO(8)
    np.testing.assert_allclose(lam, ref_lam[:4], rtol=1e-12)
    assert np.all(lam.imag < 0)
    with pytest.raises(ValueError, match="`discretization`"):
        lru(4, 4, discretization="bilinear")
    with pytest.raises(ValueError, match="`init_scheme`"):
        lru(4, 4, init_scheme="s4d")
    with pytest.raises(ValueError, match="`hippo_blocks`"):
        lru(4, 3, init_scheme="hippo", hippo_blocks=2)
    with pytest.raises(ValueError, match="`dt_min`"):
        lru(4, 4, dt_min=0.0)
    p = lru(4, 4).init(jax.random.key(0), 4)
    with pytest.raises(TypeError, match="`params.log_step`"):
        lru(4, 4, discretization="zoh").step(p, None, jnp.ones((4,)))
    pz = lru(4, 4, discretization="zoh").init(jax.random.key(0), 4)
    with pytest.raises(ValueError, match="`params.log_step`"):
        lru(4, 4).step(pz, None, jnp.ones((4,)))
