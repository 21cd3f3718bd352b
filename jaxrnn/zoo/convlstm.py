"""Convolutional LSTM (Shi et al. 2015, "Convolutional LSTM Network").

The LSTM's matrix products become 2-D convolutions ("SAME" padding, stride 1), so the
state keeps the frames' spatial shape: flax's ``ConvLSTMCell`` and Keras' ``ConvLSTM2D``.
Frames are channels-last, ``x: [*batch, height, width, C]``; the state is an
``LSTMState(h, c)`` of ``[*batch, height, width, F]`` arrays (``F = hidden_size``
channels). Layout (PyTorch's ``Conv2d`` weight layout ``[out, in, kh, kw]``, the gates
stacked along the output axis in PyTorch's LSTM order i, f, g, o)::

    w_ih: [4F, C, kh, kw]   w_hh: [4F, F, kh, kw]   b_ih: [4F]   b_hh: [4F]

From Keras' ``ConvLSTM2D(padding="same")`` (``kernel``, ``recurrent_kernel``
``[kh, kw, in, 4F]``, gates i, f, c, o, one ``bias``): transpose both kernels to
``[4F, in, kh, kw]`` (``transpose(3, 2, 0, 1)``), ``b_ih = bias``, ``b_hh = 0``. From flax's
``nn.ConvLSTMCell`` (the same kernel layout, gates i, g, f, o, and ``σ(f + 1)`` at run
time): transpose likewise, reorder the gate blocks, and add 1 to the forget block of one
bias. ``tests/test_zoo.py`` checks both conversions.

The cell has ``num_feature_axes = 3``: a sequence is ``[*batch, T, height, width, C]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import LSTMState
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["ConvLSTMParams", "ConvLSTMCell", "conv_lstm"]


class ConvLSTMParams(NamedTuple):
    """Parameters of a ConvLSTM: convolution kernels ``[4F, in, kh, kw]`` and biases ``[4F]``."""

    w_ih: Array
    w_hh: Array
    b_ih: Optional[Array]
    b_hh: Optional[Array]


def conv2d(x: Array, w: Array) -> Array:
    """"SAME" 2-D cross-correlation, stride 1: ``[..., h, w, in] * [out, in, kh, kw] -> [..., h, w, out]``.

    Any number of leading axes (folded into one batch axis for the convolution).
    """
    lead = x.shape[:-3]
    dtype = jnp.result_type(x.dtype, w.dtype)
    y = jax.lax.conv_general_dilated(
        x.reshape((-1,) + x.shape[-3:]).astype(dtype), w.astype(dtype), window_strides=(1, 1),
        padding="SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))
    return y.reshape(lead + y.shape[-3:])


def _pair(value, name: str) -> Tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a pair of ints; got {value!r}.")
    return tuple(C.check_positive_int(v, name) for v in value)


@dataclasses.dataclass(frozen=True)
class ConvLSTMCell:
    """A convolutional LSTM (build one with :func:`conv_lstm`).

    Equations, with ``⋆`` a "SAME" 2-D convolution, ``σ`` the logistic sigmoid and ``*``
    elementwise (per pixel and channel)::

        s = W_ih ⋆ x + b_ih + W_hh ⋆ h + b_hh              split along channels into i, f, g, o
        i, f, o = σ(s_i), σ(s_f), σ(s_o)        g = tanh(s_g)
        c' = f * c + i * g
        h' = o * tanh(c'),                      y = h'      ([*batch, height, width, F])

    flax's ``nn.ConvLSTMCell`` and Keras' ``ConvLSTM2D`` (``padding="same"``, no peepholes,
    Shi et al.'s Hadamard peepholes left out as those two do). ``project`` convolves every
    frame of a sequence at once (``W_ih ⋆ x + b_ih + b_hh``), outside the loop; the loop
    does only ``W_hh ⋆ h`` and the gate arithmetic.

    Attributes:
      hidden_size: ``F``, the channels of ``h`` and ``c``.
      kernel_size: ``(kh, kw)`` of both convolutions.
      spatial_shape: ``(height, width)`` of the frames, used by :meth:`initial_state`
        (so that ``unroll``/``stack`` can start from zeros with ``h=None``); None if the
        state is always given or ``initial_state`` is told it. ``step`` with
        ``h=None`` takes the shape from its input.
      bias: whether the cell has ``b_ih`` and ``b_hh``.
      init_scheme: ``"uniform"``: every tensor ``U(±1/sqrt(F * kh * kw))`` (PyTorch's RNN
        rule with the recurrent convolution's fan-in); ``"orthogonal"``: each gate's
        recurrent kernel, as an ``[F, F*kh*kw]`` matrix, orthogonal, Glorot-uniform input
        kernels, zero biases.
      forget_bias: if set, ``b_ih``'s forget block is set to it and ``b_hh``'s to zero
        (Keras' ``unit_forget_bias``; flax's fixed ``+1``).
    """

    hidden_size: int
    kernel_size: Tuple[int, int] = (3, 3)
    spatial_shape: Optional[Tuple[int, int]] = None
    bias: bool = True
    init_scheme: str = "uniform"
    forget_bias: Optional[float] = None

    #: Each input is a frame ``[height, width, C]``: three feature axes.
    num_feature_axes = 3

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, "kernel_size"))
        if self.spatial_shape is not None:
            object.__setattr__(self, "spatial_shape", _pair(self.spatial_shape, "spatial_shape"))
        C.check_init(self.init_scheme)
        object.__setattr__(self, "forget_bias", C.check_forget_bias(self.forget_bias))
        if self.forget_bias is not None and not self.bias:
            raise ValueError("`forget_bias` needs `bias=True`; got bias=False.")

    @property
    def output_size(self) -> int:
        """Channels of ``h`` and of each output frame: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = f", kernel_size={self.kernel_size}"
        if self.spatial_shape is not None:
            extra += f", spatial_shape={self.spatial_shape}"
        if not self.bias:
            extra += ", bias=False"
        if self.init_scheme != "uniform":
            extra += f", init={self.init_scheme!r}"
        if self.forget_bias is not None:
            extra += f", forget_bias={self.forget_bias}"
        return f"conv_lstm(hidden_size={self.hidden_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> ConvLSTMParams:
        """Initial parameters for frames of ``input_size`` channels (see ``init_scheme``)."""
        C_in = C.check_positive_int(input_size, "input_size")
        F, (kh, kw) = self.hidden_size, self.kernel_size
        if self.init_scheme == "uniform":
            shapes = [(4 * F, C_in, kh, kw), (4 * F, F, kh, kw), (4 * F,), (4 * F,)]
            w_ih, w_hh, b_ih, b_hh = C.uniform(key, shapes, 1.0 / math.sqrt(F * kh * kw), dtype)
        else:
            k_ih, k_hh = jax.random.split(key)
            glorot = jax.nn.initializers.glorot_uniform(in_axis=1, out_axis=0)
            orth = jax.nn.initializers.orthogonal()
            w_ih = jnp.concatenate([glorot(k, (F, C_in, kh, kw), dtype) for k in jax.random.split(k_ih, 4)])
            w_hh = jnp.concatenate([orth(k, (F, F * kh * kw), dtype).reshape(F, F, kh, kw)
                                    for k in jax.random.split(k_hh, 4)])
            b_ih = b_hh = jnp.zeros((4 * F,), dtype)
        if self.forget_bias is not None:
            b_ih = b_ih.at[F : 2 * F].set(self.forget_bias)
            b_hh = b_hh.at[F : 2 * F].set(0.0)
        if not self.bias:
            b_ih = b_hh = None
        return ConvLSTMParams(w_ih, w_hh, b_ih, b_hh)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32, *,
                      spatial_shape: Optional[Sequence[int]] = None) -> LSTMState:
        """Zero ``LSTMState(h, c)``, each ``[*batch_shape, height, width, F]``.

        Args:
          batch_shape: the batch dimensions.
          dtype: the state's dtype.
          spatial_shape: ``(height, width)``; defaults to the cell's ``spatial_shape``.

        Raises:
          ValueError: when neither gives the spatial shape.
        """
        spatial = self.spatial_shape if spatial_shape is None else _pair(spatial_shape, "spatial_shape")
        if spatial is None:
            raise ValueError(
                f"`spatial_shape` is needed for the zero state of {self!r}: build the cell with "
                "conv_lstm(..., spatial_shape=(height, width)), pass initial_state(..., spatial_shape=...), "
                "or give the state `h`.")
        shape = tuple(batch_shape) + tuple(spatial) + (self.hidden_size,)
        return LSTMState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` (called ``name`` in errors) against this cell; returns the input channels ``C``."""
        C.check_params_type(params, ConvLSTMParams, self, name)
        F, (kh, kw) = self.hidden_size, self.kernel_size
        w_ih = params.w_ih
        if getattr(w_ih, "ndim", None) != 4 or tuple(w_ih.shape[:1] + w_ih.shape[2:]) != (4 * F, kh, kw):
            raise ValueError(f"`{name}.w_ih` must have shape [{4 * F}, input_size, {kh}, {kw}] for {self!r}; "
                             f"got {getattr(w_ih, 'shape', type(w_ih).__name__)}.")
        C.check_array(w_ih, f"{name}.w_ih", w_ih.shape)
        C.check_array(params.w_hh, f"{name}.w_hh", (4 * F, F, kh, kw))
        for field in ("b_ih", "b_hh"):
            value = getattr(params, field)
            if self.bias:
                C.check_array(value, f"{name}.{field}", (4 * F,))
            elif value is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r}; got an array.")
        return int(w_ih.shape[1])

    def project(self, params: ConvLSTMParams, xs: Array) -> Array:
        """``W_ih ⋆ x + b_ih + b_hh`` for frames of any leading shape: ``[..., h, w, C] -> [..., h, w, 4F]``."""
        gx = conv2d(xs, params.w_ih)
        return gx if params.b_ih is None else gx + (params.b_ih + params.b_hh)

    def update(self, params: ConvLSTMParams, h: LSTMState, gx: Array):
        """One step from the projected frame ``gx`` ``[*batch, h, w, 4F]``: ``(h, y)``."""
        h_prev, c_prev = h
        F = self.hidden_size
        s = gx + conv2d(h_prev, params.w_hh)
        i, f, o = C.sigmoid(s[..., :F]), C.sigmoid(s[..., F : 2 * F]), C.sigmoid(s[..., 3 * F :])
        g = jnp.tanh(s[..., 2 * F : 3 * F])
        c = f * c_prev + i * g
        h_new = (o * jnp.tanh(c)).astype(h_prev.dtype)
        return LSTMState(h_new, c.astype(c_prev.dtype)), h_new

    def step(self, params: ConvLSTMParams, h: Optional[LSTMState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (see the class docstring).

        Args:
          params: a :class:`ConvLSTMParams`.
          h: ``LSTMState(h, c)``, each ``[*batch, height, width, F]``, or None for zeros.
          x: a frame ``[*batch, height, width, input_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.convlstm import conv_lstm
          >>> cell = conv_lstm(4, kernel_size=3)
          >>> params = cell.init(jax.random.key(0), input_size=2)
          >>> (h, c), y = cell.step(params, None, jnp.ones((5, 8, 8, 2)))
          >>> h.shape, params.w_hh.shape
          ((5, 8, 8, 4), (16, 4, 3, 3))
        """
        x = C.check_input(x, self.check_params(params), feature_axes=3)
        batch_shape, spatial = tuple(x.shape[:-3]), tuple(x.shape[-3:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params), spatial_shape=spatial)
        if not (isinstance(h, (tuple, list)) and len(h) == 2):
            raise TypeError(f"`h` must be an LSTMState(h, c) for {self!r}; got {type(h).__name__}.")
        trailing = spatial + (self.hidden_size,)
        C.check_state_parts([("h.h", h[0], trailing), ("h.c", h[1], trailing)], batch_shape)
        return self.update(params, LSTMState(*h), self.project(params, x))


def conv_lstm(hidden_size: int, kernel_size=(3, 3), *, spatial_shape: Optional[Sequence[int]] = None,
              bias: bool = True, init: str = "uniform", forget_bias: Optional[float] = None) -> ConvLSTMCell:
    """A convolutional LSTM; see :class:`ConvLSTMCell`.

    Args:
      hidden_size: ``F``, the channels of the state.
      kernel_size: an int or ``(kh, kw)``.
      spatial_shape: ``(height, width)`` of the frames, for ``initial_state`` (optional).
      bias: whether to use ``b_ih`` and ``b_hh``.
      init: ``"uniform"`` or ``"orthogonal"``.
      forget_bias: initial forget-gate bias (flax's ``ConvLSTMCell`` behaves as 1.0).

    Example:
      >>> from jaxrnn.zoo.convlstm import conv_lstm
      >>> cell = conv_lstm(8, 5, spatial_shape=(16, 16))
      >>> cell.initial_state((2,)).c.shape
      (2, 16, 16, 8)
    """
    return ConvLSTMCell(hidden_size, kernel_size, spatial_shape=spatial_shape, bias=bias, init_scheme=init,
                        forget_bias=forget_bias)
