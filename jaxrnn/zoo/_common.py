"""Helpers shared by the zoo cells: argument checks, initialisers, the sigmoid.

Not public: each zoo cell's module is self-explanatory with these names.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn.cells import _sigmoid
import numpy as np

Array = jax.Array

INITS = ("uniform", "orthogonal")


def check_positive_int(value, name: str) -> int:
    """``value`` as an int, or a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


MATRIX_MODES = ("sequential", "associative", "chunked")


def matrix_mode(mode, cell) -> str:
    """The form a matrix-state cell (Gated DeltaNet, DeltaNet, GLA, Mamba-2, mLSTM) runs for
    ``mode``: ``"sequential"`` or ``"chunked"``. ``"associative"`` is taken as ``"chunked"``,
    their only parallel form, so that a stack mixing them with diagonal cells (minGRU, LRU)
    runs in either parallel mode."""
    if mode not in MATRIX_MODES:
        raise ValueError(f"`mode` must be one of {MATRIX_MODES} for {cell!r}; got {mode!r}.")
    return "sequential" if mode == "sequential" else "chunked"


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}; got {init!r}.")
    return init


def check_forget_bias(forget_bias) -> Optional[float]:
    if forget_bias is None:
        return None
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float, np.integer, np.floating)):
        raise TypeError(f"`forget_bias` must be a number or None; got {type(forget_bias).__name__}.")
    return float(forget_bias)


def sigmoid(x: Array) -> Array:
    """The logistic sigmoid, exact over the float32 range (see :func:`jaxrnn.cells._sigmoid`)."""
    return _sigmoid(x)


def uniform(key: Array, shapes: list, bound: float, dtype) -> list:
    """Arrays of ``shapes``, every entry ``U(-bound, bound)``: PyTorch's RNN initialisation
    with ``bound = 1/sqrt(H)``. One draw sliced up: each distinct random call compiles its
    own program, which dominates a small cell's ``init`` on a CPU."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.uniform(key, (sum(sizes),), dtype, -bound, bound)
    offsets = np.cumsum([0] + sizes)
    return [flat[a:b].reshape(shape) for a, b, shape in zip(offsets[:-1], offsets[1:], shapes)]


def gate_blocks(key: Array, num_gates: int, hidden_size: int, fan: int, dtype, *, recurrent: bool) -> Array:
    """A ``[num_gates * H, fan]`` weight with the gates stacked along axis 0, each gate's
    ``[H, fan]`` block orthogonal for recurrent weights (``recurrent=True``), Glorot-uniform
    for input weights (Keras' defaults, the ``"orthogonal"`` scheme)."""
    make = jax.nn.initializers.orthogonal() if recurrent else jax.nn.initializers.glorot_uniform()
    keys = jax.random.split(key, num_gates)
    return jnp.concatenate([make(k, (hidden_size, fan), dtype) for k in keys], axis=0)


def check_array(value, name: str, shape: tuple) -> None:
    """A float array of exactly ``shape``, or an error naming ``name``."""
    got = getattr(value, "shape", None)
    if got is None or not hasattr(value, "dtype"):
        raise TypeError(f"`{name}` must be an array of shape {list(shape)}; got {type(value).__name__}.")
    if tuple(got) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {list(shape)}; got {tuple(got)}.")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {value.dtype}.")


def check_params_type(params, ptype: type, cell, name: str = "params") -> None:
    if not isinstance(params, ptype):
        raise TypeError(f"`{name}` must be {ptype.__name__} for a {cell!r} cell; got {type(params).__name__}.")


def check_input(x, input_size: int, *, name: str = "x", feature_axes: int = 1) -> Array:
    """``x`` as a float array ``[*batch, ..., input_size]`` with at least ``feature_axes`` axes."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = jnp.asarray(x)
        except TypeError:
            raise TypeError(f"`{name}` must be an array; got {type(x).__name__}.") from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {x.dtype}.")
    if x.ndim < feature_axes:
        raise ValueError(f"`{name}` must have at least {feature_axes} axes; got shape {tuple(x.shape)}.")
    if x.shape[-1] != input_size:
        raise ValueError(
            f"`{name}` must have feature size {input_size} (its last axis); got shape {tuple(x.shape)}."
        )
    return jnp.asarray(x)


def check_state_parts(parts, batch_shape: tuple, name: str = "h") -> None:
    """``parts``: ``(label, array, trailing shape)`` triples checked against ``batch_shape``."""
    for label, arr, trailing in parts:
        want = tuple(batch_shape) + tuple(trailing)
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise TypeError(f"`{label}` must be an array of shape {list(want)}; got {type(arr).__name__}.")
        if tuple(arr.shape) != want:
            raise ValueError(f"`{label}` must have shape {list(want)}; got {tuple(arr.shape)}.")
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"`{label}` must be a floating-point array; got dtype {arr.dtype}.")


def zero_state_dtype(x: Array, params) -> jnp.dtype:
    """The dtype of the zero state for ``h=None``: float64 where the input or any parameter is
    float64 (with ``jax_enable_x64``), float32 otherwise (as the built-in cells)."""
    dtypes = [x.dtype] + [leaf.dtype for leaf in jax.tree.leaves(params)]
    return jnp.dtype(jnp.float64 if any(jnp.dtype(d) == jnp.float64 for d in dtypes) else jnp.float32)
