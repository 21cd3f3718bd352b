"""Plain Python loops over cells and stacks: the independent reference for tests.

:func:`jaxrnn.unroll` and :class:`jaxrnn.Stack` run a ``lax.scan`` with the input
projection hoisted out of the loop and a fused custom VJP. The functions here do none
of that: they call :meth:`Cell.step` once per time step in a Python ``for`` loop and
mask with ``jnp.where``, exactly as the pseudo-code in :mod:`jaxrnn.scan` reads::

    for t in range(T):                       # reversed(range(T)) if reverse
        h_new, y = cell.step(params, h, xs[t])
        h = where(t < seq_lengths, h_new, h)
        ys[t] = where(t < seq_lengths, y, 0)

so they are slow (the trace grows with ``T``) but obviously right, and gradients come
from plain autodiff of the loop. Use them to check the fast paths, never for training.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn.cells import Cell, state_dtype
from jaxrnn.layers import Bidirectional, Stack, StackParams, dense

Array = jax.Array

__all__ = ["python_unroll", "python_stack"]


def python_unroll(
    cell: Cell,
    params,
    h,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    time_major: bool = False,
):
    """:func:`jaxrnn.unroll` as a Python loop of :meth:`Cell.step` calls.

    Args:
      cell: a :class:`jaxrnn.Cell`.
      params: the cell's params.
      h: initial state ``[*batch, H_out]`` (``(h, c)`` for LSTM), or None for zeros.
      xs: ``[*batch, T, input_size]`` (``[T, *batch, input_size]`` if ``time_major``;
        ``[T, input_size]`` for a single sequence).
      seq_lengths: optional integer lengths, shape ``[*batch]``. Past its length a
        sequence's state is frozen and its outputs are zero.
      reverse: walk each sequence from its last valid step back to its first; the
        output of step ``t`` is written at position ``t``.
      time_major: layout of ``xs`` and ``ys``.

    Returns:
      ``(h, ys)`` with the same shapes and meaning as :func:`jaxrnn.unroll`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from jaxrnn.reference import python_unroll
      >>> cell = jaxrnn.lstm(4)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
      >>> lengths = jnp.array([5, 2])
      >>> (h, c), ys = python_unroll(cell, params, None, xs, seq_lengths=lengths, reverse=True)
      >>> (h2, c2), ys2 = jaxrnn.unroll(cell, params, None, xs, seq_lengths=lengths, reverse=True)
      >>> bool(jnp.allclose(ys, ys2, atol=1e-5)), bool(jnp.allclose(h, h2, atol=1e-5))
      (True, True)
    """
    xs = jnp.asarray(xs)
    if xs.ndim < 2:
        raise ValueError(f"`xs` must have rank >= 2 ([T, input_size] at least); got shape {tuple(xs.shape)}.")
    # Time on axis 0: [T, *batch, I].
    xs_T = xs if (time_major or xs.ndim == 2) else jnp.moveaxis(xs, -2, 0)
    T, batch_shape = xs_T.shape[0], tuple(xs_T.shape[1:-1])
    state = cell.initial_state(batch_shape, state_dtype(xs, params)) if h is None else h
    mask_shape = batch_shape + (1,)
    lengths = None if seq_lengths is None else jnp.asarray(seq_lengths)

    ys = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        new_state, y = cell.step(params, state, xs_T[t])
        if lengths is None:
            state = new_state
        else:
            valid = jnp.reshape(t < lengths, mask_shape)
            state = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new_state, state)
            y = jnp.where(valid, y, jnp.zeros_like(y))
        ys[t] = y
    if T:
        ys_T = jnp.stack(ys)
    else:
        leaf = jax.tree.leaves(state)[0]
        ys_T = jnp.zeros((0,) + batch_shape + (cell.output_size,), leaf.dtype)
    ys_out = ys_T if (time_major or xs.ndim == 2) else jnp.moveaxis(ys_T, 0, -2)
    return state, ys_out


def python_stack(
    net: Stack,
    params: StackParams,
    h,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    time_major: bool = False,
):
    """A :class:`jaxrnn.Stack` without dropout, layer by layer with :func:`python_unroll`.

    Each layer is a :func:`python_unroll`; a bidirectional layer runs the backward
    cell with ``reverse=True`` and concatenates ``[forward, backward]`` on the
    feature axis; the dense head (if any) maps the last layer's outputs.

    Args:
      net: a :class:`jaxrnn.Stack` (its ``dropout`` is ignored: no dropout here).
      params: the stack's params.
      h: a tuple with one state per layer (``Bidirectional`` pairs for a
        bidirectional stack), or None for zeros.
      xs: as in :func:`python_unroll`.
      seq_lengths: optional ``[*batch]`` integer lengths.
      time_major: layout of ``xs`` and ``ys``.

    Returns:
      ``(h, ys)``: the per-layer final states and the network's outputs.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from jaxrnn.reference import python_stack
      >>> net = jaxrnn.stack(jaxrnn.gru(4), bidirectional=True, head=2)
      >>> params = net.init(jax.random.key(0), input_size=5)
      >>> xs = jax.random.normal(jax.random.key(1), (2, 4, 5))
      >>> _, ys = python_stack(net, params, None, xs, seq_lengths=jnp.array([4, 2]))
      >>> _, ys2 = net(params, None, xs, seq_lengths=jnp.array([4, 2]))
      >>> bool(jnp.allclose(ys, ys2, atol=1e-5))
      True
    """
    if h is None:  # zeros, in the dtype Stack gives them
        xs = jnp.asarray(xs)
        batch_shape = xs.shape[1:-1] if time_major else xs.shape[:-2]
        h = net.initial_state(batch_shape, state_dtype(xs, params))
    states = tuple(h)
    opts = dict(seq_lengths=seq_lengths, time_major=time_major)
    new_states, ys = [], xs
    for cell, p, s in zip(net.cells, params.layers, states):
        if net.bidirectional:
            s = Bidirectional(None, None) if s is None else s
            hf, yf = python_unroll(cell, p.forward, s[0], ys, **opts)
            hb, yb = python_unroll(cell, p.backward, s[1], ys, reverse=True, **opts)
            new_states.append(Bidirectional(hf, hb))
            ys = jnp.concatenate([yf, yb], axis=-1)
        else:
            s, ys = python_unroll(cell, p, s, ys, **opts)
            new_states.append(s)
    if params.head is not None:
        ys = dense(params.head, ys)
    return tuple(new_states), ys
