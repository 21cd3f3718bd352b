"""Newton (DEER / quasi-DEER) evaluation against a sequential loop of the same cell.

The reference, :func:`sequential`, is a ``lax.scan`` of ``step`` written here with the
semantics of :func:`jaxrnn.unroll` (lengths, resets, reverse) spelled out step by step.

Tolerance: the solve stops once the per-entry relative fixed-point residual
``|F(h) - h| / (1 + |F(h)|)`` is below ``tol`` (default 1e-5 in float32) and returns
``F(h)``; its error is about that residual divided by ``1 - rho`` (``rho`` the cell's
contraction per step; the leaky cell below, rho = 0.95, is run with tol=1e-6), plus
float32 rounding in another order than the sequential loop's. So values are asserted
to ``5e-5 * (1 + |ref|)``, five times the default stopping tolerance (measured at
T=4096: at most 7.4e-6). The adjoint solve stops at the same relative tolerance on
the cotangents, so gradients are asserted to ``1e-4`` of each gradient's largest
entry (measured at T=4096: at most 1.8e-5).
"""

import jax
import jax.numpy as jnp
import jax.flatten_util
import numpy as np
import pytest

import jaxrnn
from jaxrnn.newton import Newton, NewtonInfo, _diagonal_fn, newton_unroll

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

VALUE_TOL = 5e-5
GRAD_TOL = 1e-4


def sequential(step, params, h, xs, lengths=None, resets=None, reset_state=None, reverse=False):
    """``jaxrnn.unroll``'s semantics as a plain ``lax.scan`` over time-major ``xs``."""
    T, batch = xs.shape[0], xs.shape[1:-1]
    L = jnp.full(batch, T) if lengths is None else lengths
    rs = jnp.zeros((T,) + batch, bool) if resets is None else resets
    r = jax.tree.map(jnp.zeros_like, h) if reset_state is None else jax.tree.map(
        lambda a, b: jnp.broadcast_to(b, a.shape), h, reset_state)
    ts = jnp.arange(T)
    if reverse:  # the segment of step t ends at the next reset (within the length)
        nxt = jnp.concatenate([rs[1:], jnp.zeros((1,) + batch, bool)])
        reset_in = nxt & ((ts + 1).reshape((T,) + (1,) * len(batch)) < L)
    else:
        reset_in = rs

    def body(h, t):
        valid = t < L
        prev = jax.tree.map(lambda a, b: jnp.where((reset_in[t] & valid)[..., None], b, a), h, r)
        h_new, y = step(params, prev, xs[t])
        h = jax.tree.map(lambda a, b: jnp.where(valid[..., None], a, b), h_new, h)
        return h, jnp.where(valid[..., None], y, 0.0)

    h, ys = jax.lax.scan(body, h, ts[::-1] if reverse else ts)
    return h, (ys[::-1] if reverse else ys)


def _loss(out):
    h, ys = out
    return jnp.sum(jnp.sin(3.0 * ys)) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(h))


def _value_and_grad(fn, params, h, xs, r):
    """Values and gradients (params, h, xs, reset_state) of a loss of both outputs, one compile."""
    def loss(p, h, x, r):
        out = fn(p, h, x, r)
        return _loss(out), out

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, out), grads = vg(params, h, xs, r)
    return out, grads


def _assert_values(out, ref):
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape
        np.testing.assert_array_less(np.abs(a - b), VALUE_TOL * (1.0 + np.abs(b)))


def _assert_grads(grads, ref):
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(b).max() > 0
        np.testing.assert_array_less(np.abs(a - b), GRAD_TOL * np.abs(b).max())


def _random_state(h, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype), h)


def _check_against_sequential(cell, params, h, xs, *, lengths=None, resets=None, reset_state=None,
                              reverse=False, options=Newton()):
    step = cell.step if hasattr(cell, "step") else cell

    def newton(p, h, x, r):
        return newton_unroll(cell, p, h, x, seq_lengths=lengths, resets=resets, reset_state=r, reverse=reverse,
                             options=options)

    def seq(p, h, x, r):
        return sequential(step, p, h, x, lengths, resets, r, reverse)

    out, grads = _value_and_grad(newton, params, h, xs, reset_state)
    ref, ref_grads = _value_and_grad(seq, params, h, xs, reset_state)
    _assert_values(out, ref)
    _assert_grads(grads, ref_grads)
    return out


# --------------------------------------------------------------------------- built-in cells, T = 4096


@pytest.mark.parametrize("name,H,T,reverse", [("gru", 32, 4096, False), ("lstm", 16, 4096, True)])
def test_builtin_cells_match_sequential(name, H, T, reverse):
    I = 5
    cell = {"gru": jaxrnn.gru, "lstm": jaxrnn.lstm, "rnn_tanh": jaxrnn.rnn}[name](H)
    params = cell.init(jax.random.key(0), I)   # PyTorch's init: non-zero biases
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((T, 3, I)), jnp.float32)
    h0 = _random_state(cell.initial_state((3,)), 2)
    lengths = jnp.array([T, T * 2 // 3, 0])
    resets = jnp.asarray(rng.random((T, 3)) < 2e-3)
    r = _random_state(cell.initial_state(()), 3)          # one reset state for the batch
    (h, ys) = _check_against_sequential(cell, params, h0, xs, lengths=lengths, resets=resets, reset_state=r,
                                        reverse=reverse)
    assert not np.asarray(ys[:, 2]).any()               # length 0: all-zero outputs ...
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(h0)):
        np.testing.assert_array_equal(np.asarray(a)[2], np.asarray(b)[2])  # ... and the initial state


# --------------------------------------------------------------------------- custom cells


def leaky_step(params, h, x):
    """A plain-function cell with a pytree state: a tanh layer and a slow leaky average."""
    u = jnp.tanh(x @ params["w_x"] + h["fast"] @ params["w_f"] + params["b"])
    fast = 0.5 * h["fast"] + 0.5 * u
    slow = params["decay"] * h["slow"] + (1.0 - params["decay"]) * fast
    return {"fast": fast, "slow": slow}, jnp.concatenate([fast, jnp.tanh(slow)], axis=-1)


def _leaky_params(I, H, seed=0):
    rng = np.random.default_rng(seed)
    return {"w_x": jnp.asarray(rng.standard_normal((I, H)) / np.sqrt(I), jnp.float32),
            "w_f": jnp.asarray(rng.standard_normal((H, H)) / np.sqrt(H), jnp.float32),
            "b": jnp.asarray(0.1 * rng.standard_normal(H), jnp.float32),
            "decay": jnp.asarray(rng.uniform(0.5, 0.95, H), jnp.float32)}


def test_custom_function_cell_with_pytree_state_at_T4096():
    T, I, H = 4096, 3, 8
    params = _leaky_params(I, H)
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((T, 2, I)), jnp.float32)
    h0 = _random_state({"fast": jnp.zeros((2, H)), "slow": jnp.zeros((2, H))}, 2)
    assert _diagonal_fn(leaky_step) is None                 # the jvp-based diagonal
    # The slow average contracts by only 0.95 a step, so a residual r leaves an error of
    # up to r / (1 - 0.95) = 20 r: the solve is asked for tol=1e-6 to meet VALUE_TOL.
    _check_against_sequential(leaky_step, params, h0, xs, lengths=jnp.array([T, 1234]), options=Newton(tol=1e-6))


class TinyRNN:
    """An object cell with a hoisted projection and its own ``jacobian_diagonal``."""

    def project(self, params, xs):
        return xs @ params["w_ih"] + params["b"]

    def update(self, params, h, gx):
        h = jnp.tanh(gx + h @ params["w_hh"])
        return h, 2.0 * h

    def step(self, params, h, x):
        return self.update(params, h, self.project(params, x))

    def jacobian_diagonal(self, params, h, x):
        h_new = self.step(params, h, x)[0]
        return (1.0 - h_new ** 2) * jnp.diagonal(params["w_hh"])


def test_object_cell_with_projection_and_diagonal_method():
    T, I, H = 1024, 3, 6
    rng = np.random.default_rng(0)
    params = {"w_ih": jnp.asarray(rng.standard_normal((I, H)), jnp.float32),
              "w_hh": jnp.asarray(0.8 * rng.standard_normal((H, H)) / np.sqrt(H), jnp.float32),
              "b": jnp.asarray(0.2 * rng.standard_normal(H), jnp.float32)}
    cell = TinyRNN()
    xs = jnp.asarray(rng.standard_normal((T, 2, I)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((2, H)), jnp.float32)
    resets = jnp.asarray(rng.random((T, 2)) < 0.01)
    _check_against_sequential(cell, params, h0, xs, resets=resets, reverse=True,
                              lengths=jnp.array([T - 5, 700]))


def test_zoo_cell_peephole_lstm():  # values only: gradients of object cells are tested above
    from jaxrnn.zoo import peephole_lstm

    cell = peephole_lstm(6)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((256, 2, 3)), jnp.float32)
    h0 = _random_state(cell.initial_state((2,)), 1)
    lengths = jnp.array([256, 100])
    out = jax.jit(lambda *a: newton_unroll(cell, *a, seq_lengths=lengths))(params, h0, xs)
    _assert_values(out, jax.jit(lambda *a: sequential(cell.step, *a, lengths))(params, h0, xs))


# --------------------------------------------------------------------------- options


def test_dense_jacobian_small_state():
    cell = jaxrnn.lstm(4)                                   # D = 8
    params = cell.init(jax.random.key(0), 3)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((256, 3, 3)), jnp.float32)
    h0 = _random_state(cell.initial_state((3,)), 1)
    resets = jnp.asarray(rng.random((256, 3)) < 0.01)
    dense = Newton(jacobian="dense")
    _check_against_sequential(cell, params, h0, xs, lengths=jnp.array([256, 77, 0]), resets=resets,
                              reverse=True, options=dense)


def rotating_step(params, h, x):
    """Not contractive: a rotation by 1 radian, scaled by 1.1, plus a small nonlinearity."""
    c, s = np.cos(1.0), np.sin(1.0)
    rot = 1.1 * jnp.array([[c, -s], [s, c]], jnp.float32)
    h = h @ rot.T + 0.1 * jnp.tanh(h) + x @ params
    return h, h


def test_iteration_cap_of_T_gives_the_sequential_answer_on_a_non_contractive_cell():
    T = 24
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, 2, 3)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((2, 2)), jnp.float32)
    _, ys_ref = jax.jit(lambda *a: sequential(rotating_step, *a))(params, h0, xs)
    assert float(jnp.abs(ys_ref).max()) > 5.0                   # it grows

    @jax.jit
    def both(params, h0, xs):  # the default cap (T) and a cap of 4
        return [newton_unroll(rotating_step, params, h0, xs, options=o, return_info=True)
                for o in (Newton(), Newton(max_iters=4))]

    ((_, ys), info), ((_, ys_short), _) = both(params, h0, xs)
    _assert_values(ys, ys_ref)
    assert int(info.iterations) > T // 2                        # quasi-Newton needed most of the T iterations
    # Stopped early, the answer is far off: the cap is what makes it exact.
    assert float(jnp.abs(ys_short - ys_ref).max()) > 1e-2
    # Gradients through the adjoint solve (also capped at T) match too.
    _check_against_sequential(rotating_step, params, h0, xs)


@pytest.mark.parametrize("options", [Newton(damping=0.5, clip=2.0, tol=1e-7), Newton(scan="associative"),
                                     Newton(scan="chunked")])
def test_damping_clipping_scan_and_tolerance_options(options):
    cell = jaxrnn.gru(8)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((100, 2, 3)), jnp.float32)
    h0 = _random_state(cell.initial_state((2,)), 1)
    lengths = jnp.array([100, 40])

    @jax.jit
    def both(params, h0, xs):
        return [newton_unroll(cell, params, h0, xs, seq_lengths=lengths, options=o, return_info=True)
                for o in (options, Newton())]

    (out, info), (_, plain) = both(params, h0, xs)
    _assert_values(out, jax.jit(lambda *a: sequential(cell.step, *a, lengths))(params, h0, xs))
    assert isinstance(info, NewtonInfo)
    assert 1 <= int(plain.iterations) <= 30 and float(plain.residual) <= 1e-5   # the default, contractive GRU
    if options.damping or options.tol:
        assert int(info.iterations) > int(plain.iterations)
    if options.tol:
        assert float(info.residual) <= options.tol


def test_divergence_is_contained():
    """Saturating dynamics with a large Jacobian diagonal (25 at h = 0) away from the solution:
    the first linearised scans overflow (25^40), iterates would turn into inf/NaN; they are
    zeroed (or clipped) and the solve still ends at the sequential answer."""
    T = 40

    def step(params, h, x):
        h = jnp.tanh(h @ params + x)
        return h, h

    w = jnp.array([[25.0, 10.0], [-10.0, 25.0]], jnp.float32)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((T, 1, 2)), jnp.float32)
    h0 = jnp.zeros((1, 2))
    _, ys_ref = jax.jit(lambda *a: sequential(step, *a))(w, h0, xs)
    results = jax.jit(lambda *a: [newton_unroll(step, *a, options=o, return_info=True)
                                  for o in (Newton(), Newton(clip=1.0))])(w, h0, xs)
    for (_, ys), info in results:
        assert np.isfinite(np.asarray(ys)).all() and int(info.iterations) <= T
        _assert_values(ys, ys_ref)


# --------------------------------------------------------------------------- pieces and edges


@pytest.mark.parametrize("cell", [jaxrnn.rnn(5), jaxrnn.rnn(5, nonlinearity="relu"), jaxrnn.gru(5),
                                  jaxrnn.lstm(5), jaxrnn.lstm(5, proj_size=3)], ids=repr)
def test_builtin_jacobian_diagonal_against_jacfwd(cell):
    params = cell.init(jax.random.key(0), 4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    h = _random_state(cell.initial_state((3,)), 1)

    assert _diagonal_fn(cell) == cell.jacobian_diagonal

    def one(h, x):  # a single sequence: [D] and the diagonal of the [D, D] Jacobian
        flat, unravel = jax.flatten_util.ravel_pytree(h)
        J = jax.jacfwd(lambda v: jax.flatten_util.ravel_pytree(cell.step(params, unravel(v), x)[0])[0])(flat)
        return jax.flatten_util.ravel_pytree(cell.jacobian_diagonal(params, h, x))[0], jnp.diagonal(J)

    got, want = jax.jit(jax.vmap(one))(h, x)
    assert np.abs(np.asarray(want)).max() > 0.05
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_no_batch_dims_and_zero_length_time():
    cell = jaxrnn.gru(4)
    params = cell.init(jax.random.key(0), 2)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((50, 2)), jnp.float32)
    h0 = jnp.full((4,), 0.3)
    h, ys = jax.jit(lambda *a: newton_unroll(cell, *a))(params, h0, xs)
    _assert_values((h, ys), jax.jit(lambda *a: sequential(cell.step, *a))(params, h0, xs))
    h, ys = newton_unroll(cell, params, h0, xs[:0])
    assert ys.shape == (0, 4)
    np.testing.assert_array_equal(np.asarray(h), np.asarray(h0))


def test_errors_name_the_argument():
    cell = jaxrnn.gru(4)
    params = cell.init(jax.random.key(0), 2)
    xs, h0 = jnp.zeros((6, 3, 2)), jnp.zeros((3, 4))
    with pytest.raises(ValueError, match="`jacobian`"):
        Newton(jacobian="full")
    with pytest.raises(ValueError, match="`max_iters`"):
        Newton(max_iters=0)
    with pytest.raises(ValueError, match="`damping`"):
        Newton(damping=-1.0)
    with pytest.raises(ValueError, match="`scan='chunked'`"):
        Newton(jacobian="dense", scan="chunked")
    with pytest.raises(TypeError, match="`options`"):
        newton_unroll(cell, params, h0, xs, options="newton")
    with pytest.raises(TypeError, match="`h`"):
        newton_unroll(cell, params, None, xs)
    with pytest.raises(ValueError, match="`h` leaves"):
        newton_unroll(cell, params, jnp.zeros((2, 4)), xs)
    with pytest.raises(ValueError, match="`seq_lengths`"):
        newton_unroll(cell, params, h0, xs, seq_lengths=jnp.array([1, 2]))
    # out-of-range lengths act as the nearest bound (one meaning, in jit or not; no host sync)
    np.testing.assert_array_equal(
        np.asarray(newton_unroll(cell, params, h0, xs, seq_lengths=jnp.array([1, 2, 7]))[1]),
        np.asarray(newton_unroll(cell, params, h0, xs, seq_lengths=jnp.array([1, 2, 6]))[1]))
    with pytest.raises(TypeError, match="`resets`"):
        newton_unroll(cell, params, h0, xs, resets=jnp.zeros((6, 3)))
    with pytest.raises(ValueError, match="`resets`"):
        newton_unroll(cell, params, h0, xs, resets=jnp.zeros((3, 6), bool))
    with pytest.raises(TypeError, match="`cell`"):
        newton_unroll(42, params, h0, xs)


# --------------------------------------------------------------------------- through jaxrnn.unroll


@pytest.mark.parametrize("cell_name,mode,reverse", [("gru", "newton", False), ("leaky", Newton(tol=1e-6), True)])
def test_unroll_mode_newton_equals_unroll_sequential(cell_name, mode, reverse):
    """``jaxrnn.unroll(..., mode=...)`` (batch-major, its own resets/lengths handling) against
    its sequential path (values; the gradients of the same solve are tested above)."""
    B, T, I = 3, 128, 3
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    lengths, resets = jnp.array([T, 50, 0]), jnp.asarray(rng.random((B, T)) < 0.02)
    if cell_name == "leaky":
        cell, params = leaky_step, _leaky_params(I, 4)
        h0 = _random_state({"fast": jnp.zeros((B, 4)), "slow": jnp.zeros((B, 4))}, 1)
    else:
        cell = jaxrnn.gru(6)
        params, h0 = cell.init(jax.random.key(0), I), _random_state(cell.initial_state((B,)), 1)

    def run(m):
        def fn(p, h, x, r):
            return jaxrnn.unroll(cell, p, h, x, seq_lengths=lengths, resets=resets, reset_state=r, reverse=reverse,
                                 mode=m)
        return fn

    r = _random_state(h0, 2)
    _assert_values(jax.jit(run(mode))(params, h0, xs, r), jax.jit(run("sequential"))(params, h0, xs, r))
