"""``examples/state_tracking.py``: its data generator against plain Python, its model wiring, a smoke run."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "state_tracking.py")


@pytest.fixture(scope="module")
def st():
    spec = importlib.util.spec_from_file_location("example_state_tracking", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task, num_values", [("parity", 2), ("mod5", 5)])
def test_labels_match_a_python_loop(st, task, num_values):
    assert st.TASKS[task] == num_values
    tokens, lengths, labels = st.make_batch(np.random.default_rng(0), 300, num_values, 3, 40)
    assert tokens.shape == (300, 40) and lengths.shape == labels.shape == (300,)
    assert tokens.dtype == lengths.dtype == labels.dtype == np.int32
    for row, length, label in zip(tokens.tolist(), lengths.tolist(), labels.tolist()):
        state = 0
        for t in range(length):
            assert 0 <= row[t] < num_values
            state = (state + row[t]) % num_values   # parity: XOR of the bits; mod5: running sum mod 5
        assert label == state
        assert all(x == 0 for x in row[length:])  # padding past the length
    # Every class and every value occurs (a generator stuck on one value would fail here).
    assert set(labels.tolist()) == set(range(num_values))
    assert set(tokens[:, 0].tolist()) == set(range(num_values))


def test_parity_labels_by_hand(st):
    class Fixed:  # a generator returning fixed lengths, then fixed tokens
        def __init__(self):
            self.calls = 0

        def integers(self, low, high, size):
            self.calls += 1
            if self.calls == 1:
                return np.array([3, 5])
            return np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]])

    tokens, lengths, labels = st.make_batch(Fixed(), 2, 2, 3, 5, pad_to=6)
    np.testing.assert_array_equal(tokens, [[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 5])
    np.testing.assert_array_equal(labels, [1, 1])


def test_lengths_are_in_range_and_padded(st):
    tokens, lengths, _ = st.make_batch(np.random.default_rng(1), 2000, 5, 3, 40, pad_to=48)
    assert tokens.shape == (2000, 48)
    assert lengths.min() == 3 and lengths.max() == 40         # both ends of [3, 40] are drawn
    past = np.arange(48)[None, :] >= lengths[:, None]
    assert not tokens[past].any()
    tokens, lengths, _ = st.make_batch(np.random.default_rng(2), 50, 2, 256, 256)
    assert tokens.shape == (50, 256) and (lengths == 256).all()
    with pytest.raises(ValueError, match="min_length"):
        st.make_batch(np.random.default_rng(0), 4, 2, 10, 5)
    with pytest.raises(ValueError, match="pad_to"):
        st.make_batch(np.random.default_rng(0), 4, 2, 3, 40, pad_to=20)


def test_same_seed_same_batch(st):
    a = st.make_batch(np.random.default_rng(5), 16, 5, 3, 40)
    b = st.make_batch(np.random.default_rng(5), 16, 5, 3, 40)
    c = st.make_batch(np.random.default_rng(6), 16, 5, 3, 40)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_gdn_eigenvalue_range_differs_only_in_beta(st):
    c01, c02 = st.make_cell("gdn01", 16), st.make_cell("gdn02", 16)
    assert not c01.allow_neg_eigval and c02.allow_neg_eigval
    with pytest.raises(ValueError, match="`name`"):
        st.make_cell("gru", 16)


@pytest.mark.parametrize("name", ["lstm", "gdn02"])
def test_logits_read_the_last_true_step(st, name):
    """The padding after a sequence's end does not change its logits (the cells are causal)."""
    cell = st.make_cell(name, 8)
    params = st.init_params(jax.random.key(0), cell, 2, 8)
    tokens, lengths, _ = st.make_batch(np.random.default_rng(3), 6, 2, 3, 16, pad_to=16)
    logits = st.logits_at_end(name, cell, params, jnp.asarray(tokens), jnp.asarray(lengths))
    assert logits.shape == (6, 2)
    changed = np.where(np.arange(16)[None, :] < lengths[:, None], tokens, 1 - tokens)  # flip the padding
    again = st.logits_at_end(name, cell, params, jnp.asarray(changed), jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(again), np.asarray(logits), rtol=1e-5, atol=1e-5)
    # ... while one token inside changes them.
    inside = tokens.copy()
    inside[:, 0] = 1 - inside[:, 0]
    moved = st.logits_at_end(name, cell, params, jnp.asarray(inside), jnp.asarray(lengths))
    assert not np.allclose(np.asarray(moved), np.asarray(logits), atol=1e-6)


def test_scaled_accuracy(st):
    assert st.scaled(0.5, 2) == 0.0 and st.scaled(1.0, 2) == 1.0
    assert st.scaled(0.2, 5) == pytest.approx(0.0) and st.scaled(0.6, 5) == pytest.approx(0.5)


def test_main_trains_and_records_one_cheap_model(st, tmp_path):
    out = st.main(tasks=("parity",), models=("mingru",), seeds=2, width=8, batch_size=8, steps=3, max_length=10,
                  test_lengths=(10, 14), test_size=16, json_path=str(tmp_path / "r.json"), plot_path=None)
    saved = json.loads((tmp_path / "r.json").read_text())
    r = saved["tasks"]["parity"]["mingru"]
    assert len(r["runs"]) == 2 and set(r["accuracy"]) == {"10", "14"}
    for T in ("10", "14"):
        accs = [run["accuracy"][T] for run in r["runs"]]
        assert r["accuracy"][T]["mean"] == pytest.approx(np.mean(accs))
        assert r["accuracy"][T]["min"] == min(accs) and r["accuracy"][T]["max"] == max(accs)
        assert all(0.0 <= a <= 1.0 for a in accs)
    assert out["supervision"] == "final step" and saved["chance"] == {"parity": 0.5}


@pytest.mark.slow
def test_smoke_run_writes_every_model(tmp_path):
    """The command line trains every model. One task (mod5, the one with more classes): the
    two tasks differ only in the number of classes, and parity goes through ``main`` above;
    both tasks took 150 s here, almost all of it compiling."""
    out = tmp_path / "st"
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--tasks", "mod5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "st.json").read_text())
    assert set(results["tasks"]) == {"mod5"}
    assert set(results["tasks"]["mod5"]) == {"gdn01", "gdn02", "mamba2", "slstm", "lstm", "mingru"}
    for r in results["tasks"]["mod5"].values():
        assert set(r["accuracy"]) == {"12", "20"}
        assert all(0.0 <= a["mean"] <= 1.0 for a in r["accuracy"].values())
    assert (tmp_path / "st.png").stat().st_size > 0
    assert "total wall time" in proc.stdout
