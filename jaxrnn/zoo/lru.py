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

**S5 options** (Smith et al. 2023, "Simplified state space layers for sequence modeling",
arXiv 2208.04933; lindermanlab/S5), both off by default:

* ``discretization="zoh"``: ``nu_log`` and ``theta_log`` describe a *continuous-time*
  eigenvalue ``Λ = -exp(nu_log) + i exp(theta_log)``, discretised by zero-order hold with a
  learned step ``Δ = exp(log_step)`` (``log_step`` ``[N]``, a new parameter)::

      lambda = exp(Λ Δ),    h' = lambda * h + gamma * ((lambda - 1) / Λ) * (B x)

* ``init_scheme="hippo"``: S5's HiPPO-diagonal initialisation (``s5/ssm_init.py``,
  ``make_DPLR_HiPPO``): the ``2N x 2N`` HiPPO-LegS matrix (``hippo_blocks`` copies of a
  ``2N/hippo_blocks`` one on the diagonal) made normal, its eigenvalues ``Λ = -1/2 + iω``
  and eigenvectors ``V``; with S5's conjugate symmetry, the ``N`` eigenvalues of one sign of
  ``ω`` are kept. ``B = V⁻¹ B₀`` (``B₀`` ``lecun_normal`` ``[2N, H]``), ``C = C₀ V``
  (``C₀`` S5's ``trunc_standard_normal``), ``D ~ N(0, 1)``, ``gamma = 1`` and ``log_step ~
  U(log dt_min, log dt_max)`` (0.001, 0.1), each drawn as S5 draws it. S5 keeps the
  eigenvalues with ``ω < 0`` and reads out ``2 Re(C h)``; here their conjugates (``ω > 0``,
  as ``theta_log`` needs) with ``conj(B)`` and ``2 conj(C)``, which gives the same outputs.
  Without ``"zoh"`` the step is 1 (``lambda = exp(Λ)``, ``|lambda| = e^{-1/2}``): S5 pairs
  this initialisation with ``"zoh"``.

With ``init_scheme="ring"`` and ``"zoh"`` the discrete ``lambda`` and the input scale start where
the plain LRU's do: ``nu_log``, ``theta_log`` and ``gamma_log`` absorb the sampled step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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
    log_step: Optional[Array] = None


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
      discretization: ``"none"`` (the LRU's) or ``"zoh"`` (S5's, with a learned step).
      init_scheme: ``"ring"`` (the LRU's) or ``"hippo"`` (S5's HiPPO-diagonal).
      dt_min, dt_max: the range of the initial step ``Δ`` (``"zoh"``).
      hippo_blocks: copies of the HiPPO matrix on the diagonal (S5's ``blocks``).
    """

    hidden_size: int
    state_size: int
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi
    discretization: str = "none"
    init_scheme: str = "ring"
    dt_min: float = 0.001
    dt_max: float = 0.1
    hippo_blocks: int = 1

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        object.__setattr__(self, "state_size", C.check_positive_int(self.state_size, "state_size"))
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            raise ValueError(f"`r_min` and `r_max` must satisfy 0 <= r_min < r_max <= 1; "
                             f"got r_min={self.r_min}, r_max={self.r_max}.")
        if not self.max_phase > 0:
            raise ValueError(f"`max_phase` must be positive; got {self.max_phase}.")
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(f"`discretization` must be one of {DISCRETIZATIONS}; got {self.discretization!r}.")
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"`init_scheme` must be one of {INIT_SCHEMES}; got {self.init_scheme!r}.")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"`dt_min` and `dt_max` must satisfy 0 < dt_min <= dt_max; "
                             f"got dt_min={self.dt_min}, dt_max={self.dt_max}.")
        J = C.check_positive_int(self.hippo_blocks, "hippo_blocks")
        if self.init_scheme == "hippo" and self.state_size % J:
            raise ValueError(f"`state_size` must be divisible by `hippo_blocks`={J} (each block has "
                             f"2 * state_size / hippo_blocks eigenvalues, in conjugate pairs); got {self.state_size}.")

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "" if (self.r_min, self.r_max) == (0.0, 1.0) else f", r_min={self.r_min}, r_max={self.r_max}"
        if self.max_phase != 2 * math.pi:
            extra += f", max_phase={self.max_phase}"
        for name, default in (("discretization", "none"), ("init_scheme", "ring"), ("dt_min", 0.001), ("dt_max", 0.1),
                              ("hippo_blocks", 1)):
            if getattr(self, name) != default:
                extra += f", {name}={getattr(self, name)!r}"
        return f"lru(hidden_size={self.hidden_size}, state_size={self.state_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> LRUParams:
        """The paper's initialisation (module docstring); ``input_size`` must be ``hidden_size``."""
        input_size = C.check_positive_int(input_size, "input_size")
        if input_size != self.hidden_size:
            raise ValueError(f"`input_size` must equal hidden_size={self.hidden_size} for {self!r} "
                             f"(y = Re(C h) + D * x is elementwise in x); got {input_size}.")
        if self.init_scheme == "hippo":
            return self._init_hippo(key, dtype)
        N, H = self.state_size, self.hidden_size
        if self.discretization == "zoh":
            key, k_step = jax.random.split(key)
        k1, k2, kb1, kb2, kc1, kc2, kd = jax.random.split(key, 7)
        u1 = jax.random.uniform(k1, (N,), dtype, minval=1e-7)
        u2 = jax.random.uniform(k2, (N,), dtype)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2))
        theta_log = jnp.log(self.max_phase * u2 + 1e-12)
        modulus = jnp.exp(-jnp.exp(nu_log))
        gamma_log = jnp.log(jnp.sqrt(1 - modulus ** 2))
        normal = lambda k, shape, scale: jax.random.normal(k, shape, dtype) * scale
        log_step = None
        if self.discretization == "zoh":  # the same discrete lambda and input scale at the sampled step
            log_step = _log_steps(k_step, N, self.dt_min, self.dt_max).astype(dtype)
            nu_log, theta_log = nu_log - log_step, theta_log - log_step
            f_re, f_im = _zoh_factor(nu_log, theta_log, log_step)
            gamma_log = gamma_log - 0.5 * jnp.log(f_re ** 2 + f_im ** 2)
        return LRUParams(nu_log, theta_log, gamma_log,
                         normal(kb1, (N, H), 1 / math.sqrt(2 * H)), normal(kb2, (N, H), 1 / math.sqrt(2 * H)),
                         normal(kc1, (H, N), 1 / math.sqrt(N)), normal(kc2, (H, N), 1 / math.sqrt(N)),
                         normal(kd, (H,), 1.0), log_step)

    def _init_hippo(self, key: Array, dtype) -> LRUParams:
        """S5's initialisation (module docstring), drawn as ``s5/ssm_init.py`` draws it."""
        N, H, J = self.state_size, self.hidden_size, self.hippo_blocks
        lam, V = hippo_diagonal(2 * N // J)                   # [N/J] complex (omega < 0), [2N/J, N/J]
        lam = np.tile(lam, J)
        V = _block_diag(V, J)                                 # [2N, N]
        k_b, k_c, k_d, k_s = jax.random.split(key, 4)
        B0 = np.asarray(jax.nn.initializers.lecun_normal()(k_b, (2 * N, H)), np.float64)
        B = V.conj().T @ B0                                   # V^-1 B0, [N, H]
        C0 = np.asarray(_trunc_standard_normal(k_c, (H, 2 * N, 2)), np.float64)
        Cm = (C0[..., 0] + 1j * C0[..., 1]) @ V               # [H, N]
        # S5's omega < 0 half as its conjugates, with conj(B) and 2 conj(C): the same 2 Re(C h).
        B, Cm = B.conj(), 2 * Cm.conj()
        arr = lambda a: jnp.asarray(a, dtype)
        log_step = _log_steps(k_s, N, self.dt_min, self.dt_max) if self.discretization == "zoh" else None
        return LRUParams(arr(np.log(-lam.real)), arr(np.log(-lam.imag)), jnp.zeros((N,), dtype),
                         arr(B.real), arr(B.imag), arr(Cm.real), arr(Cm.imag),
                         jax.random.normal(k_d, (H,), dtype), None if log_step is None else log_step.astype(dtype))

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
        if self.discretization == "zoh":
            C.check_array(params.log_step, f"{name}.log_step", (N,))
        elif params.log_step is not None:
            raise ValueError(f"`{name}.log_step` must be None for {self!r} (discretization='none'); got an array.")
        return H

    @staticmethod
    def transition(params: LRUParams):
        """``lambda`` as ``(re, im)``, each ``[N]`` (zero-order hold when ``params.log_step`` is set)."""
        if params.log_step is None:
            modulus = jnp.exp(-jnp.exp(params.nu_log))
            phase = jnp.exp(params.theta_log)
        else:
            step = jnp.exp(params.log_step)
            modulus = jnp.exp(-jnp.exp(params.nu_log) * step)
            phase = jnp.exp(params.theta_log) * step
        return modulus * jnp.cos(phase), modulus * jnp.sin(phase)

    @staticmethod
    def input_matrix(params: LRUParams):
        """The discrete input matrix ``(re, im)``, each ``[N, H]``: ``gamma B``, times
        ``(lambda - 1) / Λ`` with zero-order hold."""
        gamma = jnp.exp(params.gamma_log)[:, None]
        if params.log_step is None:
            return params.B_re * gamma, params.B_im * gamma
        f_re, f_im = _zoh_factor(params.nu_log, params.theta_log, params.log_step)
        f_re, f_im = f_re[:, None] * gamma, f_im[:, None] * gamma
        return f_re * params.B_re - f_im * params.B_im, f_re * params.B_im + f_im * params.B_re

    def project(self, params: LRUParams, xs: Array) -> Array:
        """``[gamma B_re x, gamma B_im x, D x]`` for inputs of any leading shape:
        ``[..., H] -> [..., 2N + H]`` (the discrete input matrix with zero-order hold)."""
        if params.log_step is None:
            gamma = jnp.exp(params.gamma_log)
            w = jnp.concatenate([params.B_re * gamma[:, None], params.B_im * gamma[:, None]], axis=0)
        else:
            w = jnp.concatenate(self.input_matrix(params), axis=0)
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
        if params.log_step is None:
            gamma = jnp.exp(params.gamma_log)[:, None]
            bx = (xs @ (params.B_re * gamma).T, xs @ (params.B_im * gamma).T)
        else:
            b_re, b_im = self.input_matrix(params)
            bx = (xs @ b_re.T, xs @ b_im.T)
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
        max_phase: float = 2 * math.pi, discretization: str = "none", init_scheme: str = "ring", dt_min: float = 0.001,
        dt_max: float = 0.1, hippo_blocks: int = 1) -> LRUCell:
    """An LRU cell; see :class:`LRUCell` and the module docstring.

    Args:
      hidden_size: ``H``, the input and output size.
      state_size: ``N``, the number of complex state units (None: ``hidden_size``).
      r_min, r_max: the initial ring of ``|lambda|`` (the paper's defaults 0 and 1; it uses
        0.9 and 0.999 on the long-range arena).
      max_phase: the largest initial phase (the paper's default ``2π``; ``π/10`` on some tasks).
      discretization: ``"none"`` (the LRU) or ``"zoh"`` (S5: zero-order hold with a learned
        step, the parameter ``log_step``).
      init_scheme: ``"ring"`` (the LRU) or ``"hippo"`` (S5's HiPPO-diagonal initialisation).
      dt_min, dt_max: the range of the initial step with ``"zoh"`` (S5's 0.001, 0.1).
      hippo_blocks: copies of the HiPPO matrix on the diagonal (S5's ``blocks``).

    Example:
      >>> from jaxrnn.zoo.lru import lru
      >>> lru(64, 128, r_min=0.9, r_max=0.999)
      lru(hidden_size=64, state_size=128, r_min=0.9, r_max=0.999)
      >>> lru(64, 32, discretization="zoh", init_scheme="hippo")     # S5
      lru(hidden_size=64, state_size=32, discretization='zoh', init_scheme='hippo')
    """
    return LRUCell(hidden_size, hidden_size if state_size is None else state_size, r_min=float(r_min),
                   r_max=float(r_max), max_phase=float(max_phase), discretization=discretization, init_scheme=init_scheme,
                   dt_min=float(dt_min), dt_max=float(dt_max), hippo_blocks=hippo_blocks)


#: The ``discretization`` options of :func:`lru`.
DISCRETIZATIONS = ("none", "zoh")
#: The ``init_scheme`` options of :func:`lru`.
INIT_SCHEMES = ("ring", "hippo")


def _zoh_factor(nu_log: Array, theta_log: Array, log_step: Array):
    """``(exp(Λ Δ) - 1) / Λ`` as ``(re, im)``, ``Λ = -exp(nu_log) + i exp(theta_log)``, ``Δ = exp(log_step)``."""
    c, d = -jnp.exp(nu_log), jnp.exp(theta_log)
    step = jnp.exp(log_step)
    modulus = jnp.exp(c * step)
    a, b = modulus * jnp.cos(d * step) - 1, modulus * jnp.sin(d * step)
    denom = c * c + d * d
    return (a * c + b * d) / denom, (b * c - a * d) / denom


def hippo_diagonal(size: int):
    """S5's ``make_DPLR_HiPPO(size)`` restricted to what its initialisation keeps: the
    ``size // 2`` eigenvalues ``-1/2 + iω`` with ``ω < 0`` of the normal part of HiPPO-LegS
    and their eigenvectors ``[size, size // 2]`` (numpy, complex128)."""
    if size < 2 or size % 2:
        raise ValueError(f"the HiPPO block size must be even and >= 2; got {size}.")
    q = np.sqrt(1 + 2 * np.arange(size))
    A = -(np.tril(q[:, None] * q[None, :]) - np.diag(np.arange(size)))
    p = np.sqrt(np.arange(size) + 0.5)
    S = A + p[:, None] * p[None, :]
    lam_real = np.mean(np.diagonal(S))
    lam_imag, V = np.linalg.eigh(S * -1j)
    return (lam_real + 1j * lam_imag)[: size // 2], V[:, : size // 2]


def _block_diag(V: np.ndarray, J: int) -> np.ndarray:
    r, c = V.shape
    out = np.zeros((J * r, J * c), V.dtype)
    for j in range(J):
        out[j * r:(j + 1) * r, j * c:(j + 1) * c] = V
    return out


def _trunc_standard_normal(key: Array, shape: tuple) -> Array:
    """S5's ``trunc_standard_normal``: row by row, ``lecun_normal`` of ``(1, P, 2)``."""
    H, P, _ = shape
    rows = []
    for _ in range(H):
        key, skey = jax.random.split(key)
        rows.append(jax.nn.initializers.lecun_normal()(skey, (1, P, 2)))
    return jnp.concatenate(rows, axis=0)


def _log_steps(key: Array, N: int, dt_min: float, dt_max: float) -> Array:
    """S5's ``init_log_steps``: one ``U(log dt_min, log dt_max)`` draw per state unit, ``[N]``."""
    steps = []
    for _ in range(N):
        key, skey = jax.random.split(key)
        steps.append(jax.random.uniform(skey, (1,)) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return jnp.concatenate(steps)
