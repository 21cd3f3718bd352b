"""The ``flax_nnx`` example: a smoke run of both models, which start as one function."""

import importlib.util
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # an example script's smoke run: outside the fast lane (`pytest -m "not slow"`)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_flax_nnx", os.path.join(ROOT, "examples", "flax_nnx.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flax_nnx_smoke(example, tmp_path):
    out = tmp_path / "flax_nnx.json"
    results = example.main(embed=8, hidden_size=8, epochs=2, json_path=str(out), verbose=False)
    saved = json.loads(out.read_text())
    assert set(saved["models"]) == {"jaxrnn", "flax"}
    for name, r in saved["models"].items():
        assert r["test_accuracy"] == pytest.approx(results["models"][name]["test_accuracy"])
        assert r["train_seconds"] > 0 and r["compile_seconds"] > 0
        assert r["test_accuracy"] > 0.15                     # chance is 0.1
        assert len(r["train_loss_per_epoch"]) == 2
    assert saved["time_ratio_jaxrnn_over_flax"] > 0
    # The twins start as one function: the same test loss before training.
    initial = [saved["models"][name]["initial_test_loss"] for name in ("jaxrnn", "flax")]
    np.testing.assert_allclose(initial[0], initial[1], rtol=1e-5)
    assert initial[0] > saved["models"]["jaxrnn"]["test_loss"]
