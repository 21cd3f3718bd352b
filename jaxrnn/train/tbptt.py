"""Truncated backpropagation through time: a train step that carries the state between chunks."""

from __future__ import annotations

from typing import Callable

import jax
import optax
from jax import lax

from jaxrnn.train.state import TrainState
from jaxrnn.train.steps import _split_loss, _step_key

Array = jax.Array


def stop_gradient_state(h):
    """``h`` with gradients blocked: ``jax.tree.map(lax.stop_gradient, h)``.

    Carry the state from one chunk of a long sequence to the next through this, so
    the backward pass stops at the chunk boundary (truncated BPTT).
    """
    return jax.tree.map(lax.stop_gradient, h)


def make_tbptt_step(loss_fn: Callable, tx: optax.GradientTransformation, *, jit: bool = True,
                    donate: bool = True) -> Callable:
    """Builds a truncated-BPTT step: ``step(state, h, chunk, key) -> (state, h, metrics)``.

    A long sequence is cut into chunks along time; the state ``h`` flows forward
    from chunk to chunk, gradients do not::

        h = None
        for chunk in chunks:            # e.g. xs[:, i*K:(i+1)*K]
            state, h, metrics = step(state, h, chunk, key)

    Args:
      loss_fn: ``loss_fn(params, h, chunk, key) -> (loss, (h_new, aux))`` where
        ``aux`` is a dict of scalars (or None); ``h`` may be None on the first chunk.
      tx: the optax transformation.
      jit, donate: as in :func:`make_train_step` (``h`` is not donated).

    Returns:
      ``step(state, h, chunk, key=None) -> (state, h_new, metrics)`` with ``h_new``
      passed through :func:`stop_gradient_state` and ``metrics`` as in
      :func:`make_train_step`. ``loss_fn`` gets ``fold_in(key, state.step)``.
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")

    def objective(params, h, chunk, key):
        out = loss_fn(params, h, chunk, key)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
            raise TypeError("`loss_fn` must return `(loss, (h_new, aux))` for truncated BPTT.")
        loss, (h_new, aux) = out
        loss, aux = _split_loss((loss, aux))
        return loss, (h_new, aux)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, h, chunk, key=None):
        (loss, (h_new, aux)), grads = grad_fn(state.params, h, chunk, _step_key(key, state.step))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(params, opt_state, state.step + 1), stop_gradient_state(h_new), metrics

    if jit:
        step = jax.jit(step, donate_argnums=(0,) if donate else ())
    return step


# =============================================================================== generation
