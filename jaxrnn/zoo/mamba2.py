"""The Mamba-2 mixer (Dao and Gu 2024, "Transformers are SSMs: generalized models and
efficient algorithms through structured state space duality", arXiv 2405.21060), as
``mamba_ssm.modules.mamba2.Mamba2`` defines it.

With ``H`` the model size (``d_model``), ``d_inner = expand * H``, ``NH = d_inner / P`` heads of
``P = head_dim`` channels, ``N = state_size`` (``d_state``), ``G = num_groups`` groups of
``B``/``C`` shared by ``NH / G`` heads each, and ``K = conv_size`` (``d_conv``), per step::

    z, xBC, dt_raw = split(W_in x (+ b_in), [d_inner, d_inner + 2 G N, NH])
    xBC  = silu(conv1d(xBC) + b_conv)          causal depthwise, kernel K, over the last K inputs
    x, B, C = split(xBC, [d_inner, G N, G N])                  x: [NH, P], B, C: [G, N] -> per head [NH, N]
    dt   = softplus(dt_raw + dt_bias)                          [NH]
    A    = -exp(A_log)                                         [NH]
    S'   = exp(dt A) S + B (dt x)ᵀ                             per head [N, P]  (the SSD recurrence)
    y    = S'ᵀ C + D x                                         [NH, P] -> [d_inner]
    y    = RMSNorm_G(y * silu(z)) * norm_weight                gated RMSNorm per group, eps 1e-5
    out  = W_out y (+ b_out)

The state is a :class:`Mamba2State`: ``conv``, the last ``K - 1`` inputs of the convolution
``[*batch, K - 1, conv_dim]`` (oldest first; ``conv_dim = d_inner + 2 G N``), and ``ssm``
``[*batch, NH, N, P]`` (mamba_ssm's ``ssm_state`` transposed, as :func:`jaxrnn.matrix.matrix_scan`
holds it), float32 whatever the input dtype.

Layout (PyTorch's, weights ``[out, in]``)::

    in_proj: [2 d_inner + 2 G N + NH, I]   in_bias: same rows or None (bias=False, the default)
    conv_weight: [conv_dim, K] (torch's [conv_dim, 1, K])   conv_bias: [conv_dim] or None
    dt_bias, A_log, D: [NH] (float32)   norm_weight: [d_inner]   out_proj: [H, d_inner]   out_bias: [H] or None

``parallel_unroll`` (``mode="chunked"``) computes the convolution for all steps at once and
the SSD recurrence with :func:`jaxrnn.matrix.matrix_scan` (``q = C``, ``k = B``, ``v = dt x``,
scalar log-decay ``dt A`` per head). A reset at ``t`` restarts both the convolution window
and ``S`` from the reset state (zeros by default).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["Mamba2Params", "Mamba2State", "Mamba2Cell", "mamba2"]


class Mamba2Params(NamedTuple):
    """Mamba-2 parameters (see the module docstring for shapes)."""

    in_proj: Array
    in_bias: Optional[Array]
    conv_weight: Array
    conv_bias: Optional[Array]
    dt_bias: Array
    A_log: Array
    D: Array
    norm_weight: Array
    out_proj: Array
    out_bias: Optional[Array]


class Mamba2State(NamedTuple):
    """The convolution window ``conv [*batch, K - 1, conv_dim]`` and the SSM state
    ``ssm [*batch, NH, N, P]``."""

    conv: Array
    ssm: Array


def _state_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32)


@dataclasses.dataclass(frozen=True)
class Mamba2Cell:
    """The Mamba-2 mixer (build it with :func:`mamba2`); equations in the module docstring.

    Attributes:
      hidden_size: ``H`` (``d_model``), the output size.
      state_size: ``N`` (``d_state``).
      conv_size: ``K`` (``d_conv``).
      expand: ``d_inner = expand * H``.
      head_dim: ``P`` (``headdim``).
      num_groups: ``G`` (``ngroups``).
      A_init_range, dt_min, dt_max, dt_init_floor: the initialisation of ``A`` and ``dt``.
      bias: biases on the input and output projections. conv_bias: bias on the convolution.
      norm_eps: the gated RMSNorm's epsilon.
      chunk_size: default chunk length of ``parallel_unroll``.
    """

    hidden_size: int
    state_size: int = 128
    conv_size: int = 4
    expand: int = 2
    head_dim: int = 64
    num_groups: int = 1
    A_init_range: tuple = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    bias: bool = False
    conv_bias: bool = True
    norm_eps: float = 1e-5
    chunk_size: int = 64

    def __post_init__(self):
        for name in ("hidden_size", "state_size", "conv_size", "expand", "head_dim", "num_groups", "chunk_size"):
            object.__setattr__(self, name, C.check_positive_int(getattr(self, name), name))
        if self.d_inner % self.head_dim:
            raise ValueError(f"`head_dim` must divide expand * hidden_size = {self.d_inner}; got {self.head_dim}.")
        if self.num_heads % self.num_groups:
            raise ValueError(f"`num_groups` must divide the number of heads {self.num_heads}; got {self.num_groups}.")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"`A_init_range` must be (low, high) with 0 < low <= high; got {self.A_init_range!r}.")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"`dt_min` and `dt_max` must satisfy 0 < dt_min <= dt_max; "
                             f"got {self.dt_min}, {self.dt_max}.")

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.num_groups * self.state_size

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        return (f"mamba2(hidden_size={self.hidden_size}, state_size={self.state_size}, head_dim={self.head_dim}, "
                f"expand={self.expand}, conv_size={self.conv_size}, num_groups={self.num_groups})")

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> Mamba2Params:
        """mamba_ssm's initialisation: ``nn.Linear``/``nn.Conv1d`` defaults (``U(±1/sqrt(fan_in))``,
        ``fan_in = K`` for the depthwise convolution), ``dt = exp(U(log dt_min, log dt_max))``
        floored at ``dt_init_floor`` and ``dt_bias = softplus⁻¹(dt) = dt + log(-expm1(-dt))``,
        ``A_log = log(U(A_init_range))``, ``D = 1``, norm weight 1; ``dt_bias``, ``A_log``, ``D``
        in float32 (float64 for a float64 ``dtype``)."""
        I = C.check_positive_int(input_size, "input_size")
        H, NH, K, Di, Cd = self.hidden_size, self.num_heads, self.conv_size, self.d_inner, self.conv_dim
        d_proj = 2 * Di + 2 * self.num_groups * self.state_size + NH
        k_in, k_inb, k_c, k_cb, k_dt, k_a, k_out, k_outb = jax.random.split(key, 8)
        u = lambda k, shape, fan: jax.random.uniform(k, shape, dtype, -1 / math.sqrt(fan), 1 / math.sqrt(fan))
        f32 = _state_dtype(dtype)
        dt = jnp.exp(jax.random.uniform(k_dt, (NH,), f32) * (math.log(self.dt_max) - math.log(self.dt_min))
                     + math.log(self.dt_min))
        dt = jnp.maximum(dt, self.dt_init_floor)
        lo, hi = self.A_init_range
        return Mamba2Params(
            in_proj=u(k_in, (d_proj, I), I), in_bias=u(k_inb, (d_proj,), I) if self.bias else None,
            conv_weight=u(k_c, (Cd, K), K), conv_bias=u(k_cb, (Cd,), K) if self.conv_bias else None,
            dt_bias=dt + jnp.log(-jnp.expm1(-dt)), A_log=jnp.log(jax.random.uniform(k_a, (NH,), f32, lo, hi)),
            D=jnp.ones((NH,), f32), norm_weight=jnp.ones((Di,), dtype),
            out_proj=u(k_out, (H, Di), Di), out_bias=u(k_outb, (H,), Di) if self.bias else None)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> Mamba2State:
        """Zero state: ``conv [*batch_shape, K - 1, conv_dim]`` in ``dtype``, ``ssm`` float32
        (float64 for a float64 ``dtype``)."""
        bs = tuple(batch_shape)
        return Mamba2State(jnp.zeros(bs + (self.conv_size - 1, self.conv_dim), dtype),
                           jnp.zeros(bs + (self.num_heads, self.state_size, self.head_dim), _state_dtype(dtype)))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size ``I``."""
        C.check_params_type(params, Mamba2Params, self, name)
        d_proj = 2 * self.d_inner + 2 * self.num_groups * self.state_size + self.num_heads
        w = params.in_proj
        if getattr(w, "ndim", None) != 2 or w.shape[0] != d_proj:
            raise ValueError(f"`{name}.in_proj` must have shape [{d_proj}, input_size] for {self!r}; "
                             f"got {getattr(w, 'shape', type(w).__name__)}.")
        I = int(w.shape[1])
        NH = self.num_heads
        shapes = dict(in_proj=(d_proj, I), conv_weight=(self.conv_dim, self.conv_size), dt_bias=(NH,), A_log=(NH,),
                      D=(NH,), norm_weight=(self.d_inner,), out_proj=(self.hidden_size, self.d_inner))
        for field, shape in shapes.items():
            C.check_array(getattr(params, field), f"{name}.{field}", shape)
        for field, on, shape in (("in_bias", self.bias, (d_proj,)), ("out_bias", self.bias, (self.hidden_size,)),
                                 ("conv_bias", self.conv_bias, (self.conv_dim,))):
            value = getattr(params, field)
            if on:
                C.check_array(value, f"{name}.{field}", shape)
            elif value is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r}; got an array.")
        return I

    def _check_state(self, h, batch_shape, name="h") -> Mamba2State:
        if not isinstance(h, Mamba2State):
            if isinstance(h, (tuple, list)) and len(h) == 2:
                h = Mamba2State(*h)
            else:
                raise TypeError(f"`{name}` must be a Mamba2State (conv, ssm) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([(f"{name}.conv", h.conv, (self.conv_size - 1, self.conv_dim)),
                             (f"{name}.ssm", h.ssm, (self.num_heads, self.state_size, self.head_dim))], batch_shape)
        return h

    # ------------------------------------------------------------------ pieces shared by both forms

    def _in(self, params: Mamba2Params, x: Array):
        """``(z, xBC, dt_raw)`` for inputs ``[..., I]``."""
        zxbcdt = x @ params.in_proj.T
        if params.in_bias is not None:
            zxbcdt = zxbcdt + params.in_bias
        Di = self.d_inner
        return zxbcdt[..., :Di], zxbcdt[..., Di:Di + self.conv_dim], zxbcdt[..., Di + self.conv_dim:]

    def _ssm_inputs(self, params: Mamba2Params, xbc: Array, dt_raw: Array, sdt):
        """From the convolved ``xBC [..., conv_dim]`` (after silu) and ``dt_raw [..., NH]``:
        ``(q = C, k = B, v = dt x, log_decay = dt A, x)`` per head, in the state dtype ``sdt``."""
        Di, G, N, NH, P = self.d_inner, self.num_groups, self.state_size, self.num_heads, self.head_dim
        lead = xbc.shape[:-1]
        x = xbc[..., :Di].reshape(lead + (NH, P)).astype(sdt)
        per_head = lambda a: jnp.repeat(a.reshape(lead + (G, N)), NH // G, axis=-2).astype(sdt)
        B = per_head(xbc[..., Di:Di + G * N])
        Cm = per_head(xbc[..., Di + G * N:])
        dt = jax.nn.softplus(dt_raw.astype(sdt) + params.dt_bias.astype(sdt))
        A = -jnp.exp(params.A_log.astype(sdt))
        return Cm, B, dt[..., None] * x, dt * A, x

    def _out(self, params: Mamba2Params, y: Array, x: Array, z: Array, out_dtype) -> Array:
        """``D`` skip, gated RMSNorm, output projection: ``y, x [..., NH, P]``, ``z [..., d_inner]``."""
        y = y + params.D.astype(y.dtype)[:, None] * x
        lead = y.shape[:-2]
        y = y.reshape(lead + (self.d_inner,)) * jax.nn.silu(z.astype(y.dtype))
        g = y.reshape(lead + (self.num_groups, self.d_inner // self.num_groups))
        g = g * jax.lax.rsqrt(jnp.mean(jnp.square(g), axis=-1, keepdims=True) + self.norm_eps)
        y = (g.reshape(lead + (self.d_inner,)) * params.norm_weight.astype(y.dtype)).astype(out_dtype)
        out = y @ params.out_proj.T
        return out if params.out_bias is None else out + params.out_bias

    def _conv_act(self, params: Mamba2Params, window: Array) -> Array:
        """``silu(conv)`` of windows ``[..., K, conv_dim]`` (oldest first)."""
        y = jnp.einsum("...kc,ck->...c", window, params.conv_weight.astype(window.dtype))
        if params.conv_bias is not None:
            y = y + params.conv_bias
        return jax.nn.silu(y)

    # ------------------------------------------------------------------ the two forms

    def step(self, params: Mamba2Params, h: Optional[Mamba2State], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (mamba_ssm's ``Mamba2.step``, for generation).

        Args:
          params: a :class:`Mamba2Params`.
          h: a :class:`Mamba2State`, or None for zeros.
          x: ``[*batch, input_size]``.

        Returns:
          ``(h, y)``, ``y [*batch, hidden_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.mamba2 import mamba2
          >>> cell = mamba2(16, state_size=8, head_dim=8)
          >>> params = cell.init(jax.random.key(0), input_size=16)
          >>> h, y = cell.step(params, None, jnp.ones((3, 16)))
          >>> h.conv.shape, h.ssm.shape, y.shape
          ((3, 3, 48), (3, 4, 8, 8), (3, 16))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        h = self._check_state(h, batch_shape)
        z, xbc, dt_raw = self._in(params, x)
        window = jnp.concatenate([h.conv, xbc[..., None, :].astype(h.conv.dtype)], axis=-2)
        xbc = self._conv_act(params, window)
        sdt = h.ssm.dtype
        q, k, v, log_decay, xh = self._ssm_inputs(params, xbc, dt_raw, sdt)
        S = jnp.exp(log_decay)[..., None, None] * h.ssm + k[..., :, None] * v[..., None, :]
        y = jnp.einsum("...hnp,...hn->...hp", S, q)
        out = self._out(params, y, xh, z, jnp.result_type(x.dtype, params.out_proj.dtype))
        return Mamba2State(window[..., 1:, :], S), out

    def parallel_unroll(self, params: Mamba2Params, h: Mamba2State, xs: Array, *, seq_lengths: Optional[Array] = None,
                        resets: Optional[Array] = None, reset_state: Optional[Mamba2State] = None,
                        reverse: bool = False, mode: str = "chunked", chunk_size: Optional[int] = None):
        """The whole sequence at once: ``(h, ys)``, time-major (``jaxrnn.unroll(..., mode="chunked")``).

        Args:
          params: a :class:`Mamba2Params`.
          h: initial :class:`Mamba2State` (not None).
          xs: ``[T, *batch, input_size]``.
          seq_lengths: ``[*batch]`` int or None. resets: ``[T, *batch]`` bool or None.
          reset_state: a :class:`Mamba2State` (leaves broadcastable to ``h``'s) or None for zeros.
          reverse: must be False (run backwards with ``mode="sequential"``).
          mode: ``"chunked"`` (``"associative"`` is taken as ``"chunked"``) or ``"sequential"``
            (of :func:`jaxrnn.matrix.matrix_scan`).
          chunk_size: steps per chunk; None for the cell's ``chunk_size``.

        Returns:
          ``(h, ys)``: the state at each sequence's true length and ``ys [T, *batch, H]``,
          zero past each length.

        Raises:
          ValueError: ``reverse=True``, or an unknown ``mode``.
        """
        from jaxrnn.matrix import matrix_scan

        mode = C.matrix_mode(mode, self)
        if reverse:
            raise ValueError(f"`reverse=True` is not supported by {self!r}'s parallel form; "
                             "use mode='sequential' to run it backwards.")
        chunk_size = self.chunk_size if chunk_size is None else C.check_positive_int(chunk_size, "chunk_size")
        T = xs.shape[0]
        batch_shape = tuple(xs.shape[1:-1])
        h = self._check_state(h, batch_shape)
        if T == 0:
            return h, jnp.zeros((0,) + batch_shape + (self.hidden_size,), jnp.result_type(xs.dtype, params.out_proj.dtype))
        Bf = math.prod(batch_shape)
        flat = lambda a: a.reshape((Bf,) + a.shape[len(batch_shape):])
        K = self.conv_size
        lengths = None if seq_lengths is None else jnp.clip(jnp.asarray(seq_lengths).reshape(Bf), 0, T)
        t = jnp.arange(T, dtype=jnp.int32)[:, None]                                   # [T, 1]
        flags = None
        if resets is not None:
            flags = jnp.asarray(resets).astype(bool).reshape(T, Bf)
            if lengths is not None:
                flags = flags & (t < lengths[None, :])
        use_reset = flags is not None and reset_state is not None
        if use_reset:
            reset_state = Mamba2State(*(flat(jnp.broadcast_to(r, a.shape).astype(a.dtype))
                                        for r, a in zip(reset_state, h)))
        conv0, ssm0 = flat(h.conv), flat(h.ssm)

        z, xbc_raw, dt_raw = self._in(params, xs.reshape((T, Bf, xs.shape[-1])))
        xbc_raw = xbc_raw.astype(conv0.dtype)
        # The causal convolution with resets: tap j of step t reads x[t - d] (d = K - 1 - j)
        # inside t's segment and the segment's starting window (h.conv, or the reset
        # state's after a reset) before it.
        if flags is None:
            since = t + jnp.zeros((1, Bf), jnp.int32)                                # steps since segment start
            seen = None
        else:
            start = jax.lax.cummax(jnp.where(flags, t, 0), axis=0)
            since = t - start
            seen = jax.lax.cummax(flags.astype(jnp.int32), axis=0).astype(bool)
        taps = []
        for j in range(K):
            d = K - 1 - j
            if d == 0:
                taps.append(xbc_raw)
                continue
            shifted = jnp.pad(xbc_raw, ((d, 0), (0, 0), (0, 0)))[:T]
            from_buf = 0
            for i in range(K - 1):
                buf = conv0[:, i] if not use_reset else jnp.where(seen[..., None], reset_state.conv[:, i], conv0[:, i])
                if flags is not None and not use_reset:
                    buf = jnp.where(seen[..., None], 0, buf)
                from_buf = jnp.where((j + since == i)[..., None], buf, from_buf)
            taps.append(jnp.where((since >= d)[..., None], shifted, from_buf))
        window = jnp.stack(taps, axis=-2)                                             # [T, Bf, K, conv_dim]
        xbc = self._conv_act(params, window)
        if lengths is None:
            conv_last = window[-1, :, 1:]
        else:
            last = jnp.take_along_axis(window, jnp.maximum(lengths - 1, 0)[None, :, None, None], axis=0)[0]
            conv_last = jnp.where((lengths > 0)[:, None, None], last[:, 1:], conv0)

        sdt = ssm0.dtype
        q, k, v, log_decay, xh = self._ssm_inputs(params, xbc, dt_raw, sdt)
        S, y = matrix_scan(q, k, v, log_decay, h0=ssm0, seq_lengths=lengths, resets=flags,
                           time_major=True, mode=mode,
                           chunk_size=chunk_size)
        S, y = S.astype(sdt), y.astype(sdt)
        if use_reset:  # S after a reset: the scan's (from zero) plus the reset state decayed since the reset
            seg = _segment_cumsum(log_decay, flags)                                   # [T, Bf, NH]
            coef = jnp.where(seen[..., None], jnp.exp(seg), 0.0)
            y = y + coef[..., None] * jnp.einsum("tbhn,bhnp->tbhp", q, reset_state.ssm)
            if lengths is None:
                c_end = coef[-1]
            else:
                c_end = jnp.take_along_axis(coef, jnp.maximum(lengths - 1, 0)[None, :, None], axis=0)[0]
                c_end = jnp.where((lengths > 0)[:, None], c_end, 0.0)
            S = S + c_end[..., None, None] * reset_state.ssm
        ys = self._out(params, y, xh, z, jnp.result_type(xs.dtype, params.out_proj.dtype))
        ys = ys.reshape((T,) + batch_shape + (self.hidden_size,))
        if seq_lengths is not None:
            tt = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * len(batch_shape))
            ys = jnp.where((tt < jnp.asarray(seq_lengths))[..., None], ys, 0)
        new = Mamba2State(conv_last.reshape(h.conv.shape).astype(h.conv.dtype), S.reshape(h.ssm.shape).astype(sdt))
        return new, ys


def _segment_cumsum(a: Array, flags: Array) -> Array:
    """Inclusive cumulative sum of ``a [T, B, ...]`` along time restarting at each ``flags [T, B]``
    (the sum from the last reset to ``t``; from 0 before any reset): no long running sums
    whose differences would lose precision."""
    f = jnp.broadcast_to(flags.reshape(flags.shape + (1,) * (a.ndim - 2)), a.shape)

    def combine(left, right):
        lf, la = left
        rf, ra = right
        return lf | rf, jnp.where(rf, ra, la + ra)

    return jax.lax.associative_scan(combine, (f, a), axis=0)[1]


def mamba2(hidden_size: int, *, state_size: int = 128, conv_size: int = 4, expand: int = 2, head_dim: int = 64,
           num_groups: int = 1, A_init_range: tuple = (1.0, 16.0), dt_min: float = 0.001, dt_max: float = 0.1,
           dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True, norm_eps: float = 1e-5,
           chunk_size: int = 64) -> Mamba2Cell:
    """A Mamba-2 mixer as a cell; see :class:`Mamba2Cell` and the module docstring.

    Defaults are ``mamba_ssm``'s ``Mamba2``: ``d_state = 128``, ``d_conv = 4``, ``expand = 2``,
    ``headdim = 64``, ``ngroups = 1``, ``A_init_range = (1, 16)``, ``dt`` in ``[0.001, 0.1]``,
    no projection biases, a convolution bias, ``rmsnorm`` with the gate applied before it.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from jaxrnn.zoo.mamba2 import mamba2
      >>> cell = mamba2(16, state_size=8, head_dim=8)
      >>> params = cell.init(jax.random.key(0), input_size=16)
      >>> xs = jax.random.normal(jax.random.key(1), (2, 40, 16))
      >>> _, ys = jaxrnn.unroll(cell, params, None, xs, mode="chunked", chunk_size=16)
      >>> _, ys2 = jaxrnn.unroll(cell, params, None, xs)
      >>> ys.shape, bool(jnp.allclose(ys, ys2, atol=1e-5))
      ((2, 40, 16), True)
    """
    return Mamba2Cell(hidden_size, state_size=state_size, conv_size=conv_size, expand=expand, head_dim=head_dim,
                      num_groups=num_groups, A_init_range=tuple(float(a) for a in A_init_range), dt_min=float(dt_min),
                      dt_max=float(dt_max), dt_init_floor=float(dt_init_floor), bias=bias, conv_bias=conv_bias,
                      norm_eps=float(norm_eps), chunk_size=chunk_size)
