"""Running a cell over a sequence with ``jax.lax.scan``.

An unroll is, in pseudo-code (``seq_lengths`` and ``reverse`` aside)::

    for t in range(T):
        h, ys[t] = cell.step(params, h, xs[t])
    return h, ys

Two things make it fast, as in cuDNN:

* the input projection ``xs @ w_ih.T + b`` for every gate and every time step is one
  matrix product over the whole sequence, outside the loop; the loop body does only
  ``h @ w_hh.T`` and the gate arithmetic;
* the gradient is a custom VJP: the backward loop carries only the state gradients
  and emits the per-step gate gradients; ``dW_hh`` is then one matrix product over
  the whole sequence, outside the loop (autodiff of a scan would accumulate a small
  matrix product per step instead).

``seq_lengths`` (right-padded batches)::

    for t in range(T):
        h_new, y = cell.step(params, h, xs[t])
        h = where(t < seq_lengths, h_new, h)      # the state stops at the true length
        ys[t] = where(t < seq_lengths, y, 0)      # outputs past the length are zero

``reverse=True`` walks each sequence from its last *valid* element back to the first
(``for t in reversed(range(T))`` with the same masking, so padding never enters
first) and writes ``ys[t]`` at the input's position ``t``. A zero-length sequence
returns its initial state and all-zero outputs.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import (Cell, LSTMState, _matmul, _matmul_untransposed, acc_dtype, check_input, operand_dtypes,
                          state_dtype)

Array = jax.Array

__all__ = ["unroll", "default_unroll"]


def default_unroll(backend: Optional[str] = None) -> int:
    """The scan ``unroll`` factor used when ``unroll=None``, chosen by measurement.

    ``benchmarks/unroll_sweep.py`` times LSTM and GRU fwd+bwd at unroll 1-32 and
    picks the smallest unroll within 3% of the fastest (geometric mean over cases):

    * on an H100, 8: 0.585x the time of unroll 1 (16: 0.587x, 32: 0.601x), over
      B64 T512 H512, B16 T256 H256 and B1 T1000 H128. A loop iteration costs a few
      microseconds there, which unrolling amortises;
    * on a 2-core CPU, 1: unroll 2 was 1.04x, 4 1.09x, 8 1.15x and 32 1.47x the time,
      over B32 T128 H256 and B1 T1000 H128. A loop iteration costs ~0.06 µs there,
      and unrolling only grows the program.

    TPUs take the GPU's 8, which is unmeasured there. Override with ``unroll=``.
    """
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" else 8


def unroll(
    cell: Cell,
    params,
    h,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: Optional[int] = None,
    remat: Union[bool, int] = False,
    custom_vjp: bool = True,
):
    """Runs ``cell`` over a sequence: ``(params, h, xs) -> (h, ys)``.

    Args:
      cell: a :class:`jaxrnn.Cell` (from ``jaxrnn.rnn/gru/lstm``).
      params: the cell's params.
      h: initial state ``[*batch, H_out]`` (``(h, c)`` for LSTM), or None for zeros.
      xs: inputs, ``[*batch, T, input_size]`` (or ``[T, *batch, input_size]`` with
        ``time_major=True``); ``[T, input_size]`` for a single sequence.
      seq_lengths: optional integer lengths of shape ``[*batch]`` for right-padded
        batches. Values are checked to lie in ``[0, T]`` when they are concrete;
        under ``jit`` a length above ``T`` acts as ``T`` and a negative one as 0.
      reverse: run from the end of each sequence to its start (see module doc).
      time_major: layout of ``xs`` and ``ys``.
      unroll: scan unroll factor; None picks :func:`default_unroll` for the backend.
      remat: gradient checkpointing for long sequences: True splits time into
        chunks of ``ceil(sqrt(T))`` steps (an int sets the chunk length); only the
        state at chunk boundaries is kept for the backward pass, and each chunk's
        forward is recomputed.
      custom_vjp: use the fused backward pass (weight gradients outside the loop).
        Set False to differentiate the scan with plain autodiff, e.g. for
        forward-mode ``jax.jvp``/``jax.jacfwd``.

    Returns:
      ``(h, ys)``: the final state (at each sequence's true length) and all outputs,
      ``[*batch, T, H_out]`` (or time-major), zero past each length.

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
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"`cell` must be a jaxrnn Cell (jaxrnn.rnn/gru/lstm); got {type(cell).__name__}.")
    input_size = cell.check_params(params)
    xs = check_input(xs, input_size, min_rank=2, name="xs")
    xs_TNI, batch_shape, restore = to_time_major(xs, time_major)
    T = xs_TNI.shape[0]
    lengths = check_seq_lengths(seq_lengths, batch_shape, T)
    state = cell.check_state(h, batch_shape, dtype=state_dtype(xs, params))
    carry = flatten_state(cell, state)
    # Batch-major inputs are handed over as they are, [N, T, I]; run decides (see there).
    batch_major = not time_major and xs.ndim > 2
    xs_in = xs.reshape((math.prod(batch_shape),) + xs.shape[-2:]) if batch_major else xs_TNI
    carry, ys = run(cell, params, carry, xs_in, lengths, reverse=reverse, unroll=unroll, remat=remat,
                    custom_vjp=custom_vjp, batch_major=batch_major)
    return unflatten_state(cell, carry, batch_shape), restore(ys)


# --------------------------------------------------------------------------- layout


def to_time_major(xs: Array, time_major: bool):
    """``xs -> ([T, N, I], batch_shape, restore)`` where ``restore`` maps ``[T, N, F]`` back."""
    if xs.ndim == 2:
        T = xs.shape[0]
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


def check_seq_lengths(seq_lengths, batch_shape: tuple, T: int) -> Optional[Array]:
    """Validates ``seq_lengths`` at trace time; returns it flattened to ``[N]`` int32."""
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
    if not isinstance(seq_lengths, jax.core.Tracer):
        values = np.asarray(seq_lengths)
        if values.size and (values.min() < 0 or values.max() > T):
            raise ValueError(
                f"`seq_lengths` must lie in [0, T={T}]; got values from {values.min()} to {values.max()}."
            )
    return jnp.asarray(seq_lengths, jnp.int32).reshape(-1)


def flatten_state(cell: Cell, state):
    """A state with batch shape ``[*batch]`` as a tuple of ``[N, ·]`` arrays."""
    parts = tuple(state) if cell.is_lstm else (state,)
    return tuple(p.reshape(-1, p.shape[-1]) for p in parts)


def unflatten_state(cell: Cell, carry: tuple, batch_shape: tuple):
    parts = tuple(c.reshape(tuple(batch_shape) + c.shape[-1:]) for c in carry)
    return LSTMState(*parts) if cell.is_lstm else parts[0]


# --------------------------------------------------------------------------- running


def run(cell: Cell, params, carry: tuple, xs_TNI: Array, lengths: Optional[Array], *, reverse: bool = False,
        unroll: Optional[int] = None, remat: Union[bool, int] = False, custom_vjp: bool = True,
        batch_major: bool = False):
    """Unchecked core of :func:`unroll` on flattened arrays.

    Args:
      carry: state as a tuple of ``[N, ·]`` arrays; ``xs_TNI``: ``[T, N, I]``, or
        ``[N, T, I]`` with ``batch_major``; lengths: ``[N]`` int32 or None.
      batch_major: ``xs_TNI`` is ``[N, T, I]``. On the CPU, with the custom VJP and
        no remat, the recurrence then reads it as it is: its backward pass keeps
        ``xs`` itself for the input-weight gradient, instead of the time-major copy
        made for the input projection, which would otherwise stay alive through the
        backward loop alongside everything else it keeps; the LSTM's fwd+bwd makes
        no time-major copy at all (see :func:`_batch_major_buffer`). Otherwise it is
        made time-major here.

    Returns:
      ``(carry, ys_TNH)``, time-major.
    """
    unroll = default_unroll() if unroll is None else int(unroll)
    if unroll < 1:
        raise ValueError(f"`unroll` must be a positive int; got {unroll}.")
    if batch_major and (remat or not custom_vjp or 0 in xs_TNI.shape[:2] or jax.default_backend() != "cpu"):
        xs_TNI, batch_major = jnp.swapaxes(xs_TNI, 0, 1), False
    T = xs_TNI.shape[1] if batch_major else xs_TNI.shape[0]
    static = (cell, bool(reverse), unroll, bool(custom_vjp), bool(batch_major))
    if T == 0:
        return carry, jnp.zeros((0, xs_TNI.shape[1], cell.output_size), carry[0].dtype)
    if not remat:
        return _layer(static, params, carry, xs_TNI, lengths)
    K = int(math.ceil(math.sqrt(T))) if remat is True else int(remat)
    if K < 1:
        raise ValueError(f"`remat` must be True, False or a positive chunk length; got {remat}.")
    n_chunks = -(-T // K)
    Tp = n_chunks * K
    if Tp != T:
        xs_TNI = jnp.pad(xs_TNI, ((0, Tp - T), (0, 0), (0, 0)))
        if lengths is None:
            lengths = jnp.full((xs_TNI.shape[1],), T, jnp.int32)
    xs_CKNI = xs_TNI.reshape((n_chunks, K) + xs_TNI.shape[1:])
    offsets = jnp.arange(n_chunks, dtype=jnp.int32) * K

    @jax.checkpoint
    def chunk(carry, xs_KNI, offset):
        lens = None if lengths is None else jnp.clip(lengths - offset, 0, K)
        return _layer(static, params, carry, xs_KNI, lens)

    carry, ys = jax.lax.scan(lambda c, inp: chunk(c, *inp), carry, (xs_CKNI, offsets), reverse=reverse)
    ys = ys.reshape((Tp,) + ys.shape[2:])[:T]
    return carry, ys


def _layer(static, params, carry, xs_TNI, lengths):
    cell, _, _, use_custom_vjp, _ = static
    b_x = cell.input_bias(params)
    w_hr = params.w_hr if cell.proj_size else None
    fn = _recurrence if use_custom_vjp else _recurrence_impl
    carry, ys, _ = fn(static, xs_TNI, params.w_ih, b_x, params.w_hh, cell.recurrent_bias(params), w_hr, carry,
                      lengths)
    return carry, ys


def _seq_matmul(x_TNK, w, compute_dtype):
    """``x @ w.T`` for every step at once, as one 2-D matrix product: ``[T, N, K] -> [T, N, G]``."""
    T, N, K = x_TNK.shape
    cd, acc = operand_dtypes(x_TNK.dtype, w.dtype, compute_dtype)
    y = jnp.dot(x_TNK.reshape(T * N, K).astype(cd), w.T.astype(cd), preferred_element_type=acc)
    return y.reshape(T, N, w.shape[0])


def _weight_grad(d_TNG, x_TNK, compute_dtype):
    """``sum_{t,n} d[t,n,:]^T x[t,n,:]`` as one 2-D matrix product, ``[G, K]``."""
    G, K = d_TNG.shape[-1], x_TNK.shape[-1]
    M = math.prod(d_TNG.shape[:-1])
    cd, acc = operand_dtypes(d_TNG.dtype, x_TNK.dtype, compute_dtype)
    return jnp.dot(d_TNG.reshape(M, G).T.astype(cd), x_TNK.reshape(M, K).astype(cd), preferred_element_type=acc)


def _mask(lengths, T):
    if lengths is None:
        return None
    return (jnp.arange(T, dtype=jnp.int32)[:, None] < lengths[None, :])[..., None]  # [T, N, 1]


def _apart(fn, witness: Array):
    """``fn()``, computed inside a conditional: a boundary that XLA neither fuses across
    nor merges with identical work outside it. The predicate, ``(witness | 1) != 0`` for
    an int32 ``witness``, is always true, in a form that XLA's simplifier and its range
    analysis of loop indices do not fold away (the other branch returns zeros)."""
    return jax.lax.cond((witness | 1) != 0, fn,
                        lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn)))


def _in_place(cell: Cell) -> bool:
    """Whether one ``[T, N, 4H]`` buffer (``[N, T, 4H]``, see :func:`_batch_major_buffer`)
    serves three arrays in turn: the forward pass
    writes each step's saved gate activations over that step's input projection, which
    it no longer needs, and the backward pass writes each step's gate cotangents over
    that step's activations. Each saves a fresh ``[T, N, 4H]`` buffer per call, which
    on the CPU cost more than the writes themselves. LSTM fwd+bwd on 2 CPU cores, A/B medians in one process: the forward
    took B32 T128 H256 from 123 to 118 ms; the backward (with the cell state entering
    each step read in the loop, not from a shifted copy) then took it from 110-112 to
    101-102 ms, and B1 T1000 H128 from 13.0 to 11.2 ms. CPU only: on an H100 the
    in-place forward was slower (LSTM fwd+bwd, unroll 8, medians of 9 interleaved
    rounds: 10.7 -> 11.4 ms at B64 T512 H512, 3.33 -> 3.60 ms at B16 T256 H256), and
    it is unmeasured on TPUs."""
    return cell.is_lstm and jax.default_backend() == "cpu"


def _batch_major_buffer(cell: Cell, batch_major: bool, w_hr) -> bool:
    """Whether the in-place buffer (see :func:`_in_place`) is ``[N, T, 4H]``: with
    batch-major inputs, the input projection is then made from ``xs`` as it is, and
    the backward pass's ``dxs`` and ``dW_ih`` come from the gate cotangents in that
    layout too, so ``xs`` is never copied into time-major order and ``dxs`` never out
    of it. (Not with a projection, whose backward reads the activations after the loop.)"""
    return batch_major and w_hr is None and _in_place(cell)


# The in-loop products on few CPU cores (see _column_blocks).
_BLOCK_ELEMENTS = 1 << 16
_BLOCK_MAX_FLOPS = {"forward": 32e6, "backward": 1e7}


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _column_blocks(w: Array, n: int, loop: str):
    """Column blocks of the weight ``w`` (``[K, M]``) of a loop's per-step product
    ``[n, K] x [K, M]``, or None to leave the product whole: ``w_hh.T`` in the forward
    loop, ``w_hh`` in the backward loop.

    On a CPU with at most two cores, XLA:CPU splits a small product such as
    ``[32, 256] x [256, 1024]`` between its two threads, and the second thread, idle during
    the gate arithmetic between two products, has to be woken up again at every step:
    a fwd+bwd call then spends 6-9 ms in the kernel (``futex``), and the calling thread
    waits ~48 µs a step for the other. Products on blocks of at most 64K weight elements
    (equal widths) stay on the calling thread. Fwd+bwd on 2 cores, T128 I=H=256, A/B in
    one process:

    * forward loop: LSTM 0.90-0.95x the time at B32, 0.92-0.95x at B8; GRU 0.94-0.96x
      at B8, 0.93x at B16, 0.99-1.03x at B32. Not for larger products (B64 T64 H512,
      134 MFLOP a step, took 1.12x the time in 16 blocks);
    * backward loop (``[n, G*H] x [G*H, H]``, narrower blocks), measured on top of the
      forward's: LSTM 0.80x the time at B4, 0.90-0.92x at B8, 0.89-0.91x at B16, but
      1.02x at B32; GRU 0.91-0.92x, 0.99-1.0x, 0.94-0.95x, and 1.06x at B32 (B4 T64
      I=H=512: LSTM 0.90x, GRU 0.99x). So only up to 10 MFLOP a step: B32 is left whole.

    Not on more cores (unmeasured), nor where the weight is one block already (B1 T1000
    H128: 1.04-1.07x the time in 4 blocks), nor off the CPU.
    """
    K, M = w.shape
    if (jax.default_backend() != "cpu" or _cpu_cores() > 2 or K * M <= _BLOCK_ELEMENTS
            or 2 * n * K * M > _BLOCK_MAX_FLOPS[loop]):
        return None
    count = -(-K * M // _BLOCK_ELEMENTS)
    width = -(-M // count)
    return tuple(w[:, i:i + width] for i in range(0, M, width))


def _blocked_matmul(x: Array, w: Array, blocks, compute_dtype) -> Array:
    """``x @ w`` (``w`` as it is, ``[K, M]``), by the column ``blocks`` of ``w`` if any."""
    if blocks is None:
        return _matmul_untransposed(x, w, compute_dtype)
    return jnp.concatenate([_matmul_untransposed(x, b, compute_dtype) for b in blocks], axis=-1)


def _recurrence_impl(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, *, save=False):
    """Projection then the loop: ``xs [T, N, I]`` -> ``(carry, ys [T, N, H_out], residuals)``.

    The input biases ``b_x`` are added inside the loop, where the addition fuses into
    the gate arithmetic, rather than in a separate pass over the ``[T, N, G*H]`` block.

    With ``save``, the residuals are the gate activations of every step (what cuDNN keeps
    in its reserve space) and, for LSTM, the cell state after every step. The hidden state
    entering each step is not stored: it is the previous output (see :func:`_previous`).
    """
    cell, reverse, unroll, _, batch_major = static
    cd = cell.compute_dtype
    T = xs.shape[1] if batch_major else xs.shape[0]
    mask = _mask(lengths, T)
    bm_buf = save and _batch_major_buffer(cell, batch_major, w_hr)
    gx = _seq_matmul(jnp.swapaxes(xs, 0, 1) if batch_major and not bm_buf else xs, w_ih, cd)
    axis = 1 if bm_buf else 0  # the time axis of gx
    # On the CPU, h @ w_hh.T is a product with w_hh.T materialised once, outside the loop:
    # XLA:CPU's in-loop product with the transposed operand was slower (fwd+bwd B32 T128
    # H256, A/B in one process: 0.98x the time for LSTM and GRU; B1 unchanged). Elsewhere
    # (unmeasured) the product reads w_hh as it is.
    w_hh_t = w_hh.T if jax.default_backend() == "cpu" else None
    blocks = None if w_hh_t is None else _column_blocks(w_hh_t, carry0[0].shape[0], "forward")

    def recurrent(h):
        if w_hh_t is None:
            return _matmul(h, w_hh, cd)
        return _blocked_matmul(h, w_hh_t, blocks, cd)

    def step(carry, gx_t, m_t):
        a = recurrent(carry[0])
        if b_rec is not None:
            a = a + b_rec.astype(acc_dtype(b_rec.dtype))
        if b_x is not None:
            gx_t = gx_t + b_x.astype(acc_dtype(b_x.dtype))
        if cell.kind != "gru":
            gx_t, a = gx_t + a, None
        new, saved = cell.pointwise(gx_t, a, carry, save=True)
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

    if save and _in_place(cell):
        def body(carry, inp):
            state, buf = carry
            t, m_t = inp
            new, y, (act,) = step(state, jax.lax.dynamic_index_in_dim(buf, t, axis, keepdims=False), m_t)
            return (new, jax.lax.dynamic_update_index_in_dim(buf, act, t, axis)), (y,) + tuple(new[1:])

        (carry, acts), outs = jax.lax.scan(body, (carry0, gx), (jnp.arange(T, dtype=jnp.int32), mask),
                                           reverse=reverse, unroll=unroll)
        return carry, outs[0], ((acts,), tuple(outs[1:]))

    def body(carry, inp):
        new, y, saved = step(carry, *inp)
        return new, ((y, saved, new[1:]) if save else (y,))

    carry, outs = jax.lax.scan(body, carry0, (gx, mask), reverse=reverse, unroll=unroll)
    return carry, outs[0], outs[1:]


def _previous(seq, first, lengths, reverse):
    """The state entering each step, from the states after each step (``[T, N, F]``).

    Only steps inside each sequence's length matter (the backward pass zeroes the rest),
    and there the state before step ``t`` is the state after step ``t - 1`` (``t + 1``
    when reversed), or ``first`` at the first step processed. A step's output equals
    its new hidden state inside the length, so ``ys`` serves for ``h``.
    """
    if not reverse:
        return jnp.concatenate([first[None].astype(seq.dtype), seq[:-1]], axis=0)
    prev = jnp.concatenate([seq[1:], first[None].astype(seq.dtype)], axis=0)
    if lengths is not None:
        starts = jnp.arange(seq.shape[0], dtype=jnp.int32)[:, None] == (lengths - 1)[None, :]
        prev = jnp.where(starts[..., None], first[None], prev)
    return prev


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths):
    return _recurrence_impl(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths)


def _recurrence_fwd(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths):
    carry, ys, (saved, rest) = _recurrence_impl(static, xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths,
                                                save=True)
    return (carry, ys, ()), (xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, ys, saved, rest)


def _recurrence_bwd(static, res, cts):
    """The backward loop carries only the state cotangents and emits the per-step
    gate cotangents; the weight gradients are single matrix products afterwards."""
    cell, reverse, unroll, _, batch_major = static
    xs, w_ih, b_x, w_hh, b_rec, w_hr, carry0, lengths, ys, saved, rest = res
    d_carry, dys, _ = cts
    cd = cell.compute_dtype
    mask = _mask(lengths, dys.shape[0])
    h_prev = _previous(ys, carry0[0], lengths, reverse)
    in_place = _in_place(cell) and w_hr is None  # (with a projection, the activations are read after the loop)
    bm_buf = _batch_major_buffer(cell, batch_major, w_hr)  # saved[0] (and so dgx) is [N, T, 4H]
    axis = 1 if bm_buf else 0
    prev = None if in_place else (
        (h_prev,) + tuple(_previous(r, c0, lengths, reverse) for r, c0 in zip(rest, carry0[1:])))
    # What pointwise_bwd reads of the new state: r (= the output) for RNN cells, c for LSTM.
    new = (ys if cell.kind.startswith("rnn") else None,) + tuple(rest)
    blocks = _column_blocks(w_hh, carry0[0].shape[0], "backward")

    def body(dcarry, inp):
        saved_t, prev_t, new_t, dy_t, m_t = inp
        g_h = dcarry[0] + dy_t
        g_rest = tuple(dcarry[1:])
        if m_t is not None:
            g_h = jnp.where(m_t, g_h, 0.0)
            g_rest = tuple(jnp.where(m_t, d, 0.0) for d in g_rest)
        g_r = g_h if w_hr is None else _matmul_untransposed(g_h, w_hr, cd)
        dgx_t, da_t, dprev = cell.pointwise_bwd(saved_t, prev_t, new_t, (g_r,) + g_rest)
        dh_prev = _blocked_matmul(da_t, w_hh, blocks, cd)
        if dprev[0] is not None:
            dh_prev = dh_prev + dprev[0]
        drest_prev = tuple(dprev[1:])
        if m_t is not None:
            dh_prev = dh_prev + jnp.where(m_t, 0.0, dcarry[0])
            drest_prev = tuple(d + jnp.where(m_t, 0.0, dc) for d, dc in zip(drest_prev, dcarry[1:]))
        new_dcarry = tuple(d.astype(c.dtype) for d, c in zip((dh_prev,) + drest_prev, dcarry))
        return new_dcarry, (dgx_t, g_h if w_hr is not None else None)

    d_carry = tuple(jnp.asarray(d) for d in d_carry)
    if in_place:
        # Each step's gate cotangents overwrite its saved activations, which nothing
        # reads afterwards (see _in_place).
        T, cs = dys.shape[0], rest[0]

        def body_ip(carry, inp):
            dcarry, buf, db = carry
            t, rest_t = inp[0], inp[1:]
            # Read act_t once, into a small array of its own. XLA fuses a plain slice into
            # each of its several readers, and then copies the whole buffer at every step
            # unless it can order all of them before the write.
            act_t = _apart(lambda: jax.lax.dynamic_index_in_dim(buf, t, axis, keepdims=False), t)
            # The cell state entering step t, read from the saved states rather than from
            # a shifted copy of them (what _previous would make: one [T, N, H] buffer less).
            # At each sequence's first step it is the initial state (see _previous).
            before = jnp.clip(t + (1 if reverse else -1), 0, T - 1)
            c_prev_t = jax.lax.dynamic_index_in_dim(cs, before, keepdims=False)
            first = (t == T - 1 if lengths is None else t == lengths - 1) if reverse else t == 0
            c_prev_t = jnp.where(jnp.reshape(first, (-1, 1)), carry0[1], c_prev_t)
            new_dcarry, (dgx_t, _) = body(dcarry, ((act_t,), (None, c_prev_t)) + rest_t)
            if db is not None:
                db = db + dgx_t.sum(0)
            return (new_dcarry, jax.lax.dynamic_update_index_in_dim(buf, dgx_t, t, axis), db), None

        db0 = None if b_x is None else jnp.zeros(saved[0].shape[-1:], saved[0].dtype)
        (d_carry0, dgx, db_acc), _ = jax.lax.scan(
            body_ip, (d_carry, saved[0], db0), (jnp.arange(T, dtype=jnp.int32), new, dys, mask),
            reverse=not reverse, unroll=unroll)
        g_h = None
    else:
        d_carry0, (dgx, g_h) = jax.lax.scan(
            body, d_carry, (saved, prev, new, dys, mask), reverse=not reverse, unroll=unroll
        )
    H = cell.hidden_size
    if cell.kind == "gru":  # d(a_n) = d(gx_n) * r; the other gates share gx's cotangent
        da = jnp.concatenate([dgx[..., : 2 * H], dgx[..., 2 * H :] * saved[0][..., :H]], axis=-1)
    else:
        da = dgx
    dxs = _seq_matmul(dgx, w_ih.T, cd).astype(xs.dtype)
    if batch_major and not bm_buf:  # dgx is time-major, xs batch-major
        dxs = jnp.swapaxes(dxs, 0, 1)
        # The time-major copy of xs for this product is made afresh here, apart, because
        # XLA would otherwise merge it with the forward pass's identical copy and keep
        # that alive through the backward loop.
        bits = jax.lax.bitcast_convert_type(xs.ravel()[0].astype(jnp.float32), jnp.int32)
        dw_ih = _apart(lambda: _weight_grad(dgx, jnp.swapaxes(xs, 0, 1), cd), bits).astype(w_ih.dtype)
    else:  # dgx, xs and dxs in the same layout
        dw_ih = _weight_grad(dgx, xs, cd).astype(w_ih.dtype)
    if bm_buf:  # h_prev is time-major, da batch-major
        h_prev = jnp.swapaxes(h_prev, 0, 1)
    db_x = None if b_x is None else (db_acc if in_place else dgx.sum((0, 1))).astype(b_x.dtype)
    dw_hh = _weight_grad(da, h_prev, cd).astype(w_hh.dtype)
    db_rec = None if b_rec is None else da.sum((0, 1)).astype(b_rec.dtype)
    dw_hr = None
    if w_hr is not None:  # r = o * tanh(c) before the projection, for every step at once
        r = saved[0][..., 3 * H :] * jnp.tanh(rest[0])
        dw_hr = _weight_grad(g_h, r, cd).astype(w_hr.dtype)
    return dxs, dw_ih, db_x, dw_hh, db_rec, dw_hr, d_carry0, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
