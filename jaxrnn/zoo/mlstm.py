"""The mLSTM layer of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory",
arXiv 2405.04517), as xLSTM 7B defines it (``xlstm.xlstm_large``, transformers' ``xLSTMLayer``),
with the cell of ``mlstm-kernels``.

A matrix memory per head, written with an exponential input gate and a sigmoid forget
gate, read with a normaliser, and kept in range by a max-stabiliser ``m``. With ``NH``
heads, ``d_k = qk_dim / NH``, ``d_v = v_dim / NH``, per head and step (the gate
pre-activations ``ĩ, f̃`` are scalars per head)::

    q, k, v = W_q x, W_k x, W_v x                                 (+ biases when bias=True)
    ĩ = cap(W_i x + b_i),   f̃ = cap(W_f x + b_f),   cap(a) = c * tanh(a / c)   (c = gate_soft_cap)
    lf = log σ(f̃)                                                 log forget gate
    m' = max(lf + m, ĩ)                                           max-stabiliser
    C' = exp(lf + m - m') C + exp(ĩ - m') k vᵀ                    [d_k, d_v]
    n' = exp(lf + m - m') n + exp(ĩ - m') k                       [d_k] normaliser
    h  = C'ᵀ q̂ / (max(|n'ᵀ q̂|, exp(-m')) + eps),   q̂ = q / sqrt(d_k)
    y  = W_out (σ(W_o x) ⊙ norm(h))                               norm: LayerNorm per head, weight (and bias)

``(C, n, m)`` is the state: ``exp(m) C`` and ``exp(m) n`` are the unstabilised memory and
normaliser, and ``h`` equals ``C_uᵀ q̂ / max(|n_uᵀ q̂|, 1)`` in them whatever ``m`` is (only
``eps`` sees ``m``). A zero state has ``m = 0``, as in mlstm-kernels.

Layout (PyTorch's ``nn.Linear``, weights ``[out, in]``)::

    w_q, w_k: [qk_dim, I]   w_v, w_o: [v_dim, I]   w_i, w_f: [NH, I]   b_i, b_f: [NH]
    norm_weight: [v_dim]    w_out: [H, v_dim]
    with bias=True also b_q, b_k [qk_dim], b_v, b_o, norm_bias [v_dim], b_out [H]

``qk_dim = qk_dim_factor * H``, ``v_dim = v_dim_factor * H`` (xLSTM 7B: 0.5 and 1).

Evaluation: ``step`` is the recurrent form (mlstm-kernels' ``native_step``). ``parallel_unroll``
(``mode="chunked"``) is the chunkwise form of mlstm-kernels' JAX ``chunkwise/native`` code,
extended with per-step resets and ragged lengths: a scan of ``(C, n, m)`` across chunks
of ``chunk_size`` steps and, inside each chunk, a causal ``[L, L]`` matrix of log-gates
``b_t - b_j + ĩ_j`` (``b`` the within-chunk cumulative log forget gate, so no sum runs over
more than one chunk) stabilised by the same ``m_t`` as the recurrence. A reset at ``t``
restarts the memory from the reset state (zeros by default): pairs ``(t, j)`` across a
reset are masked out, never set to ``-inf - (-inf)``. Gates, state and normaliser are
float32 (float64 under x64) whatever the input dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["MLSTMParams", "MLSTMState", "MLSTMCell", "mlstm", "mlstm_step", "mlstm_chunkwise"]

_NEG = -1e30  # a log-weight that is zero after exp, finite so that no inf - inf appears


class MLSTMParams(NamedTuple):
    """mLSTM layer parameters (see the module docstring for shapes); the ``b_*`` of the
    projections and ``norm_bias`` are None when ``bias=False``."""

    w_q: Array
    w_k: Array
    w_v: Array
    w_o: Array
    w_i: Array
    b_i: Array
    w_f: Array
    b_f: Array
    norm_weight: Array
    w_out: Array
    b_q: Optional[Array] = None
    b_k: Optional[Array] = None
    b_v: Optional[Array] = None
    b_o: Optional[Array] = None
    norm_bias: Optional[Array] = None
    b_out: Optional[Array] = None


class MLSTMState(NamedTuple):
    """The memory ``c [*batch, NH, d_k, d_v]``, normaliser ``n [*batch, NH, d_k]`` and
    max-stabiliser ``m [*batch, NH]`` (mlstm-kernels' ``(c, n, m)``, ``m`` without its
    trailing axis of 1)."""

    c: Array
    n: Array
    m: Array


def _state_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32)


def mlstm_step(state: MLSTMState, q: Array, k: Array, v: Array, i: Array, f: Array, *, eps: float = 1e-6):
    """One step of the mLSTM cell (mlstm-kernels' ``mlstm_recurrent_step__native_fw``).

    Args:
      state: :class:`MLSTMState` with ``c [..., NH, d_k, d_v]``, ``n [..., NH, d_k]``, ``m [..., NH]``.
      q, k: ``[..., NH, d_k]``. v: ``[..., NH, d_v]``.
      i, f: input and forget gate pre-activations, ``[..., NH]``.
      eps: added to the denominator.

    Returns:
      ``(state, h)``, ``h [..., NH, d_v]``, in the state's dtype.
    """
    dt = state.c.dtype
    q, k, v, i, f = (a.astype(dt) for a in (q, k, v, i, f))
    lf = jax.nn.log_sigmoid(f)
    m_new = jnp.maximum(lf + state.m, i)
    fa = jnp.exp(lf + state.m - m_new)
    ia = jnp.exp(i - m_new)
    c = fa[..., None, None] * state.c + ia[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = fa[..., None] * state.n + ia[..., None] * k
    qs = q * (q.shape[-1] ** -0.5)
    num = jnp.einsum("...kv,...k->...v", c, qs)
    den = jnp.einsum("...k,...k->...", n, qs)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_new)) + eps)[..., None]
    return MLSTMState(c, n, m_new), h


def mlstm_chunkwise(q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMState, *,
                    lengths: Optional[Array] = None, flags: Optional[Array] = None,
                    reset_state: Optional[MLSTMState] = None, chunk_size: int = 64, eps: float = 1e-6):
    """The mLSTM cell over a sequence in its chunkwise form, with resets and lengths.

    Time-major, one flat batch axis: ``q, k [T, B, NH, d_k]``, ``v [T, B, NH, d_v]``,
    ``i, f [T, B, NH]``; ``state`` and ``reset_state`` leaves ``[B, NH, ...]``; ``lengths [B]``
    or None; ``flags [T, B]`` bool (the state entering step ``t`` is ``reset_state``) or None.

    Returns:
      ``(state at each length, h [T, B, NH, d_v])`` in the state's dtype (``h`` past a
      length is whatever the identity step gives; the caller masks it).
    """
    dt = state.c.dtype
    T, B, NH, dk = q.shape
    dv = v.shape[-1]
    if T == 0:
        return state, jnp.zeros((0, B, NH, dv), dt)
    L = max(1, min(int(chunk_size), T))
    NC = -(-T // L)
    pad = NC * L - T
    q, k, v, i, f = (a.astype(dt) for a in (q, k, v, i, f))
    lf = jax.nn.log_sigmoid(f)
    t_idx = jnp.arange(T, dtype=jnp.int32)[:, None]
    if lengths is not None:  # past a length: the identity step (forget gate 1, no input)
        valid = (t_idx < lengths[None, :])[..., None]
        lf = jnp.where(valid, lf, 0.0)
        i = jnp.where(valid, i, _NEG)
    r = jnp.zeros((T, B), bool) if flags is None else flags.astype(bool)

    def chunks(a, fill=0.0):  # [T, B, NH, ...] -> [NC, B, NH, L, ...]
        if pad:
            a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1), constant_values=fill)
        a = a.reshape((NC, L) + a.shape[1:])
        return jnp.moveaxis(a, 1, 3)

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    ic, lfc = chunks(i, _NEG), chunks(lf)                                         # [NC, B, NH, L]
    rc = chunks(jnp.broadcast_to(r[..., None], (T, B, NH)), False)
    b = jnp.cumsum(lfc, axis=-1)                                                  # within-chunk log forget
    l_idx = jnp.arange(L, dtype=jnp.int32)
    seg = jnp.cumsum(rc.astype(jnp.int32), axis=-1)                               # resets so far in the chunk
    rpos = jax.lax.cummax(jnp.where(rc, l_idx, -1), axis=rc.ndim - 1)             # last reset <= t
    b_before = jnp.take_along_axis(b - lfc, jnp.maximum(rpos, 0), axis=-1)        # b just before that reset
    from_reset = seg > 0
    if reset_state is None:
        reset_state = MLSTMState(jnp.zeros_like(state.c), jnp.zeros_like(state.n), jnp.zeros_like(state.m))
    # Entry log-weight of step t's starting state, apart from m_prev (added per chunk below).
    w_rel = jnp.where(from_reset, b - b_before + reset_state.m[None, ..., None], b)

    # the chunk-end states: a scan across chunks
    same_last = seg == seg[..., -1:]
    a = jnp.where(same_last, b[..., -1:] - b + ic, _NEG)                          # [NC, B, NH, L]
    a_max = a.max(axis=-1)
    kv_local = jnp.einsum("cbhl,cbhlk,cbhlv->cbhkv", jnp.exp(a - a_max[..., None]), kc, vc)
    k_local = jnp.einsum("cbhl,cbhlk->cbhk", jnp.exp(a - a_max[..., None]), kc)
    ends_reset = from_reset[..., -1]
    w_end_rel = w_rel[..., -1]

    def across(carry, xs):
        c_prev, n_prev, m_prev = carry
        kv_l, k_l, a_m, has_r, w_e = xs
        c_e = jnp.where(has_r[..., None, None], reset_state.c, c_prev)
        n_e = jnp.where(has_r[..., None], reset_state.n, n_prev)
        w = w_e + jnp.where(has_r, 0.0, m_prev)
        m_next = jnp.maximum(w, a_m)
        g, s = jnp.exp(w - m_next), jnp.exp(a_m - m_next)
        c_next = g[..., None, None] * c_e + s[..., None, None] * kv_l
        n_next = g[..., None] * n_e + s[..., None] * k_l
        return (c_next, n_next, m_next), (c_prev, n_prev, m_prev)

    last, (c_in, n_in, m_in) = jax.lax.scan(across, tuple(state),
                                             (kv_local, k_local, a_max, ends_reset, w_end_rel))

    # the outputs inside each chunk
    scale = dk ** -0.5
    causal = l_idx[:, None] >= l_idx[None, :]
    same_seg = seg[..., :, None] == seg[..., None, :]
    log_d = jnp.where(causal & same_seg, b[..., :, None] - b[..., None, :] + ic[..., None, :], _NEG)
    w = w_rel + jnp.where(from_reset, 0.0, m_in[..., None])                       # [NC, B, NH, L]
    m = jnp.maximum(w, log_d.max(axis=-1))
    dmat = jnp.exp(log_d - m[..., None]) * (jnp.einsum("cbhtk,cbhjk->cbhtj", qc, kc) * scale)
    g = jnp.exp(w - m) * scale
    qc_prev = jnp.einsum("cbhtk,cbhkv->cbhtv", qc, c_in)
    qc_reset = jnp.einsum("cbhtk,bhkv->cbhtv", qc, reset_state.c)
    qn_prev = jnp.einsum("cbhtk,cbhk->cbht", qc, n_in)
    qn_reset = jnp.einsum("cbhtk,bhk->cbht", qc, reset_state.n)
    num = g[..., None] * jnp.where(from_reset[..., None], qc_reset, qc_prev) + jnp.einsum("cbhtj,cbhjv->cbhtv", dmat, vc)
    den = g * jnp.where(from_reset, qn_reset, qn_prev) + dmat.sum(axis=-1)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m)) + eps)[..., None]
    h = jnp.moveaxis(h, 3, 1).reshape((NC * L, B, NH, dv))[:T]
    return MLSTMState(*last), h


def _soft_cap(x: Array, cap: Optional[float]) -> Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _linear(x: Array, w: Array, b: Optional[Array]) -> Array:
    y = x @ w.T
    return y if b is None else y + b


@dataclasses.dataclass(frozen=True)
class MLSTMCell:
    """The xLSTM (7B) mLSTM layer (build it with :func:`mlstm`); equations in the module docstring.

    Attributes:
      hidden_size: ``H``, the output size (xLSTM's ``embedding_dim``).
      num_heads: ``NH``.
      qk_dim_factor, v_dim_factor: ``qk_dim = qk_dim_factor * H``, ``v_dim = v_dim_factor * H``.
      gate_soft_cap: ``c`` of the gates' soft cap (None: no cap).
      bias: biases on the q, k, v, o and output projections and the norm.
      eps: the cell's denominator epsilon (mlstm-kernels' ``eps``).
      norm_eps: the per-head LayerNorm's epsilon.
      chunk_size: default chunk length of ``parallel_unroll``.
    """

    hidden_size: int
    num_heads: int = 8
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    gate_soft_cap: Optional[float] = 15.0
    bias: bool = False
    eps: float = 1e-6
    norm_eps: float = 1e-6
    chunk_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        object.__setattr__(self, "num_heads", C.check_positive_int(self.num_heads, "num_heads"))
        object.__setattr__(self, "chunk_size", C.check_positive_int(self.chunk_size, "chunk_size"))
        for name in ("qk_dim", "v_dim"):
            factor = getattr(self, name + "_factor")
            dim = factor * self.hidden_size
            if dim != round(dim) or dim < 1 or int(round(dim)) % self.num_heads:
                raise ValueError(f"`{name}_factor` * hidden_size must be a positive multiple of num_heads="
                                 f"{self.num_heads}; got {factor} * {self.hidden_size} = {dim}.")
        if self.gate_soft_cap is not None and not self.gate_soft_cap > 0:
            raise ValueError(f"`gate_soft_cap` must be positive or None; got {self.gate_soft_cap!r}.")

    @property
    def qk_dim(self):
        return int(round(self.qk_dim_factor * self.hidden_size))

    @property
    def v_dim(self):
        return int(round(self.v_dim_factor * self.hidden_size))

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    @property
    def head_dims(self):
        """``(d_k, d_v)``."""
        return self.qk_dim // self.num_heads, self.v_dim // self.num_heads

    def __repr__(self) -> str:
        return (f"mlstm(hidden_size={self.hidden_size}, num_heads={self.num_heads}, qk_dim={self.qk_dim}, "
                f"v_dim={self.v_dim}{', bias=True' if self.bias else ''})")

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> MLSTMParams:
        """xLSTM 7B's initialisation (transformers' ``xLSTMPreTrainedModel._init_weights``):
        gate weights zero, input gate bias -10, forget gate bias ``linspace(3, 6, NH)``,
        other weights ``N(0, 2 / (5 * fan_in))`` ("small init"), biases zero, norm weight one."""
        I = C.check_positive_int(input_size, "input_size")
        H, NH, Dqk, Dv = self.hidden_size, self.num_heads, self.qk_dim, self.v_dim
        kq, kk, kv, ko, kout = jax.random.split(key, 5)
        small = lambda k, shape: jax.random.normal(k, shape, dtype) * math.sqrt(2.0 / (5.0 * shape[1]))
        z = lambda *shape: jnp.zeros(shape, dtype)
        b = (lambda n: z(n)) if self.bias else (lambda n: None)
        return MLSTMParams(
            w_q=small(kq, (Dqk, I)), w_k=small(kk, (Dqk, I)), w_v=small(kv, (Dv, I)), w_o=small(ko, (Dv, I)),
            w_i=z(NH, I), b_i=jnp.full((NH,), -10.0, dtype), w_f=z(NH, I), b_f=jnp.linspace(3.0, 6.0, NH, dtype=dtype),
            norm_weight=jnp.ones((Dv,), dtype), w_out=small(kout, (H, Dv)),
            b_q=b(Dqk), b_k=b(Dqk), b_v=b(Dv), b_o=b(Dv), norm_bias=b(Dv), b_out=b(H))

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> MLSTMState:
        """Zero state (``m = 0``), float32 (float64 for a float64 ``dtype``)."""
        dt = _state_dtype(dtype)
        bs = tuple(batch_shape)
        dk, dv = self.head_dims
        return MLSTMState(jnp.zeros(bs + (self.num_heads, dk, dv), dt), jnp.zeros(bs + (self.num_heads, dk), dt),
                          jnp.zeros(bs + (self.num_heads,), dt))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size ``I``."""
        C.check_params_type(params, MLSTMParams, self, name)
        w = params.w_q
        if getattr(w, "ndim", None) != 2 or w.shape[0] != self.qk_dim:
            raise ValueError(f"`{name}.w_q` must have shape [{self.qk_dim}, input_size] for {self!r}; "
                             f"got {getattr(w, 'shape', type(w).__name__)}.")
        I = int(w.shape[1])
        H, NH, Dqk, Dv = self.hidden_size, self.num_heads, self.qk_dim, self.v_dim
        shapes = dict(w_q=(Dqk, I), w_k=(Dqk, I), w_v=(Dv, I), w_o=(Dv, I), w_i=(NH, I), b_i=(NH,), w_f=(NH, I),
                      b_f=(NH,), norm_weight=(Dv,), w_out=(H, Dv))
        optional = dict(b_q=(Dqk,), b_k=(Dqk,), b_v=(Dv,), b_o=(Dv,), norm_bias=(Dv,), b_out=(H,))
        for field, shape in shapes.items():
            C.check_array(getattr(params, field), f"{name}.{field}", shape)
        for field, shape in optional.items():
            value = getattr(params, field)
            if self.bias:
                C.check_array(value, f"{name}.{field}", shape)
            elif value is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r} (bias=False); got an array.")
        return I

    def _check_state(self, h, batch_shape, name="h") -> MLSTMState:
        if not isinstance(h, MLSTMState):
            if isinstance(h, (tuple, list)) and len(h) == 3:
                h = MLSTMState(*h)
            else:
                raise TypeError(f"`{name}` must be an MLSTMState (c, n, m) for {self!r}; got {type(h).__name__}.")
        dk, dv = self.head_dims
        NH = self.num_heads
        C.check_state_parts([(f"{name}.c", h.c, (NH, dk, dv)), (f"{name}.n", h.n, (NH, dk)),
                             (f"{name}.m", h.m, (NH,))], batch_shape)
        return h

    def _project(self, params: MLSTMParams, x: Array):
        """``(q, k, v, i, f, o)`` for inputs ``[..., I]``: heads split, gates soft-capped."""
        dk, dv = self.head_dims
        NH = self.num_heads
        lead = x.shape[:-1]
        q = _linear(x, params.w_q, params.b_q).reshape(lead + (NH, dk))
        k = _linear(x, params.w_k, params.b_k).reshape(lead + (NH, dk))
        v = _linear(x, params.w_v, params.b_v).reshape(lead + (NH, dv))
        o = _linear(x, params.w_o, params.b_o)
        i = _soft_cap(_linear(x, params.w_i, params.b_i), self.gate_soft_cap)
        f = _soft_cap(_linear(x, params.w_f, params.b_f), self.gate_soft_cap)
        return q, k, v, i, f, o

    def _readout(self, params: MLSTMParams, h: Array, o: Array, out_dtype) -> Array:
        """Per-head LayerNorm of ``h [..., NH, d_v]``, output gate, output projection."""
        mean = h.mean(axis=-1, keepdims=True)
        var = jnp.square(h - mean).mean(axis=-1, keepdims=True)
        hn = ((h - mean) * jax.lax.rsqrt(var + self.norm_eps)).reshape(h.shape[:-2] + (self.v_dim,))
        hn = hn * params.norm_weight.astype(hn.dtype)
        if params.norm_bias is not None:
            hn = hn + params.norm_bias.astype(hn.dtype)
        hn = (jax.nn.sigmoid(o.astype(hn.dtype)) * hn).astype(out_dtype)
        return _linear(hn, params.w_out, params.b_out)

    def step(self, params: MLSTMParams, h: Optional[MLSTMState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (the recurrent form, for generation).

        Args:
          params: an :class:`MLSTMParams`.
          h: an :class:`MLSTMState` (leaves ``[*batch, NH, ...]``), or None for zeros.
          x: ``[*batch, input_size]``.

        Returns:
          ``(h, y)``, ``y [*batch, hidden_size]`` in the dtype of ``x`` and the params.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.mlstm import mlstm
          >>> cell = mlstm(16, num_heads=2)
          >>> params = cell.init(jax.random.key(0), input_size=16)
          >>> h, y = cell.step(params, None, jnp.ones((3, 16)))
          >>> h.c.shape, h.n.shape, h.m.shape, y.shape
          ((3, 2, 4, 8), (3, 2, 4), (3, 2), (3, 16))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        h = self._check_state(h, batch_shape)
        q, k, v, i, f, o = self._project(params, x)
        new, hv = mlstm_step(h, q, k, v, i, f, eps=self.eps)
        new = MLSTMState(*(a.astype(b.dtype) for a, b in zip(new, h)))
        return new, self._readout(params, hv, o, jnp.result_type(x.dtype, params.w_out.dtype))

    def parallel_unroll(self, params: MLSTMParams, h: MLSTMState, xs: Array, *, seq_lengths: Optional[Array] = None,
                        resets: Optional[Array] = None, reset_state: Optional[MLSTMState] = None,
                        reverse: bool = False, mode: str = "chunked", chunk_size: Optional[int] = None):
        """The whole sequence at once: ``(h, ys)``, time-major (``jaxrnn.unroll(..., mode="chunked")``).

        Args:
          params: an :class:`MLSTMParams`.
          h: initial :class:`MLSTMState` (not None).
          xs: ``[T, *batch, input_size]``.
          seq_lengths: ``[*batch]`` int or None. resets: ``[T, *batch]`` bool or None.
          reset_state: an :class:`MLSTMState` (leaves broadcastable to ``h``'s) or None for zeros.
          reverse: must be False (run backwards with ``mode="sequential"``).
          mode: ``"chunked"`` (``"associative"`` is taken as ``"chunked"``) or
            ``"sequential"`` (a scan of the recurrent step over the projected inputs).
          chunk_size: steps per chunk; None for the cell's ``chunk_size``.

        Returns:
          ``(h, ys)``: the state at each sequence's true length and ``ys [T, *batch, H]``,
          zero past each length.

        Raises:
          ValueError: ``reverse=True``, or an unknown ``mode``.
        """
        mode = C.matrix_mode(mode, self)
        if reverse:
            raise ValueError(f"`reverse=True` is not supported by {self!r}'s parallel form; "
                             "use mode='sequential' to run it backwards.")
        chunk_size = self.chunk_size if chunk_size is None else C.check_positive_int(chunk_size, "chunk_size")
        T = xs.shape[0]
        batch_shape = tuple(xs.shape[1:-1])
        h = self._check_state(h, batch_shape)
        Bf = math.prod(batch_shape)
        flat = lambda a: a.reshape((Bf,) + a.shape[len(batch_shape):])
        flat_T = lambda a: a.reshape((T, Bf) + a.shape[1 + len(batch_shape):])
        lengths = None if seq_lengths is None else jnp.asarray(seq_lengths).reshape(Bf)
        flags = None
        if resets is not None:
            flags = jnp.asarray(resets).astype(bool).reshape(T, Bf)
            if lengths is not None:
                flags = flags & (jnp.arange(T, dtype=jnp.int32)[:, None] < lengths[None, :])
        state = MLSTMState(*(flat(a) for a in h))
        reset = None
        if reset_state is not None and resets is not None:
            reset = MLSTMState(*(flat(jnp.broadcast_to(r, a.shape).astype(a.dtype)) for r, a in zip(reset_state, h)))
        q, k, v, i, f, o = self._project(params, xs)
        q, k, v, i, f = (flat_T(a) for a in (q, k, v, i, f))
        if mode == "sequential":
            last, hv = _sequential(state, q, k, v, i, f, lengths, flags, reset, self.eps)
        else:
            last, hv = mlstm_chunkwise(q, k, v, i, f, state, lengths=lengths, flags=flags, reset_state=reset,
                                       chunk_size=chunk_size, eps=self.eps)
        hv = hv.reshape((T,) + batch_shape + hv.shape[2:])
        ys = self._readout(params, hv, o, jnp.result_type(xs.dtype, params.w_out.dtype))
        if seq_lengths is not None:
            t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * len(batch_shape))
            ys = jnp.where((t < jnp.asarray(seq_lengths))[..., None], ys, 0)
        last = MLSTMState(*(a.reshape(b.shape).astype(b.dtype) for a, b in zip(last, h)))
        return last, ys


def _sequential(state, q, k, v, i, f, lengths, flags, reset, eps):
    """A scan of :func:`mlstm_step` with lengths and resets (time-major, flat batch)."""
    T = q.shape[0]
    valid = None if lengths is None else jnp.arange(T, dtype=jnp.int32)[:, None] < lengths[None, :]
    if flags is not None and reset is None:
        reset = MLSTMState(*(jnp.zeros_like(a) for a in state))

    def body(s, xs):
        qt, kt, vt, it, ft, rt, vt_ok = xs
        if rt is not None:
            s = MLSTMState(*(jnp.where(rt.reshape(rt.shape + (1,) * (a.ndim - 1)), r, a) for r, a in zip(reset, s)))
        new, h = mlstm_step(s, qt, kt, vt, it, ft, eps=eps)
        if vt_ok is not None:
            new = MLSTMState(*(jnp.where(vt_ok.reshape(vt_ok.shape + (1,) * (a.ndim - 1)), b, a)
                               for a, b in zip(s, new)))
        return new, h

    return jax.lax.scan(body, state, (q, k, v, i, f, flags, valid))


def mlstm(hidden_size: int, *, num_heads: int = 8, qk_dim_factor: float = 0.5, v_dim_factor: float = 1.0,
          gate_soft_cap: Optional[float] = 15.0, bias: bool = False, eps: float = 1e-6, norm_eps: float = 1e-6,
          chunk_size: int = 64) -> MLSTMCell:
    """An xLSTM mLSTM layer as a cell; see :class:`MLSTMCell` and the module docstring.

    Defaults are xLSTM 7B's (``xLSTMConfig``): 8 heads, ``qk_dim = H / 2``, ``v_dim = H``,
    gate soft cap 15, no biases, ``eps = norm_eps = 1e-6``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from jaxrnn.zoo.mlstm import mlstm
      >>> cell = mlstm(16, num_heads=2)
      >>> params = cell.init(jax.random.key(0), input_size=16)
      >>> xs = jax.random.normal(jax.random.key(1), (2, 40, 16))
      >>> _, ys = jaxrnn.unroll(cell, params, None, xs, mode="chunked", chunk_size=16)
      >>> _, ys2 = jaxrnn.unroll(cell, params, None, xs)
      >>> ys.shape, bool(jnp.allclose(ys, ys2, atol=1e-5))
      ((2, 40, 16), True)
    """
    return MLSTMCell(hidden_size, num_heads=num_heads, qk_dim_factor=qk_dim_factor, v_dim_factor=v_dim_factor,
                     gate_soft_cap=None if gate_soft_cap is None else float(gate_soft_cap), bias=bias,
                     eps=float(eps), norm_eps=float(norm_eps), chunk_size=chunk_size)
