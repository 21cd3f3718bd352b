"""The cell contract: what :func:`jaxrnn.unroll` and :func:`jaxrnn.stack` need of a cell.

Everything that runs a sequence in jaxrnn keeps one convention, ``(params, h, xs) -> (h, ys)``,
and one step of a cell keeps it too: ``step(params, h, x) -> (h, y)``. A cell is either

* a **plain function** ``step(params, h, x) -> (h, y)``: ``h`` any pytree whose leaves have
  the batch dimensions of ``x`` in front (``[*batch, ...]``), ``x`` ``[*batch, *features]``,
  ``y`` an array ``[*batch, F]``. :func:`jaxrnn.unroll` runs it as it is (``h`` must then be
  given), with the part of ``step`` that depends on ``x`` but not on ``h`` (the input
  projection) hoisted out of the loop automatically (see :mod:`jaxrnn.hoist`); or
* an **object** that fits :class:`RecurrentCell`: ``step``, ``init``, ``initial_state`` and
  ``output_size``. Such a cell works everywhere a built-in one does: ``unroll`` starts it
  from its initial state when ``h`` is None, and ``jaxrnn.stack`` builds layers of it.

Optional capabilities, each a method the fast paths look for (a cell without them still
runs, correctly, on the generic path):

* ``project(params, xs) -> gx`` and ``update(params, h, gx_t) -> (h, y)``: the input
  projection for every step at once, then the recurrence on it. ``unroll`` calls
  ``project`` once on the whole sequence and scans ``update``;
* ``num_feature_axes``: how many trailing axes of ``x`` are features (default 1; 3 for a
  convolutional cell over ``[*batch, H, W, C]`` frames);
* ``parallel_unroll(...)``: evaluation in parallel over time, for ``unroll(..., mode=
  "associative" | "chunked")`` (cells whose recurrence is linear in ``h``);
* ``fused = True``: the built-in cells' fused path with its custom VJP (:mod:`jaxrnn.fused`).

``step`` is the source of truth. An optional method is used only where it is defined at
the class that defines ``step`` or below it (:func:`uses`): a subclass that overrides
``step`` alone runs its own ``step`` on the generic path, never the ``project``/``update``
pair, the parallel form, the Jacobian diagonal or the fused kernel it inherited. The fused
path needs more: the class itself must declare ``fused = True`` in its own body, so a
subclass that changes any equation of a built-in cell without vouching for the fused
kernel again runs on the generic path (:func:`fused`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp

__all__ = ["RecurrentCell", "FunctionCell", "as_cell"]


@runtime_checkable
class RecurrentCell(Protocol):
    """The contract of a cell object (see the module docstring for the optional methods).

    Example, a minimal Elman cell::

        @dataclasses.dataclass(frozen=True)
        class Elman:
            hidden_size: int

            @property
            def output_size(self):
                return self.hidden_size

            def init(self, key, input_size):
                k1, k2 = jax.random.split(key)
                return (jax.random.normal(k1, (input_size, self.hidden_size)) * 0.1,
                        jax.random.normal(k2, (self.hidden_size, self.hidden_size)) * 0.1)

            def initial_state(self, batch_shape=(), dtype=jnp.float32):
                return jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype)

            def step(self, params, h, x):
                w, u = params
                h = jnp.tanh(x @ w + h @ u)
                return h, h
    """

    output_size: int

    def step(self, params: Any, h: Any, x: jax.Array) -> tuple: ...

    def init(self, key: jax.Array, input_size: int) -> Any: ...

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: Any = jnp.float32) -> Any: ...


@dataclasses.dataclass(frozen=True)
class FunctionCell:
    """A plain ``step(params, h, x) -> (h, y)`` function seen as a cell: it has no
    ``init``, ``initial_state`` nor ``output_size``, so ``unroll`` needs ``h``."""

    fn: Callable
    num_feature_axes: int = 1

    def step(self, params, h, x):
        return self.fn(params, h, x)

    def __repr__(self) -> str:
        return f"FunctionCell({getattr(self.fn, '__qualname__', self.fn)!r})"


def as_cell(cell, name: str = "cell"):
    """``cell`` as an object with ``step``: a plain function is wrapped in a
    :class:`FunctionCell`; anything else must have a callable ``step``."""
    if callable(getattr(cell, "step", None)):
        return cell
    if callable(cell):
        return FunctionCell(cell)
    raise TypeError(
        f"`{name}` must be a cell: a function step(params, h, x) -> (h, y), or an object with a "
        f"`step` method (jaxrnn.rnn/gru/lstm, a jaxrnn.zoo cell, your own); got {type(cell).__name__}."
    )


def _definer(cls: type, name: str):
    """The class of ``cls``'s MRO whose body defines ``name``, or None."""
    for k in cls.__mro__:
        if name in vars(k):
            return k
    return None


def uses(cell, *methods: str) -> bool:
    """Whether ``cell``'s optional ``methods`` may stand in for its ``step``: each exists,
    and is defined at the class that defines ``step`` or at a subclass of it (or, for a
    cell whose methods are all instance attributes, nowhere in its class). A subclass
    that overrides ``step`` but not ``update`` gets False: its ``step`` is what counts."""
    if not all(callable(getattr(cell, m, None)) for m in methods):
        return False
    cls = type(cell)
    owner = _definer(cls, "step")
    for m in methods:
        d = _definer(cls, m)
        if owner is None or d is None:
            if owner is not d:
                return False
        elif not issubclass(d, owner):
            return False
    return True


def fused(cell) -> bool:
    """Whether ``cell`` runs on the built-in cells' fused path (:mod:`jaxrnn.fused`): its
    own class, not an ancestor, declares ``fused = True``. The fused kernel computes the
    built-in equations from the cell's ``pointwise``/``pointwise_bwd``, not from ``step``,
    so a subclass must vouch for it again after changing any of them."""
    return vars(type(cell)).get("fused", False) is True


def missing(cell, methods: Sequence[str]) -> list:
    """The names in ``methods`` that ``cell`` lacks."""
    return [m for m in methods if not hasattr(cell, m)]


def feature_axes(cell, num_feature_axes) -> int:
    """The number of trailing feature axes of ``x``: the argument if given, else the cell's
    ``num_feature_axes``, else 1."""
    n = getattr(cell, "num_feature_axes", 1) if num_feature_axes is None else num_feature_axes
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`num_feature_axes` must be a positive int; got {n!r}.")
    return n
