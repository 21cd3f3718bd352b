"""What :mod:`jaxrnn.nnx` and :mod:`jaxrnn.linen` share: checking a net and running it.

A *net* is either a cell object (``step``, ``init``, ``initial_state``, ``output_size``;
not callable), run with :func:`jaxrnn.unroll`, or a network (callable as
``net(params, h, xs, *, seq_lengths=None, key=None, ...)`` with ``init``), such as
:func:`jaxrnn.stack`. The modules call these functions as they are: they add no
computation of their own.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxrnn.scan import unroll


def check_net(net: Any, name: str = "net") -> None:
    """Raises a TypeError unless ``net`` is a cell object or a network with ``init``."""
    if not hasattr(net, "init"):
        raise TypeError(
            f"`{name}` must be a jaxrnn cell or network with `init(key, input_size)` (e.g. jaxrnn.lstm(64) "
            f"or jaxrnn.stack(...)); got {type(net).__name__}, which has no `init`."
        )
    if not callable(net) and not hasattr(net, "step"):
        raise TypeError(
            f"`{name}` must be a cell object (with `step(params, h, x)`) or a network callable as "
            f"`net(params, h, xs, ...)`; got {type(net).__name__}, which has neither."
        )


def is_network(net: Any) -> bool:
    """True for a network run as ``net(params, h, xs, ...)``, False for a cell run by ``unroll``."""
    return callable(net)


def dropout_rate(net: Any) -> float:
    """The dropout probability a network declares (0 for cells and nets without one)."""
    return float(getattr(net, "dropout", 0.0) or 0.0) if is_network(net) else 0.0


def run(net: Any, params, h, xs, *, seq_lengths=None, resets=None, key: Optional[jax.Array] = None,
        **options):
    """``(h, ys)`` of ``net`` over ``xs``: ``net(params, h, xs, ...)`` for a network,
    ``jaxrnn.unroll(net, params, h, xs, ...)`` for a cell. ``resets`` is passed on only
    when given; ``key`` (dropout) only to a network."""
    if resets is not None:
        options["resets"] = resets
    if is_network(net):
        return net(params, h, xs, seq_lengths=seq_lengths, key=key, **options)
    return unroll(net, params, h, xs, seq_lengths=seq_lengths, **options)


def state_dtype(params) -> jnp.dtype:
    """Zero-state dtype for params alone (no input seen yet): float64 if any leaf is
    float64 (with ``jax_enable_x64``), else float32, as jaxrnn's cells choose."""
    leaves = jax.tree.leaves(params)
    wide = any(jnp.dtype(leaf.dtype) == jnp.float64 for leaf in leaves)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def feature_axes(cell: Any) -> int:
    """A cell's ``num_feature_axes`` (1 unless it says otherwise, e.g. 3 for conv cells)."""
    return int(getattr(cell, "num_feature_axes", 1))
