"""Flax linen modules over jaxrnn cells and networks.

The linen twins of :mod:`jaxrnn.nnx`. Each module holds the jaxrnn params pytree
(PyTorch layout) as one linen parameter, ``"weights"``, created by the net's own
``init`` from the ``params`` rng and the input's last axis, so
``variables["params"]["weights"]`` *is* the functional params:

* :class:`RNN`, ``h, ys = RNN(net).apply(variables, xs, h=None, *, seq_lengths=None,
  resets=None)``: a cell through :func:`jaxrnn.unroll`, a network (:func:`jaxrnn.stack`
  or any object callable as ``net(params, h, xs, ...)``) by calling it. Dropout between
  a stack's layers takes its key from the ``'dropout'`` rng unless ``deterministic``;
* :class:`Cell`, a jaxrnn cell as a linen ``nn.RNNCellBase`` (``__call__(carry, x)``,
  ``initialize_carry(rng, input_shape)``, ``num_feature_axes``) for ``nn.RNN`` and
  ``nn.Bidirectional``; its carry is jaxrnn's state (``LSTMState(h, c)`` for an LSTM).

Nothing is computed by the modules themselves::

    RNN(net).apply({"params": {"weights": p}}, xs, h)  ==  net(p, h, xs)

so :func:`variables` and :func:`params_of` move params in and out without conversion.
Flax APIs used: ``nn.Module``, ``nn.compact``, ``self.param``, ``self.make_rng``,
``nn.merge_param``, ``nn.nowrap`` and ``nn.RNNCellBase``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from flax import linen as nn

from jaxrnn import _flax_common as common

__all__ = ["RNN", "Cell", "variables", "params_of"]

PARAM_NAME = "weights"


def variables(params) -> dict:
    """Functional jaxrnn params as the variables of :class:`RNN` or :class:`Cell`:
    ``{"params": {"weights": params}}`` (no copy)."""
    return {"params": {PARAM_NAME: params}}


def params_of(variables_or_params) -> Any:
    """The functional jaxrnn params inside a module's variables (or its ``"params"``
    collection)."""
    tree = variables_or_params
    if "params" in tree and PARAM_NAME not in tree:
        tree = tree["params"]
    if PARAM_NAME not in tree:
        raise ValueError(
            f"`variables_or_params` must hold a {PARAM_NAME!r} entry (a jaxrnn.linen module's variables); "
            f"got keys {sorted(tree)}."
        )
    return tree[PARAM_NAME]


class RNN(nn.Module):
    """A jaxrnn cell or network as a flax linen module over whole sequences.

    Attributes:
      net: a cell object (``jaxrnn.lstm(64)``, a custom cell), run with
        :func:`jaxrnn.unroll`; or a network callable as ``net(params, h, xs, *,
        seq_lengths, key, ...)`` with ``init`` (``jaxrnn.stack(...)``).
      deterministic: turns dropout off; may also be given at call time.
      rng_collection: the rng stream dropout keys come from.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> net = jaxrnn.stack(jaxrnn.lstm(8), num_layers=2, dropout=0.5)
      >>> model = jaxrnn.linen.RNN(net)
      >>> xs = jnp.ones((2, 5, 3))
      >>> variables = model.init(jax.random.key(0), xs, deterministic=True)
      >>> h, ys = model.apply(variables, xs, deterministic=True)
      >>> bool(jnp.allclose(ys, net(jaxrnn.linen.params_of(variables), None, xs)[1]))
      True
      >>> h, ys = model.apply(variables, xs, rngs={"dropout": jax.random.key(1)}, deterministic=False)
    """

    net: Any
    deterministic: Optional[bool] = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, xs, h=None, *, seq_lengths=None, resets=None, key: Optional[jax.Array] = None,
                 deterministic: Optional[bool] = None, **options):
        """Runs the net: ``(h, ys)``.

        Args:
          xs: ``[*batch, T, I]`` (``[T, *batch, I]`` with ``time_major=True``).
          h: the initial state (the net's layout), or None for zeros.
          seq_lengths: optional ``[*batch]`` lengths, as in :func:`jaxrnn.unroll`.
          resets: optional boolean segment starts, as in :func:`jaxrnn.unroll`.
          key: a dropout key overriding the ``'dropout'`` rng.
          deterministic: overrides the attribute (one of them must be set when the
            net has dropout).
          **options: passed on to the net (``time_major``, ``unroll``, ``remat``, ...).
        """
        common.check_net(self.net)
        params = self.param(PARAM_NAME, lambda rng: self.net.init(rng, xs.shape[-1]))
        if common.dropout_rate(self.net) > 0:
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            if deterministic:
                key = None
            elif key is None:
                key = self.make_rng(self.rng_collection)
        return common.run(self.net, params, h, xs, seq_lengths=seq_lengths, resets=resets, key=key, **options)


class Cell(nn.RNNCellBase):
    """A jaxrnn cell as a flax linen ``nn.RNNCellBase``, for ``nn.RNN`` / ``nn.Bidirectional``.

    ``Cell(c).apply(v, carry, x) == c.step(v["params"]["weights"], carry, x)``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from flax import linen as nn
      >>> layer = nn.RNN(jaxrnn.linen.Cell(jaxrnn.gru(8)))
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> layer.apply(variables, jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    cell: Any

    @nn.compact
    def __call__(self, carry, inputs):
        """One step, ``(carry, x) -> (carry, y)``: the cell's ``step``."""
        if common.is_network(self.cell) or not hasattr(self.cell, "step"):
            raise TypeError(
                f"`cell` must be a jaxrnn cell object with `step` (for a stack use jaxrnn.linen.RNN); "
                f"got {type(self.cell).__name__}."
            )
        params = self.param(PARAM_NAME, lambda rng: self.cell.init(rng, inputs.shape[-1]))
        return self.cell.step(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        """The cell's float32 zero state for inputs of ``input_shape`` (``rng`` unused)."""
        del rng
        batch_shape = tuple(input_shape)[: len(input_shape) - self.num_feature_axes]
        return self.cell.initial_state(batch_shape)

    @property
    def num_feature_axes(self) -> int:
        return common.feature_axes(self.cell)
