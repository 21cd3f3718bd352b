"""Recurrent cells as pure functions: vanilla RNN (tanh, relu), GRU and LSTM.

A cell is a frozen, hashable bundle of hyperparameters with pure methods::

    cell = jaxrnn.lstm(hidden_size=128)
    params = cell.init(key, input_size=32)        # an LSTMParams NamedTuple
    h, y = cell.step(params, None, x)             # (params, h, x) -> (h, y)

Parameters follow PyTorch's layout and gate order, so weights move between
``torch.nn.RNN/GRU/LSTM`` and jaxrnn without reshuffling (``G`` is the number of
gates, ``H`` the hidden size, ``I`` the input size)::

    w_ih: [G*H, I]   input-to-hidden weights, gates stacked along axis 0
    w_hh: [G*H, H_out] hidden-to-hidden weights (H_out = proj_size or H)
    b_ih: [G*H]      input bias (None when bias=False)
    b_hh: [G*H]      hidden bias (None when bias=False)
    w_hr: [proj_size, H]  LSTM projection (None when proj_size=0)

    RNN:  G=1;  LSTM: G=4, gates (i, f, g, o);  GRU: G=3, gates (r, z, n).

``x`` is ``[*batch, input_size]`` with any number of leading batch dimensions
(none included); the state has the same batch dimensions.

Parameters are stored in float32; a cell built with ``compute_dtype=jnp.bfloat16``
runs its matrix products in bfloat16 with float32 accumulation and keeps the
state and all gate arithmetic in float32. With ``jax_enable_x64``, float64 inputs or
parameters make everything float64 (products, gate arithmetic, gradients, and the
zero state for ``h=None``), never a silent float32 (see :func:`acc_dtype`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _compat

Array = jax.Array

__all__ = [
    "Cell",
    "RNNCell",
    "GRUCell",
    "LSTMCell",
    "RNNParams",
    "GRUParams",
    "LSTMParams",
    "LSTMState",
    "rnn",
    "gru",
    "lstm",
]


class RNNParams(NamedTuple):
    """Parameters of a vanilla RNN cell (``G = 1``), in ``torch.nn.RNN`` layout."""

    w_ih: Array
    w_hh: Array
    b_ih: Optional[Array]
    b_hh: Optional[Array]


class GRUParams(NamedTuple):
    """Parameters of a GRU cell (``G = 3``, gates r, z, n), ``torch.nn.GRU`` layout."""

    w_ih: Array
    w_hh: Array
    b_ih: Optional[Array]
    b_hh: Optional[Array]


class LSTMParams(NamedTuple):
    """Parameters of an LSTM cell (``G = 4``, gates i, f, g, o), ``torch.nn.LSTM`` layout."""

    w_ih: Array
    w_hh: Array
    b_ih: Optional[Array]
    b_hh: Optional[Array]
    w_hr: Optional[Array] = None


class LSTMState(NamedTuple):
    """LSTM state: ``h`` is ``[*batch, proj_size or H]``, ``c`` is ``[*batch, H]``."""

    h: Array
    c: Array


_INITS = ("uniform", "orthogonal")


@dataclasses.dataclass(frozen=True, repr=False)
class Cell:
    """A built-in recurrent cell in PyTorch's layout: static hyperparameters plus pure functions.

    Build one with :func:`rnn`, :func:`gru` or :func:`lstm` rather than directly. The
    subclasses :class:`RNNCell`, :class:`GRUCell` and :class:`LSTMCell` each hold their own
    equations (:meth:`pointwise` and its backward, :meth:`pointwise_bwd`); this base holds
    what the three share: the torch layout (init, checks, the input projection, the
    recurrent product). Every built-in cell is an instance of the cell contract
    (:class:`jaxrnn.RecurrentCell`) and also offers the optional fused path that
    :func:`jaxrnn.unroll` looks for (``fused = True``: see :mod:`jaxrnn.fused`).
    Cells are hashable, so they can be closed over or passed as static arguments to
    ``jax.jit`` without retracing on parameter values.

    Attributes:
      hidden_size: ``H``.
      proj_size: LSTM projection size (0 for none; LSTM only).
      bias: whether the cell has ``b_ih`` and ``b_hh``.
      init_scheme: ``"uniform"`` (PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for every
        tensor) or ``"orthogonal"`` (orthogonal recurrent weights, Glorot-uniform
        input weights, zero biases).
      forget_bias: if set, LSTM forget-gate biases are initialised so that
        ``b_if + b_hf`` equals it (``b_hf = 0``), as Keras' ``unit_forget_bias`` (LSTM only).
      compute_dtype: dtype of the matrix-product operands (float32 or bfloat16).
    """

    hidden_size: int
    proj_size: int = 0
    bias: bool = True
    init_scheme: str = "uniform"
    forget_bias: Optional[float] = None
    compute_dtype: Any = jnp.float32

    #: The number of gates ``G`` (rows of ``w_ih`` per hidden unit).
    num_gates: ClassVar[int] = 0
    #: The params NamedTuple of this cell.
    params_type: ClassVar[type] = type(None)
    #: Whether the state is an ``(h, c)`` pair (:class:`LSTMState`).
    is_lstm: ClassVar[bool] = False
    #: The capability :func:`jaxrnn.unroll` looks for: this cell runs on the fused path.
    #: Only a class that declares it in its own body counts (:func:`jaxrnn.contract.fused`):
    #: a subclass that changes the equations runs on the generic path unless it says
    #: ``fused = True`` again.
    fused: ClassVar[bool] = False
    #: Fused path: whether ``h @ w_hh.T`` adds to the input projection before the gate
    #: arithmetic (RNN, LSTM), or enters it separately (GRU's ``r * (W_hn h + b_hn)``).
    adds_recurrent_to_input: ClassVar[bool] = True
    #: Fused path: whether :meth:`pointwise_bwd` reads the new hidden state (``r``).
    bwd_reads_output: ClassVar[bool] = False
    #: Fused path: whether the saved activations are one array shaped like the input
    #: projection, which can be overwritten in place (see :mod:`jaxrnn.tuning`), then at
    #: most one ``[N, k*H]`` side array whose place takes the last ``k`` gates of the
    #: recurrent cotangent ``da`` where it differs from ``dgx`` (the GRU's ``W_hn h + b_hn``).
    saves_gate_buffer: ClassVar[bool] = False

    def __post_init__(self):
        if type(self) is Cell:
            raise TypeError("`Cell` is abstract: build a cell with jaxrnn.rnn, jaxrnn.gru or jaxrnn.lstm.")
        if not isinstance(self.hidden_size, (int, np.integer)) or self.hidden_size < 1:
            raise ValueError(f"`hidden_size` must be a positive int; got {self.hidden_size!r}.")
        if not isinstance(self.proj_size, (int, np.integer)) or self.proj_size < 0:
            raise ValueError(f"`proj_size` must be a non-negative int; got {self.proj_size!r}.")
        if self.proj_size and not self.is_lstm:
            raise ValueError(f"`proj_size` is only supported by LSTM cells; got kind={self.kind!r}.")
        if self.proj_size >= self.hidden_size and self.proj_size:
            raise ValueError(
                f"`proj_size` must be smaller than `hidden_size` ({self.hidden_size}); got {self.proj_size}."
            )
        if self.init_scheme not in _INITS:
            raise ValueError(f"`init` must be one of {_INITS}; got {self.init_scheme!r}.")
        dt = jnp.dtype(self.compute_dtype)
        if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            raise TypeError(f"`compute_dtype` must be float32, bfloat16 or float16; got {dt}.")
        object.__setattr__(self, "compute_dtype", dt)

    # ------------------------------------------------------------------ sizes
    @property
    def kind(self) -> str:
        """``"rnn_tanh"``, ``"rnn_relu"``, ``"gru"`` or ``"lstm"``."""
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        """Size of ``h`` and of each output ``y``: ``proj_size`` or ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def __repr__(self) -> str:
        extra = ""
        if self.proj_size:
            extra += f", proj_size={self.proj_size}"
        if not self.bias:
            extra += ", bias=False"
        if self.init_scheme != "uniform":
            extra += f", init={self.init_scheme!r}"
        if self.forget_bias is not None:
            extra += f", forget_bias={self.forget_bias}"
        if self.compute_dtype != jnp.float32:
            extra += f", compute_dtype={self.compute_dtype.name}"
        return f"{self.kind}(hidden_size={self.hidden_size}{extra})"

    # ------------------------------------------------------------------- init
    def init(self, key: Array, input_size: int, dtype=jnp.float32):
        """Initial parameters for inputs of size ``input_size``.

        Args:
          key: a ``jax.random`` key.
          input_size: ``I``, the size of each input vector.
          dtype: parameter dtype (float32 by default).

        Returns:
          An ``RNNParams``, ``GRUParams`` or ``LSTMParams`` in PyTorch layout.
        """
        if not isinstance(input_size, (int, np.integer)) or input_size < 1:
            raise ValueError(f"`input_size` must be a positive int; got {input_size!r}.")
        H, G, Ho = self.hidden_size, self.num_gates, self.output_size
        k_ih, k_hh, k_bi, k_bh, k_hr = jax.random.split(key, 5)
        if self.init_scheme == "uniform":
            bound = 1.0 / math.sqrt(H)
            u = lambda k, shape: jax.random.uniform(k, shape, dtype, -bound, bound)
            w_ih, w_hh = u(k_ih, (G * H, input_size)), u(k_hh, (G * H, Ho))
            b_ih, b_hh = u(k_bi, (G * H,)), u(k_bh, (G * H,))
            w_hr = u(k_hr, (Ho, H)) if self.proj_size else None
        else:
            glorot = jax.nn.initializers.glorot_uniform()
            orth = jax.nn.initializers.orthogonal()
            # Per-gate blocks, so each gate's recurrent matrix is itself orthogonal.
            w_ih = jnp.concatenate(
                [glorot(k, (H, input_size), dtype) for k in jax.random.split(k_ih, G)], axis=0
            )
            w_hh = jnp.concatenate([orth(k, (H, Ho), dtype) for k in jax.random.split(k_hh, G)], axis=0)
            b_ih, b_hh = jnp.zeros((G * H,), dtype), jnp.zeros((G * H,), dtype)
            w_hr = glorot(k_hr, (Ho, H), dtype) if self.proj_size else None
        return self._make_params(w_ih, w_hh, b_ih, b_hh, w_hr)

    def _make_params(self, w_ih, w_hh, b_ih, b_hh, w_hr):
        if not self.bias:
            b_ih = b_hh = None
        return self.params_type(w_ih, w_hh, b_ih, b_hh)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32):
        """Zero state for the given batch shape (``()`` for a single sequence)."""
        return self.from_carry((jnp.zeros(tuple(batch_shape) + (self.output_size,), dtype),))

    # The state as a tuple of arrays (the fused path's carry) and back.
    def to_carry(self, state) -> tuple:
        return (state,)

    def from_carry(self, carry: tuple):
        return carry[0]

    def _state_parts(self, h, name):
        """``(label, array, feature size)`` for each part of a state ``h``."""
        if isinstance(h, (tuple, list)):
            raise TypeError(f"`{name}` must be a single array for a {self.kind} cell; got {_describe(h)}.")
        return ((name, h, self.output_size),)

    # ------------------------------------------------------------- checking
    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this cell; returns the input size ``I``."""
        ptype = self.params_type
        if not isinstance(params, ptype):
            raise TypeError(
                f"`{name}` must be {ptype.__name__} for a {self!r} cell; got {type(params).__name__}."
            )
        H, G, Ho = self.hidden_size, self.num_gates, self.output_size
        w_ih = params.w_ih
        if getattr(w_ih, "ndim", None) != 2 or w_ih.shape[0] != G * H:
            raise ValueError(
                f"`{name}.w_ih` must have shape [{G * H}, input_size] for {self!r}; "
                f"got {getattr(w_ih, 'shape', type(w_ih))}."
            )
        expected = {"w_hh": (G * H, Ho)}
        if self.bias:
            expected.update(b_ih=(G * H,), b_hh=(G * H,))
        if self.proj_size:
            expected["w_hr"] = (Ho, H)
        for field, shape in expected.items():
            value = getattr(params, field)
            got = getattr(value, "shape", None if value is None else type(value))
            if got != shape:
                raise ValueError(f"`{name}.{field}` must have shape {list(shape)} for {self!r}; got {got}.")
        absent = []
        if not self.bias:
            absent += ["b_ih", "b_hh"]
        if self.is_lstm and not self.proj_size:
            absent += ["w_hr"]
        for field in absent:
            if getattr(params, field) is not None:
                raise ValueError(f"`{name}.{field}` must be None for {self!r}; got an array.")
        for field in params._fields:
            value = getattr(params, field)
            if value is not None and not jnp.issubdtype(value.dtype, jnp.floating):
                raise TypeError(f"`{name}.{field}` must be a floating-point array; got dtype {value.dtype}.")
        return int(w_ih.shape[1])

    def check_state(self, h, batch_shape: tuple, name: str = "h", dtype=jnp.float32):
        """Validates a state (or None, zeros of ``dtype``) for ``batch_shape``; returns it
        as float arrays."""
        if h is None:
            return self.initial_state(batch_shape, dtype)
        out = []
        for label, arr, size in self._state_parts(h, name):
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                raise TypeError(f"`{label}` must be an array; got {type(arr).__name__}.")
            want = tuple(batch_shape) + (size,)
            if tuple(arr.shape) != want:
                raise ValueError(f"`{label}` must have shape {list(want)}; got {tuple(arr.shape)}.")
            if not jnp.issubdtype(arr.dtype, jnp.floating):
                raise TypeError(f"`{label}` must be a floating-point array; got dtype {arr.dtype}.")
            out.append(jnp.asarray(arr))
        return self.from_carry(tuple(out))

    # ---------------------------------------------------------- computation
    def project(self, params, xs: Array) -> Array:
        """Input projection for every gate, ``xs @ w_ih.T`` plus the foldable biases.

        Works on any leading shape: ``[..., I] -> [..., G*H]``. For LSTM and RNN both
        biases are folded in here; for GRU only ``b_ih`` (``b_hh`` stays inside
        ``r * (W_hn h + b_hn)``: see :meth:`recurrent_bias`).
        """
        gx = _matmul(xs, params.w_ih, self.compute_dtype)
        b = self.input_bias(params)
        return gx if b is None else gx + b.astype(acc_dtype(b.dtype))

    def input_bias(self, params) -> Optional[Array]:
        """The biases that can be added to the input projection: ``b_ih + b_hh`` (only
        ``b_ih`` for GRU; None without biases)."""
        return params.b_ih + params.b_hh if self.bias else None

    def recurrent_bias(self, params) -> Optional[Array]:
        """The bias added to ``h @ w_hh.T`` inside the loop (GRU only)."""
        return None

    def pointwise(self, gx: Array, a: Optional[Array], carry: tuple, *, save: bool = False, apart=None):
        """Gate arithmetic of one step, given both pre-activations.

        Args:
          gx: projected input ``[N, G*H]``.
          a: recurrent term ``h @ w_hh.T (+ b_hh for GRU)``, ``[N, G*H]``; for
            RNN and LSTM it may be None when ``gx`` already holds the sum.
          carry: the previous state as a tuple, ``(h,)`` or ``(h, c)``.
          save: also return the activations that :meth:`pointwise_bwd` needs.
          apart: None, or ``apart(fn)`` computing ``fn()`` as a computation of its own,
            which XLA does not fuse with the rest: the fused path passes it where
            :func:`jaxrnn.tuning.separates_nonlinearities` says so, and a cell whose
            arithmetic takes two nonlinearities in sequence computes the first in it.

        Returns:
          ``(r,)`` or ``(r, c_new)``: the new state before the LSTM projection
          (``r`` is the new ``h`` for every cell but a projected LSTM); with
          ``save=True``, the pair ``(new, saved)``.
        """
        raise NotImplementedError

    def pointwise_bwd(self, saved: tuple, carry: tuple, new: tuple, g_new: tuple):
        """Backward of :meth:`pointwise` from its saved activations.

        Args:
          saved: the activations :meth:`pointwise` returned with ``save=True``.
          carry: the previous state, as passed to :meth:`pointwise`.
          new: the new state :meth:`pointwise` returned (``r`` is only read when
            :attr:`bwd_reads_output`, ``c_new`` for LSTM); entries that are not read may be None.
          g_new: cotangents of the new state, ``(g_r,)`` or ``(g_r, g_c)``.

        Returns:
          ``(dgx, da, dcarry)``: cotangents of ``gx`` and ``a`` (``[N, G*H]``; the same
          array for RNN and LSTM) and of the previous state's parts that enter the
          gate arithmetic directly (None where a part does not).
        """
        raise NotImplementedError

    def recurrent_cotangent(self, dgx: Array, saved: tuple) -> Array:
        """The cotangent of ``a = h @ w_hh.T (+ b)`` for every step at once, from that of
        ``gx`` and the saved activations: the same array unless the cell scales part of
        ``a`` inside the gate arithmetic (GRU)."""
        return dgx

    def step(self, params, h, x: Array):
        """One time step, ``(params, h, x) -> (h, y)``; the equations are in the cell's
        class docstring (:class:`RNNCell`, :class:`GRUCell`, :class:`LSTMCell`).

        Args:
          params: this cell's params.
          h: the state, ``[*batch, H_out]`` (an ``(h, c)`` pair for LSTM), or None
            for zeros.
          x: the input, ``[*batch, input_size]``.

        Returns:
          ``(h, y)``: the new state and the output ``y`` (equal to the new ``h``).
        """
        input_size = self.check_params(params)
        x = check_input(x, input_size, min_rank=1, name="x")
        batch_shape = tuple(x.shape[:-1])
        state = self.check_state(h, batch_shape, dtype=state_dtype(x, params))
        return self.update(params, state, self.project(params, x))

    def update(self, params, h, gx: Array):
        """One step from the projected input ``gx = project(params, x)``: ``(h, y)`` (no
        checks). :func:`jaxrnn.unroll`'s generic path scans this with the projection
        hoisted, as for any cell with ``project`` and ``update``."""
        new_carry, y = self.cell_update(params, gx, self.to_carry(h))
        return self.from_carry(new_carry), y

    def cell_update(self, params, gx: Array, carry: tuple):
        """One step from projected input ``gx``: returns ``(new_carry, y)`` (no checks)."""
        a = _matmul(carry[0], params.w_hh, self.compute_dtype)
        b = self.recurrent_bias(params)
        if b is not None:
            a = a + b.astype(acc_dtype(b.dtype))
        new = self.pointwise(gx, a, carry)
        h = new[0]
        if self.proj_size:
            h = _matmul(h, params.w_hr, self.compute_dtype)
        new = (h,) + tuple(new[1:])
        new = tuple(n.astype(c.dtype) for n, c in zip(new, carry))
        return new, new[0]


@dataclasses.dataclass(frozen=True, repr=False)
class RNNCell(Cell):
    """A vanilla (Elman) RNN cell, ``torch.nn.RNN``'s equations::

        h' = act(W_ih x + b_ih + W_hh h + b_hh),    act = tanh or relu

    Params: :class:`RNNParams` (``G = 1``).
    """

    nonlinearity: str = "tanh"

    num_gates: ClassVar[int] = 1
    fused: ClassVar[bool] = True
    params_type: ClassVar[type] = RNNParams
    bwd_reads_output: ClassVar[bool] = True

    def __post_init__(self):
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"`nonlinearity` must be 'tanh' or 'relu'; got {self.nonlinearity!r}.")
        super().__post_init__()

    @property
    def kind(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def pointwise(self, gx, a, carry, *, save=False, apart=None):
        s = gx if a is None else gx + a
        r = jnp.tanh(s) if self.nonlinearity == "tanh" else jax.nn.relu(s)
        return ((r,), ()) if save else (r,)

    def pointwise_bwd(self, saved, carry, new, g_new):
        if self.nonlinearity == "tanh":
            r = new[0]
            d = g_new[0] * (1.0 - r * r)
        else:
            d = jnp.where(new[0] > 0, g_new[0], 0.0)
        return d, d, (None,)

    def jacobian_diagonal(self, params, h, x: Array) -> Array:
        """The diagonal of ``dh'/dh`` of :meth:`step` (no checks), ``[*batch, H]``:
        ``act'(s) * diag(W_hh)``. Newton evaluation over time uses it (:mod:`jaxrnn.newton`)."""
        a = _matmul(h, params.w_hh, self.compute_dtype)
        (r,), _ = self.pointwise(self.project(params, x), a, (h,), save=True)
        w = jnp.diagonal(params.w_hh).astype(r.dtype)
        d = (1.0 - r * r) * w if self.nonlinearity == "tanh" else jnp.where(r > 0, w, 0.0)
        return d.astype(h.dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class GRUCell(Cell):
    """A GRU cell with PyTorch's equations (``b_hn`` inside ``r * (W_hn h + b_hn)``), with
    ``σ`` the logistic sigmoid and ``*`` elementwise::

        r = σ(W_ir x + b_ir + W_hr h + b_hr)
        z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Params: :class:`GRUParams` (``G = 3``, gates r, z, n).
    """

    num_gates: ClassVar[int] = 3
    fused: ClassVar[bool] = True
    params_type: ClassVar[type] = GRUParams
    adds_recurrent_to_input: ClassVar[bool] = False
    saves_gate_buffer: ClassVar[bool] = True

    @property
    def kind(self) -> str:
        return "gru"

    def input_bias(self, params):
        return params.b_ih if self.bias else None

    def recurrent_bias(self, params):
        return params.b_hh if self.bias else None

    def pointwise(self, gx, a, carry, *, save=False, apart=None):
        H = self.hidden_size
        gates = lambda: _sigmoid(gx[..., : 2 * H] + a[..., : 2 * H])
        rz = gates() if apart is None else apart(gates)
        r, z = rz[..., :H], rz[..., H:]
        a_n = a[..., 2 * H :]
        n = jnp.tanh(gx[..., 2 * H :] + r * a_n)
        new = (n + z * (carry[0] - n),)
        # Saved: the activations [r, z, n] as one [N, 3H] array shaped like gx (so that
        # it can overwrite gx in place, see jaxrnn.tuning.in_place), and W_hn h + b_hn.
        return (new, (jnp.concatenate([rz, n], axis=-1), a_n)) if save else new

    def pointwise_bwd(self, saved, carry, new, g_new):
        H = self.hidden_size
        act, a_n = saved
        rz, r, z, n = act[..., : 2 * H], act[..., :H], act[..., H : 2 * H], act[..., 2 * H :]
        (g,) = g_new
        dn = g * (1.0 - z) * (1.0 - n * n)
        drz = jnp.concatenate([dn * a_n, g * (carry[0] - n)], axis=-1) * (rz - rz * rz)
        dgx = jnp.concatenate([drz, dn], axis=-1)
        da = jnp.concatenate([drz, dn * r], axis=-1)
        return dgx, da, (g * z,)

    def recurrent_cotangent(self, dgx, saved):
        # d(a_n) = d(gx_n) * r; the other gates share gx's cotangent.
        H = self.hidden_size
        return jnp.concatenate([dgx[..., : 2 * H], dgx[..., 2 * H :] * saved[0][..., :H]], axis=-1)

    def jacobian_diagonal(self, params, h, x: Array) -> Array:
        """The diagonal of ``dh'/dh`` of :meth:`step` (no checks), ``[*batch, H]``, with
        ``w_r, w_z, w_n`` the diagonals of ``W_hr, W_hz, W_hn`` (:mod:`jaxrnn.newton` uses it)::

            z + (h - n) z (1 - z) w_z + (1 - z)(1 - n^2)(r w_n + (W_hn h + b_hn) r (1 - r) w_r)
        """
        H = self.hidden_size
        a = _matmul(h, params.w_hh, self.compute_dtype)
        if self.bias:
            a = a + params.b_hh.astype(a.dtype)
        _, (act, a_n) = self.pointwise(self.project(params, x), a, (h,), save=True)
        r, z, n = act[..., :H], act[..., H : 2 * H], act[..., 2 * H :]
        w_r, w_z, w_n = jnp.diagonal(params.w_hh.reshape(3, H, H), axis1=1, axis2=2).astype(n.dtype)
        d = z + (h - n) * (z - z * z) * w_z + (1.0 - z) * (1.0 - n * n) * (r * w_n + a_n * (r - r * r) * w_r)
        return d.astype(h.dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class LSTMCell(Cell):
    """An LSTM cell with PyTorch's equations (gates i, f, g, o), ``σ`` the logistic sigmoid::

        i, f, o = σ(W_i* x + b_i* + W_h* h + b_h*)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c' = f * c + i * g
        h' = o * tanh(c')              (then h' = W_hr h' with proj_size)

    Params: :class:`LSTMParams` (``G = 4``); state: :class:`LSTMState` ``(h, c)``.
    """

    num_gates: ClassVar[int] = 4
    fused: ClassVar[bool] = True
    params_type: ClassVar[type] = LSTMParams
    is_lstm: ClassVar[bool] = True
    saves_gate_buffer: ClassVar[bool] = True

    @property
    def kind(self) -> str:
        return "lstm"

    def _make_params(self, w_ih, w_hh, b_ih, b_hh, w_hr):
        H = self.hidden_size
        if self.forget_bias is not None:
            b_ih = b_ih.at[H : 2 * H].set(self.forget_bias)
            b_hh = b_hh.at[H : 2 * H].set(0.0)
        if not self.bias:
            b_ih = b_hh = None
        return LSTMParams(w_ih, w_hh, b_ih, b_hh, w_hr)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32):
        batch_shape = tuple(batch_shape)
        return LSTMState(jnp.zeros(batch_shape + (self.output_size,), dtype),
                         jnp.zeros(batch_shape + (self.hidden_size,), dtype))

    def to_carry(self, state) -> tuple:
        return tuple(state)

    def from_carry(self, carry: tuple):
        return LSTMState(*carry)

    def _state_parts(self, h, name):
        # Only an LSTMState: a bare pair could be in either order (flax's carry is (c, h)),
        # and with H == hidden_size both orders pass every shape check.
        if not isinstance(h, LSTMState):
            raise TypeError(
                f"`{name}` must be a jaxrnn.LSTMState(h, c) for an LSTM cell: the hidden state `h` "
                f"[*batch, {self.output_size}] first, then the cell state `c` [*batch, {self.hidden_size}] "
                f"(flax's carry is the other way round, (c, h)); got {_describe(h)}. "
                f"Wrap it as jaxrnn.LSTMState(h=..., c=...).")
        return ((f"{name}.h", h[0], self.output_size), (f"{name}.c", h[1], self.hidden_size))

    def pointwise(self, gx, a, carry, *, save=False, apart=None):
        H = self.hidden_size
        s = gx if a is None else gx + a
        # All four gate nonlinearities as one exp over the contiguous [N, 4H] block (see
        # _exp_gate): one vectorised pass instead of four sliced ones, ~3x faster gate
        # arithmetic on XLA:CPU.
        scale, lin, const = _lstm_gate_constants(H)
        act = _exp_gate(s * scale, lin, const)  # (apart: measured no faster, see jaxrnn.tuning)
        i, f, g, o = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
        c = f * carry[1] + i * g
        new = (o * jnp.tanh(c), c)
        return (new, (act,)) if save else new

    def pointwise_bwd(self, saved, carry, new, g_new):
        # Only tanh(c_new) is recomputed; the gate activations are saved.
        (act,) = saved
        tc = jnp.tanh(new[1])
        H = self.hidden_size
        i, f, g, o = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
        g_r, g_c = g_new
        dc = g_c + g_r * o * (1.0 - tc * tc)
        dact = jnp.concatenate([dc * g, dc * carry[1], dc * i, g_r * tc], axis=-1)
        # sigmoid' = a - a^2 (gates i, f, o), tanh' = 1 - a^2 (gate g), in one pass.
        one, lin = _lstm_deriv_constants(H)
        d = dact * (one + lin * act - act * act)
        return d, d, (None, dc * f)

    def jacobian_diagonal(self, params, h, x: Array) -> LSTMState:
        """The diagonals of ``dh'/dh`` and ``dc'/dc = f`` of :meth:`step` (no checks), as an
        :class:`LSTMState` (:mod:`jaxrnn.newton` uses it). With ``m = o tanh(c')`` and
        ``k_* = dm/ds_*`` per gate, ``dh'/dh = sum_* k_* diag(W_h*)``, or with a projection
        ``dh'_p/dh_p = sum_k W_hr[p, k] sum_* k_*[k] W_h*[k, p]``."""
        H = self.hidden_size
        (m, c_new), (act,) = self.pointwise(self.project(params, x), _matmul(h[0], params.w_hh, self.compute_dtype),
                                            tuple(h), save=True)
        i, f, g, o = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
        tc = jnp.tanh(c_new)
        dm_dc = o * (1.0 - tc * tc)
        k = ((i - i * i) * g * dm_dc, (f - f * f) * h[1] * dm_dc, (1.0 - g * g) * i * dm_dc, (o - o * o) * tc)
        blocks = params.w_hh.reshape(4, H, -1).astype(m.dtype)
        if self.proj_size:
            w_hr_t = params.w_hr.T.astype(m.dtype)
            dh = sum(kg @ (blk * w_hr_t) for kg, blk in zip(k, blocks))
        else:
            dh = sum(kg * jnp.diagonal(blk) for kg, blk in zip(k, blocks))
        return LSTMState(dh.astype(h[0].dtype), f.astype(h[1].dtype))


# The gate nonlinearities through one ``exp``, exact in float32 over the whole range.
#
# With ``e = exp(-x)``, ``sigmoid(x) = 1 / (1 + e)``, and with ``e = exp(-2x)``,
# ``tanh(x) = (1 - e) / (1 + e)``. ``1 + e`` never cancels and ``exp`` is relatively exact,
# so sigmoid is within a few float32 ulps, relatively, of the float64 value everywhere
# (sigmoid(-17) = 4.14e-8; the tanh form ``0.5 tanh(x/2) + 0.5``, which cancels for x < 0,
# gave 0 there), and so is tanh for |x| >= 1/4. Below that, ``1 - e`` cancels: tanh is
# exact to 6e-8 absolutely (half an ulp of 1), not relatively; the LSTM's gate g, the one
# place this tanh is used, enters ``c' = f c + i g`` beside terms of order 1. (An ``expm1``
# form, relatively exact for tanh too, was ~4% slower on the LSTM's forward pass, and a
# select to a Taylor polynomial near 0 ~25% slower, 5x on the backward pass: XLA:CPU does
# not vectorise it.) One transcendental operation per element, which XLA:CPU vectorises
# (a fusion with two is not: see jaxrnn.tuning), so the LSTM's four gates are one pass
# over their [N, 4H] block. The argument is capped at 88 (where float32 ``exp``
# overflows), which changes no value: sigmoid(-88) underflows anyway.
_EXP_CAP = 88.0


@jax.custom_jvp
def _exp_gate(z: Array, lin, const) -> Array:
    """``(lin * e + const - lin) / (1 + e)`` with ``e = exp(z)``: sigmoid(-z) for ``lin,
    const = 0, 1``, tanh(-z/2) for ``-1, 0``. Its derivative is taken from ``e``
    (``(2 lin - const) e / (1 + e)^2``), not from the output ``a`` as ``a - a^2``, which
    cancels where ``a`` is near 1."""
    e = jnp.exp(jnp.minimum(z, _EXP_CAP))
    return (lin * e + (const - lin)) / (1.0 + e)


@_exp_gate.defjvp
def _exp_gate_jvp(primals, tangents):
    z, lin, const = primals
    zc = jnp.minimum(z, _EXP_CAP)
    e = jnp.exp(zc)
    d = 1.0 + e
    # (e / d) / d: d * d overflows float32 from |z| ~ 44 on, while e / d <= 1.
    slope = jnp.where(z < _EXP_CAP, e / d, 0.0) / d * (2.0 * lin - const)
    return (lin * e + (const - lin)) / d, slope * tangents[0]


def _sigmoid(x: Array) -> Array:
    """The logistic sigmoid, exact over the float32 range (values and derivative), as
    ``1 / (1 + exp(-x))``."""
    return _exp_gate(-x, 0.0, 1.0)


def _lstm_gate_constants(H: int):
    """Per-column ``scale, lin, const`` so that :func:`_exp_gate` of ``s * scale`` is sigmoid
    on gates i, f, o and tanh on gate g."""
    f = lambda i, f_, g, o: np.concatenate([np.full(H, v, np.float32) for v in (i, f_, g, o)])
    return f(-1.0, -1.0, -2.0, -1.0), f(0.0, 0.0, -1.0, 0.0), f(1.0, 1.0, 0.0, 1.0)


def _lstm_deriv_constants(H: int):
    """Per-column ``one, lin`` so that ``one + lin * a - a * a`` is the derivative of each
    gate's nonlinearity in terms of its output ``a``."""
    ones, zeros = np.ones(H, np.float32), np.zeros(H, np.float32)
    return np.concatenate([zeros, zeros, ones, zeros]), np.concatenate([ones, ones, zeros, ones])


def acc_dtype(*dtypes) -> jnp.dtype:
    """The dtype of matrix-product results, gate arithmetic and zero states: float64 where
    any of ``dtypes`` is float64 (with ``jax_enable_x64``), float32 otherwise (float32,
    bfloat16 and float16 inputs)."""
    return jnp.dtype(jnp.float64 if any(jnp.dtype(d) == jnp.float64 for d in dtypes) else jnp.float32)


def state_dtype(x: Array, params) -> jnp.dtype:
    """The dtype of the zero state for ``h=None``: :func:`acc_dtype` of the input and every
    parameter (a cell's or a stack's)."""
    return acc_dtype(x.dtype, *(leaf.dtype for leaf in jax.tree.leaves(params)))


def operand_dtypes(x_dtype, w_dtype, compute_dtype):
    """``(operand dtype, result dtype)`` of a product: operands in ``compute_dtype``, or in
    float64 when the cell's default float32 meets a float64 operand."""
    acc = acc_dtype(x_dtype, w_dtype)
    return (acc if jnp.dtype(compute_dtype) == jnp.float32 else compute_dtype), acc


def operands(x: Array, w: Array, compute_dtype):
    """``(x, w, result dtype)`` for a product: ``x`` and ``w`` rounded to the operand dtype of
    :func:`operand_dtypes` (and, where the installed XLA:CPU has no kernel for that product,
    widened exactly to the result dtype: :func:`jaxrnn._compat.widen_low_precision_products`)."""
    cd, acc = operand_dtypes(x.dtype, w.dtype, compute_dtype)
    x, w = x.astype(cd), w.astype(cd)
    if _compat.widen_low_precision_products(cd, acc):
        x, w = x.astype(acc), w.astype(acc)
    return x, w, acc


def _matmul(x: Array, w: Array, compute_dtype) -> Array:
    """``x @ w.T`` with operands in ``compute_dtype`` and a float32 (float64) result."""
    x, w, acc = operands(x, w, compute_dtype)
    return jnp.einsum("...i,gi->...g", x, w, preferred_element_type=acc)


def _matmul_untransposed(x: Array, w: Array, compute_dtype) -> Array:
    """``x @ w`` with a float32 (float64) result. Writing it ``_matmul(x, w.T)`` inside a
    loop made XLA:CPU transpose ``w`` at every step (4x slower fwd+bwd at B=1)."""
    x, w, acc = operands(x, w, compute_dtype)
    return jnp.einsum("...g,gh->...h", x, w, preferred_element_type=acc)


def _describe(x) -> str:
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of length {len(x)}"
    if hasattr(x, "shape"):
        return f"an array of shape {tuple(x.shape)}"
    return type(x).__name__


def check_input(x, input_size: Optional[int], *, min_rank: int, name: str, feature_axes: int = 1) -> Array:
    """Checks an input array's type, rank and feature size (when known) at trace time."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = jnp.asarray(x)
        except TypeError:
            raise TypeError(f"`{name}` must be an array; got {type(x).__name__}.") from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array; got dtype {x.dtype} (cast it, e.g. x.astype(jnp.float32))."
        )
    if x.ndim < min_rank:
        what = f"…, {input_size}" if input_size is not None and feature_axes == 1 else f"…, T, {feature_axes} feature axes"
        raise ValueError(f"`{name}` must have rank >= {min_rank} ({what}); got shape {tuple(x.shape)}.")
    if input_size is not None and x.shape[-1] != input_size:
        raise ValueError(
            f"`{name}` must have feature size {input_size} (its last axis); got shape {tuple(x.shape)}."
        )
    return jnp.asarray(x)


def rnn(hidden_size: int, *, nonlinearity: str = "tanh", bias: bool = True, init: str = "uniform",
        compute_dtype=jnp.float32) -> Cell:
    """A vanilla (Elman) RNN cell, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Args:
      hidden_size: ``H``.
      nonlinearity: ``"tanh"`` or ``"relu"``.
      bias: whether to use ``b_ih`` and ``b_hh``.
      init: ``"uniform"`` (PyTorch's default) or ``"orthogonal"``.
      compute_dtype: float32 or bfloat16 matrix products.

    Example:
      >>> import jax, jaxrnn
      >>> cell = jaxrnn.rnn(8, nonlinearity="relu")
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> h, y = cell.step(params, None, jax.numpy.ones((2, 3)))
      >>> h.shape
      (2, 8)
    """
    return RNNCell(hidden_size, bias=bias, init_scheme=init, compute_dtype=compute_dtype, nonlinearity=nonlinearity)


def gru(hidden_size: int, *, bias: bool = True, init: str = "uniform", compute_dtype=jnp.float32) -> Cell:
    """A GRU cell with PyTorch's equations (``b_hn`` inside ``r * (W_hn h + b_hn)``).

    Example:
      >>> import jax, jaxrnn
      >>> cell = jaxrnn.gru(16)
      >>> params = cell.init(jax.random.key(0), input_size=4)
      >>> params.w_ih.shape, params.w_hh.shape
      ((48, 4), (48, 16))
    """
    return GRUCell(hidden_size, bias=bias, init_scheme=init, compute_dtype=compute_dtype)


def lstm(hidden_size: int, *, proj_size: int = 0, bias: bool = True, init: str = "uniform",
         forget_bias: Optional[float] = None, compute_dtype=jnp.float32) -> Cell:
    """An LSTM cell (gates i, f, g, o), optionally with a projection as in torch.

    Args:
      hidden_size: ``H``, the size of the cell state ``c``.
      proj_size: if > 0, ``h = W_hr (o * tanh(c))`` has this size.
      bias: whether to use ``b_ih`` and ``b_hh``.
      init: ``"uniform"`` (PyTorch's default) or ``"orthogonal"``.
      forget_bias: initial value of the forget-gate bias (e.g. 1.0), or None.
      compute_dtype: float32 or bfloat16 matrix products.

    Example:
      >>> import jax, jaxrnn
      >>> cell = jaxrnn.lstm(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> (h, c), y = cell.step(params, None, jax.numpy.ones((3,)))
      >>> h.shape, c.shape
      ((8,), (8,))
    """
    return LSTMCell(hidden_size, proj_size=proj_size, bias=bias, init_scheme=init, forget_bias=forget_bias,
                    compute_dtype=compute_dtype)
