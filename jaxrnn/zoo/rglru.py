"""The Real-Gated Linear Recurrent Unit, RG-LRU (De et al. 2024, "Griffin: mixing gated
linear recurrences with local attention for efficient language models", arXiv 2402.19427;
the recurrence of RecurrentGemma).

A diagonal linear recurrence whose decay is gated by the input. With ``D`` the width (input,
state and output size), ``σ`` the logistic sigmoid and ``c = 8``::

    r_t = σ(W_a x_t + b_a)                          recurrence gate          [D]
    i_t = σ(W_x x_t + b_x)                          input gate               [D]
    log a_t = -c · r_t · softplus(Λ)                so 0 < a_t < 1
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t),      y_t = h_t

``W_a`` and ``W_x`` are block-diagonal with ``num_heads`` blocks, as in recurrentgemma's
``BlockDiagonalLinear``. Layout (recurrentgemma's own, so its weights move unchanged;
``d = D / num_heads``)::

    a_param: [D]              (Λ; recurrentgemma's ``a_param``)
    w_x, w_a: [num_heads, d, d]    y[h, j] = Σ_i x[h, i] w[h, i, j]   (``input_gate.w``, ``a_gate.w``)
    b_x, b_a: [num_heads, d]                                            (``input_gate.b``, ``a_gate.b``)

**Segment starts.** recurrentgemma sets the normalisation ``sqrt(1 - a_t²)`` to 1 at the
first token of every segment (``segment_pos == 0``), where the state is reset. So that a
cell stepping one token at a time knows where a segment starts, the state is an
:class:`RGLRUState` ``(h, started)``: ``started`` is 0 in the zero state (the initial state
and the state after a reset) and 1 after any step, and each step uses the multiplier
``started · sqrt(1 - a_t²) + (1 - started)``. A sequence run from the initial state, or
after a reset, therefore equals recurrentgemma's with ``segment_pos`` counting from 0 in each
segment; pass ``RGLRUState(h, ones)`` to continue a sequence (recurrentgemma's cache). A
reset replaces the state entering the step by ``reset_state`` (zeros: recurrentgemma's
``a_t · (1 - reset)``) as everywhere in jaxrnn.

**Bounded gradient.** ``sqrt(1 - a²)`` has an unbounded derivative as ``a → 1``; as in
recurrentgemma, its backward pass evaluates the derivative at ``max(1 - a², 1/(4·1000²))``
(at most 1000), which keeps bfloat16 training free of NaN.

Initialisation (recurrentgemma's): ``a = exp(-softplus(Λ))`` (that is ``a_t^{1/c}`` at
``r_t = 1``) with ``a²`` uniform on the ring ``[min_rad², max_rad²]``, default 0.9-0.999,
``Λ = log(exp(-log a) - 1)`` (inverse softplus); ``W ~ N(0, 1/D)`` (flax's
``variance_scaling(1, "fan_in", "normal")`` on the ``[num_heads, d, d]`` weight), zero biases.

``parallel_unroll`` runs a whole sequence as one :func:`jaxrnn.linear.linear_scan`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.linear import MODES, linear_scan
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["RGLRUParams", "RGLRUState", "RGLRUCell", "rglru", "sqrt_bound_derivative"]

#: ``c`` in ``log a = -c · r · softplus(Λ)``.
C_SCALE = 8.0
#: The bound on the derivative of ``sqrt`` (recurrentgemma's ``max_gradient``).
MAX_SQRT_GRADIENT = 1000.0


class RGLRUParams(NamedTuple):
    """RG-LRU parameters (see the module docstring for shapes)."""

    a_param: Array
    w_x: Array
    b_x: Array
    w_a: Array
    b_a: Array


class RGLRUState(NamedTuple):
    """``h`` ``[*batch, D]`` and ``started`` ``[*batch, 1]`` (0: the next step starts a segment)."""

    h: Array
    started: Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(x: Array, max_gradient: float) -> Array:
    """``sqrt(x)`` whose derivative is evaluated at ``max(x, 1/(4 max_gradient²))``, so it is
    at most ``max_gradient`` (recurrentgemma's ``SqrtBoundDerivative``)."""
    return jnp.sqrt(x)


def _sqrt_fwd(x, max_gradient):
    return jnp.sqrt(x), x


def _sqrt_bwd(max_gradient, x, g):
    x_pre = jnp.maximum(x, 1 / (4 * max_gradient ** 2))
    return (g / (2 * jnp.sqrt(x_pre)),)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


def _block_linear(x: Array, w: Array, b: Array) -> Array:
    """``x`` ``[..., D]`` through the block-diagonal ``w`` ``[n, d, d]`` and ``b`` ``[n, d]``."""
    n, d = b.shape
    y = jnp.einsum("...hi,hij->...hj", x.reshape(x.shape[:-1] + (n, d)), w) + b
    return y.reshape(x.shape[:-1] + (n * d,))


@dataclasses.dataclass(frozen=True)
class RGLRUCell:
    """The RG-LRU (build it with :func:`rglru`); equations in the module docstring.

    Attributes:
      hidden_size: ``D``, the input, state and output width.
      num_heads: the number of diagonal blocks of the gate weights.
      min_rad, max_rad: the ring of ``a = exp(-softplus(Λ))`` at initialisation.
      chunk_size: default chunk length of ``mode="chunked"`` (None: 64).
    """

    hidden_size: int
    num_heads: int = 1
    min_rad: float = 0.9
    max_rad: float = 0.999
    chunk_size: Optional[int] = None

    def __post_init__(self):
        D = C.check_positive_int(self.hidden_size, "hidden_size")
        n = C.check_positive_int(self.num_heads, "num_heads")
        if D % n:
            raise ValueError(f"`hidden_size` must be divisible by `num_heads`={n}; got {D}.")
        if not 0.0 <= self.min_rad < self.max_rad < 1.0:
            raise ValueError(f"`min_rad` and `max_rad` must satisfy 0 <= min_rad < max_rad < 1; "
                             f"got min_rad={self.min_rad}, max_rad={self.max_rad}.")
        object.__setattr__(self, "hidden_size", D)
        object.__setattr__(self, "num_heads", n)

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "" if self.num_heads == 1 else f", num_heads={self.num_heads}"
        if (self.min_rad, self.max_rad) != (0.9, 0.999):
            extra += f", min_rad={self.min_rad}, max_rad={self.max_rad}"
        return f"rglru(hidden_size={self.hidden_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> RGLRUParams:
        """recurrentgemma's initialisation (module docstring); ``input_size`` must be ``hidden_size``."""
        input_size = C.check_positive_int(input_size, "input_size")
        if input_size != self.hidden_size:
            raise ValueError(f"`input_size` must equal hidden_size={self.hidden_size} for {self!r} "
                             f"(the gates multiply x elementwise); got {input_size}.")
        D, n = self.hidden_size, self.num_heads
        d = D // n
        k_a, k_x, k_r = jax.random.split(key, 3)
        u = jax.random.uniform(k_a, (D,), jnp.float32)
        log_a = 0.5 * jnp.log(u * (self.max_rad ** 2 - self.min_rad ** 2) + self.min_rad ** 2 + 1e-8)
        a_param = jnp.log(jnp.exp(-log_a) - 1.0).astype(dtype)
        w_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        zeros = jnp.zeros((n, d), dtype)
        return RGLRUParams(a_param, w_init(k_x, (n, d, d), dtype), zeros, w_init(k_r, (n, d, d), dtype), zeros)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> RGLRUState:
        """The zero state: ``h`` zeros ``[*batch_shape, D]``, ``started`` zeros ``[*batch_shape, 1]``."""
        shape = tuple(batch_shape)
        return RGLRUState(jnp.zeros(shape + (self.hidden_size,), dtype), jnp.zeros(shape + (1,), dtype))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size (``hidden_size``)."""
        C.check_params_type(params, RGLRUParams, self, name)
        D, n = self.hidden_size, self.num_heads
        d = D // n
        for field, shape in dict(a_param=(D,), w_x=(n, d, d), b_x=(n, d), w_a=(n, d, d), b_a=(n, d)).items():
            C.check_array(getattr(params, field), f"{name}.{field}", shape)
        return D

    def coefficients(self, params: RGLRUParams, xs: Array):
        """``(a, m, gx)`` for inputs ``[..., D]``: the decay ``a_t``, the multiplier
        ``sqrt(1 - a_t²)`` and the gated input ``i_t ⊙ x_t``, each ``[..., D]``, float32
        (float64 under x64)."""
        gate_x = C.sigmoid(_block_linear(xs, params.w_x, params.b_x))
        gate_a = C.sigmoid(_block_linear(xs, params.w_a, params.b_a))
        log_a = -C_SCALE * gate_a * jax.nn.softplus(params.a_param)
        a = jnp.exp(log_a)
        m = sqrt_bound_derivative(1 - jnp.exp(2 * log_a), MAX_SQRT_GRADIENT)
        return a, m, gate_x * xs

    def project(self, params: RGLRUParams, xs: Array) -> Array:
        """``[a, m, gx]`` (see :meth:`coefficients`) concatenated: ``[..., D] -> [..., 3D]``."""
        return jnp.concatenate(self.coefficients(params, xs), axis=-1)

    def update(self, params: RGLRUParams, h: RGLRUState, gx: Array):
        """One step from the projected input ``gx`` ``[*batch, 3D]``: ``(h, y)``."""
        D = self.hidden_size
        a, m, u = gx[..., :D], gx[..., D:2 * D], gx[..., 2 * D:]
        s = h.started
        new = (a * h.h + (s * m + (1 - s)) * u).astype(h.h.dtype)
        return RGLRUState(new, jnp.ones_like(s)), new

    def step(self, params: RGLRUParams, h: Optional[RGLRUState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)``.

        Args:
          params: an :class:`RGLRUParams`.
          h: an :class:`RGLRUState` (``[*batch, D]``, ``[*batch, 1]``), or None for the zero state.
          x: ``[*batch, hidden_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.rglru import rglru
          >>> cell = rglru(8, num_heads=2)
          >>> params = cell.init(jax.random.key(0), input_size=8)
          >>> h, y = cell.step(params, None, jnp.ones((2, 8)))
          >>> h.h.shape, h.started.tolist(), y.shape
          ((2, 8), [[1.0], [1.0]], (2, 8))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        if not isinstance(h, RGLRUState):
            if isinstance(h, (tuple, list)) and len(h) == 2:
                h = RGLRUState(*h)
            else:
                raise TypeError(f"`h` must be an RGLRUState (h, started) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([("h.h", h.h, (self.hidden_size,)), ("h.started", h.started, (1,))], batch_shape)
        return self.update(params, h, self.project(params, x))

    def parallel_unroll(self, params: RGLRUParams, h: RGLRUState, xs: Array, *,
                        seq_lengths: Optional[Array] = None, resets: Optional[Array] = None,
                        reset_state: Optional[RGLRUState] = None, reverse: bool = False,
                        mode: str = "associative", chunk_size: Optional[int] = None):
        """The whole sequence as one linear scan: ``(h, ys)``, time-major.

        The multiplier of step ``t`` is 1 where the state entering it has ``started == 0``:
        the first step processed when ``h.started`` is 0, and every step whose entering state
        is reset to a ``reset_state`` with ``started == 0`` (the default zeros).

        Args:
          params: an :class:`RGLRUParams`.
          h: initial :class:`RGLRUState` (not None).
          xs: ``[T, *batch, hidden_size]``.
          seq_lengths: ``[*batch]`` int32 or None. resets: ``[T, *batch]`` bool or None.
          reset_state: an :class:`RGLRUState` or None for zeros. reverse: as in :func:`jaxrnn.unroll`.
          mode: ``"sequential"``, ``"associative"`` or ``"chunked"`` (of :func:`jaxrnn.linear.linear_scan`).
          chunk_size: steps per chunk for ``"chunked"``; None for the cell's ``chunk_size`` or 64.

        Returns:
          ``(h, ys)``: the state at each sequence's true length and ``ys`` ``[T, *batch, D]``,
          zero past each length.
        """
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        h = RGLRUState(*h)
        T = xs.shape[0]
        a, m, u = self.coefficients(params, xs)
        shape = (T,) + (1,) * (xs.ndim - 1)
        t = jnp.arange(T, dtype=jnp.int32).reshape(shape)
        L = jnp.full(xs.shape[1:-1], T, jnp.int32) if seq_lengths is None else jnp.asarray(seq_lengths, jnp.int32)
        L_ = L[..., None]
        first = (t == L_ - 1) if reverse else (t == 0)
        s_in = jnp.where(first, h.started, jnp.ones_like(h.started))   # [T, *batch, 1]
        r = self.initial_state(xs.shape[1:-1], h.h.dtype) if reset_state is None else RGLRUState(*reset_state)
        if resets is not None:
            rs = resets[..., None]
            if reverse:  # the state entering t comes from t + 1
                rs = jnp.concatenate([rs[1:], jnp.zeros_like(rs[:1])], axis=0) & (t + 1 < L_)
            s_in = jnp.where(rs, r.started, s_in)
        b = (s_in * m + (1 - s_in)) * u
        h_last, hs = linear_scan(a, b, h.h, seq_lengths=seq_lengths, resets=resets,
                                 reset_state=None if resets is None else r.h, reverse=reverse, time_major=True,
                                 mode=mode, chunk_size=self.chunk_size if chunk_size is None else chunk_size)
        started = jnp.where(L_ > 0, jnp.ones_like(h.started), h.started)
        return RGLRUState(h_last.astype(h.h.dtype), started), hs


def rglru(hidden_size: int, *, num_heads: int = 1, min_rad: float = 0.9, max_rad: float = 0.999,
          chunk_size: Optional[int] = None) -> RGLRUCell:
    """An RG-LRU cell; see :class:`RGLRUCell` and the module docstring.

    Args:
      hidden_size: ``D``, the input, state and output width.
      num_heads: the number of diagonal blocks of the gate weights (recurrentgemma: 10 at 2B).
      min_rad, max_rad: the initial ring of ``a`` (recurrentgemma's 0.9 and 0.999).
      chunk_size: default chunk length of ``mode="chunked"`` (None: 64).

    Example:
      >>> from jaxrnn.zoo.rglru import rglru
      >>> rglru(64, num_heads=4)
      rglru(hidden_size=64, num_heads=4)
    """
    return RGLRUCell(hidden_size, num_heads, float(min_rad), float(max_rad), chunk_size)
