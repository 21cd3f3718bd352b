"""Jitted train and eval steps around a loss function, on one device or sharded over a mesh."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import optax

from jaxrnn.train.state import TrainState

Array = jax.Array


def _split_loss(out, name: str = "loss_fn"):
    """``loss`` or ``(loss, aux_dict)`` -> ``(loss, aux_dict)``, checked at trace time."""
    if isinstance(out, tuple) and len(out) == 2:
        loss, aux = out
    else:
        loss, aux = out, None
    aux = {} if aux is None else aux
    _check_scalar(loss, f"the loss returned by `{name}`")
    if not isinstance(aux, Mapping):
        raise TypeError(f"`{name}` must return `loss` or `(loss, aux)` with `aux` a dict of scalars; "
                        f"got aux of type {type(aux).__name__}.")
    for k, v in aux.items():
        if k in ("loss", "grad_norm"):
            raise ValueError(f"`{name}`'s aux dict must not use the reserved key {k!r}.")
        _check_scalar(v, f"aux[{k!r}] returned by `{name}`")
    return loss, dict(aux)


def _check_scalar(x, what: str):
    shape = getattr(x, "shape", None)
    if shape is None and not isinstance(x, (int, float)):
        raise TypeError(f"{what} must be a scalar; got {type(x).__name__}.")
    if shape is not None and tuple(shape) != ():
        raise ValueError(f"{what} must be a scalar; got shape {tuple(shape)}.")


def _step_key(key, step):
    return None if key is None else jax.random.fold_in(key, step)


def _with_mesh(fn, mesh, batch_argnum: int):
    """Wraps ``fn`` so that its batch is sharded over ``mesh``'s "data" axis."""
    if mesh is None:
        return fn

    def wrapped(*args):
        from jaxrnn import distributed  # imported lazily: optional module

        args = list(args)
        args[batch_argnum] = distributed.shard_batch(args[batch_argnum], mesh)
        return fn(*args)

    wrapped.__wrapped__ = fn
    wrapped.__doc__ = fn.__doc__
    return wrapped


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, jit: bool = True,
                    donate: bool = True, mesh=None) -> Callable:
    """Builds ``step(state, batch, key) -> (state, metrics)``: one optimizer update.

    Gradient clipping, schedules and weight decay belong to the optax chain, e.g.
    ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` or ``-> (loss, aux)`` with
        ``aux`` a dict of scalar metrics. ``key`` is ``fold_in(key, state.step)``, a
        fresh key for every step even when ``step`` is always given the same key
        (None when ``step`` gets None).
      tx: the optax transformation; ``state.opt_state`` must come from ``tx.init``.
      jit: compile the step with :func:`jax.jit`.
      donate: with ``jit``, donate the input ``state``'s buffers to the output: the
        state passed in, and arrays it shares (such as the ``params`` given to
        :meth:`TrainState.create`), must not be used again. :func:`fit` copies the
        state first, so its caller's arrays survive.
      mesh: an optional :class:`jax.sharding.Mesh`; each batch is sharded over its
        ``"data"`` axis with :func:`jaxrnn.distributed.shard_batch` (the state should be
        replicated, see :func:`jaxrnn.distributed.replicate`; :func:`fit` does it).

    Returns:
      ``step(state, batch, key=None) -> (state, metrics)``, ``metrics`` a dict of
      scalars ``{"loss", "grad_norm" (before clipping), **aux}``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> loss_fn = lambda p, batch, key: jnp.mean((batch @ p - 1.0) ** 2)
      >>> tx = optax.sgd(0.1)
      >>> step = make_train_step(loss_fn, tx)
      >>> state, metrics = step(TrainState.create(jnp.zeros(2), tx), jnp.ones((4, 2)))
      >>> sorted(metrics), int(state.step)
      (['grad_norm', 'loss'], 1)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(f"`tx` must be an optax.GradientTransformation; got {type(tx).__name__}.")

    def objective(params, batch, key):
        return _split_loss(loss_fn(params, batch, key))

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, batch, key=None):
        (loss, aux), grads = grad_fn(state.params, batch, _step_key(key, state.step))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(params, opt_state, state.step + 1), metrics

    if jit:
        step = jax.jit(step, donate_argnums=(0,) if donate else ())
    return _with_mesh(step, mesh, batch_argnum=1)


def make_eval_step(loss_fn: Callable, *, jit: bool = True, mesh=None) -> Callable:
    """Builds ``eval_step(params, batch) -> metrics`` from the training ``loss_fn``.

    ``loss_fn(params, batch, None)`` is called (``key=None``: no dropout); the result
    is ``{"loss", **aux}``.

    Example:
      >>> import jax.numpy as jnp
      >>> ev = make_eval_step(lambda p, b, key: (jnp.sum(p * b), {"n": jnp.float32(b.size)}))
      >>> {k: float(v) for k, v in ev(jnp.ones(2), jnp.ones(2)).items()}
      {'loss': 2.0, 'n': 2.0}
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")

    def eval_step(params, batch):
        loss, aux = _split_loss(loss_fn(params, batch, None))
        return {"loss": loss, **aux}

    if jit:
        eval_step = jax.jit(eval_step)
    return _with_mesh(eval_step, mesh, batch_argnum=1)
