"""Smoke test of benchmarks/peers.py: tiny runs end to end, their checks and their outputs."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the peers benchmark's smoke run: outside the fast lane (`pytest -m "not slow"`)

torch = pytest.importorskip("torch", reason="benchmarks/peers.py compares against torch")
pytest.importorskip("flax", reason="benchmarks/peers.py compares against flax")

PEERS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
SHAPE = {"B": 3, "T": 6, "I": 5, "H": 4}
# Two tiny runs cover both cells, both precisions and both clocks with few compilations.
RUNS = {
    "lstm_f32": ["--cells", "lstm", "--precisions", "float32", "--impls", "jaxrnn,jaxrnn_autodiff,torch,flax,jax_cudnn",
                 "--unroll", "2"],
    "gru_half": ["--cells", "gru", "--precisions", "half", "--impls", "jaxrnn,torch,flax", "--clock", "cpu"],
}


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("benchmarks_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def reports(peers, tmp_path_factory):
    out = {}
    for name, extra in RUNS.items():
        d = tmp_path_factory.mktemp(name)
        argv = ["--shapes", "3x6x5x4", "--rounds", "2", "--min-time", "0",
                "--json", str(d / "r.json"), "--md", str(d / "r.md")] + extra
        out[name] = (peers.main(argv), d)
    return out


def test_parse_shapes(peers):
    assert peers.parse_shapes("32x128x256x256, 1X1000x128x128") == [(32, 128, 256, 256), (1, 1000, 128, 128)]
    for bad in ("32x128x256", "0x1x1x1", "axbxcxd", ""):
        with pytest.raises(ValueError, match="--shapes"):
            peers.parse_shapes(bad)


def test_bad_flags_are_rejected(peers):
    with pytest.raises(SystemExit):
        peers.main(["--cells", "lstm,transformer"])


def test_flax_variables_match_torch(peers):
    """The weight copy into flax cells reproduces torch (non-zero biases)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    torch.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((2, 7, 3)).astype(np.float32)
    for kind, mod, cell in (("lstm", torch.nn.LSTM, nn.OptimizedLSTMCell), ("gru", torch.nn.GRU, nn.GRUCell)):
        m = mod(3, 5, batch_first=True)
        with torch.no_grad():
            for p in m.parameters():
                p.uniform_(-0.8, 0.8)
            want = m(torch.from_numpy(x))[0].numpy()
        got = jax.jit(nn.RNN(cell(5)).apply)(peers.flax_variables(kind, m), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def _by(case):
    return {(r["impl"], r["mode"]): r for r in case["results"]}


def test_reports_are_consistent(reports):
    for name, (rep, d) in reports.items():
        on_disk = json.loads((d / "r.json").read_text())
        assert on_disk["cases"] == json.loads(json.dumps(rep["cases"]))
        env = rep["environment"]
        for key in ("jax", "jaxlib", "flax", "torch"):
            assert env["versions"][key]
        assert env["torch_num_threads"] >= 1 and env["cpu_model"]
        assert rep["config"]["rounds"] == 2
        (case,) = rep["cases"]
        assert case["shape"] == SHAPE
        by = _by(case)
        for impl in ("jaxrnn", "torch", "flax"):
            for mode in ("fwd", "fwd+bwd"):
                assert (impl, mode) in by, (name, impl, mode)
        for (impl, mode), r in by.items():
            assert len(r["samples_ms"]) == 2 and all(s > 0 for s in r["samples_ms"])
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["first_call_s"] > 0
            assert r["ratio_vs_torch"] == pytest.approx(r["median_ms"] / by[("torch", mode)]["median_ms"])
            assert r["ratio_vs_flax"] == pytest.approx(r["median_ms"] / by[("flax", mode)]["median_ms"])


def test_lstm_float32_run(reports):
    rep, _ = reports["lstm_f32"]
    (case,) = rep["cases"]
    assert (case["cell"], case["precision"], rep["config"]["unroll"], rep["config"]["clock"]) == (
        "lstm", "float32", 2, "wall")
    by = _by(case)
    assert ("jaxrnn_autodiff", "fwd+bwd") in by and ("jaxrnn_autodiff", "fwd") not in by
    assert {r["dtype"] for r in case["results"]} == {"float32"}
    if rep["environment"]["backend"] == "cpu":
        assert ("jax_cudnn", "fwd") not in by
        assert any("jax_cudnn skipped" in n for n in case["notes"])
    checks = case["check"]
    assert {"jaxrnn", "jaxrnn_autodiff", "flax"} <= set(checks) and "torch" not in checks
    for impl in ("jaxrnn", "jaxrnn_autodiff", "flax"):
        assert checks[impl]["ok"], checks[impl]
        if rep["environment"]["torch_device"] == "cpu":  # on a GPU, cuDNN's float32 runs in TF32
            assert checks[impl]["fwd_max_abs_diff"] < 1e-5
            assert checks[impl]["dx_max_rel_diff"] < 1e-4 and checks[impl]["dw_hh_max_rel_diff"] < 1e-4
    assert case["loss_scale"] == 1.0


def test_gru_half_run(reports):
    rep, _ = reports["gru_half"]
    (case,) = rep["cases"]
    assert (case["cell"], case["precision"], rep["config"]["clock"]) == ("gru", "half", "cpu")
    s = case["shape"]
    assert case["loss_scale"] == s["B"] * s["T"]  # so that float16 gradients do not underflow
    by = _by(case)
    assert by[("jaxrnn", "fwd")]["dtype"] == "bfloat16" and by[("flax", "fwd")]["dtype"] == "bfloat16"
    assert by[("torch", "fwd")]["dtype"] in ("bfloat16", "float16")
    checks = case["check"]
    assert {"jaxrnn", "torch", "flax"} == set(checks)
    for impl, rec in checks.items():
        assert rec["ok"], (impl, rec)
        assert 0 < rec["fwd_max_abs_diff"] < rec["tolerance"]  # half precision differs, but not by much


def test_markdown_tables(reports):
    for name, (rep, d) in reports.items():
        md = (d / "r.md").read_text()
        rows = [l for l in md.splitlines() if l.startswith("| LSTM") or l.startswith("| GRU")]
        assert len(rows) == len({r["impl"] for r in rep["cases"][0]["results"]}) >= 3
        assert all(r.count("|") == 13 for r in rows)
        assert "MISMATCH" not in md and "nothing to check" not in md
