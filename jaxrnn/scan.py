"""Running a cell over a sequence with ``jax.lax.scan``.

An unroll is, in pseudo-code (``seq_lengths``, ``resets`` and ``reverse`` aside)::

    for t in range(T):
        h, ys[t] = cell.step(params, h, xs[t])
    return h, ys

``seq_lengths`` (right-padded batches)::

    for t in range(T):
        h_new, y = cell.step(params, h, xs[t])
        h = where(t < seq_lengths, h_new, h)      # the state stops at the true length
        ys[t] = where(t < seq_lengths, y, 0)      # outputs past the length are zero

``reverse=True`` walks each sequence from its last *valid* element back to the first
(``for t in reversed(range(T))`` with the same masking, so padding never enters
first) and writes ``ys[t]`` at the input's position ``t``. A zero-length sequence
returns its initial state and all-zero outputs.

``resets`` (episode boundaries: ``resets[t]`` True means ``xs[t]`` starts a new segment)::

    for t in range(T):
        if resets[t] and t < seq_lengths:
            h = reset_state                       # zeros (the cell's zero state) by default
        h, ys[t] = cell.step(params, h, xs[t])    # (with the masking above)

so each segment gives exactly what running it alone from the reset state gives, and no
gradient crosses a boundary. With ``reverse=True`` each segment runs backwards and never
carries state across a boundary: the segment processed first (the last in time) starts
from ``h``, every other one from the reset state (the state entering step ``t`` is reset
when ``resets[t + 1]``).

Two paths compute this, with identical results:

* the **generic path**, below, for every cell: a ``lax.scan`` of the cell's step (or of
  its ``update`` after one ``project`` over the whole sequence; or of the part of a plain
  step function that depends on ``h``, after everything that depends only on ``x`` has
  been computed for every step at once: :mod:`jaxrnn.hoist`), masked as above;
* the **fused path** (:mod:`jaxrnn.fused`) for the built-in cells: the same loop with
  a cuDNN-style custom VJP and backend tuning (:mod:`jaxrnn.tuning`).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import fused, hoist as _hoist, tuning
from jaxrnn.cells import _describe, check_input, state_dtype
from jaxrnn.contract import as_cell, feature_axes, fused as is_fused, uses
from jaxrnn.tuning import default_unroll

Array = jax.Array

__all__ = ["unroll", "default_unroll"]

_MODES = ("sequential", "associative", "chunked", "auto", "newton")


def unroll(
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
    unroll: Optional[int] = None,
    remat: Union[bool, int] = False,
    hoist: bool = True,
    num_feature_axes: Optional[int] = None,
    custom_vjp: bool = True,
    mode="sequential",
    chunk_size: Optional[int] = None,
):
    """Runs ``cell`` over a sequence: ``(params, h, xs) -> (h, ys)``.

    Args:
      cell: a cell (see :mod:`jaxrnn.contract`): a built-in ``jaxrnn.rnn/gru/lstm``, a
        ``jaxrnn.zoo`` cell, your own object with ``step`` (and ``init``,
        ``initial_state``, ``output_size``), or a plain function
        ``step(params, h, x) -> (h, y)``.
      params: the cell's params.
      h: initial state (leaves ``[*batch, ...]``; ``(h, c)`` for LSTM), or None for the
        cell's initial state (zeros); a plain function needs ``h``.
      xs: inputs, ``[*batch, T, *features]`` (or ``[T, *batch, *features]`` with
        ``time_major=True``); ``[T, *features]`` for a single sequence. ``features`` is
        one axis (``input_size``) unless ``num_feature_axes`` says otherwise.
      seq_lengths: optional integer lengths of shape ``[*batch]`` for right-padded
        batches. Their dtype and shape are checked; their values are not read on the
        host (that would stop the program for a device-to-host copy): a length above
        ``T`` acts as ``T`` and a negative one as 0, inside ``jit`` or not.
      resets: optional boolean ``[*batch, T]`` (``[T, *batch]`` with ``time_major``):
        True at step ``t`` means ``x_t`` starts a new segment (see the module doc).
      reset_state: the state a segment starts from after a reset (a pytree like ``h``,
        leaves broadcastable to its leaves); None for the cell's zero state.
      reverse: run from the end of each sequence to its start (see module doc).
      time_major: layout of ``xs``, ``ys`` and ``resets``.
      unroll: scan unroll factor; None picks :func:`default_unroll` for the backend.
      remat: gradient checkpointing for long sequences: True splits time into
        chunks of ``ceil(sqrt(T))`` steps (an int sets the chunk length); only the
        state at chunk boundaries is kept for the backward pass, and each chunk's
        forward is recomputed.
      hoist: for cells without ``project``/``update``, compute the part of the step
        that depends on ``x`` but not on ``h`` for every step at once, outside the loop
        (:mod:`jaxrnn.hoist`); False scans the step as written (for a built-in cell: its
        ``step`` on the generic path, instead of the fused path). Same results either way.
      num_feature_axes: trailing feature axes of ``xs`` (default: the cell's
        ``num_feature_axes``, else 1), e.g. 3 for ``[*batch, T, H, W, C]`` frames.
      custom_vjp: use the custom VJPs: the built-in cells' fused backward pass, and for
        other cells whose step multiplies a weight with the state, weight gradients as
        one product over the sequence where that pays (:func:`jaxrnn.tuning.weights_outside`).
        Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) cannot go through a custom
        VJP: it raises a ``TypeError`` naming this option, whatever the shapes. Set False
        to differentiate the scan with plain autodiff.
      mode: ``"sequential"`` (a scan); ``"associative"`` or ``"chunked"`` for cells
        with a parallel form (``parallel_unroll``: ``jaxrnn.zoo`` minGRU, minLSTM, LRU);
        ``"auto"`` picks by backend and ``T``; ``"newton"`` (or a
        ``jaxrnn.newton.Newton(...)`` of options) evaluates any cell by Newton's method
        over the whole trajectory (:mod:`jaxrnn.newton`).
      chunk_size: the chunk length of ``mode="chunked"`` (or ``"auto"``); any other mode
        refuses it.

    Every option either changes what runs or raises a ``ValueError`` that names it
    (``chunk_size`` outside the chunked mode; ``unroll``, ``remat``, ``hoist=False`` or
    ``custom_vjp=False`` in a parallel or Newton mode; ``num_feature_axes`` other than 1
    for a built-in cell).

    Called outside ``jit``, the unroll is compiled once per cell, options and shapes and
    cached (the cell must be hashable, as frozen dataclasses and functions are; other
    cells are traced at every call).

    Returns:
      ``(h, ys)``: the final state (at each sequence's true length) and all outputs,
      ``[*batch, T, F]`` (or time-major), zero past each length.

    Raises:
      TypeError, ValueError: at trace time, naming the offending argument.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> cell = jaxrnn.gru(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> xs = jnp.ones((2, 5, 3))                      # [B, T, I]
      >>> h, ys = jaxrnn.unroll(cell, params, None, xs, seq_lengths=jnp.array([5, 2]))
      >>> h.shape, ys.shape
      ((2, 8), (2, 5, 8))
      >>> bool((ys[1, 2:] == 0).all())
      True

      A plain function is a cell too:

      >>> def step(p, h, x):
      ...     h = jnp.tanh(x @ p["w"] + h @ p["u"])
      ...     return h, h
      >>> p = {"w": jnp.ones((3, 4)) * 0.1, "u": jnp.eye(4) * 0.5}
      >>> h, ys = jaxrnn.unroll(step, p, jnp.zeros((2, 4)), xs, resets=jnp.zeros((2, 5), bool))
      >>> ys.shape
      (2, 5, 4)
    """
    cell = as_cell(cell)
    if getattr(cell, "bidirectional", False):
        raise TypeError(f"`cell` must run one step at a time; {cell!r} is a bidirectional network: "
                        f"call it as net(params, h, xs).")
    mode = _check_mode(mode)
    check_options(cell, mode, unroll=unroll, remat=remat, hoist=hoist, custom_vjp=custom_vjp,
                  chunk_size=chunk_size, num_feature_axes=num_feature_axes)
    static = dict(reverse=bool(reverse), time_major=bool(time_major), unroll=unroll, remat=remat, hoist=bool(hoist),
                  num_feature_axes=num_feature_axes, custom_vjp=bool(custom_vjp), mode=mode, chunk_size=chunk_size)
    xs, seq_lengths, resets = _as_array(xs), _as_array(seq_lengths), _as_array(resets)
    return call_compiled(_unroll_impl, cell, static, params, h, xs, seq_lengths, resets, reset_state,
                         custom_vjp=custom_vjp)


def _unroll_impl(cell, static, params, h, xs, seq_lengths, resets, reset_state):
    o = dict(static)
    mode, num_feature_axes, time_major = o["mode"], o["num_feature_axes"], o["time_major"]
    if is_fused(cell) and mode == "sequential" and o["hoist"]:
        return _unroll_fused(cell, params, h, xs, seq_lengths=seq_lengths, resets=resets, reset_state=reset_state,
                             reverse=o["reverse"], time_major=time_major, unroll=o["unroll"], remat=o["remat"],
                             custom_vjp=o["custom_vjp"])
    F = feature_axes(cell, num_feature_axes)
    input_size = cell.check_params(params) if hasattr(cell, "check_params") else None
    xs = check_input(xs, input_size, min_rank=F + 1, name="xs", feature_axes=F)
    xs_T, batch_shape, restore = to_time_major(xs, time_major, F, flatten=False)
    T = xs_T.shape[0]
    lengths = check_seq_lengths(seq_lengths, batch_shape, T, flatten=False)
    resets_T = check_resets(resets, batch_shape, T, time_major)
    h = resolve_state(cell, params, h, xs, batch_shape)
    if T:
        check_step(cell, params, h, xs_T[0], batch_shape)
    reset = resolve_reset_state(cell, reset_state, h, batch_shape) if resets_T is not None else None
    h, ys_T = run(cell, params, h, xs_T, lengths=lengths, resets=resets_T, reset_state=reset, reverse=o["reverse"],
                  unroll=o["unroll"], remat=o["remat"], hoist=o["hoist"], custom_vjp=o["custom_vjp"], mode=mode,
                  chunk_size=o["chunk_size"])
    return h, restore(ys_T)


# --------------------------------------------------------------------------- options and compilation


def check_options(cell, mode, *, unroll=None, remat=False, hoist=True, custom_vjp=True, chunk_size=None,
                  num_feature_axes=None):
    """Raises for an option that does not apply to ``cell`` in ``mode``, naming it: every
    option :func:`unroll` takes either changes what runs or is refused."""
    if chunk_size is not None:
        if mode not in ("chunked", "auto"):
            raise ValueError(f"`chunk_size` applies to mode='chunked' (or 'auto') only; got mode={mode!r} "
                             f"with chunk_size={chunk_size!r}.")
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size!r}.")
    if mode not in ("sequential", "auto"):
        given = {"unroll": unroll, "remat": remat, "hoist": hoist, "custom_vjp": custom_vjp}
        default = {"unroll": None, "remat": False, "hoist": True, "custom_vjp": True}
        for opt, value in given.items():
            if value is not default[opt] and value != default[opt]:
                kind = "Newton mode" if not isinstance(mode, str) or mode == "newton" else f"mode={mode!r}"
                raise ValueError(f"`{opt}` applies to the sequential scan only; {kind} does not use it "
                                 f"(got {opt}={value!r}).")
    if num_feature_axes is not None and is_fused(cell) and num_feature_axes != 1:
        raise ValueError(f"`num_feature_axes` must be 1 (or None) for {cell!r}, whose inputs are "
                         f"[*batch, T, input_size]; got {num_feature_axes!r}.")


def _as_array(x):
    """Lists and tuples of numbers as numpy arrays (so that they enter ``jit`` as one array);
    anything else as it is (arrays, None, or something the checks will refuse by name)."""
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except (ValueError, TypeError):
            return x
    return x


def _hashable(cell) -> bool:
    try:
        hash(cell)
    except TypeError:
        return False
    return True


_COMPILED: dict = {}


def call_compiled(impl, cell, static: dict, *args, custom_vjp: bool = True):
    """``impl(cell, static, *args)`` through ``jax.jit`` with ``cell`` and ``static``
    static, so that calls outside ``jit`` trace and compile once per cell, options and
    shapes, not at every call (inside ``jit`` it is inlined). A cell that is not
    hashable runs as it is, traced at every call.

    Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) cannot pass the custom VJPs that
    ``custom_vjp=True`` uses, at any shape: the error then names the option."""
    # (the tuning policy in force is part of what is traced: jaxrnn.tuning.policy)
    key = (impl, tuple(sorted(static.items(), key=lambda kv: kv[0])) + (("policy", tuning.forced()),))
    if _hashable(cell) and _hashable(key):
        fn = _COMPILED.get(impl)
        if fn is None:
            fn = _COMPILED[impl] = jax.jit(impl, static_argnums=(0, 1))
    else:
        fn = impl
    args = (cell, key[1]) + args
    try:
        return fn(*args)
    except TypeError as e:
        if custom_vjp and "forward-mode" in str(e) and "custom_vjp" in str(e):
            raise TypeError("`custom_vjp=True` (the default) computes gradients with a custom VJP, which "
                            "forward-mode autodiff (jax.jvp, jax.jacfwd, jax.linearize of a jvp) cannot go "
                            "through; pass custom_vjp=False for forward mode.") from None
        raise


def _check_mode(mode):
    if isinstance(mode, str):
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES} or a jaxrnn.newton.Newton; got {mode!r}.")
        return mode
    from jaxrnn.newton import Newton  # (newton imports nothing of scan; lazily, to keep this module first)

    if isinstance(mode, Newton):
        return mode
    raise TypeError(f"`mode` must be one of {_MODES} or a jaxrnn.newton.Newton; got {type(mode).__name__}.")


def run(cell, params, h, xs_T, *, lengths=None, resets=None, reset_state=None, reverse=False, unroll=None,
        remat=False, hoist=True, custom_vjp=True, mode="sequential", chunk_size=None):
    """The unchecked core of :func:`unroll`, shared with :class:`jaxrnn.Stack`: ``h`` a state
    (never None), ``xs_T`` time-major ``[T, *batch, *features]``, ``lengths`` ``[*batch]``
    int32 or None, ``resets`` ``[T, *batch]`` bool (the user's meaning) or None,
    ``reset_state`` a state like ``h`` or None. Returns ``(h, ys_T)``, time-major."""
    if mode == "auto":
        mode = _auto_mode(cell, xs_T.shape[0])
    if not isinstance(mode, str) or mode == "newton":
        from jaxrnn import newton

        options = newton.Newton() if isinstance(mode, str) else mode
        return newton.newton_run(cell, params, h, xs_T, seq_lengths=lengths, resets=resets,
                                 reset_state=reset_state, reverse=reverse, options=options)
    if mode in ("associative", "chunked"):
        if not uses(cell, "parallel_unroll"):
            raise ValueError(
                f"`mode={mode!r}` needs a cell whose recurrence is linear in h (one with `parallel_unroll`, "
                f"e.g. jaxrnn.zoo.MinGRU, MinLSTM, LRU); {cell!r} has none: use mode='newton' for others.")
        return cell.parallel_unroll(params, h, xs_T, seq_lengths=lengths, resets=resets, reset_state=reset_state,
                                    reverse=reverse, mode=mode, chunk_size=chunk_size)
    flags = reset_flags(resets, lengths, reverse)
    if is_fused(cell) and hoist:  # (hoist=False: a built-in cell's step as written, on the generic path)
        batch_shape = xs_T.shape[1:-1]
        flat = lambda a: None if a is None else a.reshape((a.shape[0], -1))
        carry = tuple(c.reshape((-1, c.shape[-1])) for c in cell.to_carry(h))
        reset = None
        if reset_state is not None:
            reset = tuple(jnp.broadcast_to(r, c.shape).reshape((-1, c.shape[-1]))
                          for r, c in zip(cell.to_carry(reset_state), cell.to_carry(h)))
        xs_TNI = xs_T.reshape((xs_T.shape[0], -1, xs_T.shape[-1]))
        carry, ys = fused.run(cell, params, carry, xs_TNI, None if lengths is None else lengths.reshape(-1),
                              flags=flat(flags), reset=reset, reverse=reverse, unroll=unroll, remat=remat,
                              custom_vjp=custom_vjp)
        h = cell.from_carry(tuple(c.reshape(tuple(batch_shape) + c.shape[-1:]) for c in carry))
        return h, ys.reshape(ys.shape[:1] + tuple(batch_shape) + ys.shape[-1:])
    return _generic(cell, params, h, xs_T, lengths, flags, reset_state, reverse=reverse, unroll=unroll,
                    remat=remat, hoist=hoist, custom_vjp=custom_vjp)


def _auto_mode(cell, T: int) -> str:
    if not uses(cell, "parallel_unroll"):
        return "sequential"
    from jaxrnn import linear

    return linear.auto_mode(T)


# --------------------------------------------------------------------------- the generic path


def _generic(cell, params, h, xs_T, lengths, flags, reset, *, reverse, unroll, remat, hoist, custom_vjp=True):
    """Any cell over ``xs_T`` (``[T, *batch, *features]``), as the module docstring reads.

    The step is one of: ``update`` after ``project`` over the whole sequence (cells that
    offer both), the ``h``-dependent part of ``step`` after its ``x``-only part over the
    whole sequence (:mod:`jaxrnn.hoist`), or ``step`` itself. The loop then resets, steps
    and masks.
    """
    if unroll is not None and int(unroll) < 1:
        raise ValueError(f"`unroll` must be a positive int; got {unroll}.")
    rows = _rows(h, xs_T)
    same = unroll is not None and all(f(rows, "cpu") == f(rows, "gpu")
                                      for f in (tuning.hoists_inputs, tuning.weights_outside))
    run_on = lambda platform: _generic_on(platform, cell, params, h, xs_T, lengths, flags, reset, reverse=reverse,
                                          unroll=unroll, remat=remat, hoist=hoist, custom_vjp=custom_vjp)
    return tuning.for_platform(run_on, same=same)


def _generic_on(platform, cell, params, h, xs_T, lengths, flags, reset, *, reverse, unroll, remat, hoist, custom_vjp):
    """:func:`_generic` with the choices of ``platform`` (:mod:`jaxrnn.tuning`)."""
    T = xs_T.shape[0]
    unroll = default_unroll(platform) if unroll is None else int(unroll)
    step, inputs, split = _plan(cell, params, h, xs_T, hoist, platform)
    if flags is not None and reset is None:
        reset = jax.tree.map(jnp.zeros_like, h)
    mask = None if lengths is None else jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * lengths.ndim) < lengths
    body = _loop_body(step, reset)
    if T == 0:
        y = jax.eval_shape(lambda: step(h, jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), inputs)))[1]
        return h, jnp.zeros((0,) + y.shape, y.dtype)
    if not remat:
        # With custom_vjp, a cell whose step multiplies a weight with its state gets the custom
        # VJP at every shape (forward-mode autodiff then fails the same way at every shape, with
        # an error naming the option); its weight gradients leave the loop where that pays.
        if custom_vjp and split is not None and split.parts.probes and _all_floating((split.c, h, inputs, reset)):
            return _weights_outside(split, h, inputs, mask, flags, reset, reverse=reverse, unroll=unroll,
                                    outside=tuning.weights_outside(_rows(h, xs_T), platform))
        return jax.lax.scan(body, h, (inputs, mask, flags), reverse=reverse, unroll=unroll)
    K = int(math.ceil(math.sqrt(T))) if remat is True else int(remat)
    if K < 1:
        raise ValueError(f"`remat` must be True, False or a positive chunk length; got {remat}.")
    n = -(-T // K)
    if n * K != T:  # padded steps are masked out
        if mask is None:  # a time-only mask, which broadcasts against every leaf
            mask = jnp.ones((T,), bool)
        pad = lambda a: jnp.concatenate([a, jnp.zeros((n * K - T,) + a.shape[1:], a.dtype)])
        inputs, mask, flags = jax.tree.map(pad, (inputs, mask, flags))
    chunks = jax.tree.map(lambda a: a.reshape((n, K) + a.shape[1:]), (inputs, mask, flags))

    @jax.checkpoint
    def chunk(h, inp):
        return jax.lax.scan(body, h, inp, reverse=reverse, unroll=unroll)

    h, ys = jax.lax.scan(chunk, h, chunks, reverse=reverse)
    return h, ys.reshape((n * K,) + ys.shape[2:])[:T]


def _loop_body(step, reset):
    """The loop body of the generic path, ``(h, (u_t, m_t, r_t)) -> (h, y)``: reset the
    state where a segment starts (``r_t``), step, keep the old state and zero ``y`` past
    the length (``m_t``). ``step(h, u_t)`` returns ``(h, y)``, or ``(h, y, extra)`` to
    emit ``(y, extra)``."""
    def body(h, inp):
        u_t, m_t, r_t = inp
        if r_t is not None:
            h = _tree_where(r_t, reset, h)
        h_new, y, *extra = step(h, u_t)
        if m_t is not None:
            h_new = _tree_where(m_t, h_new, h)
            y = jnp.where(_expand(m_t, y), y, jnp.zeros_like(y))
        return h_new, ((y, *extra) if extra else y)

    return body


def _plan(cell, params, h, xs_T, hoist: bool, platform: str):
    """``(step(h, u_t) -> (h, y), inputs)``: what the loop runs and what it reads each step.

    A cell with ``project`` and ``update`` has its projection computed for every step at
    once and its ``update`` scanned; otherwise its ``step`` is scanned. With ``hoist``,
    the scanned function is split first (:func:`jaxrnn.hoist.split`): its params-only
    work is done once, and its x-only work (a plain step's input projection) for every
    step at once, outside the loop.
    """
    if uses(cell, "project", "update"):
        fn, inputs = cell.update, cell.project(params, xs_T)
    else:
        fn, inputs = cell.step, xs_T
    if hoist and xs_T.shape[0] > 0:
        parts = _hoist.split(fn, params, h, jax.tree.map(lambda a: a[0], inputs),
                             hoist_x=tuning.hoists_inputs(_rows(h, xs_T), platform))
        if parts is not None:
            c = parts.constants(params)
            return (lambda h, r: parts.body(c, h, r)), parts.precompute(params, inputs), _Hoisted(parts, c)
    return (lambda h, u: fn(params, h, u)), inputs, None


def _rows(h, xs_T) -> int:
    """Rows of a step's products: the state's elements over its feature size (the batch
    size; times the spatial positions of a convolutional state)."""
    leaf = jax.tree.leaves(h)[0] if jax.tree.leaves(h) else xs_T[0]
    return leaf.size // max(leaf.shape[-1], 1) if leaf.ndim else 1


class _Hoisted(NamedTuple):
    parts: _hoist.Split
    c: list


def _all_floating(tree) -> bool:
    return all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(tree))


def _weights_outside(split, h, inputs, mask, flags, reset, *, reverse, unroll, outside=True):
    """The generic loop with a VJP that computes the gradient of each weight multiplied
    with an ``h``-dependent value (``h @ U``) as one matrix product over the whole sequence
    after the backward loop, as the built-in cells' fused path does, instead of autodiff's
    small product and accumulation at every step (:attr:`jaxrnn.hoist.Split.probes`): the
    backward loop is autodiff's own, with those weights held constant, and the cotangent of
    each such product is read off a zero added to it. Everything else is autodiff.

    With ``outside=False`` (where :func:`jaxrnn.tuning.weights_outside` says the per-step
    accumulation is faster) the same custom VJP holds autodiff's plain pullback instead."""
    parts, c = split.parts, split.c
    T = jax.tree.leaves(inputs)[0].shape[0]
    weights = sorted({i for i, _, _ in parts.probes})
    # Everything the custom VJP reads is an argument of it (nothing traced is closed over),
    # so that it also holds under a jit that is linearised from outside (jax.grad of a jit).
    zeros_e = lambda: [jnp.zeros((T,) + tuple(shape), dtype) for _, shape, dtype in parts.probes]

    def loop(c, h, inputs, e, reset, mask, flags):
        def step(h, u_e):
            (h_new, y), a = parts.body(c, h, *u_e)
            return h_new, y, a

        h, (ys, a) = jax.lax.scan(_loop_body(step, reset), h, ((inputs, e), mask, flags), reverse=reverse,
                                  unroll=unroll)
        return h, ys, a

    def split_weights(c):
        rest = [None if i in weights else v for i, v in enumerate(c)]
        return rest, {i: c[i] for i in weights}

    def join(rest, w):
        return [w[i] if i in w else v for i, v in enumerate(rest)]

    @jax.custom_vjp
    def run(c, h, inputs, reset, mask, flags):
        h, ys, _ = loop(c, h, inputs, zeros_e(), reset, mask, flags)
        return h, ys

    def run_fwd(c, h, inputs, reset, mask, flags):
        if not outside:
            (h, ys), pull = jax.vjp(lambda c, h, inputs, reset: loop(c, h, inputs, zeros_e(), reset, mask, flags)[:2],
                                    c, h, inputs, reset)
            return (h, ys), (pull, None, None, mask, flags)
        rest, w = split_weights(c)
        (h, ys, a), pull = jax.vjp(
            lambda rest, h, inputs, e, reset: loop(join(rest, w), h, inputs, e, reset, mask, flags),
            rest, h, inputs, zeros_e(), reset)
        return (h, ys), (pull, a, c, mask, flags)

    def run_bwd(res, cts):
        pull, a, c, mask, flags = res
        none = (None if mask is None else jnp.zeros_like(mask), None if flags is None else jnp.zeros_like(flags))
        if a is None:
            return tuple(pull(tuple(cts))) + none
        ct_rest, ct_h, ct_inputs, ct_e, ct_reset = pull(tuple(cts) + (jax.tree.map(jnp.zeros_like, a),))
        ct_w = parts.weight_grads(c, a, ct_e)
        return (join(ct_rest, {i: ct_w[i] for i in weights}), ct_h, ct_inputs, ct_reset) + none

    run.defvjp(run_fwd, run_bwd)
    return run(c, h, inputs, reset, mask, flags)


def _expand(m, a):
    """A ``[*batch]`` mask broadcastable against ``a`` (``[*batch, ...]``)."""
    return m.reshape(m.shape + (1,) * (a.ndim - m.ndim))


def _tree_where(m, a, b):
    return jax.tree.map(lambda x, y: jnp.where(_expand(m, x), x, y), a, b)


# --------------------------------------------------------------------------- the fused path (built-in cells)


def _unroll_fused(cell, params, h, xs, *, seq_lengths, resets, reset_state, reverse, time_major, unroll, remat,
                  custom_vjp):
    input_size = cell.check_params(params)
    xs = check_input(xs, input_size, min_rank=2, name="xs")
    xs_TNI, batch_shape, restore = to_time_major(xs, time_major)
    T = xs_TNI.shape[0]
    lengths = check_seq_lengths(seq_lengths, batch_shape, T)
    state = cell.check_state(h, batch_shape, dtype=state_dtype(xs, params))
    carry = tuple(p.reshape(-1, p.shape[-1]) for p in cell.to_carry(state))
    resets_T = check_resets(resets, batch_shape, T, time_major)
    flags = reset = None
    if resets_T is not None:
        flags = reset_flags(resets_T.reshape((T, -1)), lengths, reverse)
        if reset_state is not None:
            reset = tuple(r.reshape(-1, r.shape[-1]) for r in
                          cell.to_carry(resolve_reset_state(cell, reset_state, state, batch_shape)))
    # Batch-major inputs are handed over as they are, [N, T, I]; fused.run decides (see there).
    batch_major = not time_major and xs.ndim > 2
    xs_in = xs.reshape((math.prod(batch_shape),) + xs.shape[-2:]) if batch_major else xs_TNI
    carry, ys = fused.run(cell, params, carry, xs_in, lengths, flags=flags, reset=reset, reverse=reverse,
                          unroll=unroll, remat=remat, custom_vjp=custom_vjp, batch_major=batch_major)
    state = cell.from_carry(tuple(c.reshape(tuple(batch_shape) + c.shape[-1:]) for c in carry))
    return state, restore(ys)


# --------------------------------------------------------------------------- resets


def reset_flags(resets_T: Optional[Array], lengths: Optional[Array], reverse: bool) -> Optional[Array]:
    """Where the state entering each step is the reset state: ``[T, *batch]`` bool.

    Forward, step ``t`` resets when ``resets[t]``; in reverse, when ``resets[t + 1]`` (the
    step after it in time starts a new segment, so the state carried back from it must not
    enter). Only inside each sequence's length.
    """
    if resets_T is None:
        return None
    T = resets_T.shape[0]
    r = resets_T.astype(bool)
    if reverse:
        r = jnp.concatenate([r[1:], jnp.zeros_like(r[:1])], axis=0)
    if lengths is not None:
        t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * lengths.ndim) + (1 if reverse else 0)
        r = r & (t < lengths)
    return r


def check_resets(resets, batch_shape: tuple, T: int, time_major: bool) -> Optional[Array]:
    """Validates ``resets`` at trace time; returns it time-major, ``[T, *batch]`` bool."""
    if resets is None:
        return None
    if not hasattr(resets, "dtype"):
        resets = np.asarray(resets)
    if resets.dtype != jnp.bool_ and not jnp.issubdtype(resets.dtype, jnp.integer):
        raise TypeError(f"`resets` must be a boolean array; got dtype {resets.dtype}.")
    want = (T,) + tuple(batch_shape) if (time_major or not batch_shape) else tuple(batch_shape) + (T,)
    if tuple(resets.shape) != want:
        layout = "[T, *batch]" if time_major else "[*batch, T]"
        raise ValueError(f"`resets` must have shape {layout} = {list(want)}; got {tuple(resets.shape)}.")
    resets = jnp.asarray(resets).astype(bool)
    return resets if (time_major or not batch_shape) else jnp.moveaxis(resets, -1, 0)


def resolve_reset_state(cell, reset_state, h, batch_shape: tuple):
    """The state a segment starts from after a reset, broadcast to ``h``'s shapes: zeros
    (the cell's zero state) when ``reset_state`` is None."""
    if reset_state is None:
        return jax.tree.map(jnp.zeros_like, h)
    h_leaves, h_def = jax.tree.flatten(h)
    r_leaves, r_def = jax.tree.flatten(reset_state)
    if r_def != h_def:
        raise TypeError(f"`reset_state` must have the structure of the state {h_def}; got {r_def}.")
    out = []
    for r, s in zip(r_leaves, h_leaves):
        r = jnp.asarray(r)
        try:
            out.append(jnp.broadcast_to(r, s.shape).astype(s.dtype))
        except ValueError:
            raise ValueError(f"`reset_state` leaves must broadcast to the state's shapes; got {tuple(r.shape)} "
                             f"for a state leaf of shape {tuple(s.shape)}.") from None
    return jax.tree.unflatten(h_def, out)


# --------------------------------------------------------------------------- checks and layout


def resolve_state(cell, params, h, xs, batch_shape: tuple, name: str = "h"):
    """``h``, or the cell's initial state when None; checked against what the cell's step
    returns (structure, shapes, dtypes) at trace time."""
    if h is None:
        if not hasattr(cell, "initial_state"):
            raise ValueError(
                f"`{name}` must be given for {cell!r}: a plain function has no initial state "
                f"(pass one, e.g. jnp.zeros(batch_shape + (hidden_size,)), or use an object with `initial_state`).")
        h = cell.initial_state(batch_shape, state_dtype(xs, params))
    for path, leaf in jax.tree_util.tree_leaves_with_path(h):
        if not hasattr(leaf, "shape") or tuple(leaf.shape[: len(batch_shape)]) != tuple(batch_shape):
            raise ValueError(
                f"`{name}{jax.tree_util.keystr(path)}` must have the batch dimensions of `xs`, {list(batch_shape)}, "
                f"in front; got shape {tuple(getattr(leaf, 'shape', ()))}.")
    return h


def check_step(cell, params, h, x, batch_shape: tuple, name: str = "cell"):
    """Traces one step abstractly and checks that it returns ``(h, y)`` with ``h`` of the
    structure, shapes and dtypes it was given and ``y`` with the batch dimensions."""
    try:
        out = jax.eval_shape(cell.step, params, h, x)
    except (TypeError, ValueError) as e:
        raise type(e)(f"`{name}` step failed on `h` {_shapes(h)} and `x` {tuple(x.shape)}: {e}") from e
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"`{name}` must return a pair (h, y); got {_describe(out)}.")
    h_new, y = out
    if jax.tree.structure(h_new) != jax.tree.structure(h):
        raise TypeError(f"`{name}` returned a state of another structure than it was given: "
                        f"{jax.tree.structure(h_new)} against {jax.tree.structure(h)}.")
    for a, b in zip(jax.tree.leaves(h_new), jax.tree.leaves(h)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"`{name}` returned a state leaf {a.dtype}{list(a.shape)} for one given as "
                             f"{b.dtype}{list(b.shape)}: the state must keep its shapes and dtypes.")
    if not hasattr(y, "shape") or tuple(y.shape[: len(batch_shape)]) != tuple(batch_shape):
        raise ValueError(f"`{name}` returned y of shape {getattr(y, 'shape', type(y).__name__)}; its leading "
                         f"axes must be the batch dimensions {list(batch_shape)}.")


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(getattr(a, "shape", ())), tree)


def to_time_major(xs: Array, time_major: bool, feature_axes: int = 1, flatten: bool = True):
    """``xs -> (xs_T, batch_shape, restore)``. With ``flatten`` (one feature axis), ``xs_T``
    is ``[T, N, I]`` (the batch flattened; ``N = 1`` for a single sequence) and ``restore``
    maps ``[T, N, F]`` back; without, ``xs_T`` is ``[T, *batch, *features]`` and
    ``restore`` maps ``[T, *batch, F]`` back."""
    if not flatten:
        nb = xs.ndim - 1 - feature_axes
        if time_major or nb == 0:
            return xs, tuple(xs.shape[1:1 + nb]), lambda ys: ys
        return jnp.moveaxis(xs, nb, 0), tuple(xs.shape[:nb]), lambda ys: jnp.moveaxis(ys, 0, nb)
    if xs.ndim == 2:
        return xs[:, None, :], (), lambda ys: ys[:, 0, :]
    if time_major:
        T, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
        N = math.prod(batch_shape)
        return xs.reshape(T, N, xs.shape[-1]), batch_shape, lambda ys: ys.reshape((T,) + batch_shape + ys.shape[-1:])
    T, batch_shape = xs.shape[-2], tuple(xs.shape[:-2])
    N = math.prod(batch_shape)
    xs_NTI = xs.reshape(N, T, xs.shape[-1])

    def restore(ys):
        return jnp.swapaxes(ys, 0, 1).reshape(batch_shape + (T,) + ys.shape[-1:])

    return jnp.swapaxes(xs_NTI, 0, 1), batch_shape, restore


def check_seq_lengths(seq_lengths, batch_shape: tuple, T: int, flatten: bool = True) -> Optional[Array]:
    """Validates ``seq_lengths`` at trace time; returns it as int32, flattened to ``[N]``
    (or ``[*batch]`` with ``flatten=False``)."""
    if seq_lengths is None:
        return None
    if not hasattr(seq_lengths, "dtype"):
        seq_lengths = np.asarray(seq_lengths)
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"`seq_lengths` must be an integer array; got dtype {seq_lengths.dtype}.")
    if tuple(seq_lengths.shape) != tuple(batch_shape):
        raise ValueError(
            f"`seq_lengths` must have the batch shape of `xs`, {list(batch_shape)}; got {tuple(seq_lengths.shape)}."
        )
    # Out-of-range values act as the nearest bound (one meaning, in jit or not; no host sync).
    lengths = jnp.clip(jnp.asarray(seq_lengths, jnp.int32), 0, T)
    return lengths.reshape(-1) if flatten else lengths
