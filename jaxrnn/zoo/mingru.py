"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs all we needed?", arXiv 2410.01201).

Both cells drop the recurrent weights of the GRU and LSTM: every gate depends on the
input only, so the state update is *affine* in ``h``, ``h' = a(x) * h + b(x)``, and a
whole sequence is one diagonal linear recurrence that :func:`jaxrnn.linear.linear_scan`
evaluates sequentially or in parallel over time (``parallel_unroll``). Layout (``G`` the
number of gate blocks, ``H`` the hidden size, ``I`` the input size; blocks stacked along
axis 0 as in PyTorch)::

    w_ih: [G*H, I]    b_ih: [G*H] (None when bias=False)
    minGRU:  G = 2, blocks (z, h~)        minLSTM: G = 3, blocks (f, i, h~)

The state is an array ``[*batch, H]`` and the output is the state.

Two forms compute the same values:

* the direct form (default): ``a`` and ``b`` in float32 (float64 under x64), one linear
  scan. It keeps float32 accuracy at any ``T``.
* the log-space form (``log_space=True``, as the paper's code): ``log a`` and ``log b``
  with ``log h_t = a*_t + logcumsumexp(log b - a*)_t``, ``a* = cumsum(log a)``, evaluated
  in chunks of ``chunk_size`` steps (64 by default) with a sequential scan of
  ``logaddexp`` across chunks. ``a*`` grows with the chunk length, and the difference
  ``a* + (... - a*)`` loses ``|a*|`` ulps: unchunked (``mode="associative"``, one chunk of
  ``T``) the paper's formula loses accuracy as ``T`` grows (issue 14 measured 7e-4
  relative at T=4,096 and 3e-3 at T=16,384 in float32). It needs ``g`` candidates (always
  positive) and a state ``>= 0`` (a negative initial state gives NaN), and does not take
  ``resets``.

``g`` is applied to the candidate only, never to a carried state: the state has one
representation in both forms (the bug in lucidrains/minGRU-pytorch#9 applied it to the
initial state of the log-space form).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxrnn.linear import DEFAULT_CHUNK_SIZE, MODES, linear_scan
from jaxrnn.zoo import _common as C

Array = jax.Array

__all__ = ["MinGRUParams", "MinLSTMParams", "MinGRUCell", "MinLSTMCell", "min_gru", "min_lstm", "g", "log_g"]

CANDIDATES = ("g", "linear")
_LOG_ZERO = -1e30  # log 0 as a finite number: no inf - inf, no NaN in gradients


def g(x: Array) -> Array:
    """Feng et al.'s positive candidate activation: ``x + 0.5`` for ``x >= 0``, ``σ(x)`` below."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
    """``log(g(x))``, computed without forming ``g(x)`` for negative ``x``."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


class MinGRUParams(NamedTuple):
    """minGRU parameters: ``w_ih [2H, I]``, ``b_ih [2H]`` (blocks z, h~)."""

    w_ih: Array
    b_ih: Optional[Array]


class MinLSTMParams(NamedTuple):
    """minLSTM parameters: ``w_ih [3H, I]``, ``b_ih [3H]`` (blocks f, i, h~)."""

    w_ih: Array
    b_ih: Optional[Array]


@dataclasses.dataclass(frozen=True)
class _MinCell:
    """What minGRU and minLSTM share: a linear projection, an affine state update."""

    hidden_size: int
    bias: bool = True
    candidate: str = "g"
    log_space: bool = False
    chunk_size: Optional[int] = None

    num_gates: ClassVar[int] = 0
    params_type: ClassVar[type] = tuple
    name: ClassVar[str] = ""

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", C.check_positive_int(self.hidden_size, "hidden_size"))
        if self.candidate not in CANDIDATES:
            raise ValueError(f"`candidate` must be one of {CANDIDATES}; got {self.candidate!r}.")
        if self.log_space and self.candidate != "g":
            raise ValueError("`log_space=True` needs positive candidates, `candidate='g'`; "
                             f"got candidate={self.candidate!r}.")
        if self.chunk_size is not None:
            object.__setattr__(self, "chunk_size", C.check_positive_int(self.chunk_size, "chunk_size"))

    @property
    def output_size(self) -> int:
        """Size of ``h`` and of each output: ``hidden_size``."""
        return self.hidden_size

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        if self.candidate != "g":
            extra += f", candidate={self.candidate!r}"
        if self.log_space:
            extra += ", log_space=True"
        if self.chunk_size is not None:
            extra += f", chunk_size={self.chunk_size}"
        return f"{self.name}(hidden_size={self.hidden_size}{extra})"

    def init(self, key: Array, input_size: int, dtype=jnp.float32):
        """``torch.nn.Linear``'s initialisation (the paper's): every entry ``U(±1/sqrt(I))``."""
        input_size = C.check_positive_int(input_size, "input_size")
        GH = self.num_gates * self.hidden_size
        k_w, k_b = jax.random.split(key)
        bound = 1.0 / math.sqrt(input_size)
        w = jax.random.uniform(k_w, (GH, input_size), dtype, -bound, bound)
        b = jax.random.uniform(k_b, (GH,), dtype, -bound, bound) if self.bias else None
        return self.params_type(w, b)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> Array:
        """Zero state ``[*batch_shape, H]``."""
        return jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype)

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` (called ``name`` in errors) against this cell; returns the input size ``I``."""
        C.check_params_type(params, self.params_type, self, name)
        GH = self.num_gates * self.hidden_size
        w = params.w_ih
        if getattr(w, "ndim", None) != 2 or w.shape[0] != GH:
            raise ValueError(f"`{name}.w_ih` must have shape [{GH}, input_size] for {self!r}; "
                             f"got {getattr(w, 'shape', type(w).__name__)}.")
        C.check_array(w, f"{name}.w_ih", w.shape)
        if self.bias:
            C.check_array(params.b_ih, f"{name}.b_ih", (GH,))
        elif params.b_ih is not None:
            raise ValueError(f"`{name}.b_ih` must be None for {self!r}; got an array.")
        return int(w.shape[1])

    def project(self, params, xs: Array) -> Array:
        """``W_ih x + b_ih`` for inputs of any leading shape: ``[..., I] -> [..., G*H]``."""
        gx = xs @ params.w_ih.T
        return gx if params.b_ih is None else gx + params.b_ih

    def _candidate(self, k: Array) -> Array:
        return g(k) if self.candidate == "g" else k

    def _split(self, gx: Array) -> list:
        H = self.hidden_size
        return [gx[..., i * H:(i + 1) * H] for i in range(self.num_gates)]

    def _blocks(self, params, xs: Array) -> list:
        """``project``'s gate blocks computed apart, not sliced out of one projected array:
        the parallel fwd+bwd took 0.80-0.93x the time (B4 T4096 H32, a loaded CPU)."""
        H = self.hidden_size
        out = []
        for i in range(self.num_gates):
            k = xs @ params.w_ih[i * H:(i + 1) * H].T
            out.append(k if params.b_ih is None else k + params.b_ih[i * H:(i + 1) * H])
        return out

    def coefficients(self, gx: Array):
        """``(a, b)`` of the update ``h' = a * h + b`` from the projected input ``[..., G*H]``."""
        return self._coefficients(*self._split(gx))

    def log_coefficients(self, gx: Array):
        """``(log a, log b)``, computed in log space (for ``log_space=True``)."""
        return self._log_coefficients(*self._split(gx))

    def update(self, params, h: Array, gx: Array):
        """One step from the projected input ``gx`` ``[*batch, G*H]``: ``(h, y)``, ``y = h``."""
        a, b = self.coefficients(gx)
        h_new = (a * h + b).astype(h.dtype)
        return h_new, h_new

    def step(self, params, h: Optional[Array], x: Array):
        """One time step, ``(params, h, x) -> (h, y)``, in the direct form (either form's values).

        Args:
          params: the cell's params.
          h: ``[*batch, H]``, or None for zeros.
          x: ``[*batch, input_size]``.
        """
        x = C.check_input(x, self.check_params(params))
        batch_shape = tuple(x.shape[:-1])
        if h is None:
            h = self.initial_state(batch_shape, C.zero_state_dtype(x, params))
        C.check_state_parts([("h", h, (self.hidden_size,))], batch_shape)
        return self.update(params, h, self.project(params, x))

    def parallel_unroll(self, params, h: Array, xs: Array, *, seq_lengths: Optional[Array] = None,
                        resets: Optional[Array] = None, reset_state: Optional[Array] = None, reverse: bool = False,
                        mode: str = "associative", chunk_size: Optional[int] = None):
        """The whole sequence as one linear scan: ``(h, ys)``, time-major.

        Args:
          params: the cell's params.
          h: initial state ``[*batch, H]`` (not None).
          xs: ``[T, *batch, input_size]``.
          seq_lengths: ``[*batch]`` int32 or None. resets: ``[T, *batch]`` bool or None.
          reset_state: ``[*batch, H]`` or None for zeros. reverse: as in :func:`jaxrnn.unroll`.
          mode: ``"sequential"``, ``"associative"`` or ``"chunked"`` (of
            :func:`jaxrnn.linear.linear_scan`). In the log-space form, ``"associative"`` is
            the paper's formula over all ``T`` steps at once, ``"chunked"`` the same per chunk.
          chunk_size: steps per chunk; None for the cell's ``chunk_size`` or 64.

        Returns:
          ``(h, ys)``: the state at each sequence's true length and ``ys`` ``[T, *batch, H]``,
          zero past each length.
        """
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        blocks = self._blocks(params, xs)
        if self.log_space and mode != "sequential":
            if resets is not None:
                raise ValueError(f"`resets` are not supported by the log-space form of {self!r}; "
                                 "use log_space=False (the direct form).")
            T = xs.shape[0]
            K = T if mode == "associative" else (chunk_size or DEFAULT_CHUNK_SIZE)
            log_a, log_b = self._log_coefficients(*blocks)
            return _log_space_scan(log_a, log_b, h, seq_lengths, reverse, max(1, min(K, T)))
        a, b = self._coefficients(*blocks)
        return linear_scan(a, b, h, seq_lengths=seq_lengths, resets=resets, reset_state=reset_state,
                           reverse=reverse, time_major=True, mode=mode, chunk_size=chunk_size)


@dataclasses.dataclass(frozen=True, repr=False)
class MinGRUCell(_MinCell):
    """minGRU (build it with :func:`min_gru`). Equations, ``σ`` the logistic sigmoid::

        z  = σ(W_z x + b_z)
        h~ = g(W_h x + b_h)          (g: Feng et al.'s positive activation; identity with candidate="linear")
        h' = (1 - z) * h + z * h~,   y = h'

    so ``a = 1 - z = σ(-(W_z x + b_z))`` and ``b = z * h~``. In log space:
    ``log a = -softplus(k_z)``, ``log b = -softplus(-k_z) + log g(k_h)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn.zoo.mingru import min_gru
      >>> cell = min_gru(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> h, y = cell.step(params, None, jnp.ones((2, 3)))
      >>> h.shape, params.w_ih.shape
      ((2, 8), (16, 3))
    """

    num_gates: ClassVar[int] = 2
    params_type: ClassVar[type] = MinGRUParams
    name: ClassVar[str] = "min_gru"

    def _coefficients(self, k_z, k_h):
        return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * self._candidate(k_h)

    def _log_coefficients(self, k_z, k_h):
        return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h)


@dataclasses.dataclass(frozen=True, repr=False)
class MinLSTMCell(_MinCell):
    """minLSTM (build it with :func:`min_lstm`), with the paper's length-independent
    normalisation of the gates. Equations, ``σ`` the logistic sigmoid::

        f  = σ(W_f x + b_f),   i = σ(W_i x + b_i)
        f' = f / (f + i),      i' = i / (f + i)
        h~ = g(W_h x + b_h)
        h' = f' * h + i' * h~,   y = h'

    so ``a = f'`` and ``b = i' * h~``. In log space, with ``d = softplus(-k_f) - softplus(-k_i)``:
    ``log a = -softplus(d)``, ``log b = -softplus(-d) + log g(k_h)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn.zoo.mingru import min_lstm
      >>> cell = min_lstm(8, log_space=True)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> xs = jnp.ones((5, 2, 3))                                  # [T, B, I]
      >>> h, ys = cell.parallel_unroll(params, cell.initial_state((2,)), xs, mode="chunked")
      >>> h2, ys2 = cell.parallel_unroll(params, cell.initial_state((2,)), xs, mode="sequential")
      >>> ys.shape, bool(jnp.allclose(ys, ys2, atol=1e-5))
      ((5, 2, 8), True)
    """

    num_gates: ClassVar[int] = 3
    params_type: ClassVar[type] = MinLSTMParams
    name: ClassVar[str] = "min_lstm"

    def _coefficients(self, k_f, k_i, k_h):
        f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
        total = f + i
        return f / total, i / total * self._candidate(k_h)

    def _log_coefficients(self, k_f, k_i, k_h):
        d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(k_h)


def _safe_log(h: Array) -> Array:
    """``log h`` with ``log 0`` as a large finite negative number (finite gradients);
    negative entries give NaN, as they have no logarithm."""
    zero = h == 0
    return jnp.where(zero, _LOG_ZERO, jnp.log(jnp.where(zero, 1.0, h)))


def _log_space_scan(log_a: Array, log_b: Array, h0: Array, lengths: Optional[Array], reverse: bool, K: int):
    """Feng et al.'s log-space evaluation in chunks of ``K`` steps (time-major ``[T, *batch, H]``)."""
    T = log_a.shape[0]
    dtype = jnp.float64 if jnp.float64 in (log_a.dtype, h0.dtype) else jnp.float32
    log_a, log_b = log_a.astype(dtype), log_b.astype(dtype)
    log_h0 = _safe_log(h0.astype(dtype))
    if T == 0:
        return h0, jnp.zeros(log_b.shape, dtype)
    valid = None
    if lengths is not None:  # past a length: the identity step, a = 1, b = 0
        t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * (log_a.ndim - 1))
        valid = t < lengths[..., None]
        log_a = jnp.where(valid, log_a, 0.0)
        log_b = jnp.where(valid, log_b, _LOG_ZERO)
    if reverse:
        log_a, log_b = jnp.flip(log_a, 0), jnp.flip(log_b, 0)
    n_chunks = -(-T // K)
    pad = n_chunks * K - T
    if pad:
        widths = ((0, pad),) + ((0, 0),) * (log_a.ndim - 1)
        log_a = jnp.pad(log_a, widths)
        log_b = jnp.pad(log_b, widths, constant_values=_LOG_ZERO)
    rest = log_a.shape[1:]
    log_a = log_a.reshape((n_chunks, K) + rest)
    log_b = log_b.reshape((n_chunks, K) + rest)
    a_star = jnp.cumsum(log_a, axis=1)
    log_B = a_star + jax.lax.cumlogsumexp(log_b - a_star, axis=1)  # each chunk from a zero state

    def across(log_h, ends):
        A_end, B_end = ends
        return jnp.logaddexp(A_end + log_h, B_end), log_h

    _, log_h_in = jax.lax.scan(across, log_h0, (a_star[:, -1], log_B[:, -1]))
    log_h = jnp.logaddexp(a_star + log_h_in[:, None], log_B).reshape((n_chunks * K,) + rest)[:T]
    hs = jnp.exp(log_h)
    if reverse:
        hs = jnp.flip(hs, 0)
    h_last = hs[0] if reverse else hs[-1]
    if lengths is not None:
        h_last = jnp.where(lengths[..., None] > 0, h_last, h0.astype(dtype))  # exactly h0, not exp(log h0)
        hs = jnp.where(valid, hs, 0.0)
    return h_last, hs


def min_gru(hidden_size: int, *, bias: bool = True, candidate: str = "g", log_space: bool = False,
            chunk_size: Optional[int] = None) -> MinGRUCell:
    """A minGRU cell; see :class:`MinGRUCell` and the module docstring.

    Args:
      hidden_size: ``H``.
      bias: whether the projection has a bias.
      candidate: ``"g"`` (the paper's positive activation on the candidate) or
        ``"linear"`` (no activation; direct form only).
      log_space: evaluate sequences in parallel with the paper's log-space formula,
        per chunk.
      chunk_size: default chunk length of the parallel forms (None: 64).
    """
    return MinGRUCell(hidden_size, bias=bias, candidate=candidate, log_space=log_space, chunk_size=chunk_size)


def min_lstm(hidden_size: int, *, bias: bool = True, candidate: str = "g", log_space: bool = False,
             chunk_size: Optional[int] = None) -> MinLSTMCell:
    """A minLSTM cell; see :class:`MinLSTMCell` and the module docstring (same arguments as
    :func:`min_gru`)."""
    return MinLSTMCell(hidden_size, bias=bias, candidate=candidate, log_space=log_space, chunk_size=chunk_size)
