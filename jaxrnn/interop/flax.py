"""Weights in and out of flax's own ``LSTMCell``, ``OptimizedLSTMCell`` and ``GRUCell``.

Both flax APIs are covered: linen cells (their param dicts) and NNX cells (the modules).
flax is imported lazily, by the functions that need it::

    cell, params = from_flax(nnx_cell)                 # or from_flax(linen_param_dict)
    h, ys = jaxrnn.unroll(cell, params, carry_from_flax(carry), xs)   # flax's outputs
    linen_dict = to_flax_linen(params)                 # {"ii": {"kernel": ...}, ...}
    nnx_cell = to_flax_nnx(params)                     # an nnx.OptimizedLSTMCell / nnx.GRUCell

Layouts. jaxrnn (PyTorch) keeps ``w_ih: [G*H, I]``, ``w_hh: [G*H, H]`` and two biases;
flax keeps ``kernel: [in, out]`` per dense layer (``w.T``) and one bias where its
equations have one. Gate orders are the same (LSTM i, f, g, o; GRU r, z, n)::

    linen LSTMCell / OptimizedLSTMCell   ii if ig io: kernel [I, H]     (no bias)
    (same param names for both)          hi hf hg ho: kernel [H, H], bias [H]
    nnx.LSTMCell                         ii if_ ig io / hi hf hg ho, as above
    nnx.OptimizedLSTMCell                dense_i: kernel [I, 4H];  dense_h: kernel [H, 4H], bias [4H]
    linen GRUCell                        ir iz in: kernel [I, H], bias [H]
                                         hr hz: kernel [H, H] (no bias);  hn: kernel [H, H], bias [H]
    nnx.GRUCell                          dense_i: kernel [I, 3H], bias [3H];  dense_h: kernel [H, 3H] (no bias)

Equations. flax's LSTM is PyTorch's with one bias (``b_ih = 0``, ``b_hh`` = the ``h*``
biases; back to flax, ``b_ih + b_hh``). flax's carry is ``(c, h)``, jaxrnn's
``LSTMState(h, c)``: :func:`carry_from_flax` / :func:`carry_to_flax` swap them. Linen's
GRU is PyTorch's exactly, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` with ``b_hn``
the ``hn`` bias and ``b_hr = b_hz = 0``. NNX's ``GRUCell`` has no recurrent bias at all,
``n = tanh(W_in x + b_in + r * (W_hn h))`` (its docstring writes a ``b_hn`` its code does
not have): it is jaxrnn's GRU with ``b_hh = 0``, and :func:`to_flax_nnx` refuses a GRU
whose ``b_hn`` is not zero (``b_hr``, ``b_hz`` fold into the input bias). The conversions
reproduce flax's outputs to float32 rounding (the sums are only grouped differently).

Only flax's default nonlinearities (``gate_fn=sigmoid``, ``activation_fn=tanh``) have a
jaxrnn counterpart: an NNX cell with others is refused; a linen param dict cannot say,
so it is assumed to come from a default cell.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import GRUParams, LSTMParams, LSTMState, gru, lstm

__all__ = ["from_flax", "to_flax_linen", "to_flax_nnx", "carry_from_flax", "carry_to_flax"]

_LSTM_KEYS = ("i", "f", "g", "o")
_GRU_KEYS = ("r", "z", "n")


def _value(x):
    """An array from an array or an ``nnx.Variable``."""
    from flax import nnx

    if not isinstance(x, nnx.Variable):
        return x
    return x.get_value() if hasattr(x, "get_value") else x.value


def _cat(arrays, axis):
    return jnp.concatenate([jnp.asarray(a) for a in arrays], axis=axis)


def _zeros_like_bias(w_hh):
    return jnp.zeros((w_hh.shape[0],), w_hh.dtype)


# ------------------------------------------------------------------------- flax -> jaxrnn


def from_flax(source: Any):
    """A flax LSTM or GRU cell's weights as a jaxrnn cell and params.

    Args:
      source: an NNX ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell`` or ``nnx.GRUCell``
        module; or a linen ``LSTMCell``/``OptimizedLSTMCell``/``GRUCell`` param dict
        (``variables["params"]`` of the cell, or the variables themselves), e.g.
        ``variables["params"]["cell"]`` of an ``nn.RNN``.

    Returns:
      ``(cell, params)``: ``jaxrnn.lstm(H)`` with ``LSTMParams`` or ``jaxrnn.gru(H)``
      with ``GRUParams``, giving flax's outputs (carry order aside: see
      :func:`carry_from_flax`).

    Raises:
      TypeError: ``source`` is neither.
      ValueError: an NNX cell with a non-default ``gate_fn``/``activation_fn``, or a
        param dict with missing entries.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from flax import nnx
      >>> from jaxrnn.interop.flax import from_flax, carry_from_flax
      >>> fcell = nnx.OptimizedLSTMCell(3, 8, rngs=nnx.Rngs(0))
      >>> cell, params = from_flax(fcell)
      >>> carry = fcell.initialize_carry((2, 3), rngs=nnx.Rngs(1))
      >>> (c, h), y = fcell(carry, jnp.ones((2, 3)))
      >>> state, y2 = cell.step(params, carry_from_flax(carry), jnp.ones((2, 3)))
      >>> bool(jnp.allclose(y, y2, atol=1e-6)), bool(jnp.allclose(c, state.c, atol=1e-6))
      (True, True)
    """
    if isinstance(source, dict) or _is_frozen_dict(source):
        return _from_linen(dict(source))
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        nnx = None
    if nnx is not None and isinstance(source, (nnx.LSTMCell, nnx.OptimizedLSTMCell, nnx.GRUCell)):
        return _from_nnx(source, nnx)
    raise TypeError(
        "`source` must be an nnx.LSTMCell, nnx.OptimizedLSTMCell or nnx.GRUCell module, or a linen "
        f"LSTMCell/OptimizedLSTMCell/GRUCell param dict; got {type(source).__name__}."
    )


def _is_frozen_dict(x) -> bool:
    return type(x).__name__ == "FrozenDict"


def _check_nonlinearities(module) -> None:
    from flax.nnx.nn import activations

    for name, default in (("gate_fn", activations.sigmoid), ("activation_fn", activations.tanh)):
        fn = getattr(module, name, default)
        if fn is not default:
            raise ValueError(
                f"`source.{name}` must be flax's default ({default.__name__}) to convert to jaxrnn; "
                f"got {getattr(fn, '__name__', fn)!r}."
            )


def _from_nnx(module, nnx):
    _check_nonlinearities(module)
    if isinstance(module, nnx.OptimizedLSTMCell):
        w_ih = _value(module.dense_i.kernel).T
        w_hh = _value(module.dense_h.kernel).T
        b_hh = _value(module.dense_h.bias)
        return lstm(w_hh.shape[1]), LSTMParams(w_ih, w_hh, jnp.zeros_like(b_hh), b_hh, None)
    if isinstance(module, nnx.LSTMCell):
        names_i = ("ii", "if_", "ig", "io")
        names_h = ("hi", "hf", "hg", "ho")
        w_ih = _cat([_value(getattr(module, n).kernel) for n in names_i], axis=1).T
        w_hh = _cat([_value(getattr(module, n).kernel) for n in names_h], axis=1).T
        b_hh = _cat([_value(getattr(module, n).bias) for n in names_h], axis=0)
        return lstm(w_hh.shape[1]), LSTMParams(w_ih, w_hh, jnp.zeros_like(b_hh), b_hh, None)
    w_ih = _value(module.dense_i.kernel).T
    b_ih = _value(module.dense_i.bias)
    w_hh = _value(module.dense_h.kernel).T
    return gru(w_hh.shape[1]), GRUParams(w_ih, w_hh, b_ih, jnp.zeros_like(b_ih))


def _from_linen(tree: dict):
    if "params" in tree and not any(k in tree for k in ("ii", "ir")):
        tree = dict(tree["params"])
    keys = set(tree)
    lstm_keys = {p + g for p in "ih" for g in _LSTM_KEYS}
    gru_keys = {p + g for p in "ih" for g in _GRU_KEYS}
    if keys == lstm_keys:
        w_ih = _cat([tree["i" + g]["kernel"] for g in _LSTM_KEYS], axis=1).T
        w_hh = _cat([tree["h" + g]["kernel"] for g in _LSTM_KEYS], axis=1).T
        b_hh = _cat([tree["h" + g]["bias"] for g in _LSTM_KEYS], axis=0)
        return lstm(w_hh.shape[1]), LSTMParams(w_ih, w_hh, jnp.zeros_like(b_hh), b_hh, None)
    if keys == gru_keys:
        w_ih = _cat([tree["i" + g]["kernel"] for g in _GRU_KEYS], axis=1).T
        b_ih = _cat([tree["i" + g]["bias"] for g in _GRU_KEYS], axis=0)
        w_hh = _cat([tree["h" + g]["kernel"] for g in _GRU_KEYS], axis=1).T
        b_hn = jnp.asarray(tree["hn"]["bias"])
        b_hh = jnp.concatenate([jnp.zeros((2 * b_hn.shape[0],), b_hn.dtype), b_hn])
        return gru(w_hh.shape[1]), GRUParams(w_ih, w_hh, b_ih, b_hh)
    raise ValueError(
        "`source` must be a linen LSTMCell/OptimizedLSTMCell param dict (keys "
        f"{sorted(lstm_keys)}) or a GRUCell one (keys {sorted(gru_keys)}); got keys {sorted(keys)}."
    )


# ------------------------------------------------------------------------- jaxrnn -> flax


def _check_params(params, name="params"):
    if isinstance(params, LSTMParams):
        if params.w_hr is not None:
            raise ValueError(f"`{name}.w_hr`: flax's LSTM cells have no projection (proj_size); got an array.")
        return "lstm"
    if isinstance(params, GRUParams):
        return "gru"
    raise TypeError(f"`{name}` must be LSTMParams or GRUParams (jaxrnn.lstm / jaxrnn.gru); got {type(params).__name__}.")


def _biases(params):
    b_ih = params.b_ih if params.b_ih is not None else _zeros_like_bias(params.w_hh)
    b_hh = params.b_hh if params.b_hh is not None else _zeros_like_bias(params.w_hh)
    return b_ih, b_hh


def to_flax_linen(params) -> dict:
    """jaxrnn LSTM or GRU params as a linen cell's param dict.

    LSTM params give the dict of ``nn.LSTMCell`` and ``nn.OptimizedLSTMCell`` (the two
    share names), GRU params that of ``nn.GRUCell``: put it at ``variables["params"]``
    of the cell, or at ``["params"]["cell"]`` of an ``nn.RNN``. Linen's GRU has
    PyTorch's ``b_hn``, so every GRU converts exactly; LSTM biases are summed.

    Raises:
      TypeError, ValueError: other params, or an LSTM with a projection.
    """
    kind = _check_params(params)
    b_ih, b_hh = _biases(params)
    H = params.w_hh.shape[1]
    keys = _LSTM_KEYS if kind == "lstm" else _GRU_KEYS
    split = lambda a: {g: a[..., k * H:(k + 1) * H] for k, g in enumerate(keys)}
    wi, wh = split(params.w_ih.T), split(params.w_hh.T)
    out = {}
    if kind == "lstm":
        b = split(b_ih + b_hh)
        for g in keys:
            out["i" + g] = {"kernel": wi[g]}
            out["h" + g] = {"kernel": wh[g], "bias": b[g]}
    else:
        bi, bh = split(b_ih), split(b_hh)
        for g in keys:
            out["i" + g] = {"kernel": wi[g], "bias": bi[g] + bh[g] if g != "n" else bi[g]}
            out["h" + g] = {"kernel": wh[g]}
        out["hn"]["bias"] = bh["n"]
    return out


def to_flax_nnx(params, cell_type: Optional[type] = None, *, rngs=None):
    """jaxrnn LSTM or GRU params as a new flax NNX cell.

    Args:
      params: ``LSTMParams`` (no projection) or ``GRUParams``.
      cell_type: ``nnx.OptimizedLSTMCell`` (the default for LSTM) or ``nnx.LSTMCell``;
        ``nnx.GRUCell`` for GRU.
      rngs: ``nnx.Rngs`` for the module's construction (the weights are then
        overwritten); defaults to ``nnx.Rngs(0)``.

    Returns:
      The flax module, with flax's default nonlinearities.

    Raises:
      ValueError: a GRU whose ``b_hn`` (``b_hh[2H:]``) is not zero (NNX's GRUCell has
        no recurrent bias; checked when the values are concrete), an LSTM with a
        projection, or a ``cell_type`` that does not match the params.
    """
    from flax import nnx

    kind = _check_params(params)
    b_ih, b_hh = _biases(params)
    H = params.w_hh.shape[1]
    I = params.w_ih.shape[1]
    rngs = nnx.Rngs(0) if rngs is None else rngs
    if cell_type is None:
        cell_type = nnx.OptimizedLSTMCell if kind == "lstm" else nnx.GRUCell
    allowed = (nnx.OptimizedLSTMCell, nnx.LSTMCell) if kind == "lstm" else (nnx.GRUCell,)
    if cell_type not in allowed:
        raise ValueError(
            f"`cell_type` must be one of {[c.__name__ for c in allowed]} for {type(params).__name__}; "
            f"got {getattr(cell_type, '__name__', cell_type)!r}."
        )
    dtype = params.w_ih.dtype
    module = cell_type(I, H, param_dtype=dtype, rngs=rngs)
    set_ = lambda var, value: var.set_value(value) if hasattr(var, "set_value") else setattr(var, "value", value)
    if kind == "lstm":
        b = b_ih + b_hh
        if cell_type is nnx.OptimizedLSTMCell:
            set_(module.dense_i.kernel, params.w_ih.T)
            set_(module.dense_h.kernel, params.w_hh.T)
            set_(module.dense_h.bias, b)
        else:
            for k, (ni, nh) in enumerate(zip(("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho"))):
                rows = slice(k * H, (k + 1) * H)
                set_(getattr(module, ni).kernel, params.w_ih[rows].T)
                set_(getattr(module, nh).kernel, params.w_hh[rows].T)
                set_(getattr(module, nh).bias, b[rows])
        return module
    b_hn = b_hh[2 * H:]
    if not isinstance(b_hn, jax.core.Tracer) and np.any(np.asarray(b_hn) != 0):
        raise ValueError(
            "`params.b_hh[2H:]` (b_hn) must be zero: flax's nnx.GRUCell has no recurrent bias inside "
            "r * (W_hn h); got nonzero values (to_flax_linen keeps it: linen's GRUCell has b_hn)."
        )
    set_(module.dense_i.kernel, params.w_ih.T)
    set_(module.dense_i.bias, b_ih + b_hh.at[2 * H:].set(0))
    set_(module.dense_h.kernel, params.w_hh.T)
    return module


# ------------------------------------------------------------------------------- carries


def carry_from_flax(carry):
    """flax's carry as jaxrnn's state: an LSTM's ``(c, h)`` becomes ``LSTMState(h, c)``;
    a GRU's ``h`` is returned as it is."""
    if isinstance(carry, (tuple, list)):
        if len(carry) != 2:
            raise ValueError(f"`carry` must be an LSTM's (c, h) pair or a GRU's array; got a tuple of {len(carry)}.")
        c, h = carry
        return LSTMState(h, c)
    return carry


def carry_to_flax(state):
    """jaxrnn's state as flax's carry: ``LSTMState(h, c)`` becomes ``(c, h)``; an array
    is returned as it is."""
    if isinstance(state, (tuple, list)):
        if len(state) != 2:
            raise ValueError(f"`state` must be an LSTMState(h, c) or a GRU's array; got a tuple of {len(state)}.")
        h, c = state
        return (c, h)
    return state
