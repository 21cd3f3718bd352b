"""The ``flax_nnx`` example: the twin models start equal, and a smoke run of both."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_flax_nnx", os.path.join(ROOT, "examples", "flax_nnx.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twin_models_start_as_one_function(example):
    models = example.twin_models(embed=4, hidden=5, seed=0)
    xs = np.random.default_rng(0).uniform(0, 1, (3, 8, 8)).astype(np.float32)
    ours, theirs = np.asarray(models["jaxrnn"](xs)), np.asarray(models["flax"](xs))
    assert ours.shape == (3, 10)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


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
