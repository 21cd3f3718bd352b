"""The original GRU (Cho et al. 2014): the reset gate applied *before* the recurrent product.

TensorFlow 1's ``GRUCell`` and Keras' ``GRU(reset_after=False)`` compute the candidate from
``W_hn (r * h)``; PyTorch, cuDNN and :func:`jaxrnn.gru` compute ``r * (W_hn h + b_hn)``.
The two differ in value for the same weights. Layout (``H`` the hidden size, ``I`` the input
size), PyTorch's GRU layout and gate order (r, z, n)::

    w_ih: [3H, I]   w_hh: [3H, H]   b_ih: [3H]   b_hh: [3H]   (None when bias=False)

Since ``b_hn`` is added outside the reset gate here, ``b_ih + b_hh`` is all that matters:
Keras' single ``bias`` of ``GRU(reset_after=False)`` is ``b_ih + b_hh`` in ``r, z, n`` order.
The state is an array ``[*batch, H]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["OriginalGRUParams", "OriginalGRUCell", "gru_original"]


class OriginalGRUParams(NamedTuple):
    """Parameters of the original GRU, in ``torch.nn.GRU``'s layout (gates r, z, n)."""

    w_ih: Array
    w_hh: Array
    b_ih: Optional[Array]
    b_hh: Optional[Array]


@dataclasses.dataclass(frozen=True)
class OriginalGRUCell:
    """A GRU with the reset gate before the recurrent product (build it with :func:`gru_original`).

    Equations, with ``σ`` the logistic sigmoid and ``*`` elementwise::

        r  = σ(W_ir x + b_ir + W_hr h + b_hr)
        z  = σ(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
        h' = (1 - z) * n + z * h,          y = h'

    ``project`` computes ``W_ih x + b_ih + b_hh`` for every step at once (every bias is
    outside the reset gate); ``update`` does the two recurrent products that need ``h``.

    Attributes:
      hidden_size: ``H``.
      bias: whether the cell has ``b_ih`` and ``b_hh``.
      init_scheme: ``"uniform"``: every tensor ``U(±1/sqrt(H))`` (PyTorch's GRU);
        ``"orthogonal"``: per-gate orthogonal ``w_hh``, Glorot-uniform ``w_ih``, zero biases.
    """

    hidden_size: int
    bias: bool = True
    init_scheme: str = "uniform"

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        C.check_init(self.init_scheme)

    @property
    def output_size(self) -> int:
        """Size of ``h`` and of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        if self.init_scheme != "uniform":
            extra += f", init={self.init_scheme!r}"
        return f"gru_original(hidden_size={self.hidden_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> OriginalGRUParams:
        """Initial parameters for inputs of size ``input_size`` (see ``init_scheme``)."""
        input_size = C.check_positive_int(input_size, "input_size")
        H = self.hidden_size
        if self.init_scheme == "uniform":
            shapes = [(3 * H, input_size), (3 * H, H), (3 * H,), (3 * H,)]
            w_ih, w_hh, b_ih, b_hh = C.uniform(key, shapes, 1.0 / math.sqrt(H), dtype)
        else:
            k_ih, k_hh = jax.random.split(key)
            w_ih = C.gate_blocks(k_ih, 3, H, input_size, dtype, recurrent=False)
            w_hh = C.gate_blocks(k_hh, 3, H, H, dtype, recurrent=True)
            b_ih = b_hh = jnp.zeros((3 * H,), dtype)
        if not self.bias:
            b_ih = b_hh = None
        return OriginalGRUParams(w_ih, w_hh, b_ih, b_hh)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> Array:
        """Zero state ``[*batch_shape, H]``."""
        return jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype)

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` (called ``name`` in messages) against this cell; returns the
        input size ``I``."""
        C.check_params_type(params, OriginalGRUParams, self, name)
        H = self.hidden_size
        w_ih = params.w_ih
        if getattr(w_ih, "ndim", None) != 2 or w_ih.shape[0] != 3 * H:
            raise ValueError(f"`{name}.w_ih` must have shape [{3 * H}, input_size] for {self!r}; "
                             f"got {getattr(w_ih, 'shape', type(w_ih).__name__)}.")
        C.check_array(w_ih, f"{name}.w_ih", w_ih.shape)
        C.check_array(params.w_hh, f"{name}.w_hh", (3 * H, H))
        for field in ("b_ih", "b_hh"):
            value = getattr(params, field)
            if self.bias:
                C.check_array(value, f"{name}.{field}", (3 * H,))
            elif value is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r}; got an array.")
        return int(w_ih.shape[1])

    def project(self, params: OriginalGRUParams, xs: Array) -> Array:
        """``W_ih x + b_ih + b_hh`` for inputs of any leading shape: ``[..., I] -> [..., 3H]``."""
        gx = xs @ params.w_ih.T
        return gx if params.b_ih is None else gx + (params.b_ih + params.b_hh)

    def update(self, params: OriginalGRUParams, h: Array, gx: Array):
        """One step from the projected input ``gx`` ``[*batch, 3H]``: ``(h, y)``."""
        H = self.hidden_size
        w_hh = params.w_hh
        rz = C.sigmoid(gx[..., : 2 * H] + h @ w_hh[: 2 * H].T)
        r, z = rz[..., :H], rz[..., H:]
        n = jnp.tanh(gx[..., 2 * H :] + (r * h) @ w_hh[2 * H :].T)
        h_new = (n + z * (h - n)).astype(h.dtype)
        return h_new, h_new

    def step(self, params: OriginalGRUParams, h: Optional[Array], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (see the class docstring).

        Args:
          params: an :class:`OriginalGRUParams`.
          h: ``[*batch, H]``, or None for zeros.
          x: ``[*batch, input_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.gru_original import gru_original
          >>> cell = gru_original(8)
          >>> params = cell.init(jax.random.key(0), input_size=3)
          >>> h, y = cell.step(params, None, jnp.ones((2, 3)))
          >>> h.shape, params.w_hh.shape
          ((2, 8), (24, 8))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        C.check_state_parts([("h", h, (self.hidden_size,))], batch_shape)
        return self.update(params, h, self.project(params, x))


def gru_original(hidden_size: int, *, bias: bool = True, init: str = "uniform") -> OriginalGRUCell:
    """The original GRU (``reset_after=False``); see :class:`OriginalGRUCell`.

    Args:
      hidden_size: ``H``.
      bias: whether to use ``b_ih`` and ``b_hh``.
      init: ``"uniform"`` (PyTorch's) or ``"orthogonal"`` (Keras').

    Example:
      >>> from jaxrnn.zoo.gru_original import gru_original
      >>> gru_original(16, init="orthogonal")
      gru_original(hidden_size=16, init='orthogonal')
    """
    return OriginalGRUCell(hidden_size, bias=bias, init_scheme=init)
