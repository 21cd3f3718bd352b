"""Orbax checkpoints (the multi-host route): a jaxrnn ``TrainState`` and a flax NNX model
holding jaxrnn params round-trip through ``orbax.checkpoint`` as they are, and training
resumed from the restored copy continues exactly like the original.

orbax-checkpoint is a dependency of flax, so these tests normally run; they skip cleanly
where it is missing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ocp = pytest.importorskip("orbax.checkpoint")
nnx = pytest.importorskip("flax.nnx")

import jaxrnn  # noqa: E402
import jaxrnn.nnx  # noqa: E402
from jaxrnn import train  # noqa: E402

B, T, I = 3, 5, 2


def leaves_equal(a, b):
    la, da = jax.tree.flatten(a)
    lb, db = jax.tree.flatten(b)
    assert da == db, f"structures differ:\n{da}\n{db}"
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    lens = jnp.asarray([T, 2, 0], jnp.int32)       # ragged, with a zero-length sequence
    ys = jnp.asarray(rng.standard_normal((B, T, 2)), jnp.float32)   # the NNX model's output size
    return xs, ys, lens


# ------------------------------------------------------------------------------ TrainState

NET = jaxrnn.stack([jaxrnn.lstm(3, proj_size=2, bias=False), jaxrnn.gru(4)], bidirectional=True, head=2)
TX = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))


@jax.jit
def advance(state):
    """One adamw update with made-up gradients (cheap to compile; the state is what matters)."""
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p) + 0.1, state.params)
    updates, opt_state = TX.update(grads, state.opt_state, state.params)
    return train.TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)


@jax.jit
def fresh_state(key):
    return train.TrainState.create(NET.init(key, I), TX)


@pytest.mark.slow
def test_train_state_round_trips_through_orbax(tmp_path):
    """None leaves (no bias), NamedTuples, a bidirectional stack and adamw's state."""
    state = advance(advance(fresh_state(jax.random.key(0))))

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(fresh_state, jax.random.key(1)))
        concrete = checkpointer.restore(tmp_path / "state", fresh_state(jax.random.key(1)))  # a concrete target

    assert type(restored) is train.TrainState and int(restored.step) == 2
    leaves_equal(restored, state)
    leaves_equal(concrete, state)
    leaves_equal(advance(restored), advance(state))       # the optimizer goes on from the same moments


# ------------------------------------------------------------------------------ NNX

def make_model(seed):
    net = jaxrnn.stack([jaxrnn.gru(3), jaxrnn.lstm(2)], dropout=0.5)
    return jaxrnn.nnx.RNN(net, I, rngs=nnx.Rngs(seed, dropout=seed + 1))


def make_optimizer(model):
    return nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


@nnx.jit
def nnx_train_step(model, optimizer, b):
    xs, ys, lens = b

    def loss(model):
        _, out = model(xs, seq_lengths=lens)              # dropout from the model's stream
        return train.mean_squared_error(out, ys, lens)

    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value


@pytest.mark.slow
def test_nnx_model_and_optimizer_round_trip_through_orbax(tmp_path):
    """``nnx.state`` of the model (jaxrnn weights and the dropout stream) and of its
    ``nnx.Optimizer``, saved with orbax and restored into a model built with other seeds."""
    model = make_model(0)
    optimizer = make_optimizer(model)
    nnx_train_step(model, optimizer, batch(0))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "nnx", {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
        checkpointer.wait_until_finished()

        other = make_model(7)
        other_optimizer = make_optimizer(other)
        assert not np.array_equal(other.params.layers[0].w_ih, model.params.layers[0].w_ih)
        abstract = nnx.eval_shape(lambda: make_model(7))
        target = {"model": nnx.state(abstract),
                  "optimizer": nnx.state(nnx.eval_shape(lambda: make_optimizer(make_model(7))))}
        restored = checkpointer.restore(tmp_path / "nnx", target)
    nnx.update(other, restored["model"])
    nnx.update(other_optimizer, restored["optimizer"])

    leaves_equal(other.params, model.params)
    leaves_equal(nnx.state(other_optimizer), nnx.state(optimizer))
    # Training goes on identically: same dropout masks (the stream was restored), same updates.
    for i in (1, 2):
        assert float(nnx_train_step(other, other_optimizer, batch(i))) == float(nnx_train_step(model, optimizer, batch(i)))
    leaves_equal(other.params, model.params)
