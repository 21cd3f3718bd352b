"""sLSTM: against xlstm's pure-torch "vanilla" sLSTM cell with the same weights (values and
gradients, zero and random initial states); ``jaxrnn.unroll`` (the generic path, and
``mode="newton"``) against the cell's ``step`` in a loop with ragged lengths (0 included),
resets, random initial and reset states, reverse and bfloat16 inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.newton import Newton
from jaxrnn.zoo.slstm import SLSTMParams, SLSTMState, slstm
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

T, BATCH, I, H, HEADS = 17, (2, 3), 3, 4, 2



def random_params(seed, scale=0.5):
    rng = np.random.default_rng(seed)
    u = lambda *shape: jnp.asarray(rng.uniform(-scale, scale, shape), jnp.float32)
    return SLSTMParams(u(4 * H, I), u(4, HEADS, H // HEADS, H // HEADS), u(4 * H) * 2)


def random_state(rng, batch):
    g = lambda: jnp.asarray(rng.standard_normal(batch + (H,)), jnp.float32)
    return SLSTMState(g(), g(), jnp.abs(g()) + 0.5, g())


def step_loop(cell, params, h, xs, lengths, resets, reset_state, reverse):
    """``unroll``'s semantics as a ``lax.scan`` of ``cell.step`` with plain ``where`` masks (time-major)."""
    n = xs.shape[0]
    t = jnp.arange(n).reshape((n,) + (1,) * lengths.ndim)
    if reverse:
        enter = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])]) & (t + 1 < lengths)
    else:
        enter = resets & (t < lengths)

    def body(h, inp):
        t, x, e = inp
        h = jax.tree.map(lambda r, s: jnp.where(e[..., None], r, s), reset_state, h)
        new, y = cell.step(params, h, x)
        valid = (t < lengths)[..., None]
        return jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, h), jnp.where(valid, y, 0.0)

    return jax.lax.scan(body, h, (jnp.arange(n), xs, enter), reverse=reverse)


def problem(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed + 1)
    xs = jnp.asarray(rng.standard_normal((T,) + BATCH + (I,)), dtype)
    h, r = random_state(rng, BATCH), random_state(rng, BATCH)
    lengths = rng.integers(0, T + 1, BATCH).astype(np.int32)
    lengths.flat[0], lengths.flat[1], lengths.flat[-1] = T, 0, T - 1
    resets = rng.random((T,) + BATCH) < 0.15
    resets[0, 0, 0] = True
    return random_params(seed), h, xs, jnp.asarray(lengths), jnp.asarray(resets), r


def _loss(fn, params, h, xs, lengths, resets, r):
    h_out, ys = fn(params, h, xs, lengths, resets, r)
    return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(h_out.h)) + jnp.sum(h_out.c / h_out.n), (h_out, ys)


def _vg(fn):
    return jax.jit(jax.value_and_grad(functools.partial(_loss, fn), argnums=(0, 1, 5), has_aux=True))


CELL = slstm(H, num_heads=HEADS)


@functools.lru_cache(maxsize=None)
def _unroll(mode, reverse):
    def fn(p, h, xs, L, rs, r):
        h, ys = jaxrnn.unroll(CELL, p, h, jnp.moveaxis(xs, 0, -2), seq_lengths=L, resets=jnp.moveaxis(rs, 0, -1),
                              reset_state=r, reverse=reverse, mode=mode)
        return h, jnp.moveaxis(ys, -2, 0)
    return _vg(fn)


@functools.lru_cache(maxsize=None)
def _loop(reverse):
    return _vg(lambda p, h, xs, L, rs, r: step_loop(CELL, p, h, xs, L, rs, r, reverse))


@pytest.mark.parametrize("mode, reverse, dtype", [("sequential", False, jnp.float32),
                                                  ("sequential", True, jnp.bfloat16),
                                                  (Newton(tol=1e-7), True, jnp.float32)])
def test_unroll_equals_step_loop(mode, reverse, dtype):
    params, h, xs, lengths, resets, r = problem(0, dtype)
    args = (params, h, xs, lengths, resets, r)
    (_, (h_u, ys_u)), g_u = _unroll(mode, reverse)(*args)
    (_, (h_l, ys_l)), g_l = _loop(reverse)(*args)
    assert ys_u.shape == (T,) + BATCH + (H,) and ys_u.dtype == jnp.float32
    for a, b in zip(jax.tree.leaves((ys_u, h_u, g_u)), jax.tree.leaves((ys_l, h_l, g_l))):
        assert rel_rms(a, b) <= 1e-5
    zero = np.asarray(lengths) == 0
    for a, b in zip(h_u, h):
        np.testing.assert_array_equal(np.asarray(a)[zero], np.asarray(b)[zero])
    past = np.arange(T)[:, None, None] >= np.asarray(lengths)[None]
    assert not np.asarray(ys_u)[past].any()


@pytest.mark.parametrize("zero_state", [True, False])
def test_against_xlstm_vanilla(zero_state):
    """xlstm's ``sLSTMCell`` (backend "vanilla", pure torch), weights mapped as the module
    docstring says; outputs, final state (``c·e^m``, ``n·e^m``: the stabiliser may differ)
    and gradients with respect to every weight, the inputs and the initial state."""
    torch = pytest.importorskip("torch")
    cell_mod = pytest.importorskip("xlstm.blocks.slstm.cell")
    B, S = 3, 11
    params = random_params(4)
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((B, S, I)).astype(np.float32)
    h0 = (CELL.initial_state((B,)) if zero_state else random_state(rng, (B,)))
    config = cell_mod.sLSTMCellConfig(hidden_size=H, num_heads=HEADS, backend="vanilla", dtype="float32",
                                      enable_automatic_mixed_precision=False, input_shape="BSGNH", output_shape="BSH")
    ref = cell_mod.sLSTMCell(config)
    d = H // HEADS
    kernel_ext = np.transpose(np.asarray(params.w_hh), (1, 3, 0, 2))            # [heads, in, gate, out]
    bias_ext = np.asarray(params.b).reshape(4, HEADS, d).transpose(1, 0, 2)     # [heads, gate, d]
    with torch.no_grad():
        ref._recurrent_kernel_.copy_(ref._recurrent_kernel_ext2int(torch.tensor(kernel_ext)))
        ref._bias_.copy_(ref._bias_ext2int(torch.tensor(bias_ext)))
    w_t = torch.tensor(np.asarray(params.w_ih), requires_grad=True)
    x_t = torch.tensor(xs, requires_grad=True)
    s_t = torch.tensor(np.stack([np.asarray(a) for a in h0]), requires_grad=True)
    y_t, last_t = ref(x_t @ w_t.T, state=s_t)
    loss_t = (y_t * torch.cos(y_t)).sum() + torch.sin(last_t[0]).sum()
    loss_t.backward()

    def ours(p, xs, h0):
        h, ys = jaxrnn.unroll(CELL, p, h0, xs)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(h.h)), (ys, h)

    (_, (ys, h)), (g_p, g_x, g_h) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2), has_aux=True))(
        params, jnp.asarray(xs), h0)
    last = last_t.detach().numpy()
    assert rel_rms(ys, y_t.detach().numpy()) <= 1e-5
    assert rel_rms(h.h, last[0]) <= 1e-5
    for ours_s, k in ((h.c, 1), (h.n, 2)):
        assert rel_rms(np.asarray(ours_s) * np.exp(np.asarray(h.m)), last[k] * np.exp(last[3])) <= 1e-5
    kernel_grad = ref._recurrent_kernel_.grad.numpy().reshape(HEADS, 4, d, d).transpose(1, 0, 2, 3)
    assert rel_rms(g_p.w_hh, kernel_grad) <= 1e-5
    assert rel_rms(g_p.b, ref._bias_.grad.numpy()) <= 1e-5
    assert rel_rms(g_p.w_ih, w_t.grad.numpy()) <= 1e-5
    assert rel_rms(g_x, x_t.grad.numpy()) <= 1e-5
    # The state's gradient: h and c, n up to the stabiliser's scale, which the zero state does not have.
    assert rel_rms(g_h.h, s_t.grad.numpy()[0]) <= 1e-5
    if not zero_state:
        for k, g in ((1, g_h.c), (2, g_h.n)):
            assert rel_rms(g, s_t.grad.numpy()[k]) <= 1e-5


def test_step_equations_and_init():
    """One step in float64 numpy from the module docstring; the forget-gate bias init."""
    params = random_params(7)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, I)).astype(np.float32)
    h = random_state(rng, (2,))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    s = jax.tree.map(lambda a: np.asarray(a, np.float64), h)
    d = H // HEADS
    rh = np.einsum("bkj,gkij->bgki", s.h.reshape(2, HEADS, d), p.w_hh).reshape(2, 4 * H)
    raw = x @ p.w_ih.T + rh + p.b
    ir, fr, zr, orr = np.split(raw, 4, axis=-1)
    logf = -np.log1p(np.exp(-fr))
    m = np.maximum(logf + s.m, ir)
    i, f = np.exp(ir - m), np.exp(logf + s.m - m)
    c = f * s.c + i * np.tanh(zr)
    n = f * s.n + i
    want = SLSTMState(1 / (1 + np.exp(-orr)) * c / n, c, n, m)
    got, y = CELL.step(params, h, jnp.asarray(x))
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-6, atol=2e-6)
    p0 = slstm(8, num_heads=2).init(jax.random.key(0), 5)
    np.testing.assert_allclose(np.asarray(p0.b[8:16]), np.linspace(3, 6, 8), rtol=1e-6)
    assert not np.asarray(p0.b[:8]).any() and not np.asarray(p0.b[16:]).any()


def test_errors():
    with pytest.raises(ValueError, match="`hidden_size`"):
        slstm(6, num_heads=4)
    cell = slstm(4, num_heads=2)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="`x`"):
        cell.step(params, None, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="`params.w_hh`"):
        slstm(4, num_heads=1).step(params, None, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="`h`"):
        cell.step(params, jnp.zeros((2, 4)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="parallel_unroll|newton"):
        jaxrnn.unroll(cell, params, None, jnp.ones((2, 5, 3)), mode="chunked")
