"""jaxrnn against PyTorch: outputs, final states and every gradient, to 1e-5.

Two sources of truth:

* ``tests/data/torch_reference.npz``, written by ``tests/make_reference.py`` with torch:
  checked here without torch;
* live ``torch.nn.RNN/GRU/LSTM`` on a seeded random grid of configurations, when torch
  is importable (``JAXRNN_TORCH_GRID=N`` runs N configurations instead of the default).

Torch runs on ``pack_padded_sequence(..., enforce_sorted=False)`` with ragged lengths
(torch needs lengths >= 1) and random ``h0`` (``c0``); jaxrnn on the padded batch with
``seq_lengths``.
"""

import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from _compat import enable_x64

HERE = Path(__file__).parent
# float32, matrix products at "highest" precision (see conftest.py): the bound, 1e-5
# absolute, for every output, state and gradient. (Parameter gradients are sums over batch and
# time and reach ~100 with relu RNNs, where one float32 ulp is already 7.6e-6: on a 48-config
# grid, JAXRNN_TORCH_GRID=48, one such gradient differs by 1.53e-5, two ulps of summation order.)
ATOL, RTOL = 1e-5, 0.0


def _load_maker():
    spec = importlib.util.spec_from_file_location("jaxrnn_tests_make_reference", HERE / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


maker = _load_maker()


# ----------------------------------------------------------------------------- jax side


def stack_from_config(config: dict) -> jaxrnn.TorchRNN:
    """The jaxrnn network of a torch configuration, built without torch."""
    H, mode = maker.SIZES["hidden_size"], config["mode"]
    if mode == "RNN":
        cell = jaxrnn.rnn(H, nonlinearity=config.get("nonlinearity", "tanh"), bias=config["bias"])
    elif mode == "GRU":
        cell = jaxrnn.gru(H, bias=config["bias"])
    else:
        cell = jaxrnn.lstm(H, proj_size=config.get("proj_size", 0), bias=config["bias"])
    net = jaxrnn.stack(cell, num_layers=config["num_layers"], bidirectional=config["bidirectional"])
    return jaxrnn.TorchRNN(net, batch_first=config["batch_first"])


_FIELDS = dict(w_ih="weight_ih", w_hh="weight_hh", b_ih="bias_ih", b_hh="bias_hh", w_hr="weight_hr")


def _suffixes(net):
    return [("", 0), ("_reverse", 1)] if net.bidirectional else [("", None)]


def params_from_torch_names(tnet: jaxrnn.TorchRNN, arrays: dict) -> jaxrnn.StackParams:
    """StackParams from a dict keyed by torch parameter names (no torch needed)."""
    net, layers = tnet.net, []
    for l, cell in enumerate(net.cells):
        dirs = []
        for suffix, _ in _suffixes(net):
            get = lambda f: (jnp.asarray(arrays[f"{_FIELDS[f]}_l{l}{suffix}"])
                             if f"{_FIELDS[f]}_l{l}{suffix}" in arrays else None)
            dirs.append(cell.params_type(*[get(f) for f in cell.params_type._fields]))
        layers.append(jaxrnn.Bidirectional(*dirs) if net.bidirectional else dirs[0])
    return jaxrnn.StackParams(tuple(layers))


def torch_names(tnet: jaxrnn.TorchRNN, params: jaxrnn.StackParams) -> dict:
    """The inverse of :func:`params_from_torch_names`."""
    out = {}
    for l, layer in enumerate(params.layers):
        for suffix, d in _suffixes(tnet.net):
            p = layer if d is None else layer[d]
            for field, value in p._asdict().items():
                if value is not None:
                    out[f"{_FIELDS[field]}_l{l}{suffix}"] = np.asarray(value)
    return out


def jax_run(tnet, params, inputs, *, packed=True, with_h0=True):
    """The jaxrnn counterpart of ``make_reference.torch_run``: same keys, same loss."""
    lstm = tnet.mode == "LSTM"
    h0, c0 = jnp.asarray(inputs["h0"]), jnp.asarray(inputs["c0"])
    h = ((h0, c0) if lstm else h0) if with_h0 else None
    lengths = jnp.asarray(inputs["lengths"], jnp.int32) if packed else None

    @jax.jit
    def value_and_grads(params, xs, h):
        def loss(params, xs, h):
            h_n, ys = tnet(params, h, xs, seq_lengths=lengths)
            states = list(h_n) if lstm else [h_n]
            return jnp.sum(ys**2) + sum(jnp.sum(s * jnp.sin(s)) for s in states), (h_n, ys)

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, h)

    (_, (h_n, ys)), (g_params, g_xs, g_h) = value_and_grads(params, jnp.asarray(inputs["xs"]), h)
    result = {"ys": ys, "grad/xs": g_xs}
    if lstm:
        result.update({"h_n": h_n[0], "c_n": h_n[1]})
    else:
        result["h_n"] = h_n
    if with_h0:
        if lstm:
            result.update({"grad/h0": g_h[0], "grad/c0": g_h[1]})
        else:
            result["grad/h0"] = g_h
    return result, g_params


def compare(got: dict, expected: dict, label="") -> float:
    """Asserts every key agrees to ATOL; returns the largest absolute difference."""
    assert sorted(got) == sorted(expected), f"{label}: keys differ"
    worst = 0.0
    for k, v in expected.items():
        g = np.asarray(got[k])
        assert g.shape == v.shape, f"{label} {k}: shape {g.shape} != {v.shape}"
        err = float(np.max(np.abs(g - v))) if v.size else 0.0
        excess = np.abs(g - v) - (ATOL + RTOL * np.abs(v))
        assert not np.any(excess > 0), f"{label} {k}: max abs error {err:.2e} > {ATOL:.0e} (+ {RTOL:.0e} relative)"
        worst = max(worst, err)
    return worst


# ------------------------------------------------------------- stored vectors (no torch)

REFERENCE = HERE / "data" / "torch_reference.npz"


def _stored_cases():
    with np.load(REFERENCE, allow_pickle=False) as data:
        n = json.loads(str(data["meta"]))["cases"]
        cases = []
        for i in range(n):
            prefix = f"case{i}/"
            entries = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
            cases.append(entries)
    return cases


STORED = _stored_cases()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(STORED)),
                         ids=[json.loads(str(c["config"]))["mode"] + str(i) for i, c in enumerate(STORED)])
def test_stored_torch_reference(index):
    """Outputs, states and gradients recorded from torch (no torch needed)."""
    case = STORED[index]
    config = json.loads(str(case["config"]))
    pick = lambda group: {k[len(group) + 1:]: v for k, v in case.items() if k.startswith(group + "/")}
    tnet = stack_from_config(config)
    params = params_from_torch_names(tnet, pick("weight"))
    expected = pick("expect")
    result, g_params = jax_run(tnet, params, pick("input"))
    result.update({f"grad/{k}": v for k, v in torch_names(tnet, g_params).items()})
    compare(result, expected, label=str(config))


# ------------------------------------------------------------------------- live torch


def grid_config(i: int) -> dict:
    """The i-th configuration of the seeded random grid."""
    rng = np.random.default_rng(1000 + i)
    mode = ("RNN", "GRU", "LSTM")[i % 3]
    config = dict(mode=mode, num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                  batch_first=bool(rng.integers(2)), bias=bool(rng.integers(2)))
    if mode == "RNN":
        config["nonlinearity"] = ("tanh", "relu")[int(rng.integers(2))]
    if mode == "LSTM":
        config["proj_size"] = (0, 2, 3)[(i // 3) % 3]
    return config


GRID_SIZE = int(os.environ.get("JAXRNN_TORCH_GRID", "9"))


def test_default_grid_covers_every_option():
    configs = [grid_config(i) for i in range(9)]
    for option, values in dict(num_layers={1, 2, 3}, bidirectional={True, False}, batch_first={True, False},
                               bias={True, False}).items():
        assert {c[option] for c in configs} == values, option
    assert {c["nonlinearity"] for c in configs if c["mode"] == "RNN"} == {"tanh", "relu"}
    assert {c["proj_size"] > 0 for c in configs if c["mode"] == "LSTM"} == {True, False}


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("index", range(GRID_SIZE), ids=lambda i: f"{i}-{grid_config(i)['mode']}")
def test_torch_grid(index):
    pytest.importorskip("torch")
    config = grid_config(index)
    module = maker.build_module(config, seed=index)
    inputs = maker.random_inputs(config, seed=index)
    expected = maker.torch_run(module, inputs)
    tnet, params = jaxrnn.from_torch(module)
    assert isinstance(tnet, jaxrnn.TorchRNN) and tnet.batch_first == config["batch_first"]
    result, g_params = jax_run(tnet, params, inputs)
    state_dict = jaxrnn.to_torch_state_dict(tnet, g_params)
    assert sorted(state_dict) == sorted(name for name, _ in module.named_parameters())
    result.update({f"grad/{k}": v.numpy() for k, v in state_dict.items()})
    compare(result, expected, label=str(config))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("index", range(GRID_SIZE), ids=lambda i: f"{i}-{grid_config(i)['mode']}")
def test_torch_grid_float64(index):
    """The same grid with both libraries in float64 (``jax_enable_x64``; torch's module in
    double): every output, state and gradient within 1e-12. Semantics, not rounding: what
    differs in float32 (up to 1e-5, see ATOL) is the order of float32 roundings."""
    pytest.importorskip("torch")
    config = grid_config(index)
    module = maker.build_module(config, seed=index).double()
    inputs = maker.as_float64(maker.random_inputs(config, seed=index))
    expected = maker.torch_run(module, inputs, dtype=np.float64)
    with enable_x64(True):
        tnet, params = jaxrnn.from_torch(module)  # a double module: float64 params
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
        result, g_params = jax_run(tnet, params, inputs)
        state_dict = jaxrnn.to_torch_state_dict(tnet, g_params)
        assert all(v.dtype == module.weight_ih_l0.dtype for v in state_dict.values())
        result.update({f"grad/{k}": v.numpy() for k, v in state_dict.items()})
        for k, v in expected.items():
            got = np.asarray(result[k])
            assert got.dtype == np.float64, (k, got.dtype)
            np.testing.assert_allclose(got, v, rtol=0, atol=1e-12, err_msg=f"{config} {k}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_torch_unbatched_and_no_h0(mode):
    pytest.importorskip("torch")
    config = dict(mode=mode, num_layers=2, bidirectional=True, batch_first=False, bias=True,
                  proj_size=2 if mode == "LSTM" else 0)
    module = maker.build_module(config, seed=5)
    tnet, params = jaxrnn.from_torch(module)
    inputs = maker.random_inputs(config, seed=6, unbatched=True)
    expected = maker.torch_run(module, inputs, packed=False)
    result, g_params = jax_run(tnet, params, inputs, packed=False)
    result.update({f"grad/{k}": v for k, v in torch_names(tnet, g_params).items()})
    compare(result, expected, label="unbatched")
    # h=None is zeros in both libraries (batched, packed).
    inputs = maker.random_inputs(config, seed=7)
    expected = maker.torch_run(module, inputs, with_h0=False)
    result, g_params = jax_run(tnet, params, inputs, with_h0=False)
    result.update({f"grad/{k}": v for k, v in torch_names(tnet, g_params).items()})
    compare(result, expected, label="h=None")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_to_torch_round_trip(key):
    torch = pytest.importorskip("torch")
    net = jaxrnn.stack(jaxrnn.lstm(5, proj_size=2), num_layers=2, bidirectional=True)
    params = net.init(key, 3)
    module = jaxrnn.to_torch(net, params)
    assert isinstance(module, torch.nn.LSTM) and module.batch_first and module.bidirectional
    assert (module.num_layers, module.proj_size, module.hidden_size) == (2, 2, 5)
    tnet, back = jaxrnn.from_torch(module)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    xs = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    with torch.no_grad():
        ys_torch, (h_torch, c_torch) = module(torch.from_numpy(xs))
    (h, c), ys = tnet(back, None, xs)
    np.testing.assert_allclose(ys, ys_torch.numpy(), atol=ATOL)
    np.testing.assert_allclose(h, h_torch.numpy(), atol=ATOL)
    np.testing.assert_allclose(c, c_torch.numpy(), atol=ATOL)
    # A TorchRNN keeps its layout; the state dict names are torch's.
    module2 = jaxrnn.to_torch(jaxrnn.TorchRNN(net, batch_first=False), params)
    assert not module2.batch_first
    assert sorted(jaxrnn.to_torch_state_dict(net, params)) == sorted(module2.state_dict())
    with pytest.raises(ValueError):
        jaxrnn.to_torch(jaxrnn.stack([jaxrnn.gru(4), jaxrnn.lstm(4)]), None)


def test_torch_float64_round_trip(key):
    """float64 params (with jax_enable_x64) export to a double module and come back float64;
    without x64, a double module comes back float32."""
    torch = pytest.importorskip("torch")
    net = jaxrnn.stack(jaxrnn.gru(4), num_layers=2)
    with enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), net.init(key, 3))
        module = jaxrnn.to_torch(net, params)
        assert module.weight_ih_l0.dtype == torch.float64
        _, back = jaxrnn.from_torch(module)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
            assert a.dtype == jnp.float64
            np.testing.assert_array_equal(a, b)
    _, back32 = jaxrnn.from_torch(module)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(back32))
