"""Recurrent cells in reinforcement learning: resets at episode starts, step by step and replayed.

An agent with memory runs its cell twice over the same data:

* in the **rollout**, one step at a time, interleaved with the environment: the state is
  reset where an observation starts an episode, then the cell steps (:func:`step`);
* in the **update**, over each stored sequence at once, from the state stored at the
  sequence's start (:func:`jaxrnn.unroll` with ``resets=``; :func:`unroll_states` when
  every step's state is needed, e.g. to cut the sequence into chunks or for burn-in).

Both must see the same flag: ``starts[t]`` True means *observation ``t`` starts an
episode* (the **pre-step** done, what ``unroll``'s ``resets`` means). An environment
returns the **post-step** done, ``dones[t]`` True when the action at ``t`` ended the
episode, i.e. ``starts[t + 1]``. Feeding ``dones`` where ``starts`` is meant resets one
step early, the bug of JaxMARL#119 and of PureJaxRL before 2023; :func:`episode_starts`
converts, and keeps the last flag for the next rollout::

    starts, first = episode_starts(dones, first)      # [*batch, T], [*batch]

One rollout step and its replay, in pseudo-code::

    # rollout (t = 0 .. T-1), with h0 = the state before step 0 stored beside the data
    h, y = step(cell, params, h, obs[t], reset=starts[t])
    # update: the same outputs, for every t at once
    _, ys = jaxrnn.unroll(cell, params, h0, obs, resets=starts)

States are pytrees whose leaves carry the batch axes first (``[*batch, ...]``; an LSTM's
``(h, c)``, a stack's tuple of them), so the states stored for a minibatch are gathered
with one ``jax.tree.map(lambda a: a[idx], h0)``; :func:`take_states` does that and checks
the batch axes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn.contract import as_cell, feature_axes

Array = jax.Array

__all__ = ["episode_starts", "reset_where", "step", "take_states", "unroll_states"]


def _check_flags(flags, h, name):
    flags = jnp.asarray(flags)
    if flags.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean array [*batch]; got dtype {flags.dtype}.")
    for leaf in jax.tree.leaves(h):
        if tuple(leaf.shape[: flags.ndim]) != tuple(flags.shape):
            raise ValueError(f"`{name}` must have the state's batch shape: leaves of `h` are "
                             f"{[tuple(a.shape) for a in jax.tree.leaves(h)]}; `{name}` has shape "
                             f"{tuple(flags.shape)}.")
    return flags


def reset_where(flags: Array, h, reset_state=None):
    """``h`` with the rows where ``flags`` is True replaced by ``reset_state``.

    Args:
      flags: boolean ``[*batch]``; True where a new episode starts.
      h: a state, leaves ``[*batch, ...]``.
      reset_state: the state to start from (leaves broadcastable to ``h``'s), or None for
        zeros (what ``jaxrnn.unroll(..., resets=)`` uses by default).

    Returns:
      A state of ``h``'s structure, shapes and dtypes.

    Raises:
      TypeError, ValueError: when ``flags`` is not boolean or not the state's batch shape.
    """
    flags = _check_flags(flags, h, "flags")
    if reset_state is None:
        reset_state = jax.tree.map(jnp.zeros_like, h)
    elif jax.tree.structure(reset_state) != jax.tree.structure(h):
        raise TypeError(f"`reset_state` must have the structure of `h`, {jax.tree.structure(h)}; got "
                        f"{jax.tree.structure(reset_state)}.")

    def where(r, a):
        f = flags.reshape(flags.shape + (1,) * (a.ndim - flags.ndim))
        return jnp.where(f, jnp.broadcast_to(r, a.shape).astype(a.dtype), a)

    return jax.tree.map(where, reset_state, h)


def step(cell, params, h, x: Array, *, reset: Optional[Array] = None, reset_state=None):
    """One step with a pre-step reset: the single-step form of ``unroll(..., resets=)``.

    ``reset[b]`` True means ``x[b]`` starts an episode: that row's state is replaced by
    ``reset_state`` (zeros by default) *before* the step, as ``jaxrnn.unroll`` does with
    ``resets[b, t]``; so a rollout of :func:`step` and a replay with ``unroll`` agree.

    Args:
      cell: a cell (``jaxrnn.lstm(...)``, a ``jaxrnn.zoo`` cell, a unidirectional
        ``jaxrnn.stack``, or a plain ``step(params, h, x) -> (h, y)`` function).
      params: the cell's params.
      h: the state, leaves ``[*batch, ...]``, or None for the cell's initial state.
      x: the input, ``[*batch, *features]``.
      reset: optional boolean ``[*batch]``: True where ``x`` starts an episode.
      reset_state: the state an episode starts from, or None for zeros.

    Returns:
      ``(h, y)``: the new state and the output ``[*batch, output_size]``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> cell = jaxrnn.lstm(4)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> h = cell.initial_state((2,))
      >>> h, y = jaxrnn.rl.step(cell, params, h, jnp.ones((2, 3)), reset=jnp.array([True, False]))
      >>> y.shape
      (2, 4)
    """
    cell = as_cell(cell)
    if h is None:
        if not hasattr(cell, "initial_state"):
            raise TypeError(f"`h` is None but {cell!r} has no `initial_state`: pass a state.")
        F = feature_axes(cell, None)
        h = cell.initial_state(tuple(x.shape[: x.ndim - F]), dtype=x.dtype)
    if reset is not None:
        h = reset_where(reset, h, reset_state)
    return cell.step(params, h, x)


def episode_starts(dones: Array, first: Array, *, time_major: bool = False):
    """Pre-step episode starts from the environment's post-step dones.

    ``starts[..., 0] = first`` and ``starts[..., t] = dones[..., t - 1]``: observation ``t``
    starts an episode exactly when the step before it ended one.

    Args:
      dones: boolean ``[*batch, T]`` (``[T, *batch]`` with ``time_major``): True where the
        action at ``t`` ended the episode (terminated or truncated).
      first: boolean ``[*batch]``: whether the rollout's first observation starts an
        episode (the previous rollout's last done; all True at the very start).
      time_major: layout of ``dones`` and of the result.

    Returns:
      ``(starts, next_first)``: ``starts`` like ``dones``, and ``next_first`` ``[*batch]``
      (the last done), the ``first`` of the next rollout.

    Example:
      >>> import jax.numpy as jnp, jaxrnn
      >>> dones = jnp.array([[False, True, False, True]])
      >>> starts, first = jaxrnn.rl.episode_starts(dones, jnp.array([True]))
      >>> starts.astype(int).tolist(), first.tolist()
      ([[1, 0, 1, 0]], [True])
    """
    dones, first = jnp.asarray(dones), jnp.asarray(first)
    if dones.dtype != jnp.bool_ or first.dtype != jnp.bool_:
        raise TypeError(f"`dones` and `first` must be boolean; got {dones.dtype} and {first.dtype}.")
    axis = 0 if time_major else dones.ndim - 1
    batch = dones.shape[1:] if time_major else dones.shape[:-1]
    if dones.ndim < 1 or tuple(first.shape) != tuple(batch):
        raise ValueError(f"`first` must have the batch shape of `dones` {tuple(batch)} (dones "
                         f"{tuple(dones.shape)}, time_major={time_major}); got {tuple(first.shape)}.")
    head = jnp.expand_dims(first, axis)
    body = jax.lax.slice_in_dim(dones, 0, dones.shape[axis] - 1, axis=axis)
    last = jnp.take(dones, dones.shape[axis] - 1, axis=axis) if dones.shape[axis] else first
    return jnp.concatenate([head, body], axis=axis), last


def take_states(h, index: Array, *, batch_ndim: int = 1):
    """The rows ``index`` of a batched state: ``jax.tree.map(lambda a: a[index], h)``.

    Args:
      h: a state, leaves ``[*batch, ...]`` with ``batch_ndim`` batch axes.
      index: integer indices into the first batch axis (any shape ``[*idx]``).
      batch_ndim: how many leading axes of every leaf are batch axes (checked to agree).

    Returns:
      A state with leaves ``[*idx, *batch[1:], ...]``.
    """
    leaves = jax.tree.leaves(h)
    if not leaves:
        return h
    batch = leaves[0].shape[:batch_ndim]
    for a in leaves:
        if a.ndim < batch_ndim or a.shape[:batch_ndim] != batch:
            raise ValueError(f"`h` leaves must share their first {batch_ndim} (batch) axes; got "
                             f"{[tuple(x.shape) for x in leaves]}.")
    index = jnp.asarray(index)
    if not jnp.issubdtype(index.dtype, jnp.integer):
        raise TypeError(f"`index` must be integer; got {index.dtype}.")
    return jax.tree.map(lambda a: a[index], h)


def unroll_states(cell, params, h, xs: Array, *, resets: Optional[Array] = None, reset_state=None,
                  time_major: bool = False, unroll: int = 1):
    """Like ``jaxrnn.unroll(cell, params, h, xs, resets=...)``, also returning every step's state.

    ::

        for t in range(T):
            h, ys[t] = step(cell, params, h, xs[t], reset=resets[t])
            hs[t] = h                                # the state after step t
        return h, ys, hs

    The state entering step ``t`` (before its reset) is ``hs[t - 1]`` (``h`` for
    ``t = 0``): store it to replay a chunk that starts at ``t`` from where the rollout was,
    or to burn in from an earlier chunk. This runs the cell's ``step`` under ``lax.scan``
    (no hoisting, fused backward pass nor parallel-in-time mode; use ``jaxrnn.unroll``
    when only the outputs are needed).

    Args:
      cell: a cell or a unidirectional stack.
      params: its params.
      h: initial state (leaves ``[*batch, ...]``) or None for the cell's initial state.
      xs: ``[*batch, T, *features]`` (``[T, *batch, *features]`` with ``time_major``).
      resets: optional boolean ``[*batch, T]`` (``[T, *batch]``): True where ``xs[t]``
        starts an episode.
      reset_state: the state an episode starts from, or None for zeros.
      time_major: layout of ``xs``, ``resets``, ``ys`` and ``hs``.
      unroll: the scan's unroll factor.

    Returns:
      ``(h, ys, hs)``: the final state, the outputs ``[*batch, T, F]`` and the states, every
      leaf ``[*batch, T, ...]`` (time-major: ``[T, *batch, ...]``).
    """
    cell = as_cell(cell)
    F = feature_axes(cell, None)
    xs = jnp.asarray(xs)
    if xs.ndim < F + 2:
        raise ValueError(f"`xs` must be [*batch, T, *features] with at least one batch axis and {F} feature "
                         f"axes; got shape {tuple(xs.shape)}.")
    nb = xs.ndim - F - 1
    xs_T = xs if time_major else jnp.moveaxis(xs, nb, 0)
    T, batch = xs_T.shape[0], tuple(xs_T.shape[1: 1 + nb])
    if resets is not None:
        resets = jnp.asarray(resets)
        r_T = resets if time_major else jnp.moveaxis(resets, -1, 0)
        if resets.dtype != jnp.bool_ or tuple(r_T.shape) != (T,) + batch:
            want = (T,) + batch if time_major else batch + (T,)
            raise ValueError(f"`resets` must be boolean of shape {want}; got {resets.dtype}{list(resets.shape)}.")
    if h is None:
        h = cell.initial_state(batch, dtype=xs.dtype)

    def body(h, inp):
        x, r = inp
        h, y = step(cell, params, h, x, reset=r, reset_state=reset_state)
        return h, (y, h)

    h, (ys, hs) = jax.lax.scan(body, h, (xs_T, None if resets is None else r_T), unroll=unroll)
    if not time_major:
        ys = jnp.moveaxis(ys, 0, nb)
        hs = jax.tree.map(lambda a: jnp.moveaxis(a, 0, nb), hs)
    return h, ys, hs
