"""Flax NNX modules over jaxrnn cells and networks.

Two modules, both holding a jaxrnn params pytree (PyTorch layout: ``w_ih``, ``w_hh``,
``b_ih``, ``b_hh``, ...) in the attribute ``weights`` with every array leaf an
``nnx.Param``, so that ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``nnx.grad``,
``nnx.jit``, ``nnx.split``/``nnx.merge`` and ``nnx.state`` see them like any flax weight
(state paths read ``weights.layers.0.forward.w_ih``):

* :class:`RNN` runs a whole sequence, ``h, ys = rnn(xs, h=None, *, seq_lengths=None,
  resets=None)``: a cell through :func:`jaxrnn.unroll`, a network (:func:`jaxrnn.stack`
  or any object callable as ``net(params, h, xs, ...)``) by calling it. Dropout between
  a stack's layers draws its key from the module's ``'dropout'`` stream in training and
  is off after ``model.eval()``;
* :class:`Cell` is a jaxrnn cell as a flax ``nnx.RNNCellBase`` (``__call__(carry, x)``,
  ``initialize_carry``, ``num_feature_axes``), for code built on ``nnx.RNN`` and
  ``nnx.Bidirectional``. The carry is jaxrnn's state (``LSTMState(h, c)`` for an LSTM;
  flax's own LSTM cells use ``(c, h)``).

The modules compute nothing themselves: ``rnn.params`` is the plain params pytree (the
``nnx.Param`` values, no copy of the computation), and the call is the functional call
on it::

    rnn(xs, h)  ==  net(rnn.params, h, xs)              # a network
    rnn(xs, h)  ==  jaxrnn.unroll(cell, rnn.params, h, xs)   # a cell

:meth:`RNN.from_params` wraps existing functional params (from ``net.init``,
``jaxrnn.from_torch``, a checkpoint) and ``rnn.params = new`` writes them back.

Flax APIs used: ``nnx.Module``, ``nnx.Param``, ``nnx.Variable`` (read with
``get_value()``, or ``.value`` where that is missing), ``nnx.Rngs`` (its ``params`` and
``dropout`` streams), ``nnx.RNNCellBase``, ``Module.eval()/train()`` (which set
``deterministic``) and, where the installed flax has it, ``nnx.data`` (flax 0.12 wants
pytree attributes holding Variables marked as data).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from flax import nnx

from jaxrnn import _flax_common as common

__all__ = ["RNN", "Cell"]

# flax >= 0.12 refuses a pytree of Variables in a plain attribute unless marked as data.
_data = getattr(nnx, "data", lambda value: value)
# nnx.RNNCellBase (the contract of nnx.RNN) is younger than NNX itself.
_CellBase = getattr(nnx, "RNNCellBase", nnx.Module)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _get_value(variable):
    # ``get_value`` where it exists (flax >= 0.12 deprecates ``.value``), ``.value`` before.
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def _values(weights):
    """The arrays inside a pytree of ``nnx.Param`` (traced ones under ``nnx.jit``)."""
    return jax.tree.map(_get_value, weights, is_leaf=_is_variable)


def _set_value(variable, value) -> None:
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:
        variable.value = value


def _build_params(net, in_features, rngs, params, cls_name: str):
    common.check_net(net)
    if params is None:
        if in_features is None or rngs is None:
            raise TypeError(
                f"`{cls_name}` needs `in_features` and `rngs` to initialise its params "
                f"(or `params=` to wrap existing ones); got in_features={in_features!r}, rngs={rngs!r}."
            )
        params = net.init(rngs.params(), in_features)
    elif hasattr(net, "check_params"):
        net.check_params(params)
    return jax.tree.map(nnx.Param, params)


def _replace_values(weights, params) -> None:
    got, want = jax.tree.structure(params), jax.tree.structure(weights, is_leaf=_is_variable)
    if got != want:
        raise ValueError(f"`params` must have the module's structure {want}; got {got}.")
    for variable, value in zip(jax.tree.leaves(weights, is_leaf=_is_variable), jax.tree.leaves(params)):
        shape = tuple(_get_value(variable).shape)
        if shape != tuple(value.shape):
            raise ValueError(f"`params` leaf must have shape {shape}; got {tuple(value.shape)}.")
        _set_value(variable, value)


class RNN(nnx.Module):
    """A jaxrnn cell or network as a flax NNX module over whole sequences.

    Args:
      net: a cell object (``jaxrnn.lstm(64)``, a custom cell with ``step``/``init``/
        ``initial_state``/``output_size``), run with :func:`jaxrnn.unroll`; or a
        network callable as ``net(params, h, xs, *, seq_lengths, key, ...)`` with
        ``init`` (``jaxrnn.stack(...)``).
      in_features: the input size ``I`` (the last axis of ``xs``).
      rngs: ``nnx.Rngs``; its ``params`` stream initialises the weights, its
        ``dropout`` stream (if the network has ``dropout > 0``) draws the dropout key
        at every call in training.
      params: existing functional params to hold instead of initialising new ones
        (see :meth:`from_params`).
      deterministic: turns dropout off (``model.eval()`` sets it, ``model.train()``
        clears it).
      rng_collection: the name of the dropout stream.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from flax import nnx
      >>> net = jaxrnn.stack(jaxrnn.gru(8), num_layers=2, dropout=0.5)
      >>> rnn = jaxrnn.nnx.RNN(net, 3, rngs=nnx.Rngs(0, dropout=1))
      >>> h, ys = rnn(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
      >>> ys.shape, len(h)
      ((2, 5, 8), 2)
      >>> rnn.eval()   # no dropout: the functional call on rnn.params
      >>> bool(jnp.allclose(rnn(jnp.ones((2, 5, 3)))[1], net(rnn.params, None, jnp.ones((2, 5, 3)))[1]))
      True
    """

    def __init__(self, net: Any, in_features: Optional[int] = None, *, rngs: Optional[nnx.Rngs] = None,
                 params: Any = None, deterministic: bool = False, rng_collection: str = "dropout"):
        self.net = net
        self.in_features = in_features
        self.weights = _data(_build_params(net, in_features, rngs, params, "RNN"))
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if common.dropout_rate(net) > 0 and rngs is not None:
            self.rngs = _data(rngs[rng_collection])
        else:
            self.rngs = _data(None)

    @classmethod
    def from_params(cls, net: Any, params: Any, *, rngs: Optional[nnx.Rngs] = None, **kwargs) -> "RNN":
        """Wraps existing functional params (no copy of the computation).

        ``rngs`` is only needed for dropout in training.
        """
        return cls(net, rngs=rngs, params=params, **kwargs)

    @property
    def params(self):
        """The functional params pytree: ``net(rnn.params, h, xs)`` is ``rnn(xs, h)``."""
        return _values(self.weights)

    def __setattr__(self, name, value):
        # ``rnn.params = new`` writes into the Params (flax's Pytree.__setattr__ would
        # otherwise bypass the property).
        if name == "params":
            _replace_values(self.weights, value)
        else:
            super().__setattr__(name, value)

    def initial_state(self, batch_shape=(), dtype=None):
        """The net's zero state for ``batch_shape`` (float32, float64 with float64 params)."""
        return self.net.initial_state(tuple(batch_shape), dtype or common.state_dtype(self.params))

    def __call__(self, xs, h=None, *, seq_lengths=None, resets=None, key: Optional[jax.Array] = None,
                 deterministic: Optional[bool] = None, **options):
        """Runs the net: ``(h, ys)``.

        Args:
          xs: ``[*batch, T, I]`` (``[T, *batch, I]`` with ``time_major=True``).
          h: the initial state (the net's layout), or None for zeros.
          seq_lengths: optional ``[*batch]`` lengths, as in :func:`jaxrnn.unroll`.
          resets: optional boolean segment starts ``[*batch, T]``, as in
            :func:`jaxrnn.unroll`.
          key: a dropout key overriding the module's ``dropout`` stream.
          deterministic: overrides the module's ``deterministic`` for this call.
          **options: passed on to the net (``time_major``, ``unroll``, ``remat``, ...).

        Returns:
          ``(h, ys)``, as the functional call returns them.

        Raises:
          ValueError: dropout is on in training and the module has no dropout stream.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        if key is None and not deterministic and common.dropout_rate(self.net) > 0:
            if self.rngs is None:
                raise ValueError(
                    f"`rngs` must have a {self.rng_collection!r} stream for dropout in training "
                    f"(`RNN(..., rngs=nnx.Rngs(0, {self.rng_collection}=1))`), or pass `key=`, or call "
                    f"`model.eval()`; the module was built without one."
                )
            key = self.rngs()
        return common.run(self.net, self.params, h, xs, seq_lengths=seq_lengths, resets=resets,
                          key=None if deterministic else key, **options)


class Cell(_CellBase):
    """A jaxrnn cell as a flax ``nnx.RNNCellBase``, for ``nnx.RNN`` and ``nnx.Bidirectional``.

    ``cell(carry, x) == jaxrnn_cell.step(cell.params, carry, x)``; the carry is jaxrnn's
    state (``LSTMState(h, c)`` for an LSTM).

    Args:
      cell: a jaxrnn cell object (built-in or custom).
      in_features: the input size (the last axis of ``x``).
      rngs: ``nnx.Rngs`` whose ``params`` stream initialises the weights.
      params: existing params to hold instead.

    Example:
      >>> import jax.numpy as jnp, jaxrnn
      >>> from flax import nnx
      >>> layer = nnx.RNN(jaxrnn.nnx.Cell(jaxrnn.lstm(8), 3, rngs=nnx.Rngs(0)))
      >>> layer(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    def __init__(self, cell: Any, in_features: Optional[int] = None, *, rngs: Optional[nnx.Rngs] = None,
                 params: Any = None):
        if common.is_network(cell) or not hasattr(cell, "step"):
            raise TypeError(
                f"`cell` must be a jaxrnn cell object with `step` (for a stack use jaxrnn.nnx.RNN); "
                f"got {type(cell).__name__}."
            )
        self.cell = cell
        self.in_features = in_features
        self.weights = _data(_build_params(cell, in_features, rngs, params, "Cell"))

    @property
    def params(self):
        """The cell's functional params (the ``nnx.Param`` values)."""
        return _values(self.weights)

    def __setattr__(self, name, value):
        if name == "params":
            _replace_values(self.weights, value)
        else:
            super().__setattr__(name, value)

    def __call__(self, carry, inputs):
        """One step, ``(carry, x) -> (carry, y)``: the cell's ``step``."""
        return self.cell.step(self.params, carry, inputs)

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        """The cell's zero state for inputs of ``input_shape`` (``[*batch, *features]``).

        ``carry_init`` (a flax initializer) replaces the zeros leaf by leaf, with keys
        from ``rngs``' ``carry`` stream.
        """
        batch_shape = tuple(input_shape)[: len(input_shape) - self.num_feature_axes]
        state = self.cell.initial_state(batch_shape, common.state_dtype(self.params))
        if carry_init is None:
            return state
        if isinstance(rngs, nnx.Rngs):
            rngs = rngs.carry
        if rngs is None:
            raise ValueError("`rngs` must be given with `carry_init`.")
        return jax.tree.map(lambda z: carry_init(rngs(), z.shape, z.dtype), state)

    @property
    def num_feature_axes(self) -> int:
        return common.feature_axes(self.cell)
