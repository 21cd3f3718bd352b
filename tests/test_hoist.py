"""Automatic hoisting (:mod:`jaxrnn.hoist`) on user cells whose step holds a ``lax.scan``, a
``lax.cond`` or a ``jax.jit`` call: what leaves the loop, and that nothing changes a number.

The references are the step itself, run as written for every time step, and
:func:`jaxrnn.reference.python_unroll` (a Python loop): ``split``'s three parts reproduce each
step, and ``unroll`` gives the same values and gradients hoisted and not. These run on the
lowest supported jax (0.7.2) and the newest, where the jaxpr internals that
:mod:`jaxrnn._compat` hides differ.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import _compat, hoist
from jaxrnn.reference import python_unroll

B, T, I, H = 3, 6, 3, 4
LENGTHS = jnp.array([T, 0, 3])  # ragged, one empty sequence
JIT_NAMES = {"jit", "pjit"}  # the name of a jit call's equation: "pjit" before jax 0.7, "jit" after


def _params(seed=0):
    rng = np.random.default_rng(seed)
    u = lambda *s: jnp.asarray(rng.uniform(-0.6, 0.6, s), jnp.float32)
    return {"w": u(I, H), "wt": u(H, I), "u": u(H, H), "b": u(H), "scale": jnp.float32(0.7)}


def _data(seed=1):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((B, H)), jnp.float32)
    return h0, xs


# ------------------------------------------------------------------ cells written by a user
def scan_cell(p, h, x):
    """Two micro-steps of h per step, in an inner ``lax.scan`` whose per-micro-step outputs
    are unused (a dropped variable in the jaxpr on jax 0.7)."""
    zx = x @ p["w"] + p["b"]

    def micro(c, _):
        c = jnp.tanh(zx + c @ p["u"])
        return c, 2.0 * c

    h, _ = jax.lax.scan(micro, h, None, length=2)
    return h, h


def cond_cell(p, h, x):
    """A params-only ``lax.cond`` (the recurrent weight, scaled or not) and one on the state."""
    u = jax.lax.cond(p["scale"] > 0, lambda: p["u"] * p["scale"], lambda: p["u"])
    z = x @ p["w"] + h @ u + p["b"]
    h = jax.lax.cond(jnp.sum(h) > 0, jnp.tanh, lambda v: jax.nn.sigmoid(v) - 0.5, z)
    return h, h


@jax.jit
def _recurrent(u, h):
    return h @ u


@jax.jit
def _activation(z):
    return jnp.tanh(z)


def jit_cell(p, h, x):
    """Jitted helpers inside the step, and a weight stored ``[H, I]`` transposed at each step."""
    h = _activation(x @ p["wt"].T + _recurrent(p["u"], h) + p["b"])
    return h, h


CELLS = {"scan": scan_cell, "cond": cond_cell, "jit": jit_cell}


def _names(fn, *args):
    """The primitives of ``fn``'s jaxpr at its top level (not inside scans, conds, jits)."""
    return [e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def _split(cell):
    params = _params()
    h0, xs = _data()
    parts = hoist.split(cell, params, h0, xs[:, 0])
    assert parts is not None
    xs_T = jnp.swapaxes(xs, 0, 1)
    c = parts.constants(params)
    r_T = parts.precompute(params, xs_T)
    return params, h0, xs_T, parts, c, r_T


# ------------------------------------------------------------------ what leaves the loop
def test_scan_cell_input_projection_leaves_the_loop_the_inner_scan_stays():
    params, h0, xs_T, parts, c, r_T = _split(scan_cell)
    pre = _names(parts.precompute, params, xs_T)
    body = _names(lambda c, h, r: parts.body(c, h, r), c, h0, jax.tree.map(lambda a: a[0], r_T))
    assert "dot_general" in pre and "scan" not in pre  # x @ W, for all T steps at once
    assert "scan" in body and "dot_general" not in body  # h @ U only inside the inner scan
    assert [a.shape for a in jax.tree.leaves(r_T)] == [(T, B, H)]  # x @ W + b, per step


def test_cond_cell_params_only_cond_runs_once_the_state_cond_in_the_loop():
    params, h0, xs_T, parts, c, r_T = _split(cond_cell)
    assert "cond" in _names(parts.constants, params)
    body = _names(lambda c, h, r: parts.body(c, h, r), c, h0, jax.tree.map(lambda a: a[0], r_T))
    assert body.count("cond") == 1 and body.count("dot_general") == 1  # h @ u, then the cond on h
    assert "dot_general" in _names(parts.precompute, params, xs_T)
    # h @ u, with u from the params-only cond, is probed for the generic VJP's weight gradient
    assert len(parts.probes) == 1


def test_jit_cell_transpose_runs_once_jitted_helpers_stay_in_the_loop():
    params, h0, xs_T, parts, c, r_T = _split(jit_cell)
    assert "transpose" in _names(parts.constants, params)
    body = _names(lambda c, h, r: parts.body(c, h, r), c, h0, jax.tree.map(lambda a: a[0], r_T))
    assert len(JIT_NAMES & set(body)) == 1 and body.count("transpose") == 0
    assert "dot_general" in _names(parts.precompute, params, xs_T)


def test_nothing_to_hoist_returns_none():
    """A step with neither a product of x nor params-only work the loop reads: no split."""
    step = lambda p, h, x: (jnp.tanh(p * h + x), h)
    assert hoist.split(step, jnp.float32(0.5), jnp.zeros((B, H)), jnp.zeros((B, H))) is None


def test_effects_stay_in_the_loop():
    """An x-only operation with a side effect (a debug callback) is not moved out of the loop."""
    seen = []

    def cell(p, h, x):
        jax.debug.callback(lambda v: seen.append(v.shape), x)
        return jnp.tanh(x @ p["w"] + h @ p["u"]), h

    params, (h0, xs) = _params(), _data()
    parts = hoist.split(cell, params, h0, xs[:, 0])
    xs_T = jnp.swapaxes(xs, 0, 1)
    c, r_T = parts.constants(params), parts.precompute(params, xs_T)
    body = _names(lambda c, h, r: parts.body(c, h, r), c, h0, jax.tree.map(lambda a: a[0], r_T))
    assert "debug_callback" in body and "debug_callback" not in _names(parts.precompute, params, xs_T)


# ------------------------------------------------------------------ identical results
@pytest.mark.parametrize("name", sorted(CELLS))
def test_split_parts_reproduce_the_step(name):
    """constants, precompute and body, chained, give every step's (h, y) as the step as written."""
    cell = CELLS[name]
    params, h0, xs_T, parts, c, r_T = _split(cell)
    h_ref = h_hoisted = h0
    for t in range(T):
        h_ref, y_ref = cell(params, h_ref, xs_T[t])
        h_hoisted, y = parts.body(c, h_hoisted, jax.tree.map(lambda a: a[t], r_T))
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(h_hoisted), np.asarray(h_ref), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CELLS))
def test_unroll_hoisted_equals_as_written_and_the_python_loop(name):
    """Values and gradients (params, initial state, inputs) with ragged lengths incl. 0."""
    cell = CELLS[name]
    params = _params()
    h0, xs = _data()
    w = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, H)), jnp.float32)

    def loss(run, params, h0, xs):
        hT, ys = run(cell, params, h0, xs, seq_lengths=LENGTHS)
        return jnp.sum(jnp.sin(ys) * w) + jnp.sum(jnp.cos(hT))

    grad = lambda run: jax.value_and_grad(functools.partial(loss, run), argnums=(0, 1, 2))
    hoisted = jax.jit(grad(functools.partial(jaxrnn.unroll, hoist=True)))(params, h0, xs)
    written = jax.jit(grad(functools.partial(jaxrnn.unroll, hoist=False)))(params, h0, xs)
    loop = grad(python_unroll)(params, h0, xs)
    for a, b, ref in zip(jax.tree.leaves(hoisted), jax.tree.leaves(written), jax.tree.leaves(loop)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(a), np.asarray(ref), rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------ the version shims
def test_dropped_variables_are_recognised():
    """Dropped variables (the inner scan's unused outputs, top_k's unused indices: ``_`` in a
    printed jaxpr) are recognised, and the step's split runs through them. jax 0.7 makes them
    ``DropVar``s; newer jax may keep an unused output as an ordinary variable, printed ``_``."""
    def step(p, h, x):
        h, y = scan_cell(p, h, x)
        return h, jax.lax.top_k(y, 2)[0]

    params, (h0, xs) = _params(), _data()
    closed = jax.make_jaxpr(step)(params, h0, xs[:, 0])
    drops = sum(_compat.is_drop(v) for e in closed.jaxpr.eqns for v in e.outvars)
    printed = str(closed.jaxpr).count(" _:")
    if _compat.jax_version < (0, 8, 0):
        assert drops == printed == 2  # the inner scan's unused outputs, top_k's indices
    else:
        assert drops <= printed
    parts = hoist.split(step, params, h0, xs[:, 0])
    c, r_T = parts.constants(params), parts.precompute(params, jnp.swapaxes(xs, 0, 1))
    got = parts.body(c, h0, jax.tree.map(lambda a: a[0], r_T))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(step(params, h0, xs[:, 0]))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_subjaxprs_fallback_matches_jax():
    """The walk used before jax 0.10 finds the same jaxprs as ``jax.extend.core.jaxprs_in_params``."""
    ext = pytest.importorskip("jax.extend.core")
    if not hasattr(ext, "jaxprs_in_params"):
        pytest.skip(f"jax {jax.__version__} has no jax.extend.core.jaxprs_in_params to compare with")
    params, (h0, xs) = _params(), _data()
    for cell in CELLS.values():
        for eqn in jax.make_jaxpr(cell)(params, h0, xs[:, 0]).jaxpr.eqns:
            assert [str(j) for j in _compat._jaxprs_in_params(eqn.params)] == [
                str(j) for j in ext.jaxprs_in_params(eqn.params)], eqn.primitive.name
