"""Gated DeltaNet and DeltaNet (Yang et al. 2024, arXiv 2412.06464 and 2406.06484), as
flash-linear-attention's ``GatedDeltaNet`` and ``DeltaNet`` layers define them.

A layer maps ``x [*batch, input_size]`` to ``y [*batch, hidden_size]``; its state is a
:class:`MatrixCellState`: the matrix state ``S [*batch, heads, d_k, d_v]`` and the window of
the short causal convolutions (the last ``conv_size - 1`` projected inputs). Layout
(PyTorch's ``[out, in]`` for every projection, fla's names)::

    q_proj, k_proj: [heads*d_k, I]      v_proj: [heads*d_v, I]      (d_v = expand_v * d_k)
    a_proj, b_proj: [heads, I]          A_log, dt_bias: [heads]     (a_proj, A_log, dt_bias: None for DeltaNet)
    q_conv, k_conv: [heads*d_k, conv_size]   v_conv: [heads*d_v, conv_size]   (torch's [C, 1, W] squeezed)
    g_proj: [heads*d_v, I] (use_gate)   o_norm: [d_v]               o_proj: [hidden_size, heads*d_v]

Initialisation as fla's layer: ``torch.nn.Linear``/``Conv1d`` defaults (``U(±1/sqrt(fan_in))``),
``A = U(0, 16)``, ``A_log = log A``, ``dt`` log-uniform in ``[0.001, 0.1]`` (floored at
``1e-4``) and ``dt_bias = dt + log(-expm1(-dt))`` (softplus⁻¹), ``o_norm`` ones. (fla's
models re-initialise the linear weights with ``N(0, 0.02)``; the layer alone keeps torch's.)

The shared machinery (:class:`MatrixCell`) is also :mod:`jaxrnn.zoo.gla`'s: projections, short
convolution, per-head recurrence by :func:`jaxrnn.matrix.matrix_scan`, gated RMS norm and
output projection; a subclass says how the projections become ``q, k, v``, decay and ``β``.

Sequences run sequentially (``unroll``'s scan of ``step``) or in the chunkwise-parallel form
(``unroll(..., mode="chunked")``, ``parallel_unroll``), with ``seq_lengths`` and per-step
``resets`` (the state entering a reset step, the convolution window included, is zero).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.matrix import DEFAULT_CHUNK_SIZE, matrix_scan, matrix_step
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["MatrixCellState", "GatedDeltaNetParams", "GatedDeltaNetCell", "gated_deltanet", "deltanet",
           "MatrixCell"]


class MatrixCellState(NamedTuple):
    """State of a matrix-state layer: ``S [*batch, heads, d_k, d_v]`` (float32) and
    ``conv [*batch, conv_size - 1, C]`` (the last projected inputs ``q, k, v`` concatenated;
    ``C = 0`` without short convolutions)."""

    S: Array
    conv: Array


class GatedDeltaNetParams(NamedTuple):
    """Gated DeltaNet / DeltaNet parameters (module docstring for shapes)."""

    q_proj: Array
    k_proj: Array
    v_proj: Array
    a_proj: Optional[Array]
    b_proj: Array
    A_log: Optional[Array]
    dt_bias: Optional[Array]
    q_conv: Optional[Array]
    k_conv: Optional[Array]
    v_conv: Optional[Array]
    conv_bias: Optional[Array]
    g_proj: Optional[Array]
    o_norm: Array
    o_proj: Array


# --------------------------------------------------------------------------- shared pieces


def l2norm(x: Array, eps: float = 1e-6) -> Array:
    """fla's ``l2norm``: ``x / sqrt(Σ x² + eps)`` over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def gated_rms_norm(o: Array, gate: Optional[Array], weight: Array, eps: float) -> Array:
    """fla's ``FusedRMSNormGated`` (``gate`` given: ``rmsnorm(o) * w * silu(gate)``) or
    ``RMSNorm`` (``gate`` None), over the last axis, in float32."""
    o = o.astype(jnp.float32)
    o = o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + eps) * weight.astype(jnp.float32)
    if gate is not None:
        o = o * jax.nn.silu(gate.astype(jnp.float32))
    return o


def _linear_init(key, shape, fan_in, dtype):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _from_window(R_win: Optional[Array], j: Array, W: int):
    """Entry ``j`` ``[n, *batch]`` (clipped to ``[0, W - 2]``) of the reset window
    ``R_win [*batch, W - 1, C]``, time-major ``[n, *batch, C]``; 0 for no reset window."""
    if R_win is None:
        return 0.0
    Rt = jnp.moveaxis(R_win, -2, 0)  # [W-1, *batch, C]
    return jnp.take_along_axis(Rt, jnp.clip(j, 0, W - 2)[..., None], axis=0)


def _conv_taps(P_T: Array, w: Array, T: int, t_idx: Array, start: Optional[Array], R_win: Optional[Array]):
    """Causal depthwise convolution over time-major ``P_T [T + W - 1, *batch, C]`` (the
    window then the inputs); ``w [C, W]`` (torch's layout: tap ``W - 1`` is the current step).
    ``start [T, *batch]``: the last reset at or before ``t`` (``-W`` for none) or None; inputs
    before it come from the reset window ``R_win`` (zeros when None)."""
    W = w.shape[-1]
    out = 0.0
    for lag in range(W):
        x = P_T[W - 1 - lag: W - 1 - lag + T]
        if start is not None:
            tau = t_idx - lag
            x = jnp.where((tau >= start)[..., None], x, _from_window(R_win, tau - start + W - 1, W))
        out = out + x * w[:, W - 1 - lag]
    return out


@dataclasses.dataclass(frozen=True)
class MatrixCell:
    """What the matrix-state layers share (see the module docstring). Subclasses define
    ``init``, ``check_params`` and ``_mix(params, x, p) -> (q, k, v, log_decay, beta, gate)``
    from the input ``x`` and the convolved projections ``p``."""

    name: ClassVar[str] = ""

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    # -- sizes the subclasses set: num_heads, head_k_dim, head_v_dim, conv_channels, conv_size
    @property
    def _conv_width(self) -> int:
        return self.conv_size - 1 if self.use_short_conv else 0

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> MatrixCellState:
        """Zero state: ``S [*batch, heads, d_k, d_v]`` float32 (float64 when ``dtype`` is) and
        the convolution window ``[*batch, conv_size - 1, C]`` in ``dtype``."""
        batch_shape = tuple(batch_shape)
        s_dtype = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
        S = jnp.zeros(batch_shape + (self.num_heads, self.head_k_dim, self.head_v_dim), s_dtype)
        conv = jnp.zeros(batch_shape + (self._conv_width, self.conv_channels if self.use_short_conv else 0), dtype)
        return MatrixCellState(S, conv)

    def _check_state(self, h, batch_shape: tuple, name: str = "h"):
        if not isinstance(h, MatrixCellState):
            raise TypeError(f"`{name}` must be a MatrixCellState (or None) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([(f"{name}.S", h.S, (self.num_heads, self.head_k_dim, self.head_v_dim)),
                             (f"{name}.conv", h.conv,
                              (self._conv_width, self.conv_channels if self.use_short_conv else 0))], batch_shape)

    def project(self, params, xs: Array) -> Array:
        """The projections that go through the short convolution, ``[..., I] -> [..., C]``
        (``q, k, v`` concatenated)."""
        return jnp.concatenate([xs @ params.q_proj.T, xs @ params.k_proj.T, xs @ params.v_proj.T], axis=-1)

    def _conv_act(self, p: Array) -> Array:
        return jax.nn.silu(p)

    def _finish(self, params, o: Array, gate: Optional[Array], dtype) -> Array:
        """Gated RMS norm per head, heads merged, output projection: ``[..., heads, d_v] -> [..., hidden]``."""
        o = gated_rms_norm(o, gate, params.o_norm, self.norm_eps)
        o = o.reshape(o.shape[:-2] + (self.num_heads * self.head_v_dim,)).astype(dtype)
        return o @ params.o_proj.T

    def step(self, params, h: Optional[MatrixCellState], x: Array):
        """One time step (generation), ``(params, h, x) -> (h, y)``.

        Args:
          params: the cell's params.
          h: a :class:`MatrixCellState`, or None for zeros.
          x: ``[*batch, input_size]``.

        Returns:
          ``(h, y)``: the new state and ``y [*batch, hidden_size]``.
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        self._check_state(h, batch_shape)
        p = self.project(params, x)
        if self.use_short_conv:
            window = jnp.concatenate([h.conv.astype(p.dtype), p[..., None, :]], axis=-2)  # [*batch, W, C]
            w = self._conv_weight(params)
            c = jnp.einsum("...wc,cw->...c", window, w.astype(p.dtype))
            if params.conv_bias is not None:
                c = c + params.conv_bias
            conv = window[..., 1:, :].astype(h.conv.dtype)
            p = self._conv_act(c)
        else:
            conv = h.conv
            p = self._conv_act_noconv(p)
        q, k, v, log_decay, beta, gate = self._mix(params, x, p)
        S, o = matrix_step(h.S, q, k, v, log_decay, beta, scale=self.scale)
        return MatrixCellState(S, conv), self._finish(params, o, gate, x.dtype)

    def _conv_act_noconv(self, p):
        return p

    def _conv_weight(self, params) -> Array:
        return jnp.concatenate([params.q_conv, params.k_conv, params.v_conv], axis=0)

    def parallel_unroll(self, params, h: MatrixCellState, xs: Array, *, seq_lengths: Optional[Array] = None,
                        resets: Optional[Array] = None, reset_state=None, reverse: bool = False,
                        mode: str = "chunked", chunk_size: Optional[int] = None):
        """The whole sequence with :func:`jaxrnn.matrix.matrix_scan`: ``(h, ys)``, time-major.

        Args:
          params: the cell's params.
          h: initial :class:`MatrixCellState` (not None).
          xs: ``[T, *batch, input_size]``.
          seq_lengths: ``[*batch]`` int or None. resets: ``[T, *batch]`` bool or None.
          reset_state: a :class:`MatrixCellState` (leaves broadcastable to ``h``'s) the
            segments start from, or None for zeros.
          reverse: must be False.
          mode: ``"chunked"`` or ``"sequential"`` (of ``matrix_scan``). ``"associative"`` is
            taken as ``"chunked"``, the only parallel form of a matrix-state cell (as for
            Mamba-2 and mLSTM), so that a stack mixing it with diagonal cells runs in either
            parallel mode.
          chunk_size: steps per chunk; None for the cell's ``chunk_size``.

        Returns:
          ``(h, ys)``: the state at each sequence's true length, ``ys [T, *batch, hidden_size]``
          zero past each length.

        Raises:
          ValueError: for ``reverse=True`` (not supported in parallel).
        """
        mode = C.matrix_mode(mode, self)
        if reverse:
            raise ValueError(f"`reverse=True` is not supported by the parallel form of {self!r}; "
                             "use mode='sequential'.")
        I = self.check_params(params)
        xs = C.check_input(xs, I, name="xs")
        if xs.ndim < 2:
            raise ValueError(f"`xs` must have shape [T, *batch, {I}]; got {tuple(xs.shape)}.")
        T, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
        self._check_state(h, batch_shape)
        lengths = None if seq_lengths is None else jnp.asarray(seq_lengths, jnp.int32)
        t_idx = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
        if resets is not None:
            resets = jnp.asarray(resets, bool)
            if lengths is not None:
                resets = resets & (t_idx < lengths)
        R = None
        if reset_state is not None and resets is not None:
            if not isinstance(reset_state, MatrixCellState):
                raise TypeError(f"`reset_state` must be a MatrixCellState or None; got {type(reset_state).__name__}.")
            R = MatrixCellState(*(jnp.broadcast_to(r, a.shape).astype(a.dtype) for r, a in zip(reset_state, h)))
        p = self.project(params, xs)  # [T, *batch, C]
        conv = h.conv
        if self.use_short_conv:
            W = self.conv_size
            P = jnp.concatenate([jnp.moveaxis(h.conv, -2, 0).astype(p.dtype), p], axis=0)  # [W-1+T, *batch, C]
            start = None
            if resets is not None:  # the last reset at or before t (-W: none, the window counts)
                start = jax.lax.cummax(jnp.where(resets, t_idx, -W), axis=0)
            R_win = None if R is None else R.conv.astype(p.dtype)
            c = _conv_taps(P, self._conv_weight(params).astype(p.dtype), T, t_idx, start, R_win)
            if params.conv_bias is not None:
                c = c + params.conv_bias
            L = jnp.full(batch_shape, T, jnp.int32) if lengths is None else lengths
            # The window after the last valid step: P[L : L + W - 1] (inputs L - W + 1 .. L - 1).
            j = jnp.arange(W - 1).reshape((W - 1,) + (1,) * len(batch_shape))
            idx = L + j  # [W-1, *batch]
            win = jnp.take_along_axis(P, idx[..., None], axis=0)
            if start is not None:
                last_start = jnp.take_along_axis(start, jnp.maximum(L - 1, 0)[None], axis=0)[0]
                tau = L + j - (W - 1)
                keep = (L == 0) | (tau >= last_start)
                win = jnp.where(keep[..., None], win, _from_window(R_win, tau - last_start + W - 1, W))
            conv = jnp.moveaxis(win, 0, -2).astype(h.conv.dtype)
            p = self._conv_act(c)
        else:
            p = self._conv_act_noconv(p)
        q, k, v, log_decay, beta, gate = self._mix(params, xs, p)
        if log_decay is not None and log_decay.shape[-1] == 1:  # one decay per head
            log_decay = log_decay[..., 0]
        S, o = matrix_scan(q, k, v, log_decay, beta, h.S,
                           seq_lengths=lengths, resets=resets, reset_state=None if R is None else R.S,
                           time_major=True, mode=mode,
                           chunk_size=chunk_size or self.chunk_size or DEFAULT_CHUNK_SIZE, scale=self.scale)
        ys = self._finish(params, o, gate, xs.dtype)
        if lengths is not None:
            ys = jnp.where((t_idx < lengths)[..., None], ys, 0.0)
        return MatrixCellState(S.astype(h.S.dtype), conv), ys


# --------------------------------------------------------------------------- Gated DeltaNet


@dataclasses.dataclass(frozen=True, repr=False)
class GatedDeltaNetCell(MatrixCell):
    """Gated DeltaNet (``gated=True``) or DeltaNet (``gated=False``); build them with
    :func:`gated_deltanet` / :func:`deltanet`. Per step, ``σ`` the logistic sigmoid, per head::

        [q̃, k̃, ṽ] = silu(causal_conv([W_q x, W_k x, W_v x]))      (short conv with its window state)
        q = l2norm(q̃),  k = l2norm(k̃),  v = ṽ
        α = exp(-exp(A_log) · softplus(W_a x + dt_bias))            (Gated DeltaNet; α = 1 for DeltaNet)
        β = σ(W_b x)                                                (2 σ(W_b x) with allow_neg_eigval)
        S_t = α S_{t-1} - β k (kᵀ α S_{t-1}) + β k vᵀ               (S: [d_k, d_v])
        o = d_k^{-1/2} S_tᵀ q
        y = W_o [rmsnorm(o) ⊙ w_norm ⊙ silu(W_g x)]_heads           (RMSNorm without gate if use_gate=False)

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxrnn
      >>> from jaxrnn.zoo.deltanet import gated_deltanet
      >>> cell = gated_deltanet(16, num_heads=2, head_dim=8)
      >>> params = cell.init(jax.random.key(0), input_size=16)
      >>> xs = jax.random.normal(jax.random.key(1), (3, 20, 16))               # [B, T, I]
      >>> h, ys = jaxrnn.unroll(cell, params, None, xs, mode="chunked", chunk_size=8)
      >>> h2, ys2 = jaxrnn.unroll(cell, params, None, xs)
      >>> ys.shape, h.S.shape, bool(jnp.allclose(ys, ys2, atol=1e-5))
      ((3, 20, 16), (3, 2, 8, 16), True)
    """

    hidden_size: int
    num_heads: int = 6
    head_dim: int = 256
    expand_v: float = 2.0
    gated: bool = True
    use_gate: bool = True
    use_short_conv: bool = True
    conv_size: int = 4
    conv_bias: bool = False
    allow_neg_eigval: bool = False
    norm_eps: float = 1e-5
    chunk_size: Optional[int] = None

    params_type: ClassVar[type] = GatedDeltaNetParams

    def __post_init__(self):
        for f in ("hidden_size", "num_heads", "head_dim", "conv_size"):
            object.__setattr__(self, f, C.check_positive_int(getattr(self, f), f))
        if self.chunk_size is not None:
            object.__setattr__(self, "chunk_size", C.check_positive_int(self.chunk_size, "chunk_size"))
        dv = self.head_dim * float(self.expand_v)
        if dv <= 0 or not math.isclose(dv, round(dv), rel_tol=1e-5):
            raise ValueError(f"`expand_v` * `head_dim` must be a positive integer; got {self.expand_v} * "
                             f"{self.head_dim} = {dv}.")

    @property
    def name(self) -> str:
        return "gated_deltanet" if self.gated else "deltanet"

    def __repr__(self) -> str:
        return (f"{self.name}(hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"expand_v={self.expand_v}, use_gate={self.use_gate}, allow_neg_eigval={self.allow_neg_eigval})")

    @property
    def head_k_dim(self) -> int:
        return self.head_dim

    @property
    def head_v_dim(self) -> int:
        return int(round(self.head_dim * float(self.expand_v)))

    @property
    def conv_channels(self) -> int:
        return self.num_heads * (2 * self.head_k_dim + self.head_v_dim)

    @property
    def scale(self) -> float:
        return self.head_k_dim ** -0.5

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> GatedDeltaNetParams:
        """fla's initialisation (module docstring)."""
        I = C.check_positive_int(input_size, "input_size")
        H, dk, dv = self.num_heads, self.head_k_dim, self.head_v_dim
        ks = iter(jax.random.split(key, 16))
        lin = lambda out, fan: _linear_init(next(ks), (out, fan), fan, dtype)
        q_proj, k_proj, v_proj = lin(H * dk, I), lin(H * dk, I), lin(H * dv, I)
        a_proj = lin(H, I) if self.gated else None
        b_proj = lin(H, I)
        A_log = dt_bias = None
        if self.gated:
            A_log = jnp.log(jax.random.uniform(next(ks), (H,), jnp.float32, 0.0, 16.0)).astype(dtype)
            dt = jnp.exp(jax.random.uniform(next(ks), (H,), jnp.float32) * (math.log(0.1) - math.log(0.001))
                         + math.log(0.001))
            dt = jnp.maximum(dt, 1e-4)
            dt_bias = (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)
        convs = [None] * 3
        conv_bias = None
        if self.use_short_conv:
            W = self.conv_size
            convs = [_linear_init(next(ks), (n, W), W, dtype) for n in (H * dk, H * dk, H * dv)]
            if self.conv_bias:
                conv_bias = _linear_init(next(ks), (self.conv_channels,), W, dtype)
        g_proj = lin(H * dv, I) if self.use_gate else None
        o_proj = lin(self.hidden_size, H * dv)
        return GatedDeltaNetParams(q_proj, k_proj, v_proj, a_proj, b_proj, A_log, dt_bias, *convs, conv_bias,
                                   g_proj, jnp.ones((dv,), dtype), o_proj)

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size ``I``."""
        C.check_params_type(params, GatedDeltaNetParams, self, name)
        w = params.q_proj
        H, dk, dv = self.num_heads, self.head_k_dim, self.head_v_dim
        if getattr(w, "ndim", None) != 2:
            raise ValueError(f"`{name}.q_proj` must have shape [{H * dk}, input_size]; "
                             f"got {getattr(w, 'shape', type(w).__name__)}.")
        I = int(w.shape[1])
        want = dict(q_proj=(H * dk, I), k_proj=(H * dk, I), v_proj=(H * dv, I), b_proj=(H, I), o_norm=(dv,),
                    o_proj=(self.hidden_size, H * dv))
        if self.gated:
            want.update(a_proj=(H, I), A_log=(H,), dt_bias=(H,))
        if self.use_short_conv:
            W = self.conv_size
            want.update(q_conv=(H * dk, W), k_conv=(H * dk, W), v_conv=(H * dv, W))
            if self.conv_bias:
                want.update(conv_bias=(self.conv_channels,))
        if self.use_gate:
            want.update(g_proj=(H * dv, I))
        for f in GatedDeltaNetParams._fields:
            value = getattr(params, f)
            if f in want:
                C.check_array(value, f"{name}.{f}", want[f])
            elif value is not None:
                raise ValueError(f"`{name}.{f}` must be None for {self!r}; got {type(value).__name__}.")
        return I

    def _mix(self, params, x, p):
        H, dk, dv = self.num_heads, self.head_k_dim, self.head_v_dim
        lead = p.shape[:-1]
        q = l2norm(p[..., :H * dk].reshape(lead + (H, dk)))
        k = l2norm(p[..., H * dk:2 * H * dk].reshape(lead + (H, dk)))
        v = p[..., 2 * H * dk:].reshape(lead + (H, dv))
        beta = jax.nn.sigmoid((x @ params.b_proj.T).astype(jnp.float32))
        if self.allow_neg_eigval:
            beta = 2.0 * beta
        if self.gated:
            a = (x @ params.a_proj.T).astype(jnp.float32) + params.dt_bias.astype(jnp.float32)
            log_decay = -jnp.exp(params.A_log.astype(jnp.float32)) * jax.nn.softplus(a)
        else:
            log_decay = None  # DeltaNet: no decay (matrix_scan skips it)
        gate = None
        if self.use_gate:
            gate = (x @ params.g_proj.T).reshape(lead + (H, dv))
        return q, k, v, None if log_decay is None else log_decay[..., None], beta, gate

    def _conv_act_noconv(self, p):  # fla: silu on the projections without the short conv
        return jax.nn.silu(p)


def gated_deltanet(hidden_size: int, *, num_heads: int = 6, head_dim: int = 256, expand_v: float = 2.0,
                   use_gate: bool = True, use_short_conv: bool = True, conv_size: int = 4, conv_bias: bool = False,
                   allow_neg_eigval: bool = False, norm_eps: float = 1e-5,
                   chunk_size: Optional[int] = None) -> GatedDeltaNetCell:
    """A Gated DeltaNet layer (fla's ``GatedDeltaNet`` defaults); see :class:`GatedDeltaNetCell`.

    Args:
      hidden_size: size of the output (fla's ``hidden_size``; the input size is ``init``'s).
      num_heads: heads. head_dim: ``d_k``. expand_v: ``d_v = expand_v * d_k``.
      use_gate: output gate ``silu(W_g x)`` after the RMS norm.
      use_short_conv, conv_size, conv_bias: the short causal convolution of ``q, k, v``.
      allow_neg_eigval: ``β`` in ``[0, 2]`` instead of ``[0, 1]`` (negative eigenvalues).
      norm_eps: RMS norm epsilon.
      chunk_size: default chunk length of the parallel form (None: 64).
    """
    return GatedDeltaNetCell(hidden_size, num_heads, head_dim, expand_v, True, use_gate, use_short_conv, conv_size,
                             conv_bias, allow_neg_eigval, norm_eps, chunk_size)


def deltanet(hidden_size: int, *, num_heads: int = 4, head_dim: Optional[int] = None, expand_v: float = 1.0,
             use_gate: bool = False, use_short_conv: bool = True, conv_size: int = 4, conv_bias: bool = False,
             allow_neg_eigval: bool = False, norm_eps: float = 1e-5,
             chunk_size: Optional[int] = None) -> GatedDeltaNetCell:
    """A DeltaNet layer: Gated DeltaNet without the decay (``α = 1``), with fla's ``DeltaNet``
    defaults (4 heads, ``head_dim = hidden_size / num_heads``, ``expand_v = 1``, no output gate;
    silu + l2 norm on ``q, k``, ``β = σ(W_b x)``). Arguments as :func:`gated_deltanet`."""
    if head_dim is None:
        if hidden_size % num_heads:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}) "
                             "when `head_dim` is None.")
        head_dim = hidden_size // num_heads
    return GatedDeltaNetCell(hidden_size, num_heads, head_dim, expand_v, False, use_gate, use_short_conv, conv_size,
                             conv_bias, allow_neg_eigval, norm_eps, chunk_size)
