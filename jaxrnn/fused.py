"""The fused path of the built-in cells (``rnn``, ``gru``, ``lstm``): cuDNN's design in XLA.

:func:`jaxrnn.unroll` runs a cell here when the cell says it can (``cell.fused``, the
built-in :class:`jaxrnn.Cell` subclasses); every other cell runs on the generic path
in :mod:`jaxrnn.scan`, which computes the same thing in the plainest way. Two things make
this path fast:

* the input projection ``xs @ w_ih.T`` for every gate and every time step is one
  matrix product over the whole sequence, outside the loop; the loop body does only
  ``h @ w_hh.T`` and the gate arithmetic (each cell's :meth:`~jaxrnn.Cell.pointwise`);
* the gradient is a custom VJP: the forward loop keeps the gate activations, the backward
  loop carries only the state cotangents and emits the per-step gate cotangents (each
  cell's :meth:`~jaxrnn.Cell.pointwise_bwd`); ``dW_ih``, ``dW_hh`` and ``dxs`` are then
  each one matrix product over the whole sequence, outside the loop (autodiff of a scan
  would accumulate a small matrix product per step instead).

Backend-specific choices (the CPU's in-place buffer, column blocks, layouts) are in
:mod:`jaxrnn.tuning`. Arrays here are flattened: states are tuples of ``[N, ·]`` arrays,
``xs`` is ``[T, N, I]`` (or ``[N, T, I]``, ``batch_major``), ``lengths`` is ``[N]`` and
``flags`` (the per-step resets, see :func:`jaxrnn.scan.reset_flags`) ``[T, N]``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp

from jaxrnn import tuning
from jaxrnn.cells import _matmul, _matmul_untransposed, acc_dtype, operands

Array = jax.Array


def run(cell, params, carry: tuple, xs_TNI: Array, lengths: Optional[Array], *, flags: Optional[Array] = None,
        reset: Optional[tuple] = None, reverse: bool = False, unroll: Optional[int] = None,
        remat: Union[bool, int] = False, custom_vjp: bool = True, batch_major: bool = False):
    """A built-in cell over a sequence, on flattened arrays (no checks).

    Args:
      carry: state as a tuple of ``[N, ·]`` arrays; ``xs_TNI``: ``[T, N, I]``, or
        ``[N, T, I]`` with ``batch_major`` (see :func:`jaxrnn.tuning.keeps_batch_major`;
        otherwise it is made time-major here); lengths: ``[N]`` int32 or None.
      flags: ``[T, N]`` bool, True where the state entering step ``t`` is replaced by
        ``reset`` (a carry-shaped tuple of ``[N, ·]`` arrays; None for zeros), or None.

    Returns:
      ``(carry, ys_TNH)``, time-major.

    The backend choices (:mod:`jaxrnn.tuning`) are made for the platform the program is
    lowered for (:func:`jaxrnn.tuning.for_platform`).
    """
    if unroll is not None and int(unroll) < 1:
        raise ValueError(f"`unroll` must be a positive int; got {unroll}.")
    T = xs_TNI.shape[1] if batch_major else xs_TNI.shape[0]
    if T == 0:
        return carry, jnp.zeros((0, xs_TNI.shape[0 if batch_major else 1], cell.output_size), carry[0].dtype)
    if flags is not None and reset is None:
        reset = tuple(jnp.zeros_like(c) for c in carry)
    options = (cell, bool(reverse), unroll, remat, bool(custom_vjp), bool(batch_major))
    return tuning.for_platform(functools.partial(_run, options), params, carry, xs_TNI, lengths, flags, reset)


def _run(options, platform, params, carry, xs_TNI, lengths, flags, reset):
    """:func:`run` with the choices of ``platform``."""
    cell, reverse, unroll, remat, custom_vjp, batch_major = options
    unroll = tuning.default_unroll(platform) if unroll is None else int(unroll)
    if batch_major and not tuning.keeps_batch_major(remat, custom_vjp, 0 in xs_TNI.shape[:2], platform):
        xs_TNI, batch_major = jnp.swapaxes(xs_TNI, 0, 1), False
    T = xs_TNI.shape[1] if batch_major else xs_TNI.shape[0]
    static = (cell, reverse, unroll, custom_vjp, batch_major, platform)
    if not remat:
        return _layer(static, params, carry, xs_TNI, lengths, flags, reset)
    K = int(math.ceil(math.sqrt(T))) if remat is True else int(remat)
    if K < 1:
        raise ValueError(f"`remat` must be True, False or a positive chunk length; got {remat}.")
    n_chunks = -(-T // K)
    Tp = n_chunks * K
    if Tp != T:
        xs_TNI = jnp.pad(xs_TNI, ((0, Tp - T), (0, 0), (0, 0)))
        if flags is not None:
            flags = jnp.pad(flags, ((0, Tp - T), (0, 0)))
        if lengths is None:
            lengths = jnp.full((xs_TNI.shape[1],), T, jnp.int32)
    xs_CKNI = xs_TNI.reshape((n_chunks, K) + xs_TNI.shape[1:])
    flags_CKN = None if flags is None else flags.reshape((n_chunks, K) + flags.shape[1:])
    offsets = jnp.arange(n_chunks, dtype=jnp.int32) * K

    @jax.checkpoint
    def chunk(carry, xs_KNI, offset, flags_KN):
        lens = None if lengths is None else jnp.clip(lengths - offset, 0, K)
        return _layer(static, params, carry, xs_KNI, lens, flags_KN, reset)

    carry, ys = jax.lax.scan(lambda c, inp: chunk(c, *inp), carry, (xs_CKNI, offsets, flags_CKN), reverse=reverse)
    ys = ys.reshape((Tp,) + ys.shape[2:])[:T]
    return carry, ys


def _layer(static, params, carry, xs_TNI, lengths, flags, reset):
    cell, _, _, use_custom_vjp, _, _ = static
    b_x = cell.input_bias(params)
    w_hr = getattr(params, "w_hr", None)
    fn = _recurrence if use_custom_vjp else _recurrence_impl
    carry, ys, _ = fn(static, xs_TNI, params.w_ih, b_x, params.w_hh, cell.recurrent_bias(params), w_hr, carry,
                      lengths, flags, reset)
    return carry, ys


def _seq_matmul(x_TNK, w, compute_dtype):
    """``x @ w.T`` for every step at once: ``[T, N, K] -> [T, N, G]``.

    One ``dot_general`` over the last axis, with time and batch kept as two axes of their
    own: reshaping to ``[T*N, K]`` would merge time with a batch axis sharded over devices,
    and GSPMD would then gather the whole batch on every device."""
    x_TNK, w, acc = operands(x_TNK, w, compute_dtype)
    return jax.lax.dot_general(x_TNK, w, (((2,), (1,)), ((), ())), preferred_element_type=acc)


def _weight_grad(d, x, compute_dtype, batch_major: bool):
    """``sum_{t,n} d[t,n,:]^T x[t,n,:]``, ``[G, K]``, for ``d`` ``[T, N, G]`` and ``x``
    ``[T, N, K]`` (``[N, T, ·]`` both with ``batch_major``).

    Batch-major operands are merged to ``[N*T, ·]`` for one 2-D product: the batch axis
    leads the merged axis, so a batch sharded over devices stays sharded (each device
    contracts its rows; one all-reduce sums them). Time-major operands are contracted over
    both axes as they are: merging ``[T, N]`` would put the sharded batch axis inside the
    merged one, and GSPMD would gather the whole batch on every device. (XLA:CPU makes a
    transposed copy of ``d`` for that contraction; see the GRU's tail below.)"""
    d, x, acc = operands(d, x, compute_dtype)
    if batch_major:
        M = d.shape[0] * d.shape[1]
        return jnp.dot(d.reshape(M, d.shape[-1]).T, x.reshape(M, x.shape[-1]), preferred_element_type=acc)
    return jax.lax.dot_general(d, x, (((0, 1), (0, 1)), ((), ())), preferred_element_type=acc)


def _mask(lengths, T):
    if lengths is None:
        return None
    return (jnp.arange(T, dtype=jnp.int32)[:, None] < lengths[None, :])[..., None]  # [T, N, 1]


def _apart(fn):
    """``fn()``, computed apart: its results pass through ``jax.lax.optimization_barrier``,
    which XLA neither fuses across nor moves work through, so ``fn``'s operations form
    computations of their own (see :func:`jaxrnn.tuning.separates_nonlinearities`) and
    what it reads out of a buffer is materialised before the buffer is written."""
    return jax.lax.optimization_barrier(fn())


def _read_apart(fn, witness: Array):
    """``fn()`` (reads out of a buffer that the same loop step then overwrites) inside a
    conditional whose predicate, ``(witness | 1) != 0`` for an int32 ``witness``, is always
    true in a form XLA does not fold. An optimization barrier is not enough here: with the
    reads behind a barrier, XLA:CPU still copied the whole ``[T, N, G*H]`` buffer at every
    step of the LSTM's backward loop (tests/test_scan.py's in-place test, B1 T40), which
    the conditional's separate computation avoids."""
    return jax.lax.cond((witness | 1) != 0, fn,
                        lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn)))


def _recurrence_impl(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, flags, reset, *, save=False):
    """Projection then the loop: ``xs [T, N, I]`` -> ``(carry, ys [T, N, H_out], residuals)``.

    The input biases ``b_x`` are added inside the loop, where the addition fuses into
    the gate arithmetic, rather than in a separate pass over the ``[T, N, G*H]`` block.

    With ``save``, the residuals are the gate activations of every step (what cuDNN keeps
    in its reserve space) and, for LSTM, the cell state after every step. The hidden state
    entering each step is not stored: it is the previous output (see :func:`_previous`).
    """
    cell, reverse, unroll, _, batch_major, platform = static
    cd = cell.compute_dtype
    T = xs.shape[1] if batch_major else xs.shape[0]
    mask = _mask(lengths, T)
    rflags = None if flags is None else flags[..., None]  # [T, N, 1]
    bm_buf = save and tuning.batch_major_buffer(cell, batch_major, w_hr, platform)
    gx = _seq_matmul(jnp.swapaxes(xs, 0, 1) if batch_major and not bm_buf else xs, w_ih, cd)
    axis = 1 if bm_buf else 0  # the time axis of gx
    w_hh_t = tuning.transposed_recurrent_weight(w_hh, platform)
    blocks = None if w_hh_t is None else tuning.column_blocks(w_hh_t, carry0[0].shape[0], "forward", platform)

    def recurrent(h):
        if w_hh_t is None:
            return _matmul(h, w_hh, cd)
        return tuning.blocked_matmul(h, w_hh_t, blocks, cd)

    separate = not save and tuning.separates_nonlinearities(platform)

    def step(carry, gx_t, m_t, r_t, t):
        if r_t is not None:  # a new segment starts here (only ever inside the length)
            carry = tuple(jnp.where(r_t, r, c) for r, c in zip(reset, carry))
        a = recurrent(carry[0])
        if b_rec is not None:
            a = a + b_rec.astype(acc_dtype(b_rec.dtype))
        if b_x is not None:
            gx_t = gx_t + b_x.astype(acc_dtype(b_x.dtype))
        if cell.adds_recurrent_to_input:
            gx_t, a = gx_t + a, None
        new, saved = cell.pointwise(gx_t, a, carry, save=True, apart=_apart if separate else None)
        h = new[0]
        if w_hr is not None:
            h = _matmul(h, w_hr, cd)
        new = tuple(n.astype(c.dtype) for n, c in zip((h,) + tuple(new[1:]), carry))
        if m_t is None:
            y = new[0]
        else:
            y = jnp.where(m_t, new[0], jnp.zeros_like(new[0]))
            new = tuple(jnp.where(m_t, n, c) for n, c in zip(new, carry))
        return new, y, saved

    if save and tuning.in_place(cell, platform):
        # The saved activations are (act, *side): act, shaped like gx_t, overwrites it.
        def body(carry, inp):
            state, buf = carry
            t, m_t, r_t = inp
            new, y, (act, *side) = step(state, jax.lax.dynamic_index_in_dim(buf, t, axis, keepdims=False), m_t, r_t, t)
            return (new, jax.lax.dynamic_update_index_in_dim(buf, act, t, axis)), ((y,) + tuple(new[1:]), tuple(side))

        (carry, acts), (outs, side) = jax.lax.scan(
            body, (carry0, gx), (jnp.arange(T, dtype=jnp.int32), mask, rflags), reverse=reverse, unroll=unroll)
        return carry, outs[0], ((acts,) + side, tuple(outs[1:]))

    def body(carry, inp):
        new, y, saved = step(carry, *inp)
        return new, ((y, saved, new[1:]) if save else (y,))

    carry, outs = jax.lax.scan(body, carry0, (gx, mask, rflags, None), reverse=reverse, unroll=unroll)
    return carry, outs[0], outs[1:]


def _previous(seq, first, lengths, reverse, flags=None, reset=None):
    """The state entering each step, from the states after each step (``[T, N, F]``).

    Only steps inside each sequence's length matter (the backward pass zeroes the rest),
    and there the state before step ``t`` is the state after step ``t - 1`` (``t + 1``
    when reversed), or ``first`` at the first step processed, or ``reset`` where ``flags``
    starts a new segment. A step's output equals its new hidden state inside the length,
    so ``ys`` serves for ``h``.
    """
    if not reverse:
        prev = jnp.concatenate([first[None].astype(seq.dtype), seq[:-1]], axis=0)
    else:
        prev = jnp.concatenate([seq[1:], first[None].astype(seq.dtype)], axis=0)
        if lengths is not None:
            starts = jnp.arange(seq.shape[0], dtype=jnp.int32)[:, None] == (lengths - 1)[None, :]
            prev = jnp.where(starts[..., None], first[None], prev)
    if flags is not None:
        prev = jnp.where(flags[..., None], reset[None].astype(prev.dtype), prev)
    return prev


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, flags, reset):
    return _recurrence_impl(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, flags, reset)


def _recurrence_fwd(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, flags, reset):
    carry, ys, (saved, rest) = _recurrence_impl(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths,
                                                flags, reset, save=True)
    return (carry, ys, ()), (xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, flags, reset, ys, saved, rest)


def _recurrence_bwd(static, res, cts):
    """The backward loop carries only the state cotangents and emits the per-step
    gate cotangents; the weight gradients are single matrix products afterwards.
    Where a step starts a new segment, the cotangent of the state entering it goes to
    ``reset`` instead of the previous step (nothing crosses a boundary)."""
    cell, reverse, unroll, _, batch_major, platform = static
    xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, flags, reset, ys, saved, rest = res
    d_carry, dys, _ = cts
    cd = cell.compute_dtype
    mask = _mask(lengths, dys.shape[0])
    rflags = None if flags is None else flags[..., None]
    first_reset = None if flags is None else reset[0]
    h_prev = _previous(ys, carry0[0], lengths, reverse, flags, first_reset)
    in_place = tuning.in_place(cell, platform) and w_hr is None  # (with a projection, the activations are read after the loop)
    bm_buf = tuning.batch_major_buffer(cell, batch_major, w_hr, platform)  # saved[0] (and so dgx) is [N, T, G*H]
    axis = 1 if bm_buf else 0
    prev = None if in_place else (
        (h_prev,) + tuple(_previous(r, c0, lengths, reverse, flags, None if flags is None else rs)
                          for r, c0, rs in zip(rest, carry0[1:], (reset or carry0)[1:])))
    # What pointwise_bwd reads of the new state: r (= the output) for RNN cells, c for LSTM.
    new = (ys if cell.bwd_reads_output else None,) + tuple(rest)
    blocks = tuning.column_blocks(w_hh, carry0[0].shape[0], "backward", platform)

    def body(dcarry, inp):
        saved_t, prev_t, new_t, dy_t, m_t, r_t = inp
        if r_t is not None:
            dcarry, dreset = dcarry
        g_h = dcarry[0] + dy_t
        g_rest = tuple(dcarry[1:])
        if m_t is not None:
            g_h = jnp.where(m_t, g_h, 0.0)
            g_rest = tuple(jnp.where(m_t, d, 0.0) for d in g_rest)
        g_r = g_h if w_hr is None else _matmul_untransposed(g_h, w_hr, cd)
        dgx_t, da_t, dprev = cell.pointwise_bwd(saved_t, prev_t, new_t, (g_r,) + g_rest)
        dh_prev = tuning.blocked_matmul(da_t, w_hh, blocks, cd)
        if dprev[0] is not None:
            dh_prev = dh_prev + dprev[0]
        drest_prev = tuple(dprev[1:])
        if r_t is not None:  # the state entering this step was the reset state
            parts = (dh_prev,) + drest_prev
            dreset = tuple(d + jnp.where(r_t, p, 0.0) for d, p in zip(dreset, parts))
            dh_prev, *drest_prev = (jnp.where(r_t, 0.0, p) for p in parts)
            drest_prev = tuple(drest_prev)
        if m_t is not None:
            dh_prev = dh_prev + jnp.where(m_t, 0.0, dcarry[0])
            drest_prev = tuple(d + jnp.where(m_t, 0.0, dc) for d, dc in zip(drest_prev, dcarry[1:]))
        new_dcarry = tuple(d.astype(c.dtype) for d, c in zip((dh_prev,) + drest_prev, dcarry))
        if r_t is not None:
            new_dcarry = (new_dcarry, dreset)
        return new_dcarry, (dgx_t, g_h if w_hr is not None else None), da_t

    d_carry = tuple(jnp.asarray(d) for d in d_carry)
    if flags is not None:
        d_carry = (d_carry, tuple(jnp.zeros_like(r) for r in reset))
    if in_place:
        # Each step's gate cotangents overwrite its saved activations, which nothing
        # reads afterwards (see jaxrnn.tuning.in_place); the GRU's side buffer of
        # W_hn h + b_hn (time-major) is overwritten likewise by the part of d(a) that
        # differs from d(gx), dn * r.
        T = dys.shape[0]
        side0 = tuple(saved[1:])
        k = saved[0].shape[-1] - (side0[0].shape[-1] if side0 else 0)  # d(a)[..., :k] is d(gx)[..., :k]

        def body_ip(carry, inp):
            dcarry, buf, side, db = carry
            t, h_prev_t, rest_t = inp[0], inp[1], inp[2:]
            # Read step t's saved arrays once, into small arrays of their own. XLA fuses a
            # plain slice into each of its several readers, and then copies the whole
            # buffer at every step unless it can order all of them before the write.
            act_t, *side_t = _read_apart(lambda: (jax.lax.dynamic_index_in_dim(buf, t, axis, keepdims=False),)
                                         + tuple(jax.lax.dynamic_index_in_dim(s, t, 0, keepdims=False)
                                                 for s in side), t)
            if cell.is_lstm:
                # The cell state entering step t, read from the saved states rather than from
                # a shifted copy of them (what _previous would make: one [T, N, H] buffer less).
                # At each sequence's first step it is the initial state (see _previous).
                cs = rest[0]
                before = jnp.clip(t + (1 if reverse else -1), 0, T - 1)
                c_prev_t = jax.lax.dynamic_index_in_dim(cs, before, keepdims=False)
                first = (t == T - 1 if lengths is None else t == lengths - 1) if reverse else t == 0
                c_prev_t = jnp.where(jnp.reshape(first, (-1, 1)), carry0[1], c_prev_t)
                if rest_t[-1] is not None:
                    c_prev_t = jnp.where(rest_t[-1], reset[1], c_prev_t)
                prev_t = (None, c_prev_t)
            else:
                prev_t = (h_prev_t,)
            new_dcarry, (dgx_t, _), da_t = body(dcarry, ((act_t, *side_t), prev_t) + rest_t)
            if side:
                side = (jax.lax.dynamic_update_index_in_dim(side[0], da_t[..., k:].astype(side[0].dtype), t, 0),)
            if db is not None:
                db = db + dgx_t.sum(0)
            return (new_dcarry, jax.lax.dynamic_update_index_in_dim(buf, dgx_t, t, axis), side, db), None

        db0 = None if b_x is None else jnp.zeros(saved[0].shape[-1:], saved[0].dtype)
        (d_carry0, dgx, side, db_acc), _ = jax.lax.scan(
            body_ip, (d_carry, saved[0], side0, db0),
            (jnp.arange(T, dtype=jnp.int32), None if cell.is_lstm else h_prev, new, dys, mask, rflags),
            reverse=not reverse, unroll=unroll)
        g_h = None
        # The GRU's d(a) is [d(gx)[..., :k], tail], assembled below or not; the LSTM's is d(gx).
        tail = side[0] if side else None
        da = dgx if tail is None else None
    else:
        d_carry0, (dgx, g_h) = jax.lax.scan(
            lambda c, inp: body(c, inp)[:2], d_carry, (saved, prev, new, dys, mask, rflags), reverse=not reverse,
            unroll=unroll)
        tail, da = None, cell.recurrent_cotangent(dgx, saved)
    d_reset = None
    if flags is not None:
        d_carry0, d_reset = d_carry0
    dxs = _seq_matmul(dgx, w_ih.T, cd).astype(xs.dtype)
    if batch_major and not bm_buf:  # dgx is time-major, xs batch-major
        dxs = jnp.swapaxes(dxs, 0, 1)
        # The time-major copy of xs for this product is made afresh here, after the backward
        # loop (xs passes a barrier with dgx), because XLA would otherwise merge it with the
        # forward pass's identical copy and keep that alive through the backward loop.
        xs_late, dgx = jax.lax.optimization_barrier((xs, dgx))
        dw_ih = _weight_grad(dgx, jnp.swapaxes(xs_late, 0, 1), cd, False).astype(w_ih.dtype)
    else:  # dgx, xs and dxs in the same layout
        dw_ih = _weight_grad(dgx, xs, cd, bm_buf).astype(w_ih.dtype)
    db_x = None if b_x is None else (db_acc if in_place else dgx.sum((0, 1))).astype(b_x.dtype)
    if tail is not None and tuning.assembles_recurrent_cotangent(dgx.size * dgx.dtype.itemsize, platform):
        da = jnp.concatenate([dgx[..., :k], jnp.swapaxes(tail, 0, 1) if bm_buf else tail], axis=-1)
    if da is None:
        # d(a) not assembled (see jaxrnn.tuning.assembles_recurrent_cotangent): its weight
        # gradient is that of d(gx) with the rows past k replaced by the tail's (time-major).
        dw_hh = _weight_grad(dgx, jnp.swapaxes(h_prev, 0, 1) if bm_buf else h_prev, cd, bm_buf)
        # The tail is time-major; merged as batch-major operands would be (the same sum): this
        # path is the CPU's alone (d(gx) >= 8 MB), where the two-axis contraction's transposed
        # copy of the tail took GRU fwd+bwd B32 T128 H256 to 1.15x the time (A/B, 2 cores).
        # Under a data mesh on the CPU this one product gathers the batch; on accelerators the
        # recurrent cotangent is always assembled (jaxrnn.tuning.assembles_recurrent_cotangent).
        dw_hh = dw_hh.at[k:].set(_weight_grad(tail, h_prev, cd, True)).astype(w_hh.dtype)
        db_rec = None if b_rec is None else jnp.concatenate(
            [dgx[..., :k].sum((0, 1)), tail.sum((0, 1))]).astype(b_rec.dtype)
    else:
        if bm_buf:  # h_prev is time-major, da batch-major
            h_prev = jnp.swapaxes(h_prev, 0, 1)
        dw_hh = _weight_grad(da, h_prev, cd, bm_buf).astype(w_hh.dtype)
        db_rec = None if b_rec is None else da.sum((0, 1)).astype(b_rec.dtype)
    dw_hr = None
    if w_hr is not None:  # r = o * tanh(c) before the projection, for every step at once
        H = cell.hidden_size
        r = saved[0][..., 3 * H :] * jnp.tanh(rest[0])
        dw_hr = _weight_grad(g_h, r, cd, False).astype(w_hr.dtype)
    if d_reset is not None:
        d_reset = tuple(d.astype(r.dtype) for d, r in zip(d_reset, reset))
    return dxs, dw_ih, db_x, dw_hh, db_rec, dw_hr, d_carry0, None, None, d_reset


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
