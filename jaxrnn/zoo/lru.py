"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting recurrent neural networks
for long sequences", arXiv 2303.06349).

A diagonal complex linear recurrence with an input-independent, stable transition, and a
real read-out. With ``N`` the state size and ``H`` the model size (input and output)::

    lambda = exp(-exp(nu_log) + i * exp(theta_log))              [N] complex, |lambda| < 1
    gamma  = exp(gamma_log)                                      [N] normalisation
    h'     = lambda * h + gamma * (B x)                          B = B_re + i B_im, [N, H]
    y      = Re(C h') + D * x                                    C = C_re + i C_im, [H, N]; D [H]

Layout::

    nu_log, theta_log, gamma_log: [N]    B_re, B_im: [N, H]    C_re, C_im: [H, N]    D: [H]

The state is an :class:`LRUState` ``(re, im)`` of two real ``[*batch, N]`` arrays (complex
dtypes compile several times more slowly in associative scans). As in the paper, ``D x``
is elementwise, so the input size must equal ``hidden_size``.

Initialisation (the paper's ``init_lru_parameters``): ``|lambda|`` uniform on the ring
``[r_min, r_max]`` of the complex plane (``nu_log = log(-log(u1 (r_max² - r_min²) +
r_min²) / 2)``), phase uniform on ``[0, max_phase]`` (``theta_log = log(max_phase u2)``),
``gamma_log = log(sqrt(1 - |lambda|²))``, ``B ~ N(0, 1/(2H))``, ``C ~ N(0, 1/N)``,
``D ~ N(0, 1)`` per real entry.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.linear import MODES, linear_scan
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["LRUParams", "LRUState", "LRUCell", "lru"]


class LRUParams(NamedTuple):
    """LRU parameters (see the module docstring for shapes)."""

    nu_log: Array
    theta_log: Array
    gamma_log: Array
    B_re: Array
    B_im: Array
    C_re: Array
    C_im: Array
    D: Array


class LRUState(NamedTuple):
    """The complex state as real and imaginary parts, each ``[*batch, N]``."""

    re: Array
    im: Array


@dataclasses.dataclass(frozen=True)
class LRUCell:
    """The LRU (build it with :func:`lru`); equations in the module docstring.

    ``project`` computes ``[gamma * B_re x, gamma * B_im x, D * x]`` for every step at
    once; ``update`` applies ``lambda`` and the read-out; ``parallel_unroll`` runs the
    whole sequence as one complex :func:`jaxrnn.linear.linear_scan` with ``lambda``
    constant over time.

    Attributes:
      hidden_size: ``H``, the input and output size.
      state_size: ``N``, the number of complex state units.
      r_min, r_max: the ring of ``|lambda|`` at initialisation.
      max_phase: the largest initial phase of ``lambda``.
    """

    hidden_size: int
    state_size: int
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        object.__setattr__(self, "state_size", C.check_positive_int(self.state_size, "state_size"))
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            raise ValueError(f"`r_min` and `r_max` must satisfy 0 <= r_min < r_max <= 1; "
                             f"got r_min={self.r_min}, r_max={self.r_max}.")
        if not self.max_phase > 0:
            raise ValueError(f"`max_phase` must be positive; got {self.max_phase}.")

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "" if (self.r_min, self.r_max) == (0.0, 1.0) else f", r_min={self.r_min}, r_max={self.r_max}"
        if self.max_phase != 2 * math.pi:
            extra += f", max_phase={self.max_phase}"
        return f"lru(hidden_size={self.hidden_size}, state_size={self.state_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> LRUParams:
        """The paper's initialisation (module docstring); ``input_size`` must be ``hidden_size``."""
        input_size = C.check_positive_int(input_size, "input_size")
        if input_size != self.hidden_size:
            raise ValueError(f"`input_size` must equal hidden_size={self.hidden_size} for {self!r} "
                             f"(y = Re(C h) + D * x is elementwise in x); got {input_size}.")
        N, H = self.state_size, self.hidden_size
        k1, k2, kb1, kb2, kc1, kc2, kd = jax.random.split(key, 7)
        u1 = jax.random.uniform(k1, (N,), dtype, minval=1e-7)
        u2 = jax.random.uniform(k2, (N,), dtype)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2))
        theta_log = jnp.log(self.max_phase * u2 + 1e-12)
        modulus = jnp.exp(-jnp.exp(nu_log))
        gamma_log = jnp.log(jnp.sqrt(1 - modulus ** 2))
        normal = lambda k, shape, scale: jax.random.normal(k, shape, dtype) * scale
        return LRUParams(nu_log, theta_log, gamma_log,
                         normal(kb1, (N, H), 1 / math.sqrt(2 * H)), normal(kb2, (N, H), 1 / math.sqrt(2 * H)),
                         normal(kc1, (H, N), 1 / math.sqrt(N)), normal(kc2, (H, N), 1 / math.sqrt(N)),
                         normal(kd, (H,), 1.0))

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> LRUState:
        """Zero state, two ``[*batch_shape, N]`` arrays."""
        zeros = jnp.zeros(tuple(batch_shape) + (self.state_size,), dtype)
        return LRUState(zeros, zeros)

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size (``hidden_size``)."""
        C.check_params_type(params, LRUParams, self, name)
        N, H = self.state_size, self.hidden_size
        shapes = dict(nu_log=(N,), theta_log=(N,), gamma_log=(N,), B_re=(N, H), B_im=(N, H), C_re=(H, N),
                      C_im=(H, N), D=(H,))
        for field, shape in shapes.items():
            C.check_array(getattr(params, field), f"{name}.{field}", shape)
        return H

    @staticmethod
    def transition(params: LRUParams):
        """``lambda`` as ``(re, im)``, each ``[N]``."""
        modulus = jnp.exp(-jnp.exp(params.nu_log))
        phase = jnp.exp(params.theta_log)
        return modulus * jnp.cos(phase), modulus * jnp.sin(phase)

    def project(self, params: LRUParams, xs: Array) -> Array:
        """``[gamma B_re x, gamma B_im x, D x]`` for inputs of any leading shape:
        ``[..., H] -> [..., 2N + H]``."""
        gamma = jnp.exp(params.gamma_log)
        w = jnp.concatenate([params.B_re * gamma[:, None], params.B_im * gamma[:, None]], axis=0)
        return jnp.concatenate([xs @ w.T, xs * params.D], axis=-1)

    def _readout(self, params: LRUParams, h_re: Array, h_im: Array, dx: Array) -> Array:
        return h_re @ params.C_re.T - h_im @ params.C_im.T + dx

    def update(self, params: LRUParams, h: LRUState, gx: Array):
        """One step from the projected input ``gx`` ``[*batch, 2N + H]``: ``(h, y)``."""
        N = self.state_size
        l_re, l_im = self.transition(params)
        bx_re, bx_im, dx = gx[..., :N], gx[..., N:2 * N], gx[..., 2 * N:]
        re = (l_re * h.re - l_im * h.im + bx_re).astype(h.re.dtype)
        im = (l_re * h.im + l_im * h.re + bx_im).astype(h.im.dtype)
        return LRUState(re, im), self._readout(params, re, im, dx)

    def step(self, params: LRUParams, h: Optional[LRUState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)``.

        Args:
          params: an :class:`LRUParams`.
          h: an :class:`LRUState` of ``[*batch, N]`` arrays, or None for zeros.
          x: ``[*batch, hidden_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.lru import lru
          >>> cell = lru(8, state_size=16, r_min=0.9, r_max=0.999)
          >>> params = cell.init(jax.random.key(0), input_size=8)
          >>> h, y = cell.step(params, None, jnp.ones((2, 8)))
          >>> h.re.shape, y.shape
          ((2, 16), (2, 8))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        if not isinstance(h, LRUState):
            if isinstance(h, (tuple, list)) and len(h) == 2:
                h = LRUState(*h)
            else:
                raise TypeError(f"`h` must be an LRUState (re, im) pair for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([("h.re", h.re, (self.state_size,)), ("h.im", h.im, (self.state_size,))], batch_shape)
        return self.update(params, h, self.project(params, x))

    def parallel_unroll(self, params: LRUParams, h: LRUState, xs: Array, *, seq_lengths: Optional[Array] = None,
                        resets: Optional[Array] = None, reset_state: Optional[LRUState] = None, reverse: bool = False,
                        mode: str = "associative", chunk_size: Optional[int] = None):
        """The whole sequence as one complex linear scan: ``(h, ys)``, time-major.

        Args:
          params: an :class:`LRUParams`.
          h: initial :class:`LRUState` (not None).
          xs: ``[T, *batch, hidden_size]``.
          seq_lengths: ``[*batch]`` int32 or None. resets: ``[T, *batch]`` bool or None.
          reset_state: an :class:`LRUState` or None for zeros. reverse: as in :func:`jaxrnn.unroll`.
          mode: ``"sequential"``, ``"associative"`` or ``"chunked"`` (of :func:`jaxrnn.linear.linear_scan`).
          chunk_size: steps per chunk for ``"chunked"`` (None: 64).

        Returns:
          ``(h, ys)``: the state at each sequence's true length and ``ys`` ``[T, *batch, H]``,
          zero past each length.
        """
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        # The three projections apart, not sliced out of ``project``'s one array: the
        # gradient of the slices made fwd+bwd 2-3.7x slower on the CPU (B4 T4096 H32, loaded).
        gamma = jnp.exp(params.gamma_log)[:, None]
        bx = (xs @ (params.B_re * gamma).T, xs @ (params.B_im * gamma).T)
        lam = self.transition(params)
        r = None if reset_state is None else tuple(reset_state)
        h_last, (hs_re, hs_im) = linear_scan(lam, bx, tuple(h), seq_lengths=seq_lengths,
                                             resets=resets, reset_state=r, reverse=reverse, time_major=True,
                                             mode=mode, chunk_size=chunk_size)
        ys = self._readout(params, hs_re, hs_im, xs * params.D)
        if seq_lengths is not None:
            t = jnp.arange(xs.shape[0], dtype=jnp.int32).reshape((-1,) + (1,) * (xs.ndim - 1))
            ys = jnp.where(t < jnp.asarray(seq_lengths)[..., None], ys, 0.0)
        return LRUState(*h_last), ys


def lru(hidden_size: int, state_size: Optional[int] = None, *, r_min: float = 0.0, r_max: float = 1.0,
        max_phase: float = 2 * math.pi) -> LRUCell:
    """An LRU cell; see :class:`LRUCell` and the module docstring.

    Args:
      hidden_size: ``H``, the input and output size.
      state_size: ``N``, the number of complex state units (None: ``hidden_size``).
      r_min, r_max: the initial ring of ``|lambda|`` (the paper's defaults 0 and 1; it uses
        0.9 and 0.999 on the long-range arena).
      max_phase: the largest initial phase (the paper's default ``2π``; ``π/10`` on some tasks).

    Example:
      >>> from jaxrnn.zoo.lru import lru
      >>> lru(64, 128, r_min=0.9, r_max=0.999)
      lru(hidden_size=64, state_size=128, r_min=0.9, r_max=0.999)
    """
    return LRUCell(hidden_size, hidden_size if state_size is None else state_size, r_min=float(r_min),
                   r_max=float(r_max), max_phase=float(max_phase))
