"""Tests for jaxrnn.parallel: data parallelism over 8 (forced) CPU devices.

The device count of the CPU backend is fixed when JAX initialises, and other tests in
this pytest process have imported JAX already, so the multi-device checks run in a
child process (this very file, run as a script) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; it prints one JSON line of
measurements, which the tests below assert on. A second pair of child processes
checks the multi-host path: two processes with 4 CPU devices each, joined by
``jax.distributed.initialize``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import parallel

TOL = 1e-5  # float32: one step on 8 devices against the same step on 1 device (relative for the loss)
N_DEVICES = 8
HERE = os.path.abspath(__file__)


# --------------------------------------------------------------------------- the child's side

CONFIGS = {
    "lstm_bidirectional": lambda: jaxrnn.stack(jaxrnn.lstm(16), bidirectional=True, head=3),
    "gru_2_layers": lambda: jaxrnn.stack(jaxrnn.gru(12), num_layers=2, head=3),
}
INPUT_SIZE, T, LR = 5, 7, 0.5


def make_batch(net, key, batch_size):
    """A ragged batch (lengths 0..T, both ends included) with a random initial state."""
    kx, ky, kh, kl = jax.random.split(key, 4)
    lengths = np.array(jax.random.randint(kl, (batch_size,), 0, T + 1))
    lengths[0], lengths[-1] = T, 0
    h0 = net.initial_state((batch_size,))
    leaves, treedef = jax.tree.flatten(h0)
    h0 = jax.tree.unflatten(
        treedef, [np.asarray(jax.random.normal(k, l.shape)) for k, l in zip(jax.random.split(kh, len(leaves)), leaves)]
    )
    return {
        "xs": np.asarray(jax.random.normal(kx, (batch_size, T, INPUT_SIZE))),
        "ys": np.asarray(jax.random.normal(ky, (batch_size, T, net.output_size))),
        "lengths": lengths.astype(np.int32),
        "h0": h0,
        "weights": np.ones((batch_size,), np.float32),
    }


def make_loss(net):
    def loss_fn(params, batch):
        h, ys = net(params, batch["h0"], batch["xs"], seq_lengths=batch["lengths"])
        w = batch["weights"]
        mask = (jnp.arange(ys.shape[1])[None, :] < batch["lengths"][:, None]) * w[:, None]
        token = jnp.sum(mask * jnp.sum((ys - batch["ys"]) ** 2, -1)) / jnp.sum(mask)
        # The final states (at each sequence's own length) enter the loss too.
        state = sum(jnp.sum(s**2, -1) for s in jax.tree.leaves(h))
        return token + jnp.sum(w * state) / jnp.sum(w)

    return loss_fn


def make_step(net):
    """A plain single-device SGD step; sharding comes only from where the inputs live."""
    loss_fn = make_loss(net)

    @jax.jit
    def step(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), grads, loss

    return step


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def child_single_host():
    mesh = parallel.data_mesh()
    out = {"device_count": jax.device_count(), "mesh_size": int(mesh.shape["data"]), "configs": {}}
    x = jnp.ones((3, 4))
    out["replicate_aliases"] = any(s.data.unsafe_buffer_pointer() == x.unsafe_buffer_pointer()
                                   for s in parallel.replicate(x, mesh).addressable_shards)
    steps = {}
    for i, (name, build) in enumerate(CONFIGS.items()):
        net = build()
        params = net.init(jax.random.key(i), INPUT_SIZE)
        batch = make_batch(net, jax.random.key(100 + i), 16)
        step = steps[name] = make_step(net)
        p1, g1, l1 = step(params, batch)  # one device: numpy inputs land on device 0
        rparams, sbatch = parallel.replicate(params, mesh), parallel.shard_batch(batch, mesh)
        p8, g8, l8 = step(rparams, sbatch)
        hlo = step.lower(rparams, sbatch).compile().as_text() if i == 0 else None
        out["configs"][name] = {
            "loss_diff": abs(float(l1) - float(l8)) / abs(float(l1)),
            "grad_diff": _max_diff(g1, g8),
            "param_diff": _max_diff(p1, p8),
            "update_size": _max_diff(p1, params),
            "batch_shards": len(sbatch["xs"].addressable_shards),
            "shard_rows": sorted({s.data.shape[0] for s in sbatch["xs"].addressable_shards}),
            "state_shards": len(jax.tree.leaves(sbatch["h0"])[0].addressable_shards),
            "params_replicated": all(x.sharding.is_fully_replicated and len(x.devices()) == N_DEVICES
                                     for x in jax.tree.leaves(p8)),
            "all_reduce": None if hlo is None else "all-reduce" in hlo,
        }

    # Padding to a multiple of the device count with zero weights: the gradient of the
    # unpadded 13-example batch, on one device (same net and step: the 16-row
    # programs compiled above are reused).
    net = CONFIGS["lstm_bidirectional"]()
    params = net.init(jax.random.key(7), INPUT_SIZE)
    batch = make_batch(net, jax.random.key(8), 13)
    step = steps["lstm_bidirectional"]
    _, g_ref, l_ref = step(params, batch)
    try:
        parallel.shard_batch(batch, mesh)
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    padded, weights = parallel.pad_batch(batch, mesh.shape["data"])
    padded["weights"] = weights
    _, g_pad, l_pad = step(parallel.replicate(params, mesh), parallel.shard_batch(padded, mesh))
    out["pad"] = {"rows": int(padded["xs"].shape[0]), "weight_sum": float(weights.sum()),
                  "grad_diff": _max_diff(g_ref, g_pad),
                  "loss_diff": abs(float(l_ref) - float(l_pad)) / abs(float(l_ref))}
    # Without the weights the padded rows would count: the check above is not vacuous.
    padded["weights"] = np.ones_like(weights)
    _, g_bad, _ = step(params, padded)
    out["pad"]["unweighted_grad_diff"] = _max_diff(g_ref, g_bad)
    print(json.dumps(out))


def child_multi_host(process_id, num_processes, port):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes, process_id=process_id)
    mesh = parallel.data_mesh()
    net = CONFIGS["lstm_bidirectional"]()
    params = net.init(jax.random.key(0), INPUT_SIZE)  # same key: same params on every host
    full = make_batch(net, jax.random.key(1), 16)
    per = 16 // num_processes
    local = jax.tree.map(lambda x: x[process_id * per:(process_id + 1) * per], full)
    sbatch = parallel.shard_batch(local, mesh)
    step = make_step(net)
    p, g, loss = step(parallel.replicate(params, mesh), sbatch)
    try:
        parallel.shard_batch(jax.tree.map(lambda x: x[:3], local), mesh)
        error = None
    except ValueError as e:
        error = str(e)
    # Reference: the whole global batch, this process's first local device only.
    with jax.default_device(jax.local_devices()[0]):
        p1, g1, l1 = step(params, full)
    # The global array holds every host's rows; replicated outputs are readable anywhere.
    xs_local_rows = sorted(int(s.index[0].start or 0) for s in sbatch["xs"].addressable_shards)
    print(json.dumps({
        "process": process_id, "global_shape": list(sbatch["xs"].shape), "mesh_size": int(mesh.shape["data"]),
        "local_rows": xs_local_rows, "grad_diff": _max_diff(g1, g), "param_diff": _max_diff(p1, p),
        "loss_diff": abs(float(l1) - float(loss)) / abs(float(l1)), "error": error,
    }))
    jax.distributed.shutdown()


# --------------------------------------------------------------------------- the parent's side


def _env(devices):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), env.get("PYTHONPATH", "")])
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def _children():
    """Starts every child at once (the single-host one and the two 'hosts'); returns their outputs."""
    port, n = _free_port(), 2
    commands = {"single": ([HERE, "single"], _env(N_DEVICES))}
    for i in range(n):
        commands[f"multi{i}"] = ([HERE, "multi", str(i), str(n), str(port)], _env(N_DEVICES // n))
    procs = {name: subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, (args, env) in commands.items()}
    results = {}
    try:
        for name, p in procs.items():
            try:
                stdout, stderr = p.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            results[name] = (p.returncode, stdout, stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _result(name):
    code, stdout, stderr = _children()[name]
    assert code == 0, f"child {name} failed ({code}):\n{stderr[-4000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def single_host_results():
    return _result("single")


@pytest.mark.slow  # three child processes compile the step on 8, 1 and 2x4 devices
@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_on_8_devices_equals_1_device(name):
    out = single_host_results()
    assert out["device_count"] == N_DEVICES and out["mesh_size"] == N_DEVICES
    r = out["configs"][name]
    assert r["batch_shards"] == N_DEVICES and r["shard_rows"] == [16 // N_DEVICES]
    assert r["state_shards"] == N_DEVICES  # the random initial state is split with the batch
    assert r["params_replicated"]
    assert r["all_reduce"] in (None, True), "the compiled step should reduce gradients across devices"
    assert r["update_size"] > 1e-3  # the step changes the params, so equality means something
    assert r["loss_diff"] <= TOL and r["grad_diff"] <= TOL and r["param_diff"] <= TOL, r


@pytest.mark.slow  # reads the child processes' results
def test_replicate_never_aliases_its_input():
    # A donating train step on the replicated state must leave the caller's params alive.
    assert single_host_results()["replicate_aliases"] is False


@pytest.mark.slow  # reads the child processes' results
def test_non_divisible_batch_raises_clear_error():
    msg = single_host_results()["error"]
    assert msg is not None
    assert "`batch['xs']`" in msg or "`batch['h0']" in msg or "`batch['lengths']`" in msg
    assert "13" in msg and "8 devices" in msg and "pad_batch" in msg


@pytest.mark.slow  # reads the child processes' results
def test_pad_and_weights_give_the_unpadded_gradient():
    r = single_host_results()["pad"]
    assert r["rows"] == 16 and r["weight_sum"] == 13.0
    assert r["loss_diff"] <= TOL and r["grad_diff"] <= TOL, r
    assert r["unweighted_grad_diff"] > 1e-3


@pytest.mark.slow  # the same child processes
def test_multi_host_two_processes():
    """Two processes with 4 CPU devices each, one 8-device mesh: each passes its local batch."""
    outs = [_result("multi0"), _result("multi1")]
    for i, r in enumerate(outs):
        assert r["process"] == i and r["mesh_size"] == 8 and r["global_shape"] == [16, T, INPUT_SIZE]
        assert r["local_rows"] == [8 * i + 2 * k for k in range(4)]  # process i holds rows 8i .. 8i+7
        assert r["loss_diff"] <= TOL and r["grad_diff"] <= TOL and r["param_diff"] <= TOL, r
        assert f"4 devices that process {i} holds" in r["error"] and "dimension of 3" in r["error"]


# --------------------------------------------------------------------------- in-process checks


def test_data_mesh_and_replicate_in_process():
    mesh = parallel.data_mesh(axis_name="batch")
    assert mesh.axis_names == ("batch",) and mesh.size == jax.device_count()
    params = jaxrnn.gru(4).init(jax.random.key(0), 3)
    rep = parallel.replicate(params, mesh)
    assert type(rep) is type(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(rep)):
        assert b.sharding.is_fully_replicated
        assert a.unsafe_buffer_pointer() != b.addressable_shards[0].data.unsafe_buffer_pointer()
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    sb = parallel.shard_batch({"xs": np.ones((3 * mesh.size, 2)), "scale": 2.0}, mesh, axis_name="batch")
    assert sb["xs"].sharding.spec == jax.sharding.PartitionSpec("batch") and sb["scale"].shape == ()


def test_argument_errors():
    mesh = parallel.data_mesh()
    with pytest.raises(ValueError, match="`axis_name` 'batch' is not an axis of `mesh`"):
        parallel.shard_batch({"xs": np.ones((2, 2))}, mesh, axis_name="batch")
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
        parallel.replicate({"w": np.ones(2)}, "mesh")
    with pytest.raises(ValueError, match="`devices` must hold at least one device"):
        parallel.data_mesh([])
    with pytest.raises(ValueError, match="`multiple` must be a positive int; got 0"):
        parallel.pad_batch({"xs": np.ones((2, 2))}, 0)
    with pytest.raises(ValueError, match=r"one leading \(batch\) dimension; got 2 for `batch\['a'\]`, 3 for"):
        parallel.pad_batch({"a": np.ones((2, 2)), "b": np.ones(3)}, 4)
    with pytest.raises(ValueError, match="is empty"):
        parallel.pad_batch({"a": np.ones((0, 2))}, 4)


@pytest.mark.parametrize("size,multiple,padded", [(5, 4, 8), (8, 4, 8), (1, 1, 1), (1, 3, 3), (9, 8, 16)])
def test_pad_batch_repeats_the_last_example(size, multiple, padded):
    xs = jnp.arange(size * 2, dtype=jnp.float32).reshape(size, 2)
    batch, w = parallel.pad_batch({"xs": xs, "ids": np.arange(size)}, multiple)
    assert batch["xs"].shape == (padded, 2) and isinstance(batch["xs"], jax.Array)
    assert isinstance(batch["ids"], np.ndarray) and w.dtype == np.float32
    np.testing.assert_array_equal(w, (np.arange(padded) < size).astype(np.float32))
    np.testing.assert_array_equal(batch["ids"], np.minimum(np.arange(padded), size - 1))
    np.testing.assert_array_equal(np.asarray(batch["xs"][size:]), np.broadcast_to(np.asarray(xs[-1]), (padded - size, 2)))


if __name__ == "__main__":
    if sys.argv[1] == "single":
        child_single_host()
    else:
        child_multi_host(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
