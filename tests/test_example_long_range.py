"""examples/long_range.py: a smoke run as a script, and its data and model pieces."""

import json
import os
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # an example script's smoke run: outside the fast lane (`pytest -m "not slow"`)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _module():
    return runpy.run_path(os.path.join(EXAMPLES, "long_range.py"), run_name="examples_long_range")


def test_long_range_smoke(tmp_path, monkeypatch):
    out_json, out_png = tmp_path / "long_range.json", tmp_path / "long_range.png"
    argv = ["long_range.py", "--smoke", "--no-progress", "--json", str(out_json), "--plot", str(out_png)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(EXAMPLES, "long_range.py"), run_name="__main__")
    assert out_png.stat().st_size > 1000
    with open(out_json) as f:
        r = json.load(f)
    assert set(r["test_accuracy"]) == {"mingru", "gru"}
    assert r["models"]["mingru"]["mode"] == "chunked" and r["models"]["gru"]["mode"] == "sequential"
    for name, m in r["models"].items():
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["seconds"] > 0, name
        assert m["eval_accuracy"][-1] == m["test_accuracy"]
    assert r["T"] == r["L"] + r["K"] and abs(r["chance_accuracy"] - 1 / r["V"]) < 1e-12


def test_selective_copy_batch():
    m = _module()
    tokens, targets = m["make_batch"](np.random.default_rng(0), 64, 50, 3, 6)
    assert tokens.shape == (64, 53) and targets.shape == (64, 3)
    assert (tokens[:, 50:] == 7).all()                              # K markers, id V + 1
    for row, tgt in zip(tokens, targets):
        data = row[:50][row[:50] != 0]
        assert len(data) == 3 and ((1 <= data) & (data <= 6)).all()   # K data tokens among blanks
        np.testing.assert_array_equal(data - 1, tgt)                  # targets in order of position
    assert len({tuple(t) for t in targets}) > 20


def test_models_parallel_equals_sequential():
    """The minGRU model's logits are the same with the parallel and the sequential mode,
    and the long-memory initialisation keeps ``1 - z`` near 1 for both cells."""
    m = _module()
    params = m["init_params"](jax.random.key(0), "mingru", V=5, hidden_size=6, num_layers=2)
    tokens, _ = m["make_batch"](np.random.default_rng(1), 4, 40, 2, 5)
    run = jax.jit(lambda p, t: [m["logits_fn"]("mingru", p, t, K=2, mode=mode) for mode in ("chunked", "sequential")])
    par, seq = run(params, jnp.asarray(tokens))
    assert par.shape == (4, 2, 5)
    np.testing.assert_allclose(np.asarray(par), np.asarray(seq), rtol=1e-5, atol=1e-5)
    assert float(jax.nn.sigmoid(-params.layers[0].b_ih[:6]).min()) > 0.99
    g = m["init_params"](jax.random.key(0), "gru", V=5, hidden_size=6, num_layers=1)
    assert float(jax.nn.sigmoid(g.layers[0].b_ih[6:12] + g.layers[0].b_hh[6:12]).min()) > 0.99
