"""Shared fixtures: a PRNG key, per-dtype tolerances, cells by name, random data.

Random test data comes from numpy: eager ``jax.random`` calls compile one small XLA
program per shape, which dominates the run time of a suite of small tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

# Parity checks compare float32 numbers to ~1e-5: matrix products must not drop to
# bf16/tf32 passes on accelerators.
jax.config.update("jax_default_matmul_precision", "highest")

#: Cells by name, used to parametrize grids (``lstm_proj``: LSTM with a projection).
CELL_NAMES = ("rnn_tanh", "rnn_relu", "gru", "lstm", "lstm_proj")

_TOLERANCES = {
    # Same float32 arithmetic, different association order (hoisted projection,
    # fused backward): agreement to a few ulps of O(1) values.
    jnp.dtype(jnp.float32): dict(atol=2e-5, rtol=2e-5),
    # bfloat16 has an 8-bit mantissa: ~4e-3 relative per rounding, compounded over steps.
    jnp.dtype(jnp.bfloat16): dict(atol=5e-2, rtol=5e-2),
    jnp.dtype(jnp.float16): dict(atol=1e-2, rtol=1e-2),
}


def tolerance(dtype=jnp.float32) -> dict:
    """``dict(atol=..., rtol=...)`` for comparing results computed in ``dtype``."""
    return dict(_TOLERANCES[jnp.dtype(dtype)])


def assert_close(actual, expected, dtype=jnp.float32, err_msg=""):
    """Tree-wise ``np.testing.assert_allclose`` with :func:`tolerance` of ``dtype``."""
    a_leaves, a_def = jax.tree.flatten(actual)
    e_leaves, e_def = jax.tree.flatten(expected)
    assert a_def == e_def, f"{err_msg}: structures differ: {a_def} vs {e_def}"
    for a, e in zip(a_leaves, e_leaves):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32),
                                   err_msg=err_msg, **tolerance(dtype))


def make_cell(name: str, hidden_size: int = 4, **kw) -> jaxrnn.Cell:
    """A cell from one of :data:`CELL_NAMES`."""
    if name.startswith("rnn_"):
        return jaxrnn.rnn(hidden_size, nonlinearity=name[4:], **kw)
    if name == "gru":
        return jaxrnn.gru(hidden_size, **kw)
    if name == "lstm":
        return jaxrnn.lstm(hidden_size, **kw)
    if name == "lstm_proj":
        return jaxrnn.lstm(hidden_size, proj_size=max(1, hidden_size // 2), **kw)
    raise ValueError(name)


def normal(shape, seed=0):
    """Standard-normal float32 array from numpy (no XLA compilation needed)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape)), jnp.float32)


def random_params(cell: jaxrnn.Cell, input_size: int, seed=0, scale=0.6):
    """Params of ``cell`` drawn from U(-scale, scale), biases included (non-zero)."""
    rng = np.random.default_rng(seed)
    u = lambda *shape: jnp.asarray(rng.uniform(-scale, scale, shape), jnp.float32)
    G, H, Ho = cell.num_gates, cell.hidden_size, cell.output_size
    fields = [u(G * H, input_size), u(G * H, Ho)]
    fields += [u(G * H), u(G * H)] if cell.bias else [None, None]
    if cell.is_lstm:
        fields.append(u(Ho, H) if cell.proj_size else None)
    return cell.params_type(*fields)


def random_state(cell: jaxrnn.Cell, batch_shape=(), seed=0):
    """A random (non-zero) initial state for ``cell``."""
    h = normal(tuple(batch_shape) + (cell.output_size,), seed)
    if cell.is_lstm:
        return jaxrnn.LSTMState(h, normal(tuple(batch_shape) + (cell.hidden_size,), seed + 1))
    return h


@pytest.fixture
def key():
    """A fresh, fixed PRNG key for each test."""
    return jax.random.key(0)


@pytest.fixture
def tol():
    """The :func:`tolerance` helper, as a fixture."""
    return tolerance


# The helpers as fixtures, so test modules need not import conftest.
@pytest.fixture(name="assert_close")
def _assert_close_fixture():
    return assert_close


@pytest.fixture(name="make_cell")
def _make_cell_fixture():
    return make_cell


@pytest.fixture(name="random_state")
def _random_state_fixture():
    return random_state


@pytest.fixture(name="random_params")
def _random_params_fixture():
    return random_params


@pytest.fixture(name="normal")
def _normal_fixture():
    return normal
