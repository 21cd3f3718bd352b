"""Diagonal linear recurrences, sequentially or in parallel over time.

:func:`linear_scan` evaluates, for every batch element and feature::

    h = h0
    for t in range(T):                 # reversed(range(T)) with reverse=True
        h = a[t] * h + b[t]
        hs[t] = h
    return h, hs

Because the step is affine in ``h``, composing two steps is again an affine step,
``(a1, b1) then (a2, b2) = (a2 * a1, a2 * b1 + b2)``, an associative operation: the whole
recurrence can be evaluated by ``jax.lax.associative_scan`` in ``O(log T)`` depth
instead of ``T`` dependent steps. Three modes compute the same values:

* ``"sequential"``: one ``lax.scan`` of ``T`` steps;
* ``"associative"``: one ``jax.lax.associative_scan`` over all ``T`` steps;
* ``"chunked"``: time split into chunks of ``chunk_size`` steps; an associative scan
  inside every chunk (all chunks at once), then a sequential scan of ``T / chunk_size``
  steps that carries the state across chunk boundaries, then one elementwise update.
  The associative scan's depth, program size and compile time depend on ``chunk_size``
  only.

The gradient is a custom VJP: the backward pass of a linear recurrence is the reversed
linear recurrence of the output cotangents, ``lam[t] = g[t] + a[t+1] * lam[t+1]``, run as
one scan in the same mode; then ``db = lam``, ``da[t] = lam[t] * h[t-1]`` and
``dh0 = a[0] * lam[0]`` (complex conjugates of ``a`` and ``h`` for a complex recurrence),
instead of differentiating through the scan's tree.

Complex recurrences (the LRU's) are given as real/imaginary pairs, ``a=(a_re, a_im)``,
``b=(b_re, b_im)``, ``h0=(h_re, h_im)``, and return pairs: complex dtypes compile much
more slowly in associative scans.

Masks, with :func:`jaxrnn.unroll`'s meaning, enter the elements before the scan (so they
are part of the associative operator, in every mode):

* ``seq_lengths``: past its length a sequence's state is frozen, ``(a, b) = (1, 0)``,
  and its outputs are zero; the returned state is the one at the true length;
* ``resets``: ``resets[t]`` True means step ``t`` starts a new segment, the state
  entering it is ``reset_state`` (zeros by default): ``(a, b) = (0, a * r + b)``. With
  ``reverse=True`` each segment runs backwards from its own end, which starts from
  ``reset_state`` except for the last segment in time (which starts from ``h0``). No
  gradient crosses a segment boundary.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["linear_scan", "auto_mode", "MODES", "DEFAULT_CHUNK_SIZE"]

#: The evaluation modes of :func:`linear_scan`.
MODES = ("sequential", "associative", "chunked")

#: ``chunk_size`` when None: see :func:`linear_scan`.
DEFAULT_CHUNK_SIZE = 64


def auto_mode(T: int, backend: Optional[str] = None) -> str:
    """The mode ``mode="auto"`` picks for a sequence of ``T`` steps.

    * On the CPU, ``"sequential"``: ``benchmarks/parallel_scan.py`` on a 2-core CPU (B=4,
      H=32, T = 256 to 65,536, float32; a machine shared with other jobs, so ~10% noise)
      found the parallel modes slower than the sequential scan of the same recurrence:
      ``linear_scan`` associative 1.4-3.1x the sequential time forward and 1.5-2.5x
      fwd+bwd, chunked 1.6-3.2x and 0.9-3.4x; minGRU 0.9-3.0x (one point under 1, 0.87x
      forward at T=256; 2.3-2.7x at T=4,096 and 65,536), LRU 1.8-7.0x
      (``benchmarks/results/parallel_scan_cpu.md``). The parallel forms do ``O(log T)``
      times more arithmetic (associative) or extra passes over memory (chunked), and two
      cores cannot use the shorter depth.
    * On accelerators, ``"chunked"`` from ``T >= 256`` and ``"sequential"`` below. This is
      *not* measured by jaxrnn: it rests on one H100 measurement outside it
      (``jax.lax.associative_scan`` 67x faster than a sequential ``lax.scan`` at B=64,
      T=4,096, H=256) and on a sequential step costing a few microseconds of loop overhead
      there. The threshold 256 is a guess; ``mode=`` overrides it.

    Args:
      T: the number of time steps.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; None for ``jax.default_backend()``.

    Returns:
      ``"sequential"`` or ``"chunked"``.

    Example:
      >>> from jaxrnn.linear import auto_mode
      >>> auto_mode(4096, backend="cpu"), auto_mode(4096, backend="gpu"), auto_mode(16, backend="gpu")
      ('sequential', 'chunked', 'sequential')
    """
    backend = backend or jax.default_backend()
    if backend == "cpu" or int(T) < 256:
        return "sequential"
    return "chunked"


# --------------------------------------------------------------------------- public entry


def linear_scan(
    a,
    b,
    h0=None,
    *,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
    reset_state=None,
    reverse: bool = False,
    time_major: bool = False,
    mode: str = "sequential",
    chunk_size: Optional[int] = None,
):
    """The diagonal linear recurrence ``h[t] = a[t] * h[t-1] + b[t]`` over time.

    Args:
      a: coefficients, broadcastable to ``b``'s shape: ``[*batch, T, H]`` like ``b``, or
        for instance ``[H]`` or ``[*batch, 1, H]`` (constant over time) or ``[T, H]``
        (shared by the batch). A pair ``(a_re, a_im)`` for a complex recurrence.
      b: inputs, ``[*batch, T, H]`` (``[T, *batch, H]`` with ``time_major=True``;
        ``[T, H]`` for a single sequence). A pair ``(b_re, b_im)`` for a complex
        recurrence.
      h0: initial state, broadcastable to ``[*batch, H]``; None for zeros. A pair (or
        None) for a complex recurrence.
      seq_lengths: optional integer lengths ``[*batch]`` of right-padded sequences.
        Values are checked to lie in ``[0, T]`` when concrete; under ``jit`` a length
        above ``T`` acts as ``T`` and a negative one as 0.
      resets: optional bool ``[*batch, T]`` (``[T, *batch]`` with ``time_major``):
        True at ``t`` starts a new segment at step ``t`` (see the module docstring).
      reset_state: the state a segment starts from, broadcastable to ``[*batch, H]``
        (a pair for a complex recurrence); None for zeros.
      reverse: run each sequence from its last valid step back to its first; ``hs[t]``
        stays at position ``t``.
      time_major: layout of ``b``, ``resets`` and the returned ``hs`` (and of ``a`` when it
        has a time axis).
      mode: ``"sequential"``, ``"associative"`` or ``"chunked"`` (module docstring);
        ``"auto"`` for :func:`auto_mode`.
      chunk_size: steps per chunk for ``mode="chunked"``; None for
        :data:`DEFAULT_CHUNK_SIZE` (at most ``T``).

    Returns:
      ``(h, hs)``: the final state ``[*batch, H]`` (at each sequence's true length; the
      state after step 0 with ``reverse``; ``h0`` for a zero length) and all states
      ``[*batch, T, H]`` (or time-major), zero past each length. Both in float32 when the
      inputs are bfloat16/float16/float32 (the scan accumulates in float32 whatever the
      input dtype), float64 when any input is float64 (with ``jax_enable_x64``). Pairs for
      a complex recurrence.

    Raises:
      TypeError, ValueError: at trace time, naming the offending argument.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrnn.linear import linear_scan
      >>> a = jnp.full((2, 4, 3), 0.5)                  # [B, T, H]
      >>> b = jnp.ones((2, 4, 3))
      >>> h, hs = linear_scan(a, b, None, mode="associative", seq_lengths=jnp.array([4, 2]))
      >>> hs[0, :, 0].tolist(), hs[1, :, 0].tolist(), h[:, 0].tolist()
      ([1.0, 1.5, 1.75, 1.875], [1.0, 1.5, 0.0, 0.0], [1.875, 1.5])
    """
    if mode not in MODES + ("auto",):
        raise ValueError(f"`mode` must be one of {MODES + ('auto',)}; got {mode!r}.")
    cplx = isinstance(b, (tuple, list))
    b = _as_parts(b, "b", cplx)
    shape = tuple(b[0].shape)
    if len(shape) < 2:
        raise ValueError(f"`b` must have rank >= 2 ([T, H] at least); got shape {shape}.")
    if mode == "auto":
        mode = auto_mode(shape[0 if time_major or len(shape) == 2 else -2])
    a = _as_parts(a, "a", cplx)
    for name, parts in (("a", a), ("b", b)):
        for p in parts:
            if not _broadcasts_to(p.shape, shape):
                raise ValueError(f"`{name}` must broadcast to the shape of `b`, {shape}; got {tuple(p.shape)}.")
    h0 = None if h0 is None else _as_parts(h0, "h0", cplx)
    reset_state = None if reset_state is None else _as_parts(reset_state, "reset_state", cplx)
    dtype = _acc_dtype(*(p.dtype for group in (a, b, h0 or (), reset_state or ()) for p in group))

    # Time-major, [T, *batch, H], every array at full shape, in the accumulation dtype.
    batch_major = not time_major and len(shape) > 2
    to_tm = (lambda x: jnp.moveaxis(x, -2, 0)) if batch_major else (lambda x: x)
    b = tuple(to_tm(p.astype(dtype)) for p in b)
    # `a` constant in time (the LRU's lambda, [H]) stays as it is, without a time axis, when
    # nothing per step changes it (no resets; lengths only forwards, through `b` and the
    # final gather): neither the scan nor its VJP then holds a [T, *batch, H] copy of it.
    time_axis = 0 if (time_major or len(shape) == 2) else len(shape) - 2
    aligned = [p.reshape((1,) * (len(shape) - p.ndim) + tuple(p.shape)) for p in a]
    a_const = (all(p.shape[time_axis] == 1 for p in aligned) and resets is None
               and (seq_lengths is None or not reverse))
    if a_const:
        a = tuple(jnp.squeeze(p, time_axis).astype(dtype) for p in aligned)
    else:
        a = tuple(to_tm(jnp.broadcast_to(p.astype(dtype), shape)) for p in a)
    T, batch_shape, H = b[0].shape[0], tuple(b[0].shape[1:-1]), b[0].shape[-1]
    state_shape = batch_shape + (H,)
    h0 = _state(h0, state_shape, dtype, "h0", cplx)
    lengths = _check_lengths(seq_lengths, batch_shape, T)
    resets_T = _check_resets(resets, batch_shape, T, time_major or len(shape) == 2)
    chunk = _check_chunk(chunk_size, T) if mode == "chunked" else 0
    if reset_state is not None and resets_T is None:
        raise ValueError("`reset_state` was given without `resets`.")

    if T == 0:
        hs = tuple(jnp.zeros(b[0].shape, dtype) for _ in b)
        return _out(h0, cplx), _out(tuple(jnp.moveaxis(p, 0, -2) if batch_major else p for p in hs), cplx)

    t_idx = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * len(batch_shape))
    valid = None if lengths is None else t_idx < lengths  # [T, *batch]
    if resets_T is not None:
        if reverse:  # the state entering step t comes from step t+1: reset where t+1 starts a segment
            starts = jnp.concatenate([resets_T[1:], jnp.zeros_like(resets_T[:1])], axis=0)
            if valid is not None:
                starts = starts & (t_idx + 1 < lengths)
        else:
            starts = resets_T
        r = _state(reset_state, state_shape, dtype, "reset_state", cplx)
        s = starts[..., None]
        ar = _mul(a, r)
        b = tuple(jnp.where(s, x + y, y) for x, y in zip(ar, b))
        a = tuple(jnp.where(s, 0.0, p).astype(dtype) for p in a)
    if valid is not None:
        v = valid[..., None]
        if not a_const:  # identity steps past each length; with a constant `a`, see h_last
            a = tuple(jnp.where(v, p, 1.0 if i == 0 else 0.0).astype(dtype) for i, p in enumerate(a))
        b = tuple(jnp.where(v, p, 0.0).astype(dtype) for p in b)

    static = (mode, bool(reverse), chunk, cplx, a_const)
    hs = _scan(static, a, b, h0)
    h_last = tuple(p[0] if reverse else p[-1] for p in hs)
    if a_const and lengths is not None:  # (forwards) the state after each sequence's last step, h0 if none
        last = jnp.clip(lengths - 1, 0, T - 1)[None, ..., None]
        h_last = tuple(jnp.where((lengths > 0)[..., None], jnp.take_along_axis(p, last, axis=0)[0], q)
                       for p, q in zip(hs, h0))
    if valid is not None:
        hs = tuple(jnp.where(valid[..., None], p, 0.0).astype(dtype) for p in hs)
    if batch_major:
        hs = tuple(jnp.moveaxis(p, 0, -2) for p in hs)
    return _out(h_last, cplx), _out(hs, cplx)


# --------------------------------------------------------------------------- checks


def _acc_dtype(*dtypes) -> jnp.dtype:
    """float64 where any input is float64 (with ``jax_enable_x64``), float32 otherwise."""
    return jnp.dtype(jnp.float64 if any(jnp.dtype(d) == jnp.float64 for d in dtypes) else jnp.float32)


def _as_array(x, name: str) -> Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = jnp.asarray(x)
        except TypeError:
            raise TypeError(f"`{name}` must be an array; got {type(x).__name__}.") from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {x.dtype}.")
    return jnp.asarray(x)


def _as_parts(x, name: str, cplx: bool) -> tuple:
    """``(x,)`` for a real recurrence, ``(re, im)`` (same shapes) for a complex one."""
    if isinstance(x, (tuple, list)):
        if not cplx:
            raise TypeError(f"`{name}` is a {type(x).__name__} (a complex pair) but `b` is a real array; "
                            "give `b` as a (re, im) pair too, or `{name}` as one array.")
        if len(x) != 2:
            raise ValueError(f"`{name}` must be a (re, im) pair; got a {type(x).__name__} of length {len(x)}.")
        re, im = _as_array(x[0], f"{name}[0]"), _as_array(x[1], f"{name}[1]")
        if re.shape != im.shape:
            raise ValueError(f"`{name}`'s real and imaginary parts must have the same shape; "
                             f"got {tuple(re.shape)} and {tuple(im.shape)}.")
        return re, im
    if cplx:
        raise TypeError(f"`b` is a (re, im) pair, so `{name}` must be one too; got "
                        f"{'an array of shape ' + str(tuple(x.shape)) if hasattr(x, 'shape') else type(x).__name__}.")
    return (_as_array(x, name),)


def _broadcasts_to(src: tuple, dst: tuple) -> bool:
    if len(src) > len(dst):
        return False
    return all(s in (1, d) for s, d in zip(src[::-1], dst[::-1]))


def _state(parts, state_shape: tuple, dtype, name: str, cplx: bool) -> tuple:
    if parts is None:
        return tuple(jnp.zeros(state_shape, dtype) for _ in range(2 if cplx else 1))
    for p in parts:
        if not _broadcasts_to(tuple(p.shape), state_shape):
            raise ValueError(f"`{name}` must broadcast to [*batch, H] = {list(state_shape)}; got {tuple(p.shape)}.")
    return tuple(jnp.broadcast_to(p.astype(dtype), state_shape) for p in parts)


def _check_lengths(seq_lengths, batch_shape: tuple, T: int) -> Optional[Array]:
    if seq_lengths is None:
        return None
    if not hasattr(seq_lengths, "dtype"):
        seq_lengths = np.asarray(seq_lengths)
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"`seq_lengths` must be an integer array; got dtype {seq_lengths.dtype}.")
    if tuple(seq_lengths.shape) != batch_shape:
        raise ValueError(f"`seq_lengths` must have the batch shape {list(batch_shape)}; "
                         f"got {tuple(seq_lengths.shape)}.")
    # Out-of-range values act as the nearest bound, in jit or not (no host sync).
    return jnp.clip(jnp.asarray(seq_lengths, jnp.int32), 0, T)


def _check_resets(resets, batch_shape: tuple, T: int, time_major: bool) -> Optional[Array]:
    """``resets`` as bool ``[T, *batch]``."""
    if resets is None:
        return None
    if not hasattr(resets, "dtype"):
        resets = np.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise TypeError(f"`resets` must be a bool array; got dtype {resets.dtype}.")
    want = (T,) + batch_shape if time_major else batch_shape + (T,)
    if tuple(resets.shape) != want:
        layout = "[T, *batch]" if time_major else "[*batch, T]"
        raise ValueError(f"`resets` must have shape {layout} = {list(want)}; got {tuple(resets.shape)}.")
    resets = jnp.asarray(resets)
    return resets if time_major else jnp.moveaxis(resets, -1, 0)


def _check_chunk(chunk_size, T: int) -> int:
    if chunk_size is None:
        return max(1, min(DEFAULT_CHUNK_SIZE, T))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int or None; got {chunk_size!r}.")
    return int(min(chunk_size, max(T, 1)))


def _out(parts: tuple, cplx: bool):
    return tuple(parts) if cplx else parts[0]


# --------------------------------------------------------------------------- arithmetic on parts


def _mul(a: tuple, h: tuple) -> tuple:
    """``a * h`` for real ``(x,)`` or complex ``(re, im)`` parts."""
    if len(a) == 1:
        return (a[0] * h[0],)
    (ar, ai), (hr, hi) = a, h
    return ar * hr - ai * hi, ar * hi + ai * hr


def _conj(a: tuple) -> tuple:
    return a if len(a) == 1 else (a[0], -a[1])


def _add(x: tuple, y: tuple) -> tuple:
    return tuple(p + q for p, q in zip(x, y))


def _combine(first, second):
    """The associative operator: ``first`` then ``second``, each ``(a parts, b parts)``."""
    (a1, b1), (a2, b2) = first, second
    return _mul(a2, a1), _add(_mul(a2, b1), b2)


# --------------------------------------------------------------------------- the three modes


def _scan_impl(static, a: tuple, b: tuple, h0: tuple) -> tuple:
    """All states ``[T, ...]`` of the recurrence, time-major, no masking. With ``a_const``,
    ``a`` has no time axis (the same coefficient at every step)."""
    mode, reverse, chunk, _, a_const = static
    if a_const and mode == "sequential":
        def body_const(h, b_t):
            h = _add(_mul(a, h), b_t)
            return h, h

        _, hs = jax.lax.scan(body_const, h0, b, reverse=reverse)
        return hs
    if a_const:  # the parallel forms compose per step: a transient full-shape copy
        a = tuple(jnp.broadcast_to(p, q.shape) for p, q in zip(a, b))
    if mode == "sequential":
        def body(h, ab):
            h = _add(_mul(ab[0], h), ab[1])
            return h, h

        _, hs = jax.lax.scan(body, h0, (a, b), reverse=reverse)
        return hs
    if mode == "associative":
        return _associative(a, b, h0, reverse, axis=0)
    return _chunked(a, b, h0, reverse, chunk)


def _associative(a: tuple, b: tuple, h0: tuple, reverse: bool, axis: int) -> tuple:
    """The initial state folded into the first element (the last one with ``reverse``), then
    one ``jax.lax.associative_scan``; returns the ``b`` half of the prefix compositions."""
    first = -1 if reverse else 0
    idx = (slice(None),) * axis + (first,)
    h0_term = _mul(tuple(p[idx] for p in a), h0)
    b = tuple(p.at[idx].add(q) for p, q in zip(b, h0_term))
    _, hs = jax.lax.associative_scan(_combine, (a, b), reverse=reverse, axis=axis)
    return hs


def _chunked(a: tuple, b: tuple, h0: tuple, reverse: bool, K: int) -> tuple:
    T = a[0].shape[0]
    C = -(-T // K)
    pad = C * K - T
    if pad:  # identity steps at the end: (1, 0) leaves the state as it is, in either direction
        widths = ((0, pad),) + ((0, 0),) * (a[0].ndim - 1)
        a = tuple(jnp.pad(p, widths, constant_values=1.0 if i == 0 else 0.0) for i, p in enumerate(a))
        b = tuple(jnp.pad(p, widths) for p in b)
    rest = a[0].shape[1:]
    a = tuple(p.reshape((C, K) + rest) for p in a)
    b = tuple(p.reshape((C, K) + rest) for p in b)
    # Within every chunk at once: the composition from the chunk's entry to each step.
    A, B = jax.lax.associative_scan(_combine, (a, b), reverse=reverse, axis=1)
    exit_ = 0 if reverse else -1
    A_end, B_end = tuple(p[:, exit_] for p in A), tuple(p[:, exit_] for p in B)

    def across(h, ab):  # the state entering each chunk, chunk after chunk
        return _add(_mul(ab[0], h), ab[1]), h

    _, h_in = jax.lax.scan(across, h0, (A_end, B_end), reverse=reverse)
    hs = _add(_mul(A, tuple(p[:, None] for p in h_in)), B)
    return tuple(p.reshape((C * K,) + rest)[:T] for p in hs)


# --------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(static, a, b, h0):
    return _scan_impl(static, a, b, h0)


def _scan_fwd(static, a, b, h0):
    hs = _scan_impl(static, a, b, h0)
    return hs, (a, h0, hs)


def _scan_bwd(static, res, g):
    mode, reverse, chunk, cplx, a_const = static
    a, h0, hs = res
    if a_const:
        return _scan_bwd_const(static, a, h0, hs, tuple(g))
    zero = tuple(jnp.zeros_like(p[:1]) for p in a)
    ac = _conj(a)
    if reverse:  # h[t] = a[t] h[t+1] + b[t]: lam[t] = g[t] + conj(a[t-1]) lam[t-1], forwards
        a_next = tuple(jnp.concatenate([z, p[:-1]], axis=0) for z, p in zip(zero, ac))
        h_prev = tuple(jnp.concatenate([p[1:], q[None]], axis=0) for p, q in zip(hs, h0))
    else:        # lam[t] = g[t] + conj(a[t+1]) lam[t+1], backwards
        a_next = tuple(jnp.concatenate([p[1:], z], axis=0) for z, p in zip(zero, ac))
        h_prev = tuple(jnp.concatenate([q[None], p[:-1]], axis=0) for p, q in zip(hs, h0))
    g = tuple(g)
    lam = _scan_impl((mode, not reverse, chunk, cplx, False), a_next, g, tuple(jnp.zeros_like(p) for p in h0))
    da = _mul(lam, _conj(h_prev))
    first = -1 if reverse else 0
    dh0 = _mul(tuple(p[first] for p in ac), tuple(p[first] for p in lam))
    return tuple(da), tuple(lam), tuple(dh0)


def _scan_bwd_const(static, a, h0, hs, g):
    """The VJP with ``a`` constant in time: ``lam`` runs the same recurrence backwards from a
    zero state (``lam[T-1] = g[T-1]``), and ``da`` sums ``lam * conj(h_prev)`` over time and
    over the axes along which ``a`` was broadcast."""
    mode, reverse, chunk, cplx, _ = static
    ac = _conj(a)
    lam = _scan_impl((mode, not reverse, chunk, cplx, True), ac, g, tuple(jnp.zeros_like(p) for p in h0))
    if reverse:
        h_prev = tuple(jnp.concatenate([p[1:], q[None]], axis=0) for p, q in zip(hs, h0))
    else:
        h_prev = tuple(jnp.concatenate([q[None], p[:-1]], axis=0) for p, q in zip(hs, h0))
    da = tuple(_sum_to(p.sum(0), q.shape) for p, q in zip(_mul(lam, _conj(h_prev)), a))
    first = -1 if reverse else 0
    dh0 = tuple(_sum_to(p, q.shape) for p, q in zip(_mul(ac, tuple(p[first] for p in lam)), h0))
    return da, tuple(lam), dh0


def _sum_to(x, shape):
    """``x`` summed over the axes along which an array of ``shape`` was broadcast to it."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    return x.sum(axes).reshape(shape) if axes else x


_scan.defvjp(_scan_fwd, _scan_bwd)
