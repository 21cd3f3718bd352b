"""LSTM with peephole connections (Gers & Schmidhuber 2000).

The gates also look at the cell state through diagonal ("peephole") weights: the input
and forget gates at the previous cell state, the output gate at the new one, as in
TensorFlow's ``LSTMCell(use_peepholes=True)``. Layout (``H`` the hidden size, ``I`` the
input size), PyTorch's LSTM layout and gate order (i, f, g, o) plus three vectors::

    w_ih: [4H, I]   w_hh: [4H, H]   b_ih: [4H]   b_hh: [4H]   (None when bias=False)
    w_ci: [H]       w_cf: [H]       w_co: [H]    peephole weights

The state is a :class:`jaxrnn.LSTMState` ``(h, c)``, both ``[*batch, H]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.cells import LSTMState
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["PeepholeLSTMParams", "PeepholeLSTMCell", "peephole_lstm"]


class PeepholeLSTMParams(NamedTuple):
    """Parameters of a peephole LSTM: ``torch.nn.LSTM``'s four plus the peepholes."""

    w_ih: Array
    w_hh: Array
    b_ih: Optional[Array]
    b_hh: Optional[Array]
    w_ci: Array
    w_cf: Array
    w_co: Array


@dataclasses.dataclass(frozen=True)
class PeepholeLSTMCell:
    """An LSTM whose gates see the cell state (build one with :func:`peephole_lstm`).

    Equations, with ``σ`` the logistic sigmoid, ``*`` elementwise and ``w_c*`` vectors::

        s = W_ih x + b_ih + W_hh h + b_hh                  split into s_i, s_f, s_g, s_o
        i = σ(s_i + w_ci * c)        f = σ(s_f + w_cf * c)        g = tanh(s_g)
        c' = f * c + i * g
        o = σ(s_o + w_co * c')                              (the *new* cell state)
        h' = o * tanh(c'),           y = h'

    These are TensorFlow 1's ``LSTMCell(use_peepholes=True)`` (without its ``cell_clip``
    and ``num_proj``) in PyTorch's gate order; with zero peepholes it is ``torch.nn.LSTM``.
    ``project`` computes ``W_ih x + b_ih + b_hh`` for every step at once.

    Attributes:
      hidden_size: ``H``.
      bias: whether the cell has ``b_ih`` and ``b_hh``.
      init_scheme: ``"uniform"``: every tensor, peepholes included, ``U(±1/sqrt(H))``
        (PyTorch's LSTM); ``"orthogonal"``: per-gate orthogonal ``w_hh``, Glorot-uniform
        ``w_ih``, zero biases and zero peepholes (the cell starts as a plain LSTM).
      forget_bias: if set, ``b_ih``'s forget block is set to it and ``b_hh``'s to zero
        (TensorFlow adds ``forget_bias=1`` at run time; here it is an initial value).
    """

    hidden_size: int
    bias: bool = True
    init_scheme: str = "uniform"
    forget_bias: Optional[float] = None

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        C.check_init(self.init_scheme)
        object.__setattr__(self, "forget_bias", C.check_forget_bias(self.forget_bias))
        if self.forget_bias is not None and not self.bias:
            raise ValueError("`forget_bias` needs `bias=True`; got bias=False.")

    @property
    def output_size(self) -> int:
        """Size of ``h`` and of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        if self.init_scheme != "uniform":
            extra += f", init={self.init_scheme!r}"
        if self.forget_bias is not None:
            extra += f", forget_bias={self.forget_bias}"
        return f"peephole_lstm(hidden_size={self.hidden_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> PeepholeLSTMParams:
        """Initial parameters for inputs of size ``input_size`` (see ``init_scheme``)."""
        input_size = C.check_positive_int(input_size, "input_size")
        H = self.hidden_size
        if self.init_scheme == "uniform":
            shapes = [(4 * H, input_size), (4 * H, H), (4 * H,), (4 * H,), (H,), (H,), (H,)]
            w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co = C.uniform(key, shapes, 1.0 / math.sqrt(H), dtype)
        else:
            k_ih, k_hh = jax.random.split(key)
            w_ih = C.gate_blocks(k_ih, 4, H, input_size, dtype, recurrent=False)
            w_hh = C.gate_blocks(k_hh, 4, H, H, dtype, recurrent=True)
            b_ih = b_hh = jnp.zeros((4 * H,), dtype)
            w_ci = w_cf = w_co = jnp.zeros((H,), dtype)
        if self.forget_bias is not None:
            b_ih = b_ih.at[H : 2 * H].set(self.forget_bias)
            b_hh = b_hh.at[H : 2 * H].set(0.0)
        if not self.bias:
            b_ih = b_hh = None
        return PeepholeLSTMParams(w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> LSTMState:
        """Zero ``LSTMState(h, c)``, each ``[*batch_shape, H]``."""
        shape = tuple(batch_shape) + (self.hidden_size,)
        return LSTMState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` (called ``name`` in errors) against this cell; returns the input size ``I``."""
        C.check_params_type(params, PeepholeLSTMParams, self, name)
        H = self.hidden_size
        w_ih = params.w_ih
        if getattr(w_ih, "ndim", None) != 2 or w_ih.shape[0] != 4 * H:
            raise ValueError(f"`{name}.w_ih` must have shape [{4 * H}, input_size] for {self!r}; "
                             f"got {getattr(w_ih, 'shape', type(w_ih).__name__)}.")
        C.check_array(w_ih, f"{name}.w_ih", w_ih.shape)
        C.check_array(params.w_hh, f"{name}.w_hh", (4 * H, H))
        for field in ("b_ih", "b_hh"):
            value = getattr(params, field)
            if self.bias:
                C.check_array(value, f"{name}.{field}", (4 * H,))
            elif value is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r}; got an array.")
        for field in ("w_ci", "w_cf", "w_co"):
            C.check_array(getattr(params, field), f"{name}.{field}", (H,))
        return int(w_ih.shape[1])

    def project(self, params: PeepholeLSTMParams, xs: Array) -> Array:
        """``W_ih x + b_ih + b_hh`` for inputs of any leading shape: ``[..., I] -> [..., 4H]``."""
        gx = xs @ params.w_ih.T
        return gx if params.b_ih is None else gx + (params.b_ih + params.b_hh)

    def update(self, params: PeepholeLSTMParams, h: LSTMState, gx: Array):
        """One step from the projected input ``gx`` ``[*batch, 4H]``: ``(h, y)``."""
        h_prev, c_prev = h
        H = self.hidden_size
        s = gx + h_prev @ params.w_hh.T
        i = C.sigmoid(s[..., :H] + params.w_ci * c_prev)
        f = C.sigmoid(s[..., H : 2 * H] + params.w_cf * c_prev)
        g = jnp.tanh(s[..., 2 * H : 3 * H])
        c = f * c_prev + i * g
        o = C.sigmoid(s[..., 3 * H :] + params.w_co * c)
        h_new = (o * jnp.tanh(c)).astype(h_prev.dtype)
        return LSTMState(h_new, c.astype(c_prev.dtype)), h_new

    def step(self, params: PeepholeLSTMParams, h: Optional[LSTMState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (see the class docstring).

        Args:
          params: a :class:`PeepholeLSTMParams`.
          h: ``LSTMState(h, c)``, each ``[*batch, H]``, or None for zeros.
          x: ``[*batch, input_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.peephole import peephole_lstm
          >>> cell = peephole_lstm(8)
          >>> params = cell.init(jax.random.key(0), input_size=3)
          >>> (h, c), y = cell.step(params, None, jnp.ones((2, 3)))
          >>> h.shape, c.shape, params.w_co.shape
          ((2, 8), (2, 8), (8,))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        if not (isinstance(h, (tuple, list)) and len(h) == 2):
            raise TypeError(f"`h` must be an LSTMState(h, c) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([("h.h", h[0], (self.hidden_size,)), ("h.c", h[1], (self.hidden_size,))], batch_shape)
        return self.update(params, LSTMState(*h), self.project(params, x))


def peephole_lstm(hidden_size: int, *, bias: bool = True, init: str = "uniform",
                  forget_bias: Optional[float] = None) -> PeepholeLSTMCell:
    """An LSTM with peephole connections; see :class:`PeepholeLSTMCell`.

    Args:
      hidden_size: ``H``.
      bias: whether to use ``b_ih`` and ``b_hh``.
      init: ``"uniform"`` (PyTorch's) or ``"orthogonal"`` (Keras', zero peepholes).
      forget_bias: initial forget-gate bias (e.g. 1.0), or None.

    Example:
      >>> import jax
      >>> from jaxrnn.zoo.peephole import peephole_lstm
      >>> peephole_lstm(16, init="orthogonal", forget_bias=1.0)
      peephole_lstm(hidden_size=16, init='orthogonal', forget_bias=1.0)
    """
    return PeepholeLSTMCell(hidden_size, bias=bias, init_scheme=init, forget_bias=forget_bias)
