"""Training utilities: an optax train state, jitted train/eval steps, a fit loop,
masked sequence losses, truncated backpropagation through time, sampling from a
language model, and msgpack checkpoints.

The pieces are plain functions around one pytree, :class:`TrainState`::

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = jaxrnn.train.TrainState.create(params, tx)
    step = jaxrnn.train.make_train_step(loss_fn, tx)         # loss_fn(params, batch, key)
    state, history = jaxrnn.train.fit(state, step, data, key=key, num_steps=1000)
    jaxrnn.train.save_checkpoint("run.ckpt", state, config={"seed": 0})

Reproducibility: a train step hands ``loss_fn`` the key ``fold_in(key, state.step)``,
and :func:`fit` finds its place in the data from ``state.step``. A run restored from
a checkpoint and given the same ``key`` and data therefore continues exactly like
the uninterrupted run (bit for bit on the same machine).

The package is split by idea; every name is importable from ``jaxrnn.train`` as before:
``state`` (:class:`TrainState`), ``steps`` (train and eval steps), ``loop`` (:func:`fit`),
``losses`` (masked sequence losses and metrics), ``tbptt`` (truncated backpropagation through
time), ``generation`` (:func:`generate`) and ``checkpoints`` (msgpack files).
"""

from jaxrnn.train.checkpoints import restore_checkpoint, save_checkpoint
from jaxrnn.train.generation import generate
from jaxrnn.train.loop import fit
from jaxrnn.train.losses import accuracy, mean_squared_error, sequence_cross_entropy, sequence_mask, softmax_cross_entropy
from jaxrnn.train.state import TrainState
from jaxrnn.train.steps import make_eval_step, make_train_step
from jaxrnn.train.tbptt import make_tbptt_step, stop_gradient_state

__all__ = [
    "TrainState",
    "make_train_step",
    "make_eval_step",
    "fit",
    "sequence_mask",
    "softmax_cross_entropy",
    "sequence_cross_entropy",
    "mean_squared_error",
    "accuracy",
    "stop_gradient_state",
    "make_tbptt_step",
    "generate",
    "save_checkpoint",
    "restore_checkpoint",
]
