"""examples/custom_cell.py: its plain-function cell, its data, its models, and a smoke run.

The example runs as a script (``--smoke``) in this process, so the argparse path, the
JSON and the plot are exercised; its pieces are checked against written-out equations
and a Python loop.
"""

import json
import math
import os
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # an example script's smoke run: outside the fast lane (`pytest -m "not slow"`)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(scope="module")
def example():
    """The example's globals, without running its ``__main__`` block."""
    return runpy.run_path(os.path.join(EXAMPLES, "custom_cell.py"), run_name="examples_custom_cell")


def _params(m, H=3, I=2, seed=0):
    rng = np.random.default_rng(seed)
    u = lambda *shape: jnp.asarray(rng.uniform(-0.8, 0.8, shape), jnp.float32)
    return m["MGUParams"](u(I, 2 * H), u(H, 2 * H), u(2 * H))


def test_mgu_is_the_minimal_gated_unit(example):
    """The plain-function cell against its equations written out in numpy float64."""
    p = _params(example)
    rng = np.random.default_rng(1)
    h = rng.standard_normal((4, 3))
    x = rng.standard_normal((4, 2))
    w, u, b = (np.asarray(a, np.float64) for a in p)
    sig = lambda v: 1 / (1 + np.exp(-v))
    f = sig(x @ w[:, :3] + b[:3] + h @ u[:, :3])
    cand = np.tanh(x @ w[:, 3:] + b[3:] + (f * h) @ u[:, 3:])
    want = (1 - f) * h + f * cand
    h_new, y = example["mgu"](p, jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(h_new), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h_new))


def test_make_batch(example):
    xs, lengths, targets, clean = example["make_batch"](np.random.default_rng(0), 64, 12, 4, 5)
    assert xs.shape == (64, 12) and targets.shape == clean.shape == (64, 5)
    assert xs.dtype == targets.dtype == np.float32 and lengths.dtype == np.int32
    assert lengths.min() >= 4 and lengths.max() <= 12 and len(set(lengths.tolist())) > 3
    past = np.arange(12)[None, :] >= lengths[:, None]
    assert np.all(xs[past] == 0) and np.all(xs[~past] != 0)
    assert (targets - clean).std() == pytest.approx(0.1, rel=0.2)         # the noise
    again = example["make_batch"](np.random.default_rng(0), 64, 12, 4, 5)
    for a, b in zip(again, (xs, lengths, targets, clean)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["mgu", "peephole_lstm"])
def test_forecast_reads_the_state_at_each_length(example, name):
    """``forecast`` is the dense head on the state after ``lengths[b]`` steps of the cell,
    written here as a Python loop over each series on its own."""
    H, horizon = 4, 3
    init, forecast = example["make_model"](name, H, horizon)
    params = init(jax.random.key(0))
    rng = np.random.default_rng(2)
    params = params._replace(b=jnp.asarray(rng.standard_normal(horizon), jnp.float32))
    xs = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
    lengths = jnp.array([6, 1, 4])
    got = jax.jit(forecast)(params, xs, lengths)
    assert got.shape == (3, horizon)
    step = jax.jit(example["mgu"] if name == "mgu" else example["peephole_lstm"](H, forget_bias=1.0).step)
    for b in range(3):
        h = jnp.zeros((H,))
        if name == "peephole_lstm":
            h = (h, h)
        for t in range(int(lengths[b])):
            h, y = step(params.cell, h, xs[b, t:t + 1])
        final = y
        np.testing.assert_allclose(np.asarray(got[b]), np.asarray(params.w @ final + params.b),
                                   rtol=2e-5, atol=2e-5)


def test_smoke(tmp_path, monkeypatch):
    out_json, out_png = tmp_path / "custom_cell.json", tmp_path / "custom_cell.png"
    # Two of the three models: the plain function and the zoo cell (the built-in GRU is the
    # library's most tested path).
    argv = ["custom_cell.py", "--smoke", "--no-progress", "--json", str(out_json), "--plot", str(out_png),
            "--models", "mgu", "peephole_lstm"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(EXAMPLES, "custom_cell.py"), run_name="__main__")
    assert out_png.stat().st_size > 1000
    r = json.loads(out_json.read_text())
    assert list(r["models"]) == ["mgu", "peephole_lstm"]
    assert math.isfinite(r["naive_mse"]) and r["naive_mse"] > 0
    for name, m in r["models"].items():
        assert math.isfinite(m["test_mse"]) and m["test_mse"] > 0, name
        assert len(m["mse_by_horizon"]) == r["config"]["horizon"]
        np.testing.assert_allclose(np.mean(m["mse_by_horizon"]), m["test_mse"], rtol=1e-5)
        assert m["history"]["eval_step"][-1] == r["config"]["steps"]


def test_bad_arguments(example):
    with pytest.raises(ValueError, match="`name`"):
        example["make_model"]("lstm", 4, 3)
    with pytest.raises(ValueError, match="`context_min`"):
        example["main"](context=10, context_min=11, progress=False, plot_path=None)


def test_mgu_projection_is_hoisted(example):
    """The example says ``unroll`` lifts ``x @ W + b`` out of the loop by itself: the
    automatic split puts that product in the part run for all steps at once, and the loop
    body keeps only the two products with ``h``."""
    from jaxrnn.hoist import split

    p, mgu = _params(example), example["mgu"]
    h, x, xs_T = jnp.zeros((4, 3)), jnp.zeros((4, 2)), jnp.zeros((5, 4, 2))
    parts = split(mgu, p, h, x)
    assert parts is not None
    count = lambda f, *a: str(jax.make_jaxpr(f)(*a)).count("dot_general")
    r_T = parts.precompute(p, xs_T)
    assert count(mgu, p, h, x) == 3
    assert count(parts.precompute, p, xs_T) == 1
    assert count(parts.body, parts.constants(p), h, jax.tree.map(lambda a: a[0], r_T)) == 2
