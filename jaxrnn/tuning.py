"""Backend-specific tuning, in one place.

Every choice here changes how fast :mod:`jaxrnn.fused` (and the generic path's hoisting
and VJP, :func:`hoists_inputs`, :func:`weights_outside`) runs, never what it computes;
each is documented with the measurement behind it.

**For which platform.** Each choice takes the platform it is made for (``"cpu"``, or an
accelerator: ``"gpu"``, ``"tpu"``), and the code that uses them runs through
:func:`for_platform`: where the choices differ between the CPU and accelerators, both
variants are traced and ``jax.lax.platform_dependent`` keeps the one for the platform
the program is *lowered* for, so ``jax.export(..., platforms=["cuda"])`` on a CPU host
gets the accelerator's choices, not this host's. :func:`policy` forces one variant
instead (the tests run the equivalence grids under both).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxrnn.cells import _matmul_untransposed

Array = jax.Array

__all__ = ["default_unroll", "policy", "for_platform"]

#: The platforms the choices distinguish: the CPU, and every accelerator alike.
PLATFORMS = ("cpu", "gpu")

_forced = threading.local()


@contextlib.contextmanager
def policy(platform: Optional[str]):
    """Within the block, trace every tuning choice for ``platform`` (``"cpu"``, ``"gpu"`` or
    ``"tpu"``; None restores the default: decided at lowering by
    ``jax.lax.platform_dependent``). The choices never change results, only speed, so a
    program traced under either policy computes the same values on any device.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> cell = jaxrnn.gru(4)
      >>> with jaxrnn.tuning.policy("gpu"):    # the accelerators' variant, here on the CPU
      ...     h, ys = jaxrnn.unroll(cell, cell.init(jax.random.key(0), 2), None, jnp.ones((3, 5, 2)))
      >>> ys.shape
      (3, 5, 4)
    """
    if platform is not None and platform not in ("cpu", "gpu", "tpu", "cuda", "rocm"):
        raise ValueError(f"`platform` must be 'cpu', 'gpu', 'tpu' or None; got {platform!r}.")
    before = getattr(_forced, "value", None)
    _forced.value = None if platform is None else _kind(platform)
    try:
        yield
    finally:
        _forced.value = before


def forced() -> Optional[str]:
    """The platform :func:`policy` forces (``"cpu"`` or ``"gpu"``), or None."""
    return getattr(_forced, "value", None)


def _kind(platform: str) -> str:
    return "cpu" if platform == "cpu" else "gpu"


def for_platform(run: Callable, *args, same: bool = False):
    """``run(platform, *args)`` for the platform the program is lowered for: the forced one
    (:func:`policy`), else both variants under ``jax.lax.platform_dependent`` (``cpu=`` and
    ``default=``), or one trace when ``same`` says the choices agree."""
    p = forced()
    if p is not None:
        return run(p, *args)
    if same:
        return run("cpu", *args)
    # The branches close over `args` (pytrees that may hold more than arrays).
    return jax.lax.platform_dependent(cpu=lambda: run("cpu", *args), default=lambda: run("gpu", *args))


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
    backend = backend or forced() or jax.default_backend()
    return 1 if backend == "cpu" else 8


def hoists_inputs(rows: int, backend: str) -> bool:
    """Whether the generic path computes a step's x-only part (a user cell's ``x @ W``) for
    every step at once before the loop (:mod:`jaxrnn.hoist`), for ``rows`` rows per step
    (batch elements, times spatial positions for a convolutional state). The params-only
    part leaves the loop either way.

    On a 2-core CPU, an LSTM written as a plain function (I=H=256, T128; fwd+bwd, medians
    of 5 interleaved rounds in one process, with the generic VJP), hoisted against as
    written: B1 (T1000 H128) 15.0 vs 41.1 ms, B4 20.7 vs 39.9, B8 37.6 vs 55.0, but B16
    79.9 vs 77.3 and B32 144.7 vs 127.6: a per-step product of 16 or more rows is
    efficient in the loop, and the hoisted ``[T, N, G]`` buffer then costs more than it
    saves. So on the CPU, up to 8 rows. Elsewhere always (unmeasured for user cells; on an
    H100 the built-in LSTM's hoisted projection took 21.7 ms fwd+bwd against 24.1 in the
    loop at B64 T512 H512, ANCHORS.md).
    """
    return rows <= 8 if backend == "cpu" else True


def weights_outside(rows: int, backend: str) -> bool:
    """Whether the generic path's VJP computes the loop's weight gradients as one product
    over the whole sequence after the backward loop (see :func:`jaxrnn.scan`'s
    ``_weights_outside``) rather than by autodiff's accumulation at every step. Same
    measurement as :func:`hoists_inputs`, with the x-only part in the loop: B16 71.4 ms
    against 76.5 by autodiff, but B32 146.1 against 135.9 (the per-step cotangent buffers
    it reads and writes cost more than the accumulation there). So on the CPU up to 16
    rows; elsewhere always (unmeasured)."""
    return rows <= 16 if backend == "cpu" else True


def separates_nonlinearities(backend: str) -> bool:
    """Whether the fused forward loop, when it saves nothing for a backward pass, computes
    a cell's first gate nonlinearity (the GRU's r and z) as a computation of its own,
    apart from the rest of the step's gate arithmetic (``apart`` in
    :meth:`jaxrnn.Cell.pointwise`).

    XLA:CPU (jaxlib 0.10.2) emits a fused elementwise computation holding two or more
    transcendental operations (``tanh``, ``exp``) without vectorising them: in a loop of
    128 steps over ``[32, 768]`` inputs, one ``tanh`` over a ``[32, 256]`` slice took
    1.04 ms, two in one fusion 7.89 ms, and the same two with the first in a
    conditional of its own 2.05 ms. The GRU's n gate reads r, so XLA fuses both of a
    step's nonlinearities into one computation: apart, GRU inference (2 cores, I=H=256
    T128, medians of 9 interleaved rounds) took B32 35.7 -> 22.0 ms, B8 9.12 -> 5.81,
    B1 T1000 H128 4.84 -> 4.06. Not when the forward pass saves its activations for the
    gradient (fwd+bwd B1 1.04x the time, B32 unchanged), nor for the LSTM, whose
    ``tanh(c')`` follows its gates' ``tanh`` (inference B1 1.20x, B32 1.02x). CPU only;
    elsewhere unmeasured."""
    return backend == "cpu"


def in_place(cell, backend: str) -> bool:
    """Whether one ``[T, N, G*H]`` buffer (``[N, T, G*H]``, see :func:`batch_major_buffer`)
    serves three arrays in turn: the forward pass writes each step's saved gate
    activations over that step's input projection, which it no longer needs, and the
    backward pass writes each step's gate cotangents over that step's activations. Each
    saves a fresh ``[T, N, G*H]`` buffer per call, which on the CPU cost more than the
    writes themselves. Only for cells whose saved activations are such a buffer, plus at
    most a side buffer (``cell.saves_gate_buffer``: the LSTM; the GRU, whose side buffer of
    ``W_hn h + b_hn`` takes ``dn * r`` in the backward pass). LSTM fwd+bwd on 2 CPU cores,
    A/B medians in one process: the forward took B32 T128 H256 from 123 to 118 ms; the
    backward (with the cell state entering each step read in the loop, not from a shifted
    copy) then took it from 110-112 to 101-102 ms, and B1 T1000 H128 from 13.0 to 11.2 ms.
    GRU fwd+bwd against its earlier separate buffers (I=H=256 T128 unless said; medians of
    11 interleaved rounds, wall clock; with :func:`assembles_recurrent_cotangent`): B32
    78.0 -> 66.9 ms, B8 19.4 -> 18.3, B1 T1000 H128 9.60 -> 9.69, B64 T64 H512 209 -> 210.
    CPU only:
    on an H100 the in-place forward was slower (LSTM fwd+bwd, unroll 8, medians of 9
    interleaved rounds: 10.7 -> 11.4 ms at B64 T512 H512, 3.33 -> 3.60 ms at B16 T256
    H256), and it is unmeasured on TPUs."""
    return cell.saves_gate_buffer and backend == "cpu"


def assembles_recurrent_cotangent(nbytes: int, backend: str) -> bool:
    """Whether the GRU's in-place backward pass (see :func:`in_place`) assembles the
    recurrent cotangent ``d(a) = [d(gx) of gates r, z; dn * r]``, an array of ``nbytes``
    like ``d(gx)``, for ``dW_hh = d(a)^T h`` and ``db_hh``; or leaves it unassembled, taking
    ``d(gx)^T h`` whole and replacing its n rows by ``(dn * r)^T h``, which computes
    ``T*N*H*H`` products in vain but spares two ``[T, N, G*H]`` copies (a slice and the
    concatenation).

    On the CPU, XLA gets each call's temporary buffer from ``malloc``, and glibc serves a
    buffer past its mmap threshold (at most 32 MB) with fresh pages from the kernel at
    every call. The copies took GRU fwd+bwd B32 T128 I=H=256 (``d(gx)`` 12.6 MB) to a
    37.7 MB temporary buffer, 29.6 MB without them, and 73-79 ms a call against 65-68
    (2 cores, medians of 9-15 rounds; the same program with ``MALLOC_MMAP_THRESHOLD_``
    raised took 65 ms with the copies). Where the buffers are small, the wasted products
    cost more: B1 T1000 H128 (1.5 MB) took 1.02x the time without the copies. So the copies
    stay below 8 MB of ``d(gx)``. Elsewhere always (unmeasured)."""
    return nbytes < (8 << 20) or backend != "cpu"


def batch_major_buffer(cell, batch_major: bool, w_hr, backend: str) -> bool:
    """Whether the in-place buffer (see :func:`in_place`) is ``[N, T, G*H]``: with
    batch-major inputs, the input projection is then made from ``xs`` as it is, and
    the backward pass's ``dxs`` and ``dW_ih`` come from the gate cotangents in that
    layout too, so ``xs`` is never copied into time-major order and ``dxs`` never out
    of it. (Not with a projection, whose backward reads the activations after the loop.)"""
    return batch_major and w_hr is None and in_place(cell, backend)


def keeps_batch_major(remat, custom_vjp: bool, empty: bool, backend: str) -> bool:
    """Whether batch-major ``xs`` reach the fused recurrence as they are: on the CPU,
    with the custom VJP and no remat, its backward pass keeps ``xs`` itself for the
    input-weight gradient, instead of the time-major copy made for the input projection,
    which would otherwise stay alive through the backward loop alongside everything else
    it keeps; the LSTM's fwd+bwd makes no time-major copy at all (see
    :func:`batch_major_buffer`)."""
    return not (remat or not custom_vjp or empty or backend != "cpu")


def transposed_recurrent_weight(w_hh: Array, backend: str) -> Optional[Array]:
    """``w_hh.T`` materialised once, outside the loop, or None to let the product read
    ``w_hh`` as it is. On the CPU the in-loop product with the transposed operand was
    slower (fwd+bwd B32 T128 H256, A/B in one process: 0.98x the time for LSTM and GRU;
    B1 unchanged). Elsewhere it is unmeasured."""
    return w_hh.T if backend == "cpu" else None


# The in-loop products on few CPU cores (see column_blocks).
_BLOCK_ELEMENTS = 1 << 16
_BLOCK_MAX_FLOPS = {"forward": 32e6, "backward": 1e7}


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def column_blocks(w: Array, n: int, loop: str, backend: str):
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
    if (backend != "cpu" or _cpu_cores() > 2 or K * M <= _BLOCK_ELEMENTS
            or 2 * n * K * M > _BLOCK_MAX_FLOPS[loop]):
        return None
    count = -(-K * M // _BLOCK_ELEMENTS)
    width = -(-M // count)
    return tuple(w[:, i:i + width] for i in range(0, M, width))


def blocked_matmul(x: Array, w: Array, blocks, compute_dtype) -> Array:
    """``x @ w`` (``w`` as it is, ``[K, M]``), by the column ``blocks`` of ``w`` if any."""
    if blocks is None:
        return _matmul_untransposed(x, w, compute_dtype)
    return jnp.concatenate([_matmul_untransposed(x, b, compute_dtype) for b in blocks], axis=-1)
