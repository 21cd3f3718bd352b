"""Mamba's selective state space layer, S6 (Gu & Dao 2023, "Mamba: linear-time sequence
modeling with selective state spaces", arXiv 2312.00752): the Mamba block's mixer as a cell.

With ``M`` the model size (``hidden_size``, input and output), ``E = expand · M`` the inner
width, ``N`` the state size per channel, ``R`` the rank of the step projection and ``K`` the
width of the causal convolution, one step reads::

    [x̃, z] = W_in x_t (+ b_in)                                   x̃, z: [E]
    x'     = conv_w ⋆ (x̃_{t-K+1}, ..., x̃_t) + conv_b               depthwise causal conv, [E]
    u      = silu(x')
    [δ, B_t, C_t] = W_x u                                         δ: [R], B_t, C_t: [N]
    Δ_t    = softplus(W_dt δ + dt_bias)                           [E], input-dependent step
    A      = -exp(A_log)                                          [E, N]
    Ā_t    = exp(Δ_t A),   h_t = Ā_t ⊙ h_{t-1} + (Δ_t u) B_tᵀ    [E, N]
    y      = (h_t C_t + D ⊙ u) ⊙ silu(z)                          [E]
    out    = W_out y (+ b_out)                                    [M]

Layout (PyTorch ``mamba_ssm.modules.mamba_simple.Mamba``'s, so its weights move unchanged;
``conv_w`` is ``conv1d.weight[:, 0, :]``)::

    in_proj_w: [2E, M]   in_proj_b: [2E] or None     conv_w: [E, K]   conv_b: [E] or None
    x_proj_w: [R + 2N, E]   dt_proj_w: [E, R]   dt_bias: [E]   A_log: [E, N]   D: [E]
    out_proj_w: [M, E]   out_proj_b: [M] or None

``A_log``, ``D`` and ``dt_bias`` are float32 whatever ``init``'s ``dtype`` (as Mamba keeps
them), and the recurrence runs in float32 (float64 under x64).

The state is an :class:`S6State`: ``conv`` ``[*batch, K-1, E]``, the last ``K - 1`` values
of ``x̃`` (oldest first; Mamba's ``conv_state``), and ``ssm`` ``[*batch, E, N]``. A reset
replaces both, so a segment's convolution never sees the previous segment's inputs.

Initialisation (Mamba's): ``A_log = log(1..N)`` for every channel, ``D = 1``,
``Δ = exp(U(log dt_min, log dt_max))`` floored at ``dt_init_floor`` and ``dt_bias =
Δ + log(-expm1(-Δ))`` (the inverse softplus), ``dt_proj_w ~ U(±dt_scale/sqrt(R))``, the
other weights PyTorch's default ``U(±1/sqrt(fan_in))``, biases zero except the conv's.

**The parallel form** (``parallel_unroll``) computes every step's ``Δ, B, C, u`` at once,
then runs the recurrence chunk by chunk: a ``lax.scan`` over chunks of ``chunk_size``
steps carries ``h`` ``[*batch, E, N]``; inside a chunk an associative scan (or a
sequential one, ``mode="sequential"``) works on ``[chunk, *batch, E, N]`` and contracts
with ``C`` at once. The chunk body is rematerialised in the backward pass, so the
``[T, *batch, E, N]`` tensor of all states is never held: memory grows with ``T`` as
``[T, *batch, E]`` and ``[T, *batch, N]`` activations plus one ``[*batch, E, N]`` state per
chunk (``benchmarks/memax_cells.py`` measures it). Every mode chunks, ``"associative"``
included.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.linear import MODES
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["S6Params", "S6State", "S6Cell", "s6", "selective_scan"]

DEFAULT_CHUNK_SIZE = 64


class S6Params(NamedTuple):
    """Mamba mixer parameters (see the module docstring for shapes)."""

    in_proj_w: Array
    in_proj_b: Optional[Array]
    conv_w: Array
    conv_b: Optional[Array]
    x_proj_w: Array
    dt_proj_w: Array
    dt_bias: Array
    A_log: Array
    D: Array
    out_proj_w: Array
    out_proj_b: Optional[Array]


class S6State(NamedTuple):
    """``conv`` ``[*batch, K-1, E]`` (the last inputs of the convolution, oldest first) and
    ``ssm`` ``[*batch, E, N]``."""

    conv: Array
    ssm: Array


def _silu(x):
    return x * C.sigmoid(x)


@dataclasses.dataclass(frozen=True)
class S6Cell:
    """The Mamba mixer (build it with :func:`s6`); equations in the module docstring.

    Attributes:
      hidden_size: ``M``, the input and output size.
      state_size: ``N`` (Mamba's ``d_state``).
      expand: ``E = expand · M``.
      conv_size: ``K`` (Mamba's ``d_conv``); 1 for no convolution over time.
      dt_rank: ``R``; None for ``ceil(M / 16)``.
      bias: biases of the in and out projections. conv_bias: bias of the convolution.
      dt_min, dt_max, dt_init_floor, dt_scale: the initialisation of ``Δ``.
      chunk_size: steps per chunk of the parallel form (None: 64).
    """

    hidden_size: int
    state_size: int = 16
    expand: int = 2
    conv_size: int = 4
    dt_rank: Optional[int] = None
    bias: bool = False
    conv_bias: bool = True
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    chunk_size: Optional[int] = None

    def __post_init__(self):
        for name in ("hidden_size", "state_size", "expand", "conv_size"):
            object.__setattr__(self, name, C.check_positive_int(getattr(self, name), name))
        rank = math.ceil(self.hidden_size / 16) if self.dt_rank is None else self.dt_rank
        object.__setattr__(self, "dt_rank", C.check_positive_int(rank, "dt_rank"))
        if self.chunk_size is not None:
            C.check_positive_int(self.chunk_size, "chunk_size")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"`dt_min` and `dt_max` must satisfy 0 < dt_min <= dt_max; "
                             f"got dt_min={self.dt_min}, dt_max={self.dt_max}.")

    @property
    def inner_size(self) -> int:
        """``E = expand · hidden_size``."""
        return self.expand * self.hidden_size

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k, v in (("expand", 2), ("conv_size", 4),
                                                                    ("bias", False), ("chunk_size", None))
                        if getattr(self, k) != v)
        return f"s6(hidden_size={self.hidden_size}, state_size={self.state_size}{extra})"

    # ----------------------------------------------------------------------- parameters and state

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> S6Params:
        """Mamba's initialisation (module docstring); ``input_size`` must be ``hidden_size``."""
        input_size = C.check_positive_int(input_size, "input_size")
        if input_size != self.hidden_size:
            raise ValueError(f"`input_size` must equal hidden_size={self.hidden_size} for {self!r}; "
                             f"got {input_size}.")
        M, E, N, R, K = self.hidden_size, self.inner_size, self.state_size, self.dt_rank, self.conv_size
        ks = jax.random.split(key, 8)
        uni = lambda k, shape, bound, dt=dtype: jax.random.uniform(k, shape, dt, -bound, bound)
        dt = jnp.exp(jax.random.uniform(ks[5], (E,), jnp.float32) * (math.log(self.dt_max) - math.log(self.dt_min))
                     + math.log(self.dt_min))
        dt = jnp.maximum(dt, self.dt_init_floor)
        return S6Params(
            in_proj_w=uni(ks[0], (2 * E, M), 1 / math.sqrt(M)),
            in_proj_b=jnp.zeros((2 * E,), dtype) if self.bias else None,
            conv_w=uni(ks[1], (E, K), 1 / math.sqrt(K)),
            conv_b=uni(ks[2], (E,), 1 / math.sqrt(K)) if self.conv_bias else None,
            x_proj_w=uni(ks[3], (R + 2 * N, E), 1 / math.sqrt(E)),
            dt_proj_w=uni(ks[4], (E, R), self.dt_scale / math.sqrt(R)),
            dt_bias=dt + jnp.log(-jnp.expm1(-dt)),
            A_log=jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (E, N))),
            D=jnp.ones((E,), jnp.float32),
            out_proj_w=uni(ks[6], (M, E), 1 / math.sqrt(E)),
            out_proj_b=jnp.zeros((M,), dtype) if self.bias else None,
        )

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> S6State:
        """Zero state: ``conv`` ``[*batch_shape, K-1, E]``, ``ssm`` ``[*batch_shape, E, N]``."""
        b = tuple(batch_shape)
        return S6State(jnp.zeros(b + (self.conv_size - 1, self.inner_size), dtype),
                       jnp.zeros(b + (self.inner_size, self.state_size), dtype))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size (``hidden_size``)."""
        C.check_params_type(params, S6Params, self, name)
        M, E, N, R, K = self.hidden_size, self.inner_size, self.state_size, self.dt_rank, self.conv_size
        shapes = dict(in_proj_w=(2 * E, M), conv_w=(E, K), x_proj_w=(R + 2 * N, E), dt_proj_w=(E, R),
                      dt_bias=(E,), A_log=(E, N), D=(E,), out_proj_w=(M, E))
        optional = dict(in_proj_b=((2 * E,), self.bias), conv_b=((E,), self.conv_bias),
                        out_proj_b=((M,), self.bias))
        for field, shape in shapes.items():
            C.check_array(getattr(params, field), f"{name}.{field}", shape)
        for field, (shape, present) in optional.items():
            value = getattr(params, field)
            if present:
                C.check_array(value, f"{name}.{field}", shape)
            elif value is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r}; got an array.")
        return M

    def _check_state(self, h, batch_shape):
        if not isinstance(h, S6State):
            if isinstance(h, (tuple, list)) and len(h) == 2:
                h = S6State(*h)
            else:
                raise TypeError(f"`h` must be an S6State (conv, ssm) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([("h.conv", h.conv, (self.conv_size - 1, self.inner_size)),
                             ("h.ssm", h.ssm, (self.inner_size, self.state_size))], batch_shape)
        return h

    # ----------------------------------------------------------------------- pieces of the step

    def project(self, params: S6Params, xs: Array) -> Array:
        """``W_in x (+ b_in)``: ``[..., M] -> [..., 2E]`` (``x̃`` then ``z``)."""
        xz = xs @ params.in_proj_w.T
        return xz if params.in_proj_b is None else xz + params.in_proj_b

    def _conv(self, params: S6Params, window: Array) -> Array:
        """``window`` ``[..., K, E]`` (oldest first) -> ``silu(conv)`` ``[..., E]``."""
        xc = jnp.einsum("...ke,ek->...e", window, params.conv_w)
        return _silu(xc if params.conv_b is None else xc + params.conv_b)

    def _selection(self, params: S6Params, u: Array):
        """``(Δ, B, C)`` from ``u`` ``[..., E]``: ``[..., E]``, ``[..., N]``, ``[..., N]``, float32."""
        R, N = self.dt_rank, self.state_size
        x_dbl = u @ params.x_proj_w.T
        acc = jnp.promote_types(x_dbl.dtype, jnp.float32)
        delta, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
        dt = jax.nn.softplus((delta @ params.dt_proj_w.T).astype(acc) + params.dt_bias)
        return dt, Bm.astype(acc), Cm.astype(acc)

    def _out(self, params: S6Params, y: Array, z: Array) -> Array:
        out = (y * _silu(z)) @ params.out_proj_w.T
        return out if params.out_proj_b is None else out + params.out_proj_b

    def update(self, params: S6Params, h: S6State, xz: Array):
        """One step from the projected input ``xz`` ``[*batch, 2E]``: ``(h, y)``."""
        E = self.inner_size
        x_in, z = xz[..., :E], xz[..., E:]
        window = jnp.concatenate([h.conv.astype(x_in.dtype), x_in[..., None, :]], axis=-2)
        u = self._conv(params, window)
        dt, Bm, Cm = self._selection(params, u)
        A = -jnp.exp(params.A_log)
        uf = u.astype(dt.dtype)
        ssm = jnp.exp(dt[..., None] * A) * h.ssm + (dt * uf)[..., None] * Bm[..., None, :]
        y = jnp.einsum("...en,...n->...e", ssm, Cm) + params.D * uf
        new = S6State(window[..., 1:, :].astype(h.conv.dtype), ssm.astype(h.ssm.dtype))
        return new, self._out(params, y, z)

    def step(self, params: S6Params, h: Optional[S6State], x: Array):
        """One time step, ``(params, h, x) -> (h, y)``.

        Args:
          params: an :class:`S6Params`.
          h: an :class:`S6State`, or None for zeros.
          x: ``[*batch, hidden_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.s6 import s6
          >>> cell = s6(8, state_size=4)
          >>> params = cell.init(jax.random.key(0), input_size=8)
          >>> h, y = cell.step(params, None, jnp.ones((2, 8)))
          >>> h.conv.shape, h.ssm.shape, y.shape
          ((2, 3, 16), (2, 16, 4), (2, 8))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        h = self._check_state(h, batch_shape)
        return self.update(params, h, self.project(params, x))

    # ----------------------------------------------------------------------- the parallel form

    def parallel_unroll(self, params: S6Params, h: S6State, xs: Array, *, seq_lengths: Optional[Array] = None,
                        resets: Optional[Array] = None, reset_state: Optional[S6State] = None,
                        reverse: bool = False, mode: str = "chunked", chunk_size: Optional[int] = None):
        """The whole sequence, chunk by chunk (module docstring): ``(h, ys)``, time-major.

        Args:
          params: an :class:`S6Params`.
          h: initial :class:`S6State` (not None).
          xs: ``[T, *batch, hidden_size]``.
          seq_lengths: ``[*batch]`` int32 or None. resets: ``[T, *batch]`` bool or None.
          reset_state: an :class:`S6State` or None for zeros. reverse: as in :func:`jaxrnn.unroll`.
          mode: ``"associative"`` or ``"chunked"`` (an associative scan inside each chunk) or
            ``"sequential"`` (a sequential scan inside each chunk).
          chunk_size: steps per chunk; None for the cell's ``chunk_size`` or 64.

        Returns:
          ``(h, ys)``: the state at each sequence's true length and ``ys`` ``[T, *batch, M]``,
          zero past each length.
        """
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        K = self.chunk_size if chunk_size is None else chunk_size
        K = DEFAULT_CHUNK_SIZE if K is None else C.check_positive_int(K, "chunk_size")
        h = S6State(*h)
        T, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
        r = self.initial_state(batch_shape, h.ssm.dtype) if reset_state is None else S6State(*reset_state)
        L = jnp.full(batch_shape, T, jnp.int32) if seq_lengths is None else jnp.asarray(seq_lengths, jnp.int32)
        if T == 0:
            return h, jnp.zeros((0,) + batch_shape + (self.hidden_size,), jnp.result_type(xs, params.out_proj_w))
        t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * len(batch_shape))
        enter = jnp.zeros((T,) + batch_shape, bool) if resets is None else jnp.asarray(resets) & (t < L)
        if reverse:
            # Each sequence reversed within its length, run forwards, and put back: the state
            # entering (reversed) step p >= 1 is reset where resets[L - p] (the step after it in time).
            order = jnp.where(t < L, L - 1 - t, t)
            xs = jnp.take_along_axis(xs, order[..., None], axis=0)
            if resets is not None:
                after = jnp.take_along_axis(jnp.asarray(resets), jnp.clip(L - t, 0, T - 1), axis=0)
                enter = after & (t >= 1) & (t < L)
        h_last, ys = self._forward(params, h, xs, enter, L, r, t, K, mode)
        if reverse:
            ys = jnp.take_along_axis(ys, order[..., None], axis=0)
        return h_last, ys

    def _forward(self, params, h, xs, enter, L, r, t, K, mode):
        """The forward recurrence with ``enter[t]``: the state entering ``t`` is ``r``."""
        E, Kc = self.inner_size, self.conv_size
        T = xs.shape[0]
        xz = self.project(params, xs)
        x_in, z = xz[..., :E], xz[..., E:]
        # The convolution's window: lag j of step t is x̃[t - j] inside the segment, else the
        # conv buffer of the state the segment started from.
        start = jax.lax.cummax(jnp.where(enter, t, 0), axis=0)                   # [T, *batch]
        from_reset = jax.lax.cummax(enter.astype(jnp.int32), axis=0) > 0
        buf = jnp.where(from_reset[..., None, None], r.conv[None], h.conv[None]).astype(x_in.dtype)
        lags = []
        for j in range(Kc):
            shifted = jnp.concatenate([jnp.zeros((j,) + x_in.shape[1:], x_in.dtype), x_in[:T - j]], axis=0)
            back = start - (t - j)                                              # > 0: before the segment
            idx = jnp.clip(Kc - 1 - back, 0, max(Kc - 2, 0))
            from_buf = jnp.take_along_axis(buf, idx[..., None, None], axis=-2)[..., 0, :] if Kc > 1 else shifted
            lags.append(jnp.where((back > 0)[..., None], from_buf, shifted))
        window = jnp.stack(lags[::-1], axis=-2)                                   # [T, *batch, Kc, E], oldest first
        u = self._conv(params, window)
        dt, Bm, Cm = self._selection(params, u)
        uf = u.astype(dt.dtype)
        valid = t < L
        ssm_last, y = selective_scan(dt, uf, Bm, Cm, -jnp.exp(params.A_log), h.ssm.astype(dt.dtype),
                                     valid=valid, enter=enter, reset_state=r.ssm.astype(dt.dtype), chunk_size=K,
                                     mode=mode)
        y = y + params.D * uf
        ys = jnp.where(valid[..., None], self._out(params, y, z), 0.0)
        last = jnp.clip(L - 1, 0, T - 1)[None]
        conv_last = jnp.take_along_axis(window, last[..., None, None], axis=0)[0, ..., 1:, :]
        conv_last = jnp.where((L > 0)[..., None, None], conv_last.astype(h.conv.dtype), h.conv)
        return S6State(conv_last, ssm_last.astype(h.ssm.dtype)), ys


def selective_scan(dt: Array, u: Array, B: Array, Cm: Array, A: Array, h0: Array, *, valid: Optional[Array] = None,
                   enter: Optional[Array] = None, reset_state: Optional[Array] = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, mode: str = "chunked"):
    """The selective scan ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_tᵀ``, ``y_t = h_t C_t``,
    chunk by chunk, never holding all ``T`` states.

    Args:
      dt, u: ``[T, *batch, E]``. B, Cm: ``[T, *batch, N]``. A: ``[E, N]``. h0: ``[*batch, E, N]``.
      valid: ``[T, *batch]`` bool or None: False steps leave the state unchanged.
      enter: ``[T, *batch]`` bool or None: True replaces the state entering ``t`` by ``reset_state``.
      reset_state: ``[*batch, E, N]`` (zeros if None).
      chunk_size: steps per chunk. mode: ``"sequential"`` for a sequential scan inside each
        chunk, otherwise an associative scan.

    Returns:
      ``(h, ys)``: the last state ``[*batch, E, N]`` and ``ys`` ``[T, *batch, E]``.
    """
    T = dt.shape[0]
    K = max(1, min(int(chunk_size), T))
    n = -(-T // K)
    rest = dt.shape[1:-1]
    ones = jnp.ones((T,) + rest, bool)
    valid = ones if valid is None else valid
    enter = jnp.zeros((T,) + rest, bool) if enter is None else enter
    reset_state = jnp.zeros_like(h0) if reset_state is None else reset_state
    pad = n * K - T
    if pad:  # padded steps are invalid: the state passes through them unchanged
        padder = lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)], axis=0)
        dt, u, B, Cm, valid, enter = map(padder, (dt, u, B, Cm, valid, enter))
    chunks = jax.tree.map(lambda a: a.reshape((n, K) + a.shape[1:]), (dt, u, B, Cm, valid, enter))

    @jax.checkpoint
    def chunk(h, inp):
        dt, u, B, Cm, v, e = inp
        a = jnp.exp(dt[..., None] * A)                                   # [K, *batch, E, N]
        b = (dt * u)[..., None] * B[..., None, :]
        e, v = e[..., None, None], v[..., None, None]
        b = jnp.where(e, a * reset_state + b, b)
        a = jnp.where(e, 0.0, a)
        a, b = jnp.where(v, a, 1.0), jnp.where(v, b, 0.0)
        if mode == "sequential":
            def body(h, ab):
                h = ab[0] * h + ab[1]
                return h, h
            _, hs = jax.lax.scan(body, h, (a, b))
        else:
            b = b.at[0].add(a[0] * h)
            _, hs = jax.lax.associative_scan(lambda p, q: (q[0] * p[0], q[0] * p[1] + q[1]), (a, b), axis=0)
        return hs[-1], jnp.einsum("k...en,k...n->k...e", hs, Cm)

    h, ys = jax.lax.scan(chunk, h0, chunks)
    return h, ys.reshape((n * K,) + ys.shape[2:])[:T]


def s6(hidden_size: int, *, state_size: int = 16, expand: int = 2, conv_size: int = 4,
       dt_rank: Optional[int] = None, bias: bool = False, conv_bias: bool = True, dt_min: float = 0.001,
       dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
       chunk_size: Optional[int] = None) -> S6Cell:
    """A Mamba (S6) mixer cell; see :class:`S6Cell` and the module docstring (Mamba's
    defaults: ``d_state=16, expand=2, d_conv=4, dt_rank=ceil(M/16)``).

    Example:
      >>> from jaxrnn.zoo.s6 import s6
      >>> cell = s6(64)
      >>> cell, cell.inner_size, cell.dt_rank
      (s6(hidden_size=64, state_size=16), 128, 4)
    """
    return S6Cell(hidden_size, state_size, expand, conv_size, dt_rank, bias, conv_bias, float(dt_min),
                  float(dt_max), float(dt_init_floor), float(dt_scale), chunk_size)
