"""GLA cell: unroll chunked vs sequential vs a Python loop of step (values and gradients),
resets, ragged lengths (incl. 0), random initial state, stack; errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo.gla import gla
from test_zoo_deltanet import F32, python_loop, random_state, rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

CELLS = {
    "gla": lambda: gla(16, num_heads=2),
    "gla_conv": lambda: gla(16, num_heads=2, use_short_conv=True, use_output_gate=False, gate_logit_normalizer=1.0),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_chunked_sequential_step_loop(key, name):
    cell = CELLS[name]()
    B, T, I = 3, 21, 7
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, input_size=I)
    xs = jax.random.normal(k2, (B, T, I))
    h0 = random_state(cell, k3, B)
    resets = np.zeros((B, T), bool)
    resets[0, 0] = resets[1, 8] = resets[1, 9] = resets[2, 5] = True
    resets = jnp.asarray(resets)
    lengths = jnp.array([T, 12, 0], jnp.int32)
    kw = dict(resets=resets, seq_lengths=lengths)
    h_ref, y_ref = python_loop(cell, params, h0, xs, resets, lengths)
    h_s, y_s = jaxrnn.unroll(cell, params, h0, xs, **kw)
    h_c, y_c = jaxrnn.unroll(cell, params, h0, xs, mode="chunked", chunk_size=8, **kw)
    for h, y in ((h_s, y_s), (h_c, y_c)):
        assert rel_rms(y, y_ref) <= F32
        assert rel_rms(h.S, h_ref.S) <= F32
        if h.conv.size:
            assert rel_rms(h.conv, h_ref.conv) <= F32

    def loss(mode, p):
        h, ys = jaxrnn.unroll(cell, p, h0, xs, mode=mode, chunk_size=8 if mode == "chunked" else None, **kw)
        return jnp.sum(ys * jnp.cos(jnp.arange(ys.size).reshape(ys.shape))) + jnp.sum(h.S ** 2)

    g_s = jax.grad(lambda p: loss("sequential", p))(params)
    g_c = jax.grad(lambda p: loss("chunked", p))(params)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_s)):
        assert b.size == 0 or rel_rms(a, b) <= 1e-4 or np.abs(np.asarray(b)).max() < 1e-6


def test_errors(key):
    with pytest.raises(ValueError, match="`expand_k`"):
        gla(10, num_heads=4)
    cell = gla(16, num_heads=2)
    params = cell.init(key, input_size=5)
    with pytest.raises(ValueError, match="params.gk_proj1"):
        cell.step(params._replace(gk_proj1=jnp.zeros((3, 16))), None, jnp.zeros((2, 5)))
