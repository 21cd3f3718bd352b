"""Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016, "Layer Normalization").

LayerNorm, with a gain and a bias, on the input pre-activations and on the recurrent
pre-activations (each over all gates at once), and for the LSTM on the new cell state,
as PyTorch's ``benchmarks/fastrnns/custom_lstms.py`` ``LayerNormLSTMCell``::

    LN(a; γ, β) = (a - mean(a)) / sqrt(var(a) + eps) * γ + β      over the last axis
                                                                  (biased variance)

Layout (``H`` the hidden size, ``I`` the input size, ``G`` = 4 gates i, f, g, o for the
LSTM, 3 gates r, z, n for the GRU; PyTorch's order)::

    w_ih: [G*H, I]      w_hh: [G*H, H]           (no separate biases: the LayerNorms
    ln_i_weight, ln_i_bias: [G*H]                 provide them, as in custom_lstms.py)
    ln_h_weight, ln_h_bias: [G*H]
    ln_c_weight, ln_c_bias: [H]                  (LSTM only)

The input LayerNorm depends on ``x`` only, so ``project`` computes it for every step at
once, outside the loop.
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

__all__ = [
    "LayerNormLSTMParams",
    "LayerNormGRUParams",
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "layernorm_lstm",
    "layernorm_gru",
    "layer_norm",
]


class LayerNormLSTMParams(NamedTuple):
    """Parameters of a layer-normalised LSTM (names as in ``custom_lstms.py``)."""

    w_ih: Array
    w_hh: Array
    ln_i_weight: Array
    ln_i_bias: Array
    ln_h_weight: Array
    ln_h_bias: Array
    ln_c_weight: Array
    ln_c_bias: Array


class LayerNormGRUParams(NamedTuple):
    """Parameters of a layer-normalised GRU."""

    w_ih: Array
    w_hh: Array
    ln_i_weight: Array
    ln_i_bias: Array
    ln_h_weight: Array
    ln_h_bias: Array


def layer_norm(a: Array, weight: Array, bias: Array, eps: float) -> Array:
    """``(a - mean) / sqrt(var + eps) * weight + bias`` over the last axis (``nn.LayerNorm``)."""
    mu = jnp.mean(a, axis=-1, keepdims=True)
    d = a - mu
    var = jnp.mean(d * d, axis=-1, keepdims=True)
    return d * jax.lax.rsqrt(var + eps) * weight + bias


@dataclasses.dataclass(frozen=True)
class _LayerNormCell:
    """What the two layer-norm cells share: sizes, init, checks, the input LayerNorm."""

    hidden_size: int
    init_scheme: str = "uniform"
    eps: float = 1e-5

    num_gates = 0  # set by each cell
    params_type = None
    name = ""

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        C.check_init(self.init_scheme)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"`eps` must be a positive number; got {self.eps!r}.")

    @property
    def output_size(self) -> int:
        """Size of ``h`` and of each output: ``hidden_size``."""
        return self.hidden_size

    def _repr_extra(self) -> str:
        extra = f", init={self.init_scheme!r}" if self.init_scheme != "uniform" else ""
        return extra + (f", eps={self.eps}" if self.eps != 1e-5 else "")

    def __repr__(self) -> str:
        return f"{self.name}(hidden_size={self.hidden_size}{self._repr_extra()})"

    def _init_common(self, key: Array, input_size: int, dtype) -> list:
        input_size = C.check_positive_int(input_size, "input_size")
        G, H = self.num_gates, self.hidden_size
        if self.init_scheme == "uniform":
            w_ih, w_hh = C.uniform(key, [(G * H, input_size), (G * H, H)], 1.0 / math.sqrt(H), dtype)
        else:
            k_ih, k_hh = jax.random.split(key)
            w_ih = C.gate_blocks(k_ih, G, H, input_size, dtype, recurrent=False)
            w_hh = C.gate_blocks(k_hh, G, H, H, dtype, recurrent=True)
        ones, zeros = jnp.ones((G * H,), dtype), jnp.zeros((G * H,), dtype)
        return [w_ih, w_hh, ones, zeros, ones, zeros]

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` (called ``name`` in errors) against this cell; returns the input size ``I``."""
        C.check_params_type(params, self.params_type, self, name)
        G, H = self.num_gates, self.hidden_size
        w_ih = params.w_ih
        if getattr(w_ih, "ndim", None) != 2 or w_ih.shape[0] != G * H:
            raise ValueError(f"`{name}.w_ih` must have shape [{G * H}, input_size] for {self!r}; "
                             f"got {getattr(w_ih, 'shape', type(w_ih).__name__)}.")
        C.check_array(w_ih, f"{name}.w_ih", w_ih.shape)
        C.check_array(params.w_hh, f"{name}.w_hh", (G * H, H))
        for field in params._fields[2:]:
            C.check_array(getattr(params, field), f"{name}.{field}", (H if field.startswith("ln_c") else G * H,))
        return int(w_ih.shape[1])

    def project(self, params, xs: Array) -> Array:
        """``LN_i(W_ih x)`` for inputs of any leading shape: ``[..., I] -> [..., G*H]``."""
        return layer_norm(xs @ params.w_ih.T, params.ln_i_weight, params.ln_i_bias, self.eps)

    def _recurrent(self, params, h: Array) -> Array:
        return layer_norm(h @ params.w_hh.T, params.ln_h_weight, params.ln_h_bias, self.eps)


@dataclasses.dataclass(frozen=True, repr=False)
class LayerNormLSTMCell(_LayerNormCell):
    """A layer-normalised LSTM (build one with :func:`layernorm_lstm`).

    Equations (``σ`` the logistic sigmoid, ``*`` elementwise, ``LN`` over all ``4H``
    pre-activations at once, then split into gates i, f, g, o)::

        s = LN_i(W_ih x) + LN_h(W_hh h)
        i, f, o = σ(s_i), σ(s_f), σ(s_o)        g = tanh(s_g)
        c' = LN_c(f * c + i * g)                (the state carries the normalised c)
        h' = o * tanh(c'),                      y = h'

    exactly PyTorch's ``custom_lstms.py`` ``LayerNormLSTMCell`` with ``nn.LayerNorm``
    (``eps=1e-5``). The biases are the LayerNorms' ``β`` (``ln_i_bias + ln_h_bias`` is the
    LSTM's bias); ``project`` computes ``LN_i(W_ih x)`` for every step at once.

    Attributes:
      hidden_size: ``H``.
      init_scheme: ``"uniform"``: ``w_ih, w_hh`` ``U(±1/sqrt(H))`` (PyTorch);
        ``"orthogonal"``: per-gate orthogonal ``w_hh``, Glorot-uniform ``w_ih``. Either
        way the LayerNorm gains are 1 and biases 0 (``nn.LayerNorm``'s), but for
        ``forget_bias``.
      forget_bias: if set, ``ln_i_bias``'s forget block is initialised to it.
      eps: the LayerNorms' epsilon (``nn.LayerNorm``'s 1e-5).
    """

    forget_bias: Optional[float] = None

    num_gates = 4
    params_type = LayerNormLSTMParams
    name = "layernorm_lstm"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "forget_bias", C.check_forget_bias(self.forget_bias))

    def _repr_extra(self) -> str:
        fb = f", forget_bias={self.forget_bias}" if self.forget_bias is not None else ""
        return super()._repr_extra() + fb

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> LayerNormLSTMParams:
        """Initial parameters for inputs of size ``input_size`` (see ``init_scheme``)."""
        fields = self._init_common(key, input_size, dtype)
        H = self.hidden_size
        if self.forget_bias is not None:
            fields[3] = fields[3].at[H : 2 * H].set(self.forget_bias)
        return LayerNormLSTMParams(*fields, jnp.ones((H,), dtype), jnp.zeros((H,), dtype))

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> LSTMState:
        """Zero ``LSTMState(h, c)``, each ``[*batch_shape, H]``."""
        shape = tuple(batch_shape) + (self.hidden_size,)
        return LSTMState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def update(self, params: LayerNormLSTMParams, h: LSTMState, gx: Array):
        """One step from the projected input ``gx = LN_i(W_ih x)``: ``(h, y)``."""
        h_prev, c_prev = h
        H = self.hidden_size
        s = gx + self._recurrent(params, h_prev)
        i, f, o = C.sigmoid(s[..., :H]), C.sigmoid(s[..., H : 2 * H]), C.sigmoid(s[..., 3 * H :])
        g = jnp.tanh(s[..., 2 * H : 3 * H])
        c = layer_norm(f * c_prev + i * g, params.ln_c_weight, params.ln_c_bias, self.eps)
        h_new = (o * jnp.tanh(c)).astype(h_prev.dtype)
        return LSTMState(h_new, c.astype(c_prev.dtype)), h_new

    def step(self, params: LayerNormLSTMParams, h: Optional[LSTMState], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (see the class docstring).

        Args:
          params: a :class:`LayerNormLSTMParams`.
          h: ``LSTMState(h, c)``, each ``[*batch, H]``, or None for zeros.
          x: ``[*batch, input_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.layernorm import layernorm_lstm
          >>> cell = layernorm_lstm(8)
          >>> params = cell.init(jax.random.key(0), input_size=3)
          >>> (h, c), y = cell.step(params, None, jnp.ones((2, 3)))
          >>> h.shape, round(float(c[0].mean()), 6)      # c is layer-normalised
          ((2, 8), 0.0)
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        if not (isinstance(h, (tuple, list)) and len(h) == 2):
            raise TypeError(f"`h` must be an LSTMState(h, c) for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([("h.h", h[0], (self.hidden_size,)), ("h.c", h[1], (self.hidden_size,))], batch_shape)
        return self.update(params, LSTMState(*h), self.project(params, x))


@dataclasses.dataclass(frozen=True, repr=False)
class LayerNormGRUCell(_LayerNormCell):
    """A layer-normalised GRU (build one with :func:`layernorm_gru`).

    Defined as the LSTM variant is, on PyTorch's GRU (gates r, z, n; ``LN`` over all
    ``3H`` pre-activations at once, then split)::

        a_x = LN_i(W_ih x)            a_h = LN_h(W_hh h)
        r = σ(a_x,r + a_h,r)          z = σ(a_x,z + a_h,z)
        n = tanh(a_x,n + r * a_h,n)
        h' = (1 - z) * n + z * h,     y = h'

    The LayerNorms' biases take the places of ``b_ih`` and ``b_hh`` (``ln_h_bias``'s n
    block sits inside ``r * (...)``, as torch's ``b_hn``). A GRU has no cell state, so
    there is no third LayerNorm: ``h'`` is a convex mix of ``tanh`` values and ``h``, and
    stays bounded. ``project`` computes ``LN_i(W_ih x)`` for every step at once.

    Attributes:
      hidden_size: ``H``.
      init_scheme: ``"uniform"`` (``U(±1/sqrt(H))`` weights) or ``"orthogonal"``
        (orthogonal ``w_hh`` per gate, Glorot ``w_ih``); LayerNorm gains 1, biases 0.
      eps: the LayerNorms' epsilon.
    """

    num_gates = 3
    params_type = LayerNormGRUParams
    name = "layernorm_gru"

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> LayerNormGRUParams:
        """Initial parameters for inputs of size ``input_size`` (see ``init_scheme``)."""
        return LayerNormGRUParams(*self._init_common(key, input_size, dtype))

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> Array:
        """Zero state ``[*batch_shape, H]``."""
        return jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype)

    def update(self, params: LayerNormGRUParams, h: Array, gx: Array):
        """One step from the projected input ``gx = LN_i(W_ih x)``: ``(h, y)``."""
        H = self.hidden_size
        a = self._recurrent(params, h)
        rz = C.sigmoid(gx[..., : 2 * H] + a[..., : 2 * H])
        r, z = rz[..., :H], rz[..., H:]
        n = jnp.tanh(gx[..., 2 * H :] + r * a[..., 2 * H :])
        h_new = (n + z * (h - n)).astype(h.dtype)
        return h_new, h_new

    def step(self, params: LayerNormGRUParams, h: Optional[Array], x: Array):
        """One time step, ``(params, h, x) -> (h, y)`` (see the class docstring).

        Args:
          params: a :class:`LayerNormGRUParams`.
          h: ``[*batch, H]``, or None for zeros.
          x: ``[*batch, input_size]``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from jaxrnn.zoo.layernorm import layernorm_gru
          >>> cell = layernorm_gru(8)
          >>> params = cell.init(jax.random.key(0), input_size=3)
          >>> h, y = cell.step(params, None, jnp.ones((2, 3)))
          >>> h.shape, params.ln_h_bias.shape
          ((2, 8), (24,))
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        if isinstance(h, (tuple, list)):
            raise TypeError(f"`h` must be a single array for {self!r}; got {type(h).__name__}.")
        C.check_state_parts([("h", h, (self.hidden_size,))], batch_shape)
        return self.update(params, h, self.project(params, x))


def layernorm_lstm(hidden_size: int, *, init: str = "uniform", forget_bias: Optional[float] = None,
                   eps: float = 1e-5) -> LayerNormLSTMCell:
    """A layer-normalised LSTM; see :class:`LayerNormLSTMCell`.

    Example:
      >>> from jaxrnn.zoo.layernorm import layernorm_lstm
      >>> layernorm_lstm(32, forget_bias=1.0)
      layernorm_lstm(hidden_size=32, forget_bias=1.0)
    """
    return LayerNormLSTMCell(hidden_size, init_scheme=init, eps=eps, forget_bias=forget_bias)


def layernorm_gru(hidden_size: int, *, init: str = "uniform", eps: float = 1e-5) -> LayerNormGRUCell:
    """A layer-normalised GRU; see :class:`LayerNormGRUCell`.

    Example:
      >>> from jaxrnn.zoo.layernorm import layernorm_gru
      >>> layernorm_gru(32, init="orthogonal")
      layernorm_gru(hidden_size=32, init='orthogonal')
    """
    return LayerNormGRUCell(hidden_size, init_scheme=init, eps=eps)
