"""The train state: everything that changes during training, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      params: the model's params (any pytree).
      opt_state: the optax optimizer state for ``params``.
      step: number of optimizer updates applied so far, an int32 scalar array.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> state = TrainState.create({"w": jnp.zeros(3)}, optax.sgd(0.1))
      >>> int(state.step)
      0
    """

    params: Any
    opt_state: Any
    step: Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        """A fresh state: ``tx.init(params)`` and step 0."""
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(f"`tx` must be an optax.GradientTransformation; got {type(tx).__name__}.")
        return cls(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
