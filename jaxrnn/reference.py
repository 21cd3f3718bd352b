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

from jaxrnn.cells import state_dtype
from jaxrnn.contract import as_cell
from jaxrnn.layers import Bidirectional, Stack, StackParams, dense

Array = jax.Array

__all__ = ["python_unroll", "python_stack"]


def python_unroll(
    cell,
    params,
    h,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
    reset_state=None,
    reverse: bool = False,
    time_major: bool = False,
    num_feature_axes: int = 1,
):
    """:func:`jaxrnn.unroll` as a Python loop of :meth:`Cell.step` calls.

    Args:
      cell: any cell: a :class:`jaxrnn.Cell`, an object with ``step``, or a plain
        function ``step(params, h, x) -> (h, y)``.
      params: the cell's params.
      h: initial state ``[*batch, H_out]`` (``(h, c)`` for LSTM), or None for the cell's
        initial state.
      xs: ``[*batch, T, *features]`` (``[T, *batch, *features]`` if ``time_major``;
        ``[T, *features]`` for a single sequence).
      seq_lengths: optional integer lengths, shape ``[*batch]``. Past its length a
        sequence's state is frozen and its outputs are zero.
      resets: optional boolean ``[*batch, T]`` (``[T, *batch]`` if ``time_major``):
        where a new segment starts, the state entering the step is ``reset_state``
        (zeros when None); in reverse, the state entering step ``t`` is reset when
        ``resets[t + 1]`` (the later step started a segment).
      reverse: walk each sequence from its last valid step back to its first; the
        output of step ``t`` is written at position ``t``.
      time_major: layout of ``xs``, ``ys`` and ``resets``.
      num_feature_axes: trailing feature axes of ``xs``.

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
    cell = as_cell(cell)
    F = num_feature_axes
    xs = jnp.asarray(xs)
    if xs.ndim < F + 1:
        raise ValueError(f"`xs` must have rank >= {F + 1} ([T, *features] at least); got shape {tuple(xs.shape)}.")
    nb = xs.ndim - 1 - F
    # Time on axis 0: [T, *batch, *features].
    xs_T = xs if (time_major or nb == 0) else jnp.moveaxis(xs, nb, 0)
    T, batch_shape = xs_T.shape[0], tuple(xs_T.shape[1:1 + nb])
    state = cell.initial_state(batch_shape, state_dtype(xs, params)) if h is None else h
    lengths = None if seq_lengths is None else jnp.asarray(seq_lengths)
    if resets is not None:
        resets = jnp.asarray(resets, bool)
        resets = resets if (time_major or nb == 0) else jnp.moveaxis(resets, -1, 0)
        reset = jax.tree.map(jnp.zeros_like, state) if reset_state is None else reset_state

    def where(valid, a, b):  # valid: [*batch], a and b leaves [*batch, ...]
        return jax.tree.map(lambda x, y: jnp.where(jnp.reshape(valid, valid.shape + (1,) * (x.ndim - nb)), x, y),
                            a, b)

    ys = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        inside = jnp.ones(batch_shape, bool) if lengths is None else t < lengths
        if resets is not None:
            s = t + 1 if reverse else t
            if s < T:
                starts = resets[s] & (s < lengths if lengths is not None else True)
                state = where(starts, jax.tree.map(lambda r, x: jnp.broadcast_to(r, x.shape), reset, state), state)
        new_state, y = cell.step(params, state, xs_T[t])
        state = where(inside, new_state, state)
        y = jnp.where(jnp.reshape(inside, batch_shape + (1,) * (y.ndim - nb)), y, jnp.zeros_like(y))
        ys[t] = y
    if T:
        ys_T = jnp.stack(ys)
    else:
        y = jax.eval_shape(cell.step, params, state, jnp.zeros(xs_T.shape[1:], xs_T.dtype))[1]
        ys_T = jnp.zeros((0,) + y.shape, y.dtype)
    ys_out = ys_T if (time_major or nb == 0) else jnp.moveaxis(ys_T, 0, nb)
    return state, ys_out


def python_stack(
    net: Stack,
    params: StackParams,
    h,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
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
    opts = dict(seq_lengths=seq_lengths, resets=resets, time_major=time_major)
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
