"""The sLSTM (Beck et al. 2024, "xLSTM: extended long short-term memory", arXiv 2405.04517):
an LSTM with an exponential input gate, a normaliser state and a stabiliser, whose recurrent
weights are block-diagonal per head.

With ``H`` the hidden size split into ``num_heads`` heads of ``d = H / num_heads``, one step
reads (``R_g`` block-diagonal: head ``k`` of ``R_g h`` reads head ``k`` of ``h`` only)::

    ĩ, f̃, z̃, õ = W_g x_t + R_g h_{t-1} + b_g                  g = i, f, z, o;  [H] each
    m_t = max(log σ(f̃) + m_{t-1}, ĩ)                          the stabiliser
    i_t = exp(ĩ - m_t),   f_t = exp(log σ(f̃) + m_{t-1} - m_t)   both in (0, 1]
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ tanh(z̃)                        cell
    n_t = f_t ⊙ n_{t-1} + i_t                                   normaliser
    h_t = σ(õ) ⊙ c_t / n_t,    y_t = h_t

``c`` and ``n`` are the paper's cell and normaliser scaled by ``exp(-m)``; ``h`` does not
depend on the stabiliser. xlstm's "vanilla" backend starts ``m`` from ``ĩ`` when every ``n``
in the batch is 0 (the zero state) where these equations take the ``max`` with
``log σ(f̃) + 0``: ``h``, ``c·exp(m)`` and ``n·exp(m)`` are the same either way.

Layout (gates stacked along axis 0 in the order i, f, z, o, heads in order within a gate)::

    w_ih: [4H, I]    w_hh: [4, num_heads, d, d] (out, in)    b: [4H]

From xlstm's ``sLSTMCell`` (``recurrent_kernel`` ``[num_heads, d, 4, d]`` as (head, in,
gate, out), ``bias`` ``[num_heads, 4, d]``): ``w_hh = recurrent_kernel.permute(2, 0, 3, 1)``,
``b = bias.permute(1, 0, 2).reshape(-1)``. xlstm's ``sLSTMLayer`` computes the cell's input
``W_g x`` with four head-wise projections and, for checkpoint compatibility, feeds the one
named ``fgate`` to the *input* gate and ``igate`` to the forget gate (NX-AI/xlstm#98):
so ``w_ih``'s i block comes from ``layer.fgate`` and its f block from ``layer.igate``.

The state is an :class:`SLSTMState` ``(h, c, n, m)``, four ``[*batch, H]`` arrays. The cell
is nonlinear in ``h``: ``jaxrnn.unroll`` runs it sequentially (the generic path) or by
Newton's method (``mode="newton"``, :mod:`jaxrnn.newton`).

Initialisation: ``w_ih`` and ``w_hh`` ``U(±1/sqrt(H))``; ``b`` zero except the forget gate's,
``linspace(3, 6)`` (xlstm's ``small_init``: forget gates open at the start).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["SLSTMParams", "SLSTMState", "SLSTMCell", "slstm"]


class SLSTMParams(NamedTuple):
    """sLSTM parameters (see the module docstring for shapes)."""

    w_ih: Array
    w_hh: Array
    b: Array


class SLSTMState(NamedTuple):
    """``h, c, n, m``, each ``[*batch, H]``."""

    h: Array
    c: Array
    n: Array
    m: Array


@dataclasses.dataclass(frozen=True)
class SLSTMCell:
    """The sLSTM (build it with :func:`slstm`); equations in the module docstring.

    Attributes:
      hidden_size: ``H``.
      num_heads: the number of diagonal blocks of the recurrent weights.
    """

    hidden_size: int
    num_heads: int = 1

    def __post_init__(self):
        H = C.check_positive_int(self.hidden_size, "hidden_size")
        n = C.check_positive_int(self.num_heads, "num_heads")
        if H % n:
            raise ValueError(f"`hidden_size` must be divisible by `num_heads`={n}; got {H}.")
        object.__setattr__(self, "hidden_size", H)
        object.__setattr__(self, "num_heads", n)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def output_size(self) -> int:
        """Size of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        return f"slstm(hidden_size={self.hidden_size}, num_heads={self.num_heads})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> SLSTMParams:
        """The module docstring's initialisation."""
        input_size = C.check_positive_int(input_size, "input_size")
        H, n, d = self.hidden_size, self.num_heads, self.head_size
        k1, k2 = jax.random.split(key)
        bound = 1 / math.sqrt(H)
        b = jnp.zeros((4, H), dtype).at[1].set(jnp.linspace(3.0, 6.0, H, dtype=dtype))
        return SLSTMParams(jax.random.uniform(k1, (4 * H, input_size), dtype, -bound, bound),
                           jax.random.uniform(k2, (4, n, d, d), dtype, -bound, bound), b.reshape(-1))

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> SLSTMState:
        """Zero state, four ``[*batch_shape, H]`` arrays."""
        z = jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype)
        return SLSTMState(z, z, z, z)

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size."""
        C.check_params_type(params, SLSTMParams, self, name)
        H, n, d = self.hidden_size, self.num_heads, self.head_size
        w = params.w_ih
        if getattr(w, "ndim", None) != 2 or w.shape[0] != 4 * H:
            raise ValueError(f"`{name}.w_ih` must have shape [4H, input_size] = [{4 * H}, I]; "
                             f"got {tuple(getattr(w, 'shape', ()))}.")
        C.check_array(w, f"{name}.w_ih", (4 * H, w.shape[1]))
        C.check_array(params.w_hh, f"{name}.w_hh", (4, n, d, d))
        C.check_array(params.b, f"{name}.b", (4 * H,))
        return int(w.shape[1])

    def project(self, params: SLSTMParams, xs: Array) -> Array:
        """``W x + b`` for every step at once: ``[..., I] -> [..., 4H]``."""
        return xs @ params.w_ih.T + params.b

    def update(self, params: SLSTMParams, h: SLSTMState, gx: Array):
        """One step from the projected input ``gx`` ``[*batch, 4H]``: ``(h, y)``."""
        H, n, d = self.hidden_size, self.num_heads, self.head_size
        hh = h.h.reshape(h.h.shape[:-1] + (n, d))
        rh = jnp.einsum("...kj,gkij->...gki", hh, params.w_hh).reshape(h.h.shape[:-1] + (4 * H,))
        raw = gx + rh
        i_raw, f_raw, z_raw, o_raw = (raw[..., k * H:(k + 1) * H] for k in range(4))
        log_f = jax.nn.log_sigmoid(f_raw)
        m = jnp.maximum(log_f + h.m, i_raw)
        i = jnp.exp(i_raw - m)
        f = jnp.exp(log_f + h.m - m)
        c = f * h.c + i * jnp.tanh(z_raw)
        nn = f * h.n + i
        out = C.sigmoid(o_raw) * c / nn
        dt = h.h.dtype
        return SLSTMState(out.astype(dt), c.astype(dt), nn.astype(dt), m.astype(dt)), out

    def step(self, params: SLSTMParams, h: Optional[SLSTMState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)``.

        Args:
          params: an :class:`SLSTMParams`.
          h: an :class:`SLSTMState` of four ``[*batch, H]`` arrays, or None for zeros.
          x: ``[*batch, input_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.slstm import slstm
          >>> cell = slstm(8, num_heads=2)
          >>> params = cell.init(jax.random.key(0), input_size=3)
          >>> h, y = cell.step(params, None, jnp.ones((2, 3)))
          >>> params.w_hh.shape, h.n.shape, y.shape
          ((4, 2, 4, 4), (2, 8), (2, 8))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        if not isinstance(h, SLSTMState):
            if isinstance(h, (tuple, list)) and len(h) == 4:
                h = SLSTMState(*h)
            else:
                raise TypeError(f"`h` must be an SLSTMState (h, c, n, m) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([(f"h.{k}", v, (self.hidden_size,)) for k, v in h._asdict().items()], batch_shape)
        return self.update(params, h, self.project(params, x))


def slstm(hidden_size: int, *, num_heads: int = 1) -> SLSTMCell:
    """An sLSTM cell; see :class:`SLSTMCell` and the module docstring.

    Example:
      >>> from jaxrnn.zoo.slstm import slstm
      >>> slstm(64, num_heads=4)
      slstm(hidden_size=64, num_heads=4)
    """
    return SLSTMCell(hidden_size, num_heads)
