"""Matrix-valued linear recurrences (linear attention, DeltaNet, GLA, Mamba-2, mLSTM).

:func:`matrix_scan` is the matrix counterpart of :func:`jaxrnn.linear.linear_scan`. Per
batch element and head, with a state ``S`` of shape ``[d_k, d_v]``::

    S = h0
    for t in range(T):
        S = G[t] ∘ S                                    # decay: exp(log_decay[t])
        if beta is None:
            S = S + k[t] v[t]ᵀ                          # linear attention, GLA, Mamba-2, mLSTM
        else:
            S = S - beta[t] k[t] (k[t]ᵀ S) + beta[t] k[t] v[t]ᵀ   # (gated) delta rule
        o[t] = scale * Sᵀ q[t]
    return S, o

``G[t]`` is ``exp(log_decay[t])``: one number per head (``log_decay [*batch, T, heads]``)
or one per key channel, applied to the rows of ``S`` (``[*batch, T, heads, d_k]``);
``log_decay=None`` means no decay (``G = 1``: DeltaNet, plain linear attention), and the
chunked form then skips every decay factor instead of multiplying by ones.

Two modes compute the same values:

* ``"sequential"``: one ``lax.scan`` of the step above (its gradient stores a state per step);
* ``"chunked"``: time split into chunks of ``C`` steps. Inside a chunk, with
  ``g_t = Σ_{s<=t} log_decay_s`` (a cumulative sum restarted at each chunk), the state
  entering the chunk ``S_0`` and the delta rule's pseudo-values ``u_t``::

      S_t = Γ_t S_0 + Σ_{j<=t} (Γ_t / Γ_j) k_j u_jᵀ,     Γ_t = exp(g_t)
      (I + A) U = diag(β) V - diag(β) (Γ ∘ K) S_0,     A_tj = β_t k_tᵀ (Γ_t/Γ_j) k_j  (j < t)

  (``U = V`` without the delta term). ``U = Ũ - W S_0`` with ``Ũ = (I + A)⁻¹ diag(β) V`` and
  ``W = (I + A)⁻¹ diag(β) (Γ ∘ K)`` is the WY form, solved exactly by one unit lower
  triangular solve per chunk. Every chunk's ``Ũ, W`` are computed at once; a sequential scan
  of ``T / C`` steps carries the state across chunks,
  ``S_next = Γ_C S_0 + Σ_j (Γ_C / Γ_j) k_j u_jᵀ``; then the outputs of all chunks at once,
  ``O = scale ((Γ ∘ Q) S_0 + (Q Kᵀ ∘ D) U)`` with the causal decay mask
  ``D_tj = Γ_t / Γ_j`` (``j <= t``).

  The decay ratios are formed as ``exp(g_t - g_j)`` with ``j <= t``, never as
  ``exp(g_t) * exp(-g_j)``: every exponent is ``<= 0``, nothing overflows however strong the
  decay. With a decay per key channel the in-chunk products ``Σ_c x_tc y_jc exp(g_tc - g_jc)``
  are split into sub-chunks of 16 steps: across sub-chunks both factors are scaled to the
  boundary between them (two exponents ``<= 0``), within a sub-chunk the product is formed
  pairwise.

  Its gradient is a custom VJP that keeps only the inputs, the state entering every chunk
  (``T / C`` states, not ``T``) and the pseudo-values ``U`` (``T`` vectors), and recomputes
  the rest chunk by chunk: memory ``O(T·d + (T/C)·d²)``, not ``O(T·d²)``. Its scan back over
  the chunks carries only the state's cotangent; every other product is formed for all
  chunks at once.

State, decays and gates are computed in float32 whatever the input dtype (float64 when an
input is float64, with ``jax_enable_x64``); the outputs come back in ``v``'s dtype.

Masks, with :func:`jaxrnn.unroll`'s meaning:

* ``seq_lengths``: past its length a sequence's state is frozen and its outputs are zero; the
  returned state is the one at the true length (``h0`` for a length 0);
* ``resets``: ``resets[t]`` True means step ``t`` starts a new segment: the state entering it
  is zero (``reset_state`` if given). In the chunked form a reset is not a ``-inf``
  log-decay (which would give ``inf - inf``): every decay ratio that spans a reset is masked
  to 0 by segment numbers counted inside each chunk, and the segments that start inside a
  chunk start from ``reset_state`` with decays relative to their own start.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.linear import _acc_dtype, _check_lengths, _check_resets

Array = jax.Array

__all__ = ["matrix_scan", "matrix_step", "MODES", "DEFAULT_CHUNK_SIZE"]

#: The evaluation modes of :func:`matrix_scan`.
MODES = ("sequential", "chunked")

#: The default ``chunk_size``.
DEFAULT_CHUNK_SIZE = 64

#: Sub-chunk length for decays per key channel (see the module docstring).
_SUB_CHUNK = 16


# --------------------------------------------------------------------------- public entry


def matrix_scan(
    q,
    k,
    v,
    log_decay,
    beta=None,
    h0=None,
    *,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
    reset_state=None,
    time_major: bool = False,
    mode: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scale: float = 1.0,
):
    """The matrix-valued recurrence of the module docstring over time.

    Args:
      q: queries ``[*batch, T, heads, d_k]`` (``[T, *batch, heads, d_k]`` with ``time_major``).
      k: keys, the shape of ``q``.
      v: values ``[*batch, T, heads, d_v]``.
      log_decay: ``log G``, ``<= 0``: ``[*batch, T, heads]`` (a scalar decay per head) or
        ``[*batch, T, heads, d_k]`` (one per key channel), or None for no decay (``G = 1``).
        Positive values are not checked; they grow the state and the chunked form loses its
        overflow guarantee.
      beta: None (no delta term) or ``[*batch, T, heads]``: the delta rule's step sizes
        (``[0, 1]``, or ``[0, 2]`` for negative eigenvalues).
      h0: initial state ``[*batch, heads, d_k, d_v]``; None for zeros.
      seq_lengths: optional integer lengths ``[*batch]`` of right-padded sequences, in
        ``[0, T]`` (checked when concrete).
      resets: optional bool ``[*batch, T]`` (``[T, *batch]`` with ``time_major``): True at
        ``t`` means the state entering step ``t`` is zero (``reset_state`` if given).
      reset_state: the state a segment starts from, ``[*batch, heads, d_k, d_v]``; None for zeros.
      time_major: layout of ``q, k, v, log_decay, beta, resets`` and of the returned outputs.
      mode: ``"sequential"`` or ``"chunked"`` (module docstring).
      chunk_size: steps per chunk for ``mode="chunked"`` (at most ``T`` is used).
      scale: factor of the outputs, ``o = scale * Sᵀ q`` (e.g. ``d_k ** -0.5``).

    Returns:
      ``(S, o)``: the final state ``[*batch, heads, d_k, d_v]`` in float32 (float64 under
      x64 with float64 inputs) and the outputs ``[*batch, T, heads, d_v]`` (or time-major) in
      ``v``'s dtype, zero past each length.

    Raises:
      TypeError, ValueError: at trace time, naming the offending argument.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn.matrix import matrix_scan
      >>> B, T, H, dk, dv = 2, 10, 3, 4, 5
      >>> ks = jax.random.split(jax.random.key(0), 4)
      >>> q, k = (jax.random.normal(x, (B, T, H, dk)) for x in ks[:2])
      >>> v = jax.random.normal(ks[2], (B, T, H, dv))
      >>> log_decay = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H)))
      >>> beta = jnp.full((B, T, H), 0.5)
      >>> S, o = matrix_scan(q, k, v, log_decay, beta, chunk_size=4)
      >>> S2, o2 = matrix_scan(q, k, v, log_decay, beta, mode="sequential")
      >>> S.shape, o.shape, bool(jnp.allclose(o, o2, atol=1e-4))
      ((2, 3, 4, 5), (2, 10, 3, 5), True)
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size!r}.")
    q = _as_float(q, "q")
    k = _as_float(k, "k")
    v = _as_float(v, "v")
    if q.ndim < 3:
        raise ValueError(f"`q` must have shape [*batch, T, heads, d_k] (rank >= 3); got {tuple(q.shape)}.")
    if k.shape != q.shape:
        raise ValueError(f"`k` must have the shape of `q`, {tuple(q.shape)}; got {tuple(k.shape)}.")
    lead = tuple(q.shape[:-1])  # [*batch, T, heads] or [T, *batch, heads]
    if v.ndim != q.ndim or tuple(v.shape[:-1]) != lead:
        raise ValueError(f"`v` must have shape {list(lead) + ['d_v']} (that of `q` but the last axis); "
                         f"got {tuple(v.shape)}.")
    d_k, d_v = int(q.shape[-1]), int(v.shape[-1])
    if log_decay is None:  # no decay (DeltaNet, plain linear attention)
        per_channel = False
    elif tuple((log_decay := _as_float(log_decay, "log_decay")).shape) == lead:
        per_channel = False
    elif tuple(log_decay.shape) == lead + (d_k,):
        per_channel = True
    else:
        raise ValueError(f"`log_decay` must have shape {list(lead)} (one decay per head) or "
                         f"{list(lead + (d_k,))} (one per key channel); got {tuple(log_decay.shape)}.")
    if beta is not None:
        beta = _as_float(beta, "beta")
        if tuple(beta.shape) != lead:
            raise ValueError(f"`beta` must have shape {list(lead)}; got {tuple(beta.shape)}.")
    if time_major:
        T, batch_shape = int(q.shape[0]), tuple(q.shape[1:-2])
    else:
        T, batch_shape = int(q.shape[-3]), tuple(q.shape[:-3])
    H = int(q.shape[-2])
    state_shape = batch_shape + (H, d_k, d_v)
    if h0 is not None:
        h0 = _as_float(h0, "h0")
        if tuple(h0.shape) != state_shape:
            raise ValueError(f"`h0` must have shape [*batch, heads, d_k, d_v] = {list(state_shape)}; "
                             f"got {tuple(h0.shape)}.")
    if reset_state is not None:
        reset_state = _as_float(reset_state, "reset_state")
        if tuple(reset_state.shape) != state_shape:
            raise ValueError(f"`reset_state` must have shape [*batch, heads, d_k, d_v] = {list(state_shape)}; "
                             f"got {tuple(reset_state.shape)}.")
        if resets is None:
            raise ValueError("`reset_state` was given without `resets`.")
    lengths = _check_lengths(seq_lengths, batch_shape, T)
    resets_T = _check_resets(resets, batch_shape, T, time_major)
    static = (mode, int(chunk_size), bool(time_major), per_channel, float(scale), batch_shape, T, H, d_k, d_v)
    return _matrix_scan_jit(static, q, k, v, log_decay, beta, h0, reset_state, lengths, resets_T)


def _matrix_scan_core(static, q, k, v, log_decay, beta, h0, reset_state, lengths, resets_T):
    """:func:`matrix_scan` past its checks: the arrays validated, the options in ``static``."""
    mode, chunk_size, time_major, per_channel, scale, batch_shape, T, H, d_k, d_v = static
    state_shape = batch_shape + (H, d_k, d_v)
    dtype = _acc_dtype(*(x.dtype for x in (q, k, v, log_decay, beta, h0) if x is not None))
    out_dtype = v.dtype

    # Internal layout: [N, T, ...] with N = prod(batch) * heads flattened, in `dtype`.
    n_b = int(np.prod(batch_shape)) if batch_shape else 1
    N = n_b * H

    def flat(x, trailing: int):
        """[*batch, T, H, *rest] (or time-major) -> [N, T, *rest]."""
        x = x.astype(dtype)
        if time_major:
            x = jnp.moveaxis(x, 0, len(batch_shape))
        x = x.reshape((n_b, T, H) + tuple(x.shape[x.ndim - trailing:]))
        x = jnp.moveaxis(x, 2, 1)
        return x.reshape((N, T) + tuple(x.shape[3:]))

    qf, kf, vf = flat(q, 1) * jnp.asarray(scale, dtype), flat(k, 1), flat(v, 1)
    gf = None if log_decay is None else (flat(log_decay, 1) if per_channel else flat(log_decay, 0)[..., None])  # [N, T, 1 or d_k]
    bf = None if beta is None else flat(beta, 0)  # [N, T]
    S0 = jnp.zeros((N, d_k, d_v), dtype) if h0 is None else h0.astype(dtype).reshape((N, d_k, d_v))
    R = None if reset_state is None else reset_state.astype(dtype).reshape((N, d_k, d_v))

    def per_head(x):  # [*batch, T] (time-major: [T, *batch]) -> [N, T]
        x = x.reshape((T, n_b)).T if time_major or not batch_shape else x.reshape((n_b, T))
        return jnp.repeat(x, H, axis=0)

    valid = None
    if lengths is not None:
        valid = jnp.repeat(jnp.arange(T)[None, :] < lengths.reshape((n_b, 1)), H, axis=0)  # [N, T]
    rs = None
    if resets_T is not None:
        rs = per_head(jnp.moveaxis(resets_T, 0, -1) if not time_major else resets_T)
        if valid is not None:
            rs = rs & valid
    if valid is not None:  # frozen past the length: a unit decay and no write
        gf = None if gf is None else jnp.where(valid[..., None], gf, 0.0)
        kf = jnp.where(valid[..., None], kf, 0.0)
        vf = jnp.where(valid[..., None], vf, 0.0)
        if bf is not None:
            bf = jnp.where(valid, bf, 0.0)

    if T == 0:
        S, o = S0, jnp.zeros((N, 0, d_v), dtype)
    elif mode == "sequential":
        S, o = _sequential(qf, kf, vf, gf, bf, rs, S0, R)
    else:
        S, o = _chunked(qf, kf, vf, gf, bf, rs, S0, R, min(int(chunk_size), T))
    if valid is not None:
        o = jnp.where(valid[..., None], o, 0.0)

    S = S.reshape(state_shape)
    o = jnp.moveaxis(o.reshape((n_b, H, T, d_v)), 1, 2)  # [n_b, T, H, d_v]
    if time_major:
        o = jnp.moveaxis(o, 1, 0).reshape((T,) + batch_shape + (H, d_v))
    else:
        o = o.reshape(batch_shape + (T, H, d_v))
    return S, o.astype(out_dtype)


# Compiled once per options and shapes, so that calls outside `jit` do not trace again (inside
# `jit` it is inlined).
_matrix_scan_jit = jax.jit(_matrix_scan_core, static_argnums=(0,))


def matrix_step(S, q, k, v, log_decay, beta=None, *, scale: float = 1.0):
    """One step of the recurrence (module docstring), for generation; no masks, no checks.

    Args:
      S: state ``[..., d_k, d_v]`` (float32 for the usual accuracy).
      q, k: ``[..., d_k]``; v: ``[..., d_v]``.
      log_decay: ``[..., 1]`` (scalar decay) or ``[..., d_k]``; None for no decay.
      beta: None or ``[...]``.
      scale: factor of the output.

    Returns:
      ``(S, o)``: the new state and ``o = scale * Sᵀ q`` ``[..., d_v]``, in ``S``'s dtype.
    """
    dtype = S.dtype
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    if log_decay is not None:
        S = jnp.exp(log_decay.astype(dtype))[..., :, None] * S  # rows (key channels) decay
    if beta is None:
        S = S + k[..., :, None] * v[..., None, :]
    else:
        kS = jnp.einsum("...k,...kv->...v", k, S)
        S = S + beta.astype(dtype)[..., None, None] * k[..., :, None] * (v - kS)[..., None, :]
    return S, scale * jnp.einsum("...k,...kv->...v", q, S)


# --------------------------------------------------------------------------- checks


def _as_float(x, name: str) -> Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = jnp.asarray(x)
        except TypeError:
            raise TypeError(f"`{name}` must be an array; got {type(x).__name__}.") from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {x.dtype}.")
    return jnp.asarray(x)


# --------------------------------------------------------------------------- sequential


def _sequential(q, k, v, g, beta, resets, S0, R):
    """A scan of the step; inputs ``[N, T, ...]`` (internal layout), returns ``(S, o [N, T, d_v])``."""
    delta = beta is not None
    xs = (jnp.moveaxis(q, 1, 0), jnp.moveaxis(k, 1, 0), jnp.moveaxis(v, 1, 0), None if g is None else jnp.moveaxis(g, 1, 0),
          None if beta is None else beta.T, None if resets is None else resets.T)

    def body(S, x):
        q_t, k_t, v_t, g_t, b_t, r_t = x
        if r_t is not None:
            S = jnp.where(r_t[:, None, None], 0.0 if R is None else R, S)
        return matrix_step(S, q_t, k_t, v_t, g_t, b_t if delta else None)

    S, o = jax.lax.scan(body, S0, xs)
    return S, jnp.moveaxis(o, 0, 1)


# --------------------------------------------------------------------------- chunked


def _chunked(q, k, v, g, beta, resets, S0, R, K: int):
    """The chunkwise form (module docstring); inputs ``[N, T, ...]``."""
    N, T, d_k = k.shape
    n_c = -(-T // K)
    pad = n_c * K - T
    delta = beta is not None
    if beta is None:
        beta = jnp.zeros((N, T), k.dtype)
    seg_in = jnp.zeros((N, T), jnp.int32) if resets is None else resets.astype(jnp.int32)
    if pad:  # identity steps at the end: no decay, no write
        def p(x):
            return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        q, k, v, beta, seg_in = p(q), p(k), p(v), p(beta), p(seg_in)
        g = None if g is None else p(g)

    # Chunk-major, [N, n_c K, ...] -> [n_c, N, K, ...]: the scans over chunks slice their
    # inputs and stack their outputs without copies.
    def c(x):
        return jnp.moveaxis(x.reshape((N, n_c, K) + x.shape[2:]), 1, 0)

    q, k, v, beta, seg_in = c(q), c(k), c(v), c(beta), c(seg_in)
    g = None if g is None else c(g)
    seg = jnp.cumsum(seg_in, axis=2)  # segment number of each step inside its chunk
    static = (delta, K, R is not None)
    S, o = _chunked_core(static, q, k, v, g, beta, seg, S0, jnp.zeros_like(S0) if R is None else R)
    return S, jnp.moveaxis(o, 0, 1).reshape((N, n_c * K, -1))[:, :T]


def _sub_chunk(K: int) -> int:
    """The largest divisor of ``K`` that is at most :data:`_SUB_CHUNK`."""
    return max(d for d in range(1, min(K, _SUB_CHUNK) + 1) if K % d == 0)


def _pair(x, y, gc, same, strict: bool):
    """``M[t, j] = Σ_c x_tc y_jc exp(gc_tc - gc_jc)`` for ``j <= t`` (``j < t`` when
    ``strict``) in the same segment, 0 elsewhere; ``[..., K, d] -> [..., K, K]``.
    ``gc`` is None (no decay), ``[..., K, 1]`` (scalar decay) or ``[..., K, d]``; ``same``
    ``[..., K, K]`` bool."""
    K = x.shape[-2]
    t = jnp.arange(K)
    causal = (t[:, None] > t[None, :]) if strict else (t[:, None] >= t[None, :])
    mask = causal & same
    if gc is None:
        return jnp.where(mask, jnp.einsum("...tc,...jc->...tj", x, y), 0.0)
    if gc.shape[-1] == 1:
        diff = gc[..., :, 0][..., :, None] - gc[..., :, 0][..., None, :]
        decay = jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)
        return jnp.einsum("...tc,...jc->...tj", x, y) * decay
    # One decay per channel: sub-chunks of `s` steps (module docstring).
    s = _sub_chunk(K)
    n_s = K // s
    lead = x.shape[:-2]
    d = x.shape[-1]
    xs_, gs_ = x.reshape(lead + (n_s, s, d)), gc.reshape(lead + (n_s, s, d))
    # Within a sub-chunk: pairwise, [.., n_s, s, s, d].
    ts = jnp.arange(s)
    tri = (ts[:, None] > ts[None, :]) if strict else (ts[:, None] >= ts[None, :])
    diff = gs_[..., :, None, :] - gs_[..., None, :, :]
    diag = jnp.einsum("...tc,...jc,...tjc->...tj", xs_, y.reshape(lead + (n_s, s, d)),
                      jnp.exp(jnp.where(tri[:, :, None], diff, 0.0)))
    diag = jnp.where(tri, diag, 0.0)
    # Across sub-chunks: both factors scaled to the boundary r_a before sub-chunk a.
    ref = jnp.concatenate([jnp.zeros_like(gs_[..., :1, -1, :]), gs_[..., :-1, -1, :]], axis=-2)  # [.., n_s, d]
    x_r = xs_ * jnp.exp(gs_ - ref[..., None, :])                               # [.., n_s, s, d]
    before = t[None, :] < (jnp.arange(n_s) * s)[:, None]                        # [n_s, K]: j before sub-chunk a
    e = jnp.where(before[..., None], ref[..., :, None, :] - gc[..., None, :, :], 0.0)  # [.., n_s, K, d]
    y_r = jnp.where(before[..., None], y[..., None, :, :] * jnp.exp(e), 0.0)
    inter = jnp.einsum("...atc,...ajc->...atj", x_r, y_r).reshape(lead + (K, K))
    block = jnp.arange(K) // s
    diag_full = jnp.where(block[:, None] == block[None, :],
                          _blockdiag(diag, lead, n_s, s), 0.0)
    M = jnp.where(block[:, None] == block[None, :], diag_full, inter)
    return jnp.where(mask, M, 0.0)


def _blockdiag(diag, lead, n_s: int, s: int):
    """``[.., n_s, s, s]`` blocks -> ``[.., K, K]`` with them on the diagonal (0 elsewhere)."""
    eye = jnp.eye(n_s, dtype=diag.dtype)
    full = diag[..., :, :, None, :] * eye[:, None, :, None]  # [.., n_s, s, n_s, s]
    return full.reshape(lead + (n_s * s, n_s * s))


def _forward_substitution(A, R):
    """``X`` with ``(I + A) X = R``, ``A [..., K, K]`` strictly lower triangular, by rows."""
    K = A.shape[-1]

    def body(X, i):
        x_i = jnp.take(R, i, axis=-2) - jnp.einsum("...k,...km->...m", jnp.take(A, i, axis=-2), X)
        return jax.lax.dynamic_update_index_in_dim(X, x_i, i, axis=X.ndim - 2), None

    X, _ = jax.lax.scan(body, jnp.zeros_like(R), jnp.arange(K), unroll=min(K, _SUB_CHUNK))
    return X


def _unit_lower_inverse(A):
    """``(I + A)⁻¹`` for ``A [..., K, K]`` strictly lower triangular, exactly (no series).

    Forward substitution by rows on the diagonal blocks of ``_SUB_CHUNK`` rows (each step reads
    one small block, not the whole ``[K, m]`` right-hand side), then the blocks are merged in
    pairs: ``[[A11, 0], [A21, A22]]`` has the inverse ``[[T1, 0], [-T2 A21 T1, T2]]``, two
    matrix products per merge. ``K`` is padded with identity rows to ``s · 2^p``."""
    K = A.shape[-1]
    lead = A.shape[:-2]
    s = min(K, _SUB_CHUNK)
    n = 1
    while n * s < K:
        n *= 2
    if n * s != K:
        A = jnp.pad(A, [(0, 0)] * len(lead) + [(0, n * s - K)] * 2)
    blocks = jnp.stack([A[..., i * s:(i + 1) * s, i * s:(i + 1) * s] for i in range(n)], axis=-3)
    T = _forward_substitution(blocks, jnp.broadcast_to(jnp.eye(s, dtype=A.dtype), blocks.shape))
    size = s
    while T.shape[-3] > 1:  # [.., m, size, size] -> [.., m / 2, 2 size, 2 size]
        T1, T2 = T[..., 0::2, :, :], T[..., 1::2, :, :]
        A21 = jnp.stack([A[..., (2 * i + 1) * size:(2 * i + 2) * size, 2 * i * size:(2 * i + 1) * size]
                         for i in range(T.shape[-3] // 2)], axis=-3)
        X21 = -(T2 @ (A21 @ T1))
        T = jnp.concatenate([jnp.concatenate([T1, jnp.zeros_like(T1)], axis=-1),
                             jnp.concatenate([X21, T2], axis=-1)], axis=-2)
        size *= 2
    return T[..., 0, :K, :K]


@jax.custom_vjp
def _unit_lower_solve(A, Rs):
    """The exact solves of ``(I + A) X = R`` (``A`` strictly lower triangular) for each
    right-hand side ``R`` in the tuple ``Rs``, as ``(I + A)⁻¹ R`` with the inverse of
    :func:`_unit_lower_inverse`: ``O(K² s)`` substitution work on small blocks plus matrix
    products. (XLA:CPU's batched ``triangular_solve`` took ~0.85 s for 16 systems of 64×64
    here; forward substitution over the whole ``[K, m]`` right-hand side was 2-3x slower than
    this, its VJP ~2.5x.) Several right-hand sides share one inverse without being
    concatenated (a copy of each). The VJP is ``dR = (I + A)⁻ᵀ dX``,
    ``dA = -tril(Σ dR Xᵀ)``: matrix products with the stored inverse."""
    T = _unit_lower_inverse(A)
    return tuple(T @ R for R in Rs)


def _unit_lower_solve_fwd(A, Rs):
    T = _unit_lower_inverse(A)
    Xs = tuple(T @ R for R in Rs)
    return Xs, (T, Xs)


def _unit_lower_solve_bwd(res, dXs):
    T, Xs = res
    Tt = jnp.swapaxes(T, -1, -2)
    dRs = tuple(Tt @ dX for dX in dXs)
    dA = -sum(dR @ jnp.swapaxes(X, -1, -2) for dR, X in zip(dRs, Xs))
    K = T.shape[-1]
    strict = jnp.tril(jnp.ones((K, K), bool), -1)
    return jnp.where(strict, dA, 0.0), dRs


_unit_lower_solve.defvjp(_unit_lower_solve_fwd, _unit_lower_solve_bwd)


def _prep(static, q, k, v, g, beta, seg, R):
    """Everything the chunks need that does not depend on the state entering them, all
    chunks at once. Shapes ``[n_c, N, K, ...]`` (chunk-major); ``R`` the reset state
    ``[N, d_k, d_v]``."""
    delta, K, has_R = static
    same = seg[..., :, None] == seg[..., None, :]             # [n_c, N, K, K]
    first = (seg == 0)[..., None]                             # no reset at or before t in the chunk
    last = seg[..., -1:]
    to_end = (seg == last)[..., None]
    if g is None:  # no decay: every ratio Γ_t/Γ_j is 1
        gc, rel, rel_last = None, 1.0, jnp.ones(last.shape + (1,), k.dtype)
        k_end = jnp.where(to_end, k, 0.0)
    else:
        gc, rel, k_end = _decays(g, seg, to_end, k)
        rel_last = rel[..., -1:, :]                           # [n_c, N, 1, 1|d_k]
    # the entering state's decay across the chunk (0 if a reset falls inside it)
    gamma_end = jnp.where(last[..., None] == 0, rel_last, 0.0)[..., 0, :]             # [n_c, N, 1|d_k]
    q_g = jnp.where(first, q * rel, 0.0)
    A_qk = _pair(q, k, gc, same, strict=False)
    X = dict(k_end=k_end, gamma_end=gamma_end, q_g=q_g, A_qk=A_qk)
    if delta:
        b = beta[..., None]
        A = b * _pair(k, k, gc, same, strict=True)
        parts = (b * v, b * jnp.where(first, k * rel, 0.0))
        if has_R:
            parts += (b * jnp.where(first, 0.0, k * rel),)
        sol = _unit_lower_solve(A, parts)
        u, w = sol[0], sol[1]
        if has_R:
            u = u - jnp.einsum("cntk,nkv->cntv", sol[2], R)
    else:
        u, w = v, None
    X.update(u=u, w=w)
    if has_R:  # segments that start at a reset inside the chunk start from R
        q_r = jnp.where(first, 0.0, q * rel)
        X["o_r"] = jnp.einsum("cntk,nkv->cntv", q_r, R)
        gamma_r = jnp.where(last[..., None] > 0, rel_last, 0.0)[..., 0, :]             # [n_c, N, 1|d_k]
        X["r_end"] = gamma_r[..., :, None] * R[None]
    return X


def _decays(g, seg, to_end, k):
    """The decays of :func:`_prep`: the in-chunk cumulative log-decay ``gc``, each step's decay
    relative to the start of its segment ``rel`` and the keys decayed to the chunk's end
    ``k_end``."""
    K = seg.shape[-1]
    gc = jnp.cumsum(g, axis=2)                                # [n_c, N, K, 1 or d_k]
    # The log-decay before the segment of t starts (0 for the chunk's first segment): decays
    # relative to it have exponents <= 0.
    starts = seg - jnp.pad(seg[..., :-1], ((0, 0), (0, 0), (1, 0))) > 0
    idx = jax.lax.cummax(jnp.where(starts, jnp.arange(K), 0), axis=2)
    base = jnp.take_along_axis(gc - g, idx[..., None], axis=2)
    rel = jnp.exp(gc - base)                                  # Γ_t relative to its segment's entry
    g_last = gc[..., -1:, :]
    k_end = jnp.where(to_end, k * jnp.exp(jnp.where(to_end, g_last - gc, 0.0)), 0.0)   # k_j Γ_C/Γ_j
    return gc, rel, k_end


def _chunk_step(X, S):
    """The state after a chunk from the state entering it, and the chunk's pseudo-values
    ``U = Ũ - W S``: ``S`` ``[N, d_k, d_v]``; ``X`` one chunk's slice of :func:`_prep`'s output."""
    U = X["u"] if X["w"] is None else X["u"] - jnp.einsum("nkc,ncv->nkv", X["w"], S)
    S_next = X["gamma_end"][..., :, None] * S + jnp.einsum("nkc,nkv->ncv", X["k_end"], U)
    return (S_next + X["r_end"] if "r_end" in X else S_next), U


def _states(X, S0):
    """The state entering every chunk ``[n_c, N, d_k, d_v]``, every chunk's ``U``
    ``[n_c, N, K, d_v]`` and the final state. The scan reads only what the step needs."""
    Xc = {name: X[name] for name in ("u", "w", "k_end", "gamma_end", "r_end") if name in X}

    def body(S, x):
        S_next, U = _chunk_step(x, S)
        return S_next, (S, None if x["w"] is None else U)  # without the delta rule U is Ũ

    S, (S_in, U) = jax.lax.scan(body, S0, Xc)
    return S_in, X["u"] if U is None else U, S


def _outputs(X, S_in, U):
    """Outputs of all chunks at once, ``[n_c, N, K, d_v]``."""
    o = jnp.einsum("cntk,cnkv->cntv", X["q_g"], S_in) + jnp.einsum("cntj,cnjv->cntv", X["A_qk"], U)
    return o + X["o_r"] if "o_r" in X else o


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_core(static, q, k, v, g, beta, seg, S0, R):
    X = _prep(static, q, k, v, g, beta, seg, R)
    S_in, U, S = _states(X, S0)
    return S, _outputs(X, S_in, U)


def _chunked_fwd(static, q, k, v, g, beta, seg, S0, R):
    X = _prep(static, q, k, v, g, beta, seg, R)
    S_in, U, S = _states(X, S0)
    return (S, _outputs(X, S_in, U)), (q, k, v, g, beta, seg, R, S_in, U)


def _chunked_bwd(static, res, cts):
    """``S_in`` and ``U`` come from the forward pass; ``_prep`` is recomputed (under one
    ``jit`` XLA shares it with the forward's). The scan back over chunks carries only the
    state's cotangent; the products that do not feed it (``dW``, ``dk_end``, ``dΓ``) are
    formed afterwards for all chunks at once."""
    q, k, v, g, beta, seg, R, S_in, U = res
    dS, do = cts
    X, prep_vjp = jax.vjp(lambda q, k, v, g, beta, R: _prep(static, q, k, v, g, beta, seg, R), q, k, v, g, beta, R)
    _, out_vjp = jax.vjp(_outputs, X, S_in, U)
    dX, dS_in_out, dU_out = out_vjp(do)
    w, k_end, gamma_end = X["w"], X["k_end"], X["gamma_end"]
    # S_next = Γ S + k_endᵀ U,  U = Ũ - W S  =>  dU = dU_out + k_end dS_next,
    # dS = Γ dS_next + dS_out - Wᵀ dU.
    chunks = (k_end, gamma_end, w, dU_out, dS_in_out)

    def body(dS_next, x):  # backwards over chunks
        k_end_c, gamma_c, w_c, dU_out_c, dS_out_c = x
        dU = dU_out_c + jnp.einsum("nkc,ncv->nkv", k_end_c, dS_next)
        dS_c = gamma_c[..., :, None] * dS_next + dS_out_c
        if w_c is not None:
            dS_c = dS_c - jnp.einsum("nkc,nkv->ncv", w_c, dU)
        return dS_c, (dU, dS_next)

    dS0, (dU, dS_out) = jax.lax.scan(body, dS, chunks, reverse=True)  # [n_c, N, K, d_v], [n_c, N, d_k, d_v]
    dX["u"] = dX["u"] + dU
    if w is not None:
        dX["w"] = dX["w"] - jnp.einsum("cntv,cnkv->cntk", dU, S_in)
    dX["k_end"] = dX["k_end"] + jnp.einsum("cntv,cnkv->cntk", U, dS_out)
    d_gamma = jnp.sum(S_in * dS_out, axis=-1)                                  # [n_c, N, d_k]
    dX["gamma_end"] = dX["gamma_end"] + (d_gamma if gamma_end.shape[-1] > 1 else
                                         jnp.sum(d_gamma, axis=-1, keepdims=True))
    if "r_end" in X:
        dX["r_end"] = dX["r_end"] + dS_out
    dq, dk, dv, dg, dbeta, dR = prep_vjp(dX)
    return dq, dk, dv, dg, dbeta, None, dS0, dR


_chunked_core.defvjp(_chunked_fwd, _chunked_bwd)
