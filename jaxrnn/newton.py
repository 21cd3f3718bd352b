"""Newton evaluation of nonlinear recurrences: a whole trajectory in parallel over time.

A recurrence ``h_t = f(h_{t-1}, x_t)`` is a system of ``T`` equations in the unknown
trajectory ``h = (h_0, ..., h_{T-1})``. Newton's method solves all of them at once
(DEER, Lim et al. ICLR 2024): linearise every step around the current guess ``h^(k)``
and solve the resulting *linear* recurrence exactly, which an associative scan does in
``O(log T)`` depth::

    h^(k+1)_t = J_t h^(k+1)_{t-1} + [f(h^(k)_{t-1}, x_t) - J_t h^(k)_{t-1}],
    J_t = df/dh evaluated at (h^(k)_{t-1}, x_t).

Each iteration costs one evaluation of the cell at every time step (batched over
``T``, no loop), its Jacobian, and one associative scan. With ``jacobian="diagonal"``
(quasi-DEER, Gonzalez et al. NeurIPS 2024; the default) only the diagonal of ``J_t`` is
used: ``O(T*D)`` memory for a flattened state of size ``D`` and an elementwise scan.
The fixed point is the same (the exact trajectory), only the convergence is slower.
``jacobian="dense"`` uses the full ``D x D`` Jacobian (``O(T*D^2)`` memory, ``D^3``
matrix products in the scan): quadratic convergence, for small states only.

Why it ends: step ``t`` of iterate ``k`` is exact once steps ``< t`` are, so after at
most ``T`` iterations the whole trajectory is the sequential one, whatever the
dynamics (up to floating-point rounding). It *pays* when far fewer iterations are
needed -- contractive dynamics (trained GRUs and LSTMs usually are), long sequences,
and hardware with parallelism to spare (GPUs, TPUs), where ``K`` iterations of
``O(log T)`` depth beat ``T`` dependent steps. It does **not** pay on a CPU: every
iteration does more than the work of a whole sequential pass. ``benchmarks/newton_scan.py``
on 2 (busy) CPU cores, PyTorch-initialised GRU, B=4 I=32 H=64: 9 iterations at every T
from 256 to 65536, and over two runs 2.6-20.7x the sequential time forward, 5.0-26.2x
forward+backward (at T=65536: 20-21x and 15-17x).
Nor does it pay for non-contractive (chaotic, or large-weight) cells, which need close
to ``T`` iterations.

The Jacobian diagonal comes, in this order of preference, from

* the cell's optional method ``jacobian_diagonal(params, h, x)`` (a pytree like ``h``),
  which the built-in ``jaxrnn.rnn/gru/lstm`` cells have, in closed form (about the cost
  of one more step);
* otherwise forward-mode ``jax.jvp`` of the step with one basis vector per state entry: ``D``
  Jacobian-vector products per time step and iteration (about ``2D`` step evaluations;
  fine for small states, costly for large ones -- give such a cell a
  ``jacobian_diagonal``). The dense Jacobian always comes from ``D`` such products.

Ragged lengths, resets and ``reverse`` have exactly :func:`jaxrnn.unroll`'s meaning:
a step past a sequence's length is the identity (``J_t = I``, no offset), so the state
freezes there; a reset replaces the state entering the step by ``reset_state``
(``J_t = 0`` and ``f(reset_state, x_t)`` as the offset); ``reverse=True`` runs the
same recurrence backwards in time (with resets, each segment from its end, the last
one from ``h``).

The gradient is a custom VJP by one *transposed linear solve* at the solution, with no
backpropagation through the iterations: the cotangents ``lam`` of the trajectory satisfy
the adjoint recurrence ``lam_{t-1} = g_{t-1} + J_t^T lam_t + c_t`` (``g`` from the
final state, ``c`` from the outputs), the reversed linear recurrence of the forward. With
``jacobian="dense"`` it is solved by one reversed matrix scan with the exact ``J_t^T``.
With ``jacobian="diagonal"`` the *exact* transposed products ``J_t^T lam_t`` (a batched
VJP of the step over all ``t`` at once) enter the same quasi-Newton iteration as the
forward, preconditioned by the diagonal: a linear system, so it converges at least as
surely as the forward (exactly after at most ``T`` iterations), usually in a few.
The gradient is therefore exact to the tolerance; forward-mode differentiation
(``jax.jvp``) of :func:`newton_unroll` is not supported.

Example:
  >>> import jax, jax.numpy as jnp, jaxrnn
  >>> from jaxrnn.newton import Newton, newton_unroll
  >>> cell = jaxrnn.gru(8)
  >>> params = cell.init(jax.random.key(0), input_size=3)
  >>> xs = jax.random.normal(jax.random.key(1), (64, 2, 3))        # [T, B, I]
  >>> h0 = cell.initial_state((2,))
  >>> (h, ys), info = newton_unroll(cell, params, h0, xs, return_info=True)
  >>> h.shape, ys.shape
  ((2, 8), (64, 2, 8))
  >>> def seq(h, x):
  ...     h, y = cell.step(params, h, x)
  ...     return h, y
  >>> h_ref, ys_ref = jax.lax.scan(seq, h0, xs)
  >>> bool(jnp.abs(ys - ys_ref).max() < 1e-5), int(info.iterations) < 64
  (True, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.contract import uses

Array = jax.Array

__all__ = ["Newton", "NewtonInfo", "newton_unroll", "newton_run"]

_JACOBIANS = ("diagonal", "dense")
_SCANS = ("doubling", "associative", "chunked")


@dataclasses.dataclass(frozen=True)
class Newton:
    """Options of the Newton (DEER / quasi-DEER) evaluation; hashable, so static under jit.

    Attributes:
      tol: convergence tolerance on the fixed-point residual, relative per entry:
        the iteration stops once ``|F(h) - h| <= tol * (1 + |F(h)|)`` everywhere, where
        ``F`` is one sequential step applied to every time step of the iterate ``h``.
        None picks ``1e-5`` for float32 states and ``1e-10`` for float64. The returned
        trajectory is ``F(h)``, one step beyond the converged iterate. Its error is
        about the residual divided by ``1 - rho``, ``rho`` the rate at which the cell
        forgets its state: lower ``tol`` for slowly forgetting cells (a leaky average
        with decay 0.95 needs ``tol=1e-6`` for errors below 5e-5). The adjoint
        (gradient) solve uses the same tolerance, relative to the largest cotangent.
      max_iters: iteration cap; None means ``T``, with which the result is always the
        sequential one (to rounding). Values above ``T`` act as ``T``.
      jacobian: ``"diagonal"`` (quasi-DEER, the default) or ``"dense"`` (small states).
      damping: ``lambda >= 0``; the linearisation uses ``J_t / (1 + lambda)``, which
        interpolates between Newton (0) and the Jacobi/Picard iteration
        ``h^(k+1)_t = f(h^(k)_{t-1})`` (large ``lambda``), always stable. The fixed point
        is unchanged. A trust-region-like damping in the spirit of ELK (Gonzalez et al.
        2024), not ELK's Kalman smoother.
      clip: if set, iterates are clipped to ``[-clip, clip]`` after every scan, against
        divergence of the linearised recurrence; it must bound the true states, or the
        answer changes. Non-finite iterate entries are always replaced by zeros.
      scan: how each linear recurrence is solved: ``"doubling"`` (Hillis-Steele rounds in
        a ``lax.fori_loop``, ``O(T log T)`` work, fast to compile), ``"associative"``
        (``jax.lax.associative_scan``, ``O(T)`` work, an unrolled tree that is slow to
        compile on the CPU) or ``"chunked"`` (:func:`jaxrnn.linear.linear_scan`'s chunked
        mode; diagonal Jacobian only). One diagonal scan of ``[T, 4, 64]`` on 2 busy CPU
        cores: T=1024 doubling 4.3 ms (compile 0.6 s), chunked 2.4 ms (5.7 s),
        associative 1.6 ms (5.7 s); T=16384 doubling 645 ms (0.9 s), chunked 197 ms
        (4.7 s), associative 236 ms (8.6 s). Unmeasured on accelerators.
    """

    tol: Optional[float] = None
    max_iters: Optional[int] = None
    jacobian: str = "diagonal"
    damping: float = 0.0
    clip: Optional[float] = None
    scan: str = "doubling"

    def __post_init__(self):
        if self.tol is not None and not (isinstance(self.tol, (int, float, np.floating)) and self.tol > 0):
            raise ValueError(f"`tol` must be a positive float or None; got {self.tol!r}.")
        if self.max_iters is not None and not (
            isinstance(self.max_iters, (int, np.integer)) and not isinstance(self.max_iters, bool)
            and self.max_iters >= 1
        ):
            raise ValueError(f"`max_iters` must be a positive int or None; got {self.max_iters!r}.")
        if self.jacobian not in _JACOBIANS:
            raise ValueError(f"`jacobian` must be one of {_JACOBIANS}; got {self.jacobian!r}.")
        if not (isinstance(self.damping, (int, float, np.floating)) and self.damping >= 0):
            raise ValueError(f"`damping` must be a non-negative float; got {self.damping!r}.")
        if self.clip is not None and not (isinstance(self.clip, (int, float, np.floating)) and self.clip > 0):
            raise ValueError(f"`clip` must be a positive float or None; got {self.clip!r}.")
        if self.scan not in _SCANS:
            raise ValueError(f"`scan` must be one of {_SCANS}; got {self.scan!r}.")
        if self.scan == "chunked" and self.jacobian == "dense":
            raise ValueError("`scan='chunked'` solves diagonal recurrences only; use it with jacobian='diagonal'.")


class NewtonInfo(NamedTuple):
    """What the forward solve did: ``iterations`` (int32, the Newton steps taken: linear
    solves whose result was evaluated, at most ``max_iters``) and ``residual`` (the
    relative fixed-point residual of the last iterate, see :attr:`Newton.tol`)."""

    iterations: Array
    residual: Array


# --------------------------------------------------------------------------- public


def newton_unroll(cell, params, h, xs: Array, *, seq_lengths: Optional[Array] = None,
                  resets: Optional[Array] = None, reset_state=None, reverse: bool = False,
                  options: Newton = Newton(), num_feature_axes: Optional[int] = None,
                  return_info: bool = False):
    """Runs ``cell`` over a time-major sequence by Newton's method (see module doc).

    The result equals the sequential unroll::

        for t in range(T):                      # reversed(range(T)) with reverse=True
            if t < seq_lengths:
                if resets[t]: h = reset_state   # reverse: if resets[t + 1] and t + 1 < length
                h, ys[t] = step(params, h, xs[t])
            else:
                ys[t] = 0
        return h, ys

    Args:
      cell: a plain function ``step(params, h, x) -> (h, y)`` or an object with
        ``.step`` (and optionally ``project``/``update``, ``jacobian_diagonal``,
        ``num_feature_axes``).
      params: the cell's params (any pytree).
      h: the initial state, any pytree whose leaves have the batch dims of ``xs``
        in front (not None).
      xs: inputs, time-major ``[T, *batch, input_size]`` (``[T, *batch, *features]``
        with ``num_feature_axes`` feature axes).
      seq_lengths: optional int ``[*batch]`` lengths in ``[0, T]`` (under jit, clipped).
      resets: optional bool ``[T, *batch]``; True at ``t`` starts a new segment at ``t``.
      reset_state: the state a reset starts from: a pytree like ``h`` (leaves
        broadcastable to ``h``'s); None means zeros.
      reverse: run each sequence from its last valid step to its first.
      options: a :class:`Newton`.
      num_feature_axes: feature axes of each ``x``; None reads
        ``cell.num_feature_axes`` (default 1).
      return_info: also return a :class:`NewtonInfo`.

    Returns:
      ``(h_final, ys)`` -- the state at each sequence's true length (its initial
      state for length 0) and the outputs ``[T, *batch, F]``, zero past each length;
      with ``return_info``, ``((h_final, ys), info)``.

    Raises:
      TypeError, ValueError: at trace time, naming the offending argument.
    """
    if not isinstance(options, Newton):
        raise TypeError(f"`options` must be a jaxrnn.newton.Newton; got {type(options).__name__}.")
    step_fn = _step_of(cell)
    nfa = num_feature_axes if num_feature_axes is not None else getattr(cell, "num_feature_axes", 1)
    if not isinstance(nfa, (int, np.integer)) or nfa < 1:
        raise ValueError(f"`num_feature_axes` must be a positive int; got {nfa!r}.")
    if h is None:
        raise TypeError("`h` must be a state pytree (resolve None to the cell's initial state first); got None.")
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"`xs` must be an array; got {type(xs).__name__}.")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"`xs` must be a floating-point array; got dtype {xs.dtype}.")
    if xs.ndim < 1 + nfa:
        raise ValueError(
            f"`xs` must be time-major [T, *batch, *features] with {nfa} feature axes; got shape {tuple(xs.shape)}."
        )
    T = int(xs.shape[0])
    batch_shape = tuple(xs.shape[1: xs.ndim - nfa])
    feat_shape = tuple(xs.shape[xs.ndim - nfa:])
    N = math.prod(batch_shape)
    spec = _StateSpec.of(h, batch_shape)
    lengths = _check_lengths(seq_lengths, batch_shape, T)
    resets = _check_resets(resets, batch_shape, T)
    h0 = spec.flatten(h)                                            # [N, D]
    r = jnp.zeros_like(h0) if reset_state is None else spec.flatten(_broadcast_like(reset_state, h, "reset_state"))
    xs_TNI = jnp.asarray(xs).reshape((T, N) + feat_shape)

    if T == 0 or N == 0:
        y_sd = jax.eval_shape(lambda p, hh, x: step_fn(p, hh, x)[1], params, spec.unflatten(h0),
                              jax.ShapeDtypeStruct((N,) + feat_shape, xs.dtype))
        ys = jax.tree.map(lambda s: jnp.zeros((T,) + batch_shape + s.shape[1:], s.dtype), y_sd)
        out = (h, ys)
        info = NewtonInfo(jnp.int32(0), jnp.zeros((), h0.dtype))
        return (out, info) if return_info else out

    t_idx = jnp.arange(T, dtype=jnp.int32)[:, None]                 # [T, 1]
    L = jnp.full((N,), T, jnp.int32) if lengths is None else lengths
    valid = t_idx < L[None, :]                                      # [T, N]
    rs = jnp.zeros((T, N), bool) if resets is None else resets
    if reverse:
        nxt = jnp.concatenate([rs[1:], jnp.zeros((1, N), bool)], axis=0)
        reset_in = nxt & (t_idx + 1 < L[None, :])
        first = t_idx == (L[None, :] - 1)
    else:
        reset_in = rs & valid
        first = jnp.broadcast_to(t_idx == 0, (T, N))

    static = _Static(step_fn, getattr(cell, "project", None) if _has_update(cell) else None,
                     getattr(cell, "update", None) if _has_update(cell) else None,
                     _diagonal_fn(cell), spec, options, bool(reverse), T)
    H, Y, iters, res = _solve(static, params, xs_TNI, h0, r, valid, reset_in, first)
    h_last = H[0] if reverse else H[T - 1]
    h_final = spec.unflatten(h_last, batch_shape)
    ys = jax.tree.map(lambda y: y.reshape((T,) + batch_shape + y.shape[2:]), Y)
    out = (h_final, ys)
    return (out, NewtonInfo(iters, res)) if return_info else out


def newton_run(cell, params, h, xs_T: Array, *, seq_lengths=None, resets=None, reset_state=None,
               reverse: bool = False, options: Newton = Newton()):
    """:func:`newton_unroll` without the info: ``(h_final, ys_T)``, time-major, for
    ``jaxrnn.unroll(..., mode="newton" | Newton(...))``."""
    return newton_unroll(cell, params, h, xs_T, seq_lengths=seq_lengths, resets=resets, reset_state=reset_state,
                         reverse=reverse, options=options)


# --------------------------------------------------------------------------- checks, state layout


def _step_of(cell) -> Callable:
    step = getattr(cell, "step", None)
    if callable(step):
        return step
    if callable(cell):
        return cell
    raise TypeError(
        f"`cell` must be a function step(params, h, x) -> (h, y) or an object with a .step method; "
        f"got {type(cell).__name__}."
    )


def _has_update(cell) -> bool:
    return uses(cell, "project", "update")


def _check_lengths(seq_lengths, batch_shape, T):
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
    # Out-of-range values act as the nearest bound, in jit or not (no host sync).
    return jnp.clip(jnp.asarray(seq_lengths, jnp.int32), 0, T).reshape(-1)


def _check_resets(resets, batch_shape, T):
    if resets is None:
        return None
    if not hasattr(resets, "dtype"):
        resets = np.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise TypeError(f"`resets` must be a bool array; got dtype {resets.dtype}.")
    want = (T,) + tuple(batch_shape)
    if tuple(resets.shape) != want:
        raise ValueError(f"`resets` must have shape [T, *batch] = {list(want)} (time-major); got {tuple(resets.shape)}.")
    return jnp.asarray(resets).reshape(T, -1)


def _broadcast_like(value, like, name):
    try:
        return jax.tree.map(lambda v, l: jnp.broadcast_to(jnp.asarray(v, l.dtype), l.shape), value, like)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`{name}` must be a pytree like `h` ({jax.tree.structure(like)}) with leaves broadcastable to "
            f"its leaves' shapes {[tuple(l.shape) for l in jax.tree.leaves(like)]}; got "
            f"{jax.tree.structure(value)} with shapes {[np.shape(v) for v in jax.tree.leaves(value)]}."
        ) from e


@dataclasses.dataclass(frozen=True)
class _StateSpec:
    """A state pytree as one ``[N, D]`` vector per batch element (leaves concatenated)."""

    treedef: Any
    feature_shapes: tuple
    dtypes: tuple
    dtype: Any

    @staticmethod
    def of(h, batch_shape):
        leaves, treedef = jax.tree.flatten(h)
        if not leaves:
            raise ValueError("`h` must have at least one array leaf; got an empty pytree.")
        nb = len(batch_shape)
        for leaf in leaves:
            if not hasattr(leaf, "shape") or not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"`h` leaves must be floating-point arrays; got {getattr(leaf, 'dtype', type(leaf))}.")
            if tuple(leaf.shape[:nb]) != tuple(batch_shape):
                raise ValueError(
                    f"`h` leaves must have the batch dims of `xs`, {list(batch_shape)}, in front; got a leaf of "
                    f"shape {tuple(leaf.shape)}."
                )
        dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
        return _StateSpec(treedef, tuple(tuple(l.shape[nb:]) for l in leaves), tuple(l.dtype for l in leaves), dtype)

    @property
    def sizes(self):
        return tuple(math.prod(s) for s in self.feature_shapes)

    def flatten(self, h) -> Array:
        leaves = jax.tree.leaves(h)
        nb = leaves[0].ndim - len(self.feature_shapes[0])
        N = math.prod(leaves[0].shape[:nb])
        return jnp.concatenate([jnp.asarray(l, self.dtype).reshape(N, -1) for l in leaves], axis=-1)

    def flatten_leaves(self, leaves, M) -> Array:
        return jnp.concatenate([jnp.asarray(l, self.dtype).reshape(M, -1) for l in leaves], axis=-1)

    def unflatten(self, v: Array, batch_shape=None):
        M = v.shape[0]
        lead = (M,) if batch_shape is None else tuple(batch_shape)
        parts = jnp.split(v, np.cumsum(self.sizes)[:-1], axis=-1)
        leaves = [p.reshape(lead + s).astype(d) for p, s, d in zip(parts, self.feature_shapes, self.dtypes)]
        return jax.tree.unflatten(self.treedef, leaves)


# --------------------------------------------------------------------------- the step, batched over time


@dataclasses.dataclass(frozen=True, eq=False)
class _Static:
    step: Callable
    project: Optional[Callable]
    update: Optional[Callable]
    diagonal: Optional[Callable]
    spec: _StateSpec
    options: Newton
    reverse: bool
    T: int


def _inputs(static, params, xs):
    """What the step reads each iteration: ``(xs, gx)``, the input projection hoisted."""
    return (xs, None if static.project is None else static.project(params, xs))


def _cell_flat(static, params, inp, hprev):
    """One step at every ``(t, n)`` at once: ``hprev [T, N, D] -> (h [T, N, D], y)``."""
    xs, gx = inp
    T, N, D = hprev.shape
    M = T * N
    h_tree = static.spec.unflatten(hprev.reshape(M, D))
    if gx is not None:
        h_new, y = static.update(params, h_tree, gx.reshape((M,) + gx.shape[2:]))
    else:
        h_new, y = static.step(params, h_tree, xs.reshape((M,) + xs.shape[2:]))
    h_new = static.spec.flatten_leaves(jax.tree.leaves(h_new), M).reshape(T, N, D)
    y = jax.tree.map(lambda a: a.reshape((T, N) + a.shape[1:]), y)
    return h_new, y


def _phi(static, params, inp, r, hp, valid, reset_in):
    """The masked step at every time: ``F(hp)`` and the outputs (zero past each length)."""
    prev = jnp.where(reset_in[..., None], r[None], hp)
    h_new, y = _cell_flat(static, params, inp, prev)
    H = jnp.where(valid[..., None], h_new, hp)
    Y = jax.tree.map(lambda a: jnp.where(valid.reshape(valid.shape + (1,) * (a.ndim - 2)), a, jnp.zeros((), a.dtype)),
                     y)
    return H, Y


def _jacobian(static, params, inp, r, hp, valid, reset_in, dense: bool):
    """``dF_t/dhp_t``: diagonal ``[T, N, D]`` or dense ``[T, N, D, D]``, with masks applied
    (identity past a length, zero at a reset)."""
    xs, gx = inp
    T, N, D = hp.shape
    M = T * N
    prev = jnp.where(reset_in[..., None], r[None], hp).reshape(M, D)
    if not dense and static.diagonal is not None:
        d = static.diagonal(params, static.spec.unflatten(prev), xs.reshape((M,) + xs.shape[2:]))
        J = static.spec.flatten_leaves(jax.tree.leaves(d), M)
    else:
        def f(v):
            return _cell_flat(static, params, inp, v.reshape(T, N, D))[0].reshape(M, D)

        J = _jvp_columns(f, prev, diagonal_only=not dense)
    if dense:
        J = J.reshape(T, N, D, D)
        eye = jnp.eye(D, dtype=J.dtype)
        J = jnp.where(reset_in[..., None, None], 0.0, J)
        return jnp.where(valid[..., None, None], J, eye)
    J = J.reshape(T, N, D)
    J = jnp.where(reset_in[..., None], 0.0, J)
    return jnp.where(valid[..., None], J, 1.0)


def _jvp_columns(f, h, *, diagonal_only: bool):
    """Columns ``J e_j`` of ``J = df/dh`` for ``f: [M, D] -> [M, D]`` acting row by row,
    by ``D`` forward-mode products in batches bounded to ~16M elements each. Returns the
    diagonal ``[M, D]`` or the Jacobian ``[M, D, D]`` (``[m, i, j] = df_i/dh_j``)."""
    M, D = h.shape
    eye = jnp.eye(D, dtype=h.dtype)

    def column(j):
        _, t = jax.jvp(f, (h,), (jnp.broadcast_to(eye[j], h.shape),))
        return t[:, j] if diagonal_only else t

    batch = max(1, min(D, (1 << 24) // max(1, M * D)))
    cols = jax.lax.map(column, jnp.arange(D), batch_size=batch)       # [D, M] or [D, M, D]
    return cols.T if diagonal_only else jnp.moveaxis(cols, 0, -1)


# --------------------------------------------------------------------------- scans


def _shift(X, h0, reverse):
    """The state entering each step: ``X_{t-1}`` (``h0`` at ``t = 0``); reversed, ``X_{t+1}``."""
    if reverse:
        return jnp.concatenate([X[1:], h0[None]], axis=0)
    return jnp.concatenate([h0[None], X[:-1]], axis=0)


def _shift_t(X, reverse):
    """Transpose of :func:`_shift` without the ``h0`` slot (the cotangent flowing to ``h0``
    is ``X[0]``, reversed ``X[-1]``)."""
    zero = jnp.zeros_like(X[:1])
    if reverse:
        return jnp.concatenate([zero, X[:-1]], axis=0)
    return jnp.concatenate([X[1:], zero], axis=0)


def _linear_scan(a, b, reverse: bool, method: str = "doubling"):
    """``h_t = a_t h_{t-1} + b_t`` from ``h_{-1} = 0`` over axis 0 (from the end with
    ``reverse``); ``a`` elementwise ``[T, ..., D]`` or matrices ``[T, ..., D, D]``.

    ``method="doubling"`` (Hillis-Steele): ``ceil(log2 T)`` rounds, each combining every
    element with the one ``2^d`` steps earlier, in a ``lax.fori_loop`` -- ``O(T log T)``
    work, one small loop body to compile (0.5 s on 2 CPU cores at any ``T``).
    ``method="associative"``: ``jax.lax.associative_scan`` (Blelloch-style, ``O(T)``
    work), whose unrolled tree took 4-11 s to compile on 2 CPU cores for T = 512-65536.
    ``method="chunked"``: :func:`jaxrnn.linear.linear_scan` (diagonal only).
    """
    dense = a.ndim == b.ndim + 1

    def combine(e1, e2):  # e1 earlier in scan order
        a1, b1 = e1
        a2, b2 = e2
        if dense:
            return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2
        return a2 * a1, a2 * b1 + b2

    if method == "associative":
        return jax.lax.associative_scan(combine, (a, b), reverse=reverse)[1]
    if method == "chunked":
        from jaxrnn.linear import linear_scan

        return linear_scan(a, b, None, reverse=reverse, time_major=True, mode="chunked")[1]
    T = a.shape[0]
    rounds = (T - 1).bit_length()
    idx = jnp.arange(T, dtype=jnp.int32)
    eye = jnp.eye(a.shape[-1], dtype=a.dtype) if dense else jnp.ones((), a.dtype)

    def body(d, ab):
        a, b = ab
        s = jnp.left_shift(jnp.int32(1), d)
        has = (idx < T - s) if reverse else (idx >= s)   # an element s steps earlier in scan order
        shift = -s if reverse else s
        ha = has.reshape((T,) + (1,) * (a.ndim - 1))
        hb = has.reshape((T,) + (1,) * (b.ndim - 1))
        a_prev = jnp.where(ha, jnp.roll(a, shift, axis=0), eye)
        b_prev = jnp.where(hb, jnp.roll(b, shift, axis=0), 0.0)
        return combine((a_prev, b_prev), (a, b))

    return jax.lax.fori_loop(0, rounds, body, (a, b))[1]


def _residual(F, H):
    return jnp.max(jnp.abs(F - H) / (1.0 + jnp.abs(F)))


def _tol(options, dtype):
    if options.tol is not None:
        return options.tol
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


# --------------------------------------------------------------------------- the solve and its VJP


def _forward(static, params, xs, h0, r, valid, reset_in, first):
    opts = static.options
    dense = opts.jacobian == "dense"
    T = static.T
    max_iters = T if opts.max_iters is None else min(int(opts.max_iters), T)
    tol = _tol(opts, h0.dtype)
    inp = _inputs(static, params, xs)
    known = first | reset_in   # the state entering these steps is known exactly: no linearisation

    def evaluate(H):
        hp = _shift(H, h0, static.reverse)
        F, Y = _phi(static, params, inp, r, hp, valid, reset_in)
        a = _jacobian(static, params, inp, r, hp, valid, reset_in, dense)
        if opts.damping:
            a = jnp.where(valid[..., None, None] if dense else valid[..., None], a / (1.0 + opts.damping), a)
        a = jnp.where(known[..., None, None] if dense else known[..., None], 0.0, a)
        return hp, F, Y, a

    # The loop evaluates F (and J) at the iterate, stops if it is converged, and otherwise
    # takes the Newton step; so F is traced once and the last scan's result is unused.
    def cond(c):
        k, _, _, _, res = c
        return (k <= max_iters) & ~(res <= tol)

    def body(c):
        k, H, _, _, _ = c
        hp, F, Y, a = evaluate(H)
        b = F - (jnp.einsum("...ij,...j->...i", a, hp) if dense else a * hp)
        # h_{-1} = h0 enters through the first element in scan order.
        i0 = T - 1 if static.reverse else 0
        b = b.at[i0].add(jnp.einsum("...ij,...j->...i", a[i0], h0) if dense else a[i0] * h0)
        Hn = _linear_scan(a, b, static.reverse, opts.scan)
        Hn = jnp.where(jnp.isfinite(Hn), Hn, 0.0)
        if opts.clip is not None:
            Hn = jnp.clip(Hn, -opts.clip, opts.clip)
        return k + 1, Hn, F, Y, _residual(F, H)

    H0 = jnp.zeros((T,) + h0.shape, h0.dtype)
    Y0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      jax.eval_shape(lambda: _phi(static, params, inp, r, H0, valid, reset_in)[1]))
    init = (jnp.int32(0), H0, H0, Y0, jnp.array(jnp.inf, h0.dtype))
    k, _, F, Y, res = jax.lax.while_loop(cond, body, init)
    return F, Y, k - 1, res


def _adjoint(static, params, xs, h0, r, valid, reset_in, F, gF, gY):
    """Cotangents of ``(params, xs, h0, r)`` from those of the trajectory and outputs."""
    opts = static.options
    dense = opts.jacobian == "dense"
    T, rev = static.T, static.reverse
    max_iters = T if opts.max_iters is None else min(int(opts.max_iters), T)
    tol = _tol(opts, h0.dtype)
    hp = _shift(F, h0, rev)
    inp = _inputs(static, params, xs)
    _, vjp_hp = jax.vjp(lambda v: _phi(static, params, inp, r, v, valid, reset_in), hp)
    gY = jax.tree.map(lambda g, y: jnp.zeros(y.shape, y.dtype) if g is None else g, gY,
                      jax.eval_shape(lambda: _phi(static, params, inp, r, hp, valid, reset_in)[1]))
    c = vjp_hp((jnp.zeros_like(F), gY))[0]           # the outputs' contribution to each hp_t
    A = _jacobian(static, params, inp, r, hp, valid, reset_in, dense)
    if dense:
        alpha = _shift_t(jnp.swapaxes(A, -1, -2), rev)
        lam = _linear_scan(alpha, gF + _shift_t(c, rev), not rev, opts.scan)
    else:
        alpha = _shift_t(A, rev)

        def P(lam):
            return vjp_hp((lam, gY))[0]

        def cond(cst):
            k, _, _, res = cst
            return (k <= max_iters) & ~(res <= tol)

        def body(cst):
            k, lam, _, _ = cst
            Plam = P(lam)
            step = gF + _shift_t(Plam, rev)              # one exact adjoint step from lam
            res = jnp.max(jnp.abs(step - lam)) / jnp.maximum(jnp.max(jnp.abs(step)), jnp.finfo(lam.dtype).tiny)
            lam_new = _linear_scan(alpha, gF + _shift_t(Plam - A * lam, rev), not rev, opts.scan)
            lam_new = jnp.where(jnp.isfinite(lam_new), lam_new, 0.0)
            return k + 1, lam_new, step, res

        # As in the forward: the result is the exact step from the converged iterate.
        zero = jnp.zeros_like(F)
        _, _, lam, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), zero, zero, jnp.array(jnp.inf, F.dtype)))

    def full(params, xs, r, hp):
        return _phi(static, params, _inputs(static, params, xs), r, hp, valid, reset_in)

    _, vjp_all = jax.vjp(full, params, xs, r, hp)
    g_params, g_xs, g_r, g_hp = vjp_all((lam, gY))
    g_h0 = g_hp[-1] if rev else g_hp[0]
    return g_params, g_xs, g_h0, g_r


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(static, params, xs, h0, r, valid, reset_in, first):
    return _forward(static, params, xs, h0, r, valid, reset_in, first)


def _solve_fwd(static, params, xs, h0, r, valid, reset_in, first):
    out = _forward(static, params, xs, h0, r, valid, reset_in, first)
    return out, (params, xs, h0, r, valid, reset_in, out[0])


def _solve_bwd(static, saved, g):
    params, xs, h0, r, valid, reset_in, F = saved
    g_params, g_xs, g_h0, g_r = _adjoint(static, params, xs, h0, r, valid, reset_in, F, g[0], g[1])
    return g_params, g_xs, g_h0, g_r, None, None, None


_solve.defvjp(_solve_fwd, _solve_bwd)


# --------------------------------------------------------------------------- Jacobian diagonals


def _diagonal_fn(cell) -> Optional[Callable]:
    """The cell's ``jacobian_diagonal(params, h, x)`` (a pytree like ``h``), or None for
    the forward-mode diagonal."""
    return cell.jacobian_diagonal if uses(cell, "jacobian_diagonal") else None
