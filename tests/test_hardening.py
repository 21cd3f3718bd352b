"""Issue 23, one test (or a few) per point: silent wrong answers, lost data parallelism,
and the seams a JAX expert would find. Each of these failed on the code before the fix.

The data-parallel checks (point 2) compile under a forced 4-device CPU mesh, which must be
set before JAX starts, so they run in a child process: this file run as a script.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import tuning
from jaxrnn.cells import GRUCell, LSTMCell, _sigmoid
from jaxrnn.linear import linear_scan
from jaxrnn.zoo import _common as zoo_common

from _compat import enable_x64

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parents[1]
B, T, I, H = 3, 7, 4, 5


def _data(seed=0, batch=B):
    k = jax.random.split(jax.random.key(seed), 4)
    xs = jax.random.normal(k[0], (batch, T, I)) * 2.0
    lengths = jnp.array(([T, 0, 4] * batch)[:batch])
    resets = jax.random.bernoulli(k[1], 0.25, (batch, T))
    return xs, lengths, resets


def _loop(step, params, h, xs, lengths, resets, reset_state):
    """A plain Python loop of ``step`` with the semantics of :func:`jaxrnn.unroll` (forward)."""
    ys = []
    for t in range(xs.shape[1]):
        r_t = resets[:, t] & (t < lengths)  # resets only inside the length
        h = jax.tree.map(lambda r, a: jnp.where(r_t.reshape((-1,) + (1,) * (a.ndim - 1)), r, a), reset_state, h)
        h_new, y = step(params, h, xs[:, t])
        m = (t < lengths)
        h = jax.tree.map(lambda n, o: jnp.where(m.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), h_new, h)
        ys.append(jnp.where(m[:, None], y, 0.0))
    return h, jnp.stack(ys, 1)


# --------------------------------------------------------------------------- 1. step is the truth


@dataclasses.dataclass(frozen=True, repr=False)
class ClippedGRU(GRUCell):
    """A GRU subclass whose step clips the state: the fused kernel must not run it."""

    def step(self, params, h, x):
        h, _ = super().step(params, h, x)
        h = jnp.clip(h, -0.1, 0.1)
        return h, h


@dataclasses.dataclass(frozen=True)
class ScaledPeephole(jaxrnn.zoo.PeepholeLSTMCell):
    """A zoo cell subclass that overrides only ``step``: its inherited project/update are stale."""

    def step(self, params, h, x):
        (hh, c), _ = super().step(params, h, x)
        return type(h)(0.5 * hh, c), 0.5 * hh


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "newton"])
def test_subclass_step_is_what_runs(mode):
    xs, lengths, resets = _data()
    for cell in (ClippedGRU(H), ScaledPeephole(H)):
        params = jax.tree.map(lambda a: a + 0.1, cell.init(jax.random.key(1), I))
        h0 = cell.initial_state((B,))
        want = _loop(cell.step, params, h0, xs, lengths, resets, cell.initial_state((B,)))
        got = jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, resets=resets, mode=mode)
        chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
        if isinstance(cell, ClippedGRU):
            assert float(jnp.abs(got[1]).max()) <= 0.1 + 1e-6
    # in a stack too, and a subclass that vouches for the fused path again gets it
    net = jaxrnn.stack([ClippedGRU(H)], bidirectional=True)
    p = net.init(jax.random.key(2), I)
    assert float(jnp.abs(net(p, None, xs)[1]).max()) <= 0.1 + 1e-6


def test_fused_only_where_a_class_declares_it():
    @dataclasses.dataclass(frozen=True, repr=False)
    class Renamed(LSTMCell):
        pass

    @dataclasses.dataclass(frozen=True, repr=False)
    class Vouched(LSTMCell):
        fused = True

    assert jaxrnn.contract.fused(jaxrnn.lstm(3)) and jaxrnn.contract.fused(Vouched(3))
    assert not jaxrnn.contract.fused(Renamed(3)) and not jaxrnn.contract.fused(ClippedGRU(3))
    assert jaxrnn.contract.uses(jaxrnn.zoo.peephole_lstm(3), "project", "update")
    assert not jaxrnn.contract.uses(ScaledPeephole(3), "project", "update")
    xs, lengths, resets = _data()
    for cell in (Renamed(H), Vouched(H)):
        p = cell.init(jax.random.key(0), I)
        chex.assert_trees_all_close(jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths),
                                    jaxrnn.unroll(jaxrnn.lstm(H), p, None, xs, seq_lengths=lengths), atol=1e-6)


# --------------------------------------------------------------------------- 2. data parallelism


def _child_collectives():
    """Runs in the child: compiles fwd and fwd+bwd under a 4-device data mesh, per policy."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("data",))
    k = jax.random.key(0)
    xs = jax.random.normal(k, (16, 6, 8))

    def user_step(p, h, x):
        h = jnp.tanh(x @ p["w"] + h @ p["u"] + p["b"])
        return h, h

    nets = {
        "gru": (jaxrnn.gru(16), lambda c, p, x: jaxrnn.unroll(c, p, None, x)[1]),
        "lstm": (jaxrnn.lstm(16), lambda c, p, x: jaxrnn.unroll(c, p, None, x)[1]),
        "bidirectional_stack": (jaxrnn.stack([jaxrnn.gru(16), jaxrnn.lstm(8)], bidirectional=True, head=3),
                                lambda c, p, x: c(p, None, x)[1]),
        "user_cell": (None, lambda c, p, x: jaxrnn.unroll(user_step, p, jnp.zeros((x.shape[0], 16)), x)[1]),
    }
    out = {}
    for policy in ("cpu", "gpu"):
        with tuning.policy(policy):
            for name, (cell, call) in nets.items():
                if cell is None:
                    params = {"w": jax.random.normal(k, (8, 16)) * .1, "u": jax.random.normal(k, (16, 16)) * .1,
                              "b": jnp.ones(16)}
                else:
                    params = cell.init(k, 8)
                n_params = sum(a.size for a in jax.tree.leaves(params))
                # an LSTM's db_hh is its db_ih (both the gate cotangents' sum): XLA reduces it once
                shared = sum(q.b_hh.size for q in jax.tree.leaves(params, is_leaf=lambda q: isinstance(
                    q, jaxrnn.LSTMParams)) if isinstance(q, jaxrnn.LSTMParams))
                x = jax.device_put(xs, NamedSharding(mesh, P("data")))
                p = jax.device_put(params, NamedSharding(mesh, P()))
                fwd = jax.jit(lambda p, x, c=cell, f=call: f(c, p, x))
                grad = jax.jit(jax.grad(lambda p, x, c=cell, f=call: jnp.sum(f(c, p, x) ** 2)))
                row = {"params": int(n_params), "shared": int(shared)}
                for label, fn in (("fwd", fwd), ("grad", grad)):
                    text = fn.lower(p, x).compile().as_text()
                    reduced = 0
                    for line in text.splitlines():
                        m = re.search(r"= (\(.*?\)|\S+) all-reduce(-start)?\(", line)
                        if m:
                            reduced += sum(int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                                           for dims in re.findall(r"f32\[([\d,]*)\]", m.group(1)))
                    row[label] = {"all_gather": len(re.findall(r"all-gather(-start)?\(", text)),
                                  "all_to_all": len(re.findall(r"all-to-all\(", text)),
                                  "all_reduce_elements": reduced}
                out[f"{policy}/{name}"] = row
    print(json.dumps(out))


@pytest.fixture(scope="module")
def collectives():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, str(HERE), "collectives"], env=env, capture_output=True, text=True,
                       timeout=900, cwd=str(HERE.parent))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["cpu", "gpu"])
@pytest.mark.parametrize("name", ["gru", "lstm", "bidirectional_stack", "user_cell"])
def test_data_parallel_keeps_the_batch_sharded(collectives, policy, name):
    """Under a data mesh no activation is gathered (each device computes its shard) and the
    weight gradients are summed once: for the built-in cells the all-reduced elements are
    exactly the params' (an LSTM's db_hh, equal to its db_ih, once for both). A user cell's
    gradient on the accelerator branch reduces a few more (480 for its 400 params, measured)."""
    row = collectives[f"{policy}/{name}"]
    for label in ("fwd", "grad"):
        assert row[label]["all_gather"] == 0 and row[label]["all_to_all"] == 0, (label, row)
    assert row["fwd"]["all_reduce_elements"] == 0, row
    if name == "user_cell":
        assert row["params"] <= row["grad"]["all_reduce_elements"] <= 1.25 * row["params"], row
    else:
        assert row["grad"]["all_reduce_elements"] == row["params"] - row["shared"], row


# --------------------------------------------------------------------------- 3. backend policy


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["cpu", "gpu"])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_fused_equals_generic_under_both_policies(policy, kind):
    """The fused path (each backend's variant, forced) against the generic path and a
    Python loop of the cell's step: values and gradients, ragged lengths with a zero,
    resets, a random initial state, both directions, both layouts."""
    cell = getattr(jaxrnn, kind)(H)
    params = jax.tree.map(lambda a: a + 0.1, cell.init(jax.random.key(0), I))
    xs, lengths, resets = _data(3)
    h0 = jax.tree.map(lambda a: jax.random.normal(jax.random.key(4), a.shape), cell.initial_state((B,)))
    w = jax.random.normal(jax.random.key(5), (B, T, H))
    for reverse in (False, True):
        for time_major in (False, True):
            sw = (lambda a: jnp.swapaxes(a, 0, 1)) if time_major else (lambda a: a)

            def loss(p, h0, xs, hoist):
                h, ys = jaxrnn.unroll(cell, p, h0, sw(xs), seq_lengths=lengths, resets=sw(resets),
                                      reverse=reverse, time_major=time_major, hoist=hoist)
                return jnp.sum(sw(ys) * w) + jnp.sum(jnp.sin(jax.tree.leaves(h)[0]))

            with tuning.policy(policy):
                fused = jax.jit(jax.value_and_grad(lambda *a: loss(*a, True), argnums=(0, 1, 2)))(params, h0, xs)
            generic = jax.value_and_grad(lambda *a: loss(*a, False), argnums=(0, 1, 2))(params, h0, xs)
            chex.assert_trees_all_close(fused, generic, atol=2e-5, rtol=2e-5)
    # and the generic path against a plain Python loop of the cell's step (forward)
    want = _loop(cell.step, params, h0, xs, lengths, resets, cell.initial_state((B,)))
    with tuning.policy(policy):
        chex.assert_trees_all_close(jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, resets=resets), want,
                                    atol=2e-5, rtol=2e-5)


def test_export_for_an_accelerator_takes_the_accelerator_choices():
    """Lowered for CUDA on this CPU host, the program has none of the CPU-only choices (the
    optimization barriers of the CPU's GRU inference); lowered for the CPU, it has them."""
    from jax import export

    cell = jaxrnn.gru(H)
    p = cell.init(jax.random.key(0), I)
    xs, _, _ = _data()
    f = jax.jit(lambda p, xs: jaxrnn.unroll(cell, p, None, xs)[1])
    counts = {plat: export.export(f, platforms=[plat])(p, xs).mlir_module().count("optimization_barrier")
              for plat in ("cpu", "cuda")}
    assert counts["cpu"] >= 1 and counts["cuda"] == 0, counts


def test_policy_rejects_an_unknown_platform():
    with pytest.raises(ValueError, match="`platform`"):
        with tuning.policy("fpga"):
            pass


# --------------------------------------------------------------------------- 4. forward mode


@pytest.mark.slow
@pytest.mark.parametrize("batch", [2, 32])
def test_forward_mode_does_not_depend_on_the_batch_size(batch):
    def step(p, h, x):
        h = jnp.tanh(x @ p["w"] + h @ p["u"] + p["b"])
        return h, h

    k = jax.random.split(jax.random.key(0), 3)
    p = {"w": jax.random.normal(k[0], (I, H)), "u": jax.random.normal(k[1], (H, H)) * .3, "b": jnp.ones(H) * .1}
    xs, _, _ = _data(batch=batch)
    h0 = jax.random.normal(k[2], (batch, H))
    f = lambda p, **kw: jnp.sum(jaxrnn.unroll(step, p, h0, xs, **kw)[1] ** 2)
    with pytest.raises(TypeError, match="custom_vjp=False"):
        jax.jvp(f, (p,), (p,))
    cell = jaxrnn.gru(H)
    pc = cell.init(jax.random.key(1), I)
    with pytest.raises(TypeError, match="custom_vjp=False"):
        jax.jvp(lambda p: jaxrnn.unroll(cell, p, None, xs)[1], (pc,), (pc,))
    # with custom_vjp=False forward mode works, and equals the reverse-mode directional derivative
    _, tangent = jax.jvp(lambda p: f(p, custom_vjp=False), (p,), (p,))
    grad = jax.grad(f)(p)
    want = sum(jnp.vdot(grad[n], p[n]) for n in p)
    np.testing.assert_allclose(float(tangent), float(want), rtol=1e-4)


@pytest.mark.slow
def test_grad_of_a_jitted_unroll():
    """jax.grad around a jit (not jit around grad) of the generic path's custom VJP: it
    closed over traced values and failed with 'No constant handler'."""
    cell = jaxrnn.zoo.gru_original(H)
    p = cell.init(jax.random.key(0), I)
    xs, lengths, resets = _data()
    f = lambda p: jnp.sum(jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths, resets=resets)[1] ** 2)
    chex.assert_trees_all_close(jax.grad(jax.jit(f))(p), jax.grad(f)(p), atol=1e-6)


# --------------------------------------------------------------------------- 5. saturated gates


@pytest.mark.parametrize("fn", [_sigmoid, zoo_common.sigmoid], ids=["cells", "zoo"])
def test_sigmoid_matches_float64_over_the_range(fn):
    x = np.linspace(-30.0, 30.0, 6001, dtype=np.float32)
    with enable_x64(True):
        want = np.asarray(jax.nn.sigmoid(jnp.asarray(x, jnp.float64)))
    x64 = x.astype(np.float64)
    want_grad = np.exp(-x64) / (1.0 + np.exp(-x64)) ** 2  # (s (1 - s) cancels in float64 too, near s = 1)
    got = np.asarray(fn(jnp.asarray(x)), np.float64)
    got_grad = np.asarray(jax.vmap(jax.grad(fn))(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=0)
    assert float(fn(jnp.float32(-17.0))) > 4e-8


def test_lstm_gate_block_matches_float64_over_the_range():
    """The LSTM's four gates in one pass (sigmoid on i, f, o, tanh on g): values and
    derivatives against float64, far tails included (``(1 + e)^2`` overflows float32 for
    |x| > 22, and gave zero derivatives there)."""
    from jaxrnn.cells import _exp_gate, _lstm_gate_constants

    H = 4
    x = np.concatenate([np.linspace(-80.0, 80.0, 16001), np.geomspace(1e-30, 1.0, 2000),
                        -np.geomspace(1e-30, 1.0, 2000)]).astype(np.float32)
    s = np.repeat(x[:, None], 4 * H, axis=1)
    scale, lin, const = _lstm_gate_constants(H)
    act = lambda s: _exp_gate(s * scale, lin, const)
    got = np.asarray(act(jnp.asarray(s)), np.float64)
    got_grad = np.asarray(jax.grad(lambda s: jnp.sum(act(s)))(jnp.asarray(s)), np.float64)
    x64 = s.astype(np.float64)
    is_tanh = np.zeros(4 * H, bool)
    is_tanh[2 * H : 3 * H] = True
    e = np.exp(-np.abs(np.where(is_tanh, 2.0, 1.0) * x64))
    want = np.where(is_tanh, np.tanh(x64), 1.0 / (1.0 + np.exp(-x64)))
    want_grad = np.where(is_tanh, 4.0 * e / (1.0 + e) ** 2, e / (1.0 + e) ** 2)
    # Relatively exact, but for tanh near 0 (|x| < 1/4, where 1 - exp(-2x) cancels), which
    # is exact to an ulp of 1 absolutely (XLA's own jnp.tanh is off by 1.8e-7 there).
    ok = (np.abs(want) > 1.2e-38) & ~(is_tanh & (np.abs(x64) < 0.25))  # (and float32's normal range)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-6, atol=0)
    near = is_tanh & (np.abs(x64) < 0.25)
    np.testing.assert_allclose(got[near], want[near], rtol=0, atol=1.2e-7)
    ok = want_grad > 1e-36  # (its intermediate e / (1 + e)^2 is 4x smaller for tanh; XLA:CPU flushes subnormals)
    np.testing.assert_allclose(got_grad[ok], want_grad[ok], rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_saturated_gates_keep_value_and_gradient(kind):
    """A step whose gate pre-activations reach +-20: outputs and gradients against the
    same step in float64, relatively (the tanh form of the sigmoid gave exact zeros)."""
    cell = getattr(jaxrnn, kind)(H)
    p = jax.tree.map(lambda a: a * 12.0, cell.init(jax.random.key(0), I))
    xs, lengths, _ = _data(1)
    f = lambda p, xs: jnp.sum(jnp.log(jnp.abs(jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths)[1]) + 1e-30))
    got = jax.value_and_grad(f, argnums=(0, 1))(p, xs)
    with enable_x64(True):
        p64, xs64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (p, xs))
        want = jax.value_and_grad(f, argnums=(0, 1))(p64, xs64)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w), rtol=2e-3, atol=1e-6)


# --------------------------------------------------------------------------- 6. LSTM state layout


def test_lstm_state_must_be_an_lstm_state():
    cell = jaxrnn.lstm(H)
    p = cell.init(jax.random.key(0), I)
    xs, _, _ = _data()
    h = jnp.zeros((B, H))
    with pytest.raises(TypeError, match=r"LSTMState.*\(c, h\)"):
        jaxrnn.unroll(cell, p, (h, h), xs)
    with pytest.raises(TypeError, match="LSTMState"):
        cell.step(p, (h, h), xs[:, 0])
    jaxrnn.unroll(cell, p, jaxrnn.LSTMState(h, h), xs)


# --------------------------------------------------------------------------- 7. options


@pytest.mark.slow
def test_options_that_do_not_apply_are_refused():
    cell = jaxrnn.gru(H)
    p = cell.init(jax.random.key(0), I)
    xs, lengths, _ = _data()
    with pytest.raises(ValueError, match="`num_feature_axes`"):
        jaxrnn.unroll(cell, p, None, xs, num_feature_axes=2)
    with pytest.raises(ValueError, match="`chunk_size`"):
        jaxrnn.unroll(cell, p, None, xs, chunk_size=7)
    lru = jaxrnn.zoo.lru(I, state_size=6)
    pl = lru.init(jax.random.key(1), I)
    for opt in (dict(unroll=2), dict(remat=True), dict(hoist=False), dict(custom_vjp=False)):
        with pytest.raises(ValueError, match=f"`{next(iter(opt))}`"):
            jaxrnn.unroll(lru, pl, None, xs, mode="chunked", **opt)
    # hoist=False means something for a built-in cell: its step as written (same values)
    chex.assert_trees_all_close(jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths, hoist=False),
                                jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths), atol=1e-6)


def test_stack_takes_the_same_options():
    xs, lengths, resets = _data()
    net = jaxrnn.stack([jaxrnn.zoo.lru(I, state_size=6), jaxrnn.zoo.min_gru(3)])
    p = net.init(jax.random.key(0), I)
    a = net(p, None, xs, seq_lengths=lengths, mode="chunked", chunk_size=3, num_feature_axes=1)
    b = net(p, None, xs, seq_lengths=lengths)
    chex.assert_trees_all_close(a, b, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="`chunk_size`"):
        net(p, None, xs, chunk_size=3)
    with pytest.raises(ValueError, match="`num_feature_axes`"):
        net(p, None, xs, num_feature_axes=3)


# --------------------------------------------------------------------------- 8. compiled once


def test_eager_calls_trace_once():
    """Outside jit, a second call with the same cell, options and shapes traces nothing."""
    traces = []

    def step(p, h, x):
        traces.append(1)
        h = jnp.tanh(x @ p["w"] + h @ p["u"])
        return h, h

    step = chex.assert_max_traces(step, n=20)  # hoisting reads the step a few times per trace
    p = {"w": jnp.ones((I, H)) * .1, "u": jnp.eye(H) * .5}
    xs, lengths, resets = _data()
    h0 = jnp.zeros((B, H))
    first = jaxrnn.unroll(step, p, h0, xs, seq_lengths=lengths, resets=resets)
    n = len(traces)
    assert n > 0
    again = jaxrnn.unroll(step, p, h0, xs + 1.0, seq_lengths=lengths, resets=resets)
    assert len(traces) == n
    assert not np.allclose(first[1], again[1])
    net = jaxrnn.stack([jaxrnn.gru(H)], head=2)
    pn = net.init(jax.random.key(0), I)
    net(pn, None, xs)
    cache = jaxrnn.scan._COMPILED
    sizes = {f: f._cache_size() for f in cache.values()}
    net(pn, None, xs + 1.0)
    assert {f: f._cache_size() for f in cache.values()} == sizes


class LengthsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_lengths_have_one_meaning(self):
        """Above T acts as T and below 0 as 0, with and without jit (no host sync)."""
        cell = jaxrnn.gru(H)
        p = cell.init(jax.random.key(0), I)
        xs, _, _ = _data()
        run = lambda lengths: jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths)
        got = self.variant(run)(jnp.array([T + 5, -2, 3]))
        chex.assert_trees_all_close(got, run(jnp.array([T, 0, 3])), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- 9. dropout flag


def test_deterministic_flag():
    net = jaxrnn.stack([jaxrnn.gru(H), jaxrnn.gru(H)], dropout=0.5)
    p = net.init(jax.random.key(0), I)
    xs, _, _ = _data()
    key = jax.random.key(3)
    off = net(p, None, xs)
    chex.assert_trees_all_close(net(p, None, xs, key=key, deterministic=True), off)
    on = net(p, None, xs, key=key)
    assert not np.allclose(on[1], off[1])
    chex.assert_trees_all_close(net(p, None, xs, key=key, deterministic=False), on)
    with pytest.raises(ValueError, match="`key`"):
        net(p, None, xs, deterministic=False)
    with pytest.raises(TypeError, match="`deterministic`"):
        net(p, None, xs, deterministic=1)
    chex.assert_trees_all_close(net.step(p, None, xs[:, 0], key=key, deterministic=True),
                                net.step(p, None, xs[:, 0]))


# --------------------------------------------------------------------------- 10. dependencies


def test_every_imported_package_is_declared():
    """Third-party modules imported by the library are declared in pyproject.toml
    (torch and keras are imported lazily in interop code and declared as extras)."""
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (ROOT / "jaxrnn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third = imported - stdlib - {"jaxrnn", "__future__"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in project["dependencies"]}
    extras = {re.split(r"[<>=!~\[ ;]", d)[0].lower() for ds in project["optional-dependencies"].values() for d in ds}
    dist = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax", "numpy": "numpy", "tqdm": "tqdm",
            "matplotlib": "matplotlib", "msgpack": "msgpack", "chex": "chex", "torch": "torch", "keras": "keras",
            "orbax": "orbax-checkpoint", "einops": "einops"}
    for mod in sorted(third):
        name = dist.get(mod, mod)
        assert name in declared or (mod in ("torch", "keras") and name in extras), f"{mod} imported, not declared"
    assert "msgpack" in declared


# --------------------------------------------------------------------------- 11. linear_scan memory


@pytest.mark.slow
def test_linear_scan_keeps_a_constant_a_unbroadcast():
    """A coefficient constant in time ([H], the LRU's lambda) is never held at [T, B, H]:
    the VJP's residuals hold one such array (the states), not two."""
    k = jax.random.split(jax.random.key(0), 3)
    Tn, Bn, Hn = 50, 4, 6
    a = jax.random.uniform(k[0], (Hn,), minval=0.5, maxval=0.99)
    b = jax.random.normal(k[1], (Bn, Tn, Hn))
    def big_float_residuals(a, **kw):
        _, pull = jax.vjp(lambda a, b: linear_scan(a, b, **kw)[1], a, b)
        return [r.shape for r in jax.tree.leaves(pull)
                if hasattr(r, "shape") and r.size >= Tn * Bn * Hn and jnp.issubdtype(r.dtype, jnp.floating)]

    assert big_float_residuals(a) == [(Tn, Bn, Hn)]  # the states only
    assert len(big_float_residuals(jnp.broadcast_to(a, b.shape))) == 2  # (what a time-varying `a` costs)
    lengths = jnp.array([50, 3, 0, 20])
    assert len(big_float_residuals(a, seq_lengths=lengths)) < len(
        big_float_residuals(jnp.broadcast_to(a, b.shape), seq_lengths=lengths))
    # and the result is the broadcast one's
    f = lambda a, b: jnp.sum(linear_scan(a, b, seq_lengths=jnp.array([50, 3, 0, 20]))[1] ** 2)
    g = jax.grad(f, argnums=(0, 1))(a, b)
    gb = jax.grad(lambda a, b: f(jnp.broadcast_to(a, b.shape) + 0.0 * b, b), argnums=(0, 1))(a, b)
    chex.assert_trees_all_close(g, gb, rtol=1e-5, atol=1e-5)


if __name__ == "__main__" and sys.argv[1:] == ["collectives"]:
    _child_collectives()
