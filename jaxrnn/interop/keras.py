"""Weights in and out of Keras 3 ``SimpleRNN``, ``GRU``, ``LSTM``, ``Bidirectional`` and a
``Sequential`` stack of them.

Keras is imported lazily, only by :func:`from_keras` and :func:`to_keras`; jaxrnn never
depends on it. Reading weights works with any Keras backend::

    net, params = jaxrnn.interop.keras.from_keras(model)  # a layer or a Sequential
    h, ys = net(params, None, xs)                         # ys == model(xs), Keras' layouts
    model = jaxrnn.interop.keras.to_keras(net, params)    # a built keras.Sequential
    model = jaxrnn.interop.keras.to_keras(jaxrnn.stack([...]), params)  # from jaxrnn itself

``net`` takes Keras' inputs, ``[B, T, I]`` floats (``[B, T]`` integer ids after an
``Embedding``), and returns ``(h, ys)``: ``ys`` is what the Keras model returns, and ``h``
the final state of every recurrent layer (a tuple, one entry per layer: an array, a
:class:`jaxrnn.LSTMState` ``(h, c)`` for an LSTM, a :class:`jaxrnn.Bidirectional` pair for a
``Bidirectional`` layer), which Keras returns with ``return_state=True``. ``h=None`` starts
from zeros, as Keras does; otherwise pass the same structure (Keras' ``initial_state``).

**Layouts** (``H`` the units, ``I`` the input size). Keras stores ``x @ kernel`` weights,
jaxrnn (PyTorch) ``W @ x`` weights, so every kernel is transposed, and the gates are
reordered where the orders differ::

    Keras                                     jaxrnn (torch layout)
    SimpleRNN kernel [I, H]                   w_ih = kernel.T          [H, I]
              recurrent_kernel [H, H]         w_hh = recurrent_kernel.T
              bias [H] (one bias)             b_ih = bias, b_hh = 0
    LSTM      kernel [I, 4H], gates i,f,c,o   w_ih = kernel.T          [4H, I], gates i,f,g,o
              recurrent_kernel [H, 4H]        w_hh = recurrent_kernel.T (same order)
              bias [4H] (one bias)            b_ih = bias, b_hh = 0
    GRU       kernel [I, 3H], gates z,r,h     w_ih = kernel.T with the z and r blocks swapped,
              (reset_after=True)                     [3H, I], gates r,z,n   -> jaxrnn.gru
              recurrent_kernel [H, 3H]        w_hh likewise
              bias [2, 3H]: input, recurrent  b_ih = bias[0], b_hh = bias[1] (blocks swapped)
    GRU       (reset_after=False)             the same kernels, one bias [3H]: b_ih = bias,
                                              b_hh = 0 -> jaxrnn.zoo.gru_original
    Embedding embeddings [V, D]               KerasParams.embedding [V, D]
    Dense     kernel [F, K], bias [K]         DenseParams(w=kernel.T [K, F], b)

Keras' update rule ``h' = z * h + (1 - z) * hh`` is PyTorch's ``(1 - z) * n + z * h``; with
one bias, ``b_ih + b_hh`` is Keras' bias on the way back.

**Masks.** A ``Masking(mask_value)`` layer (``mask = any(x != mask_value, -1)``) or an
``Embedding(mask_zero=True)`` (``mask = ids != 0``) is computed from ``xs`` inside ``net``,
as Keras does; a net without one takes Keras' ``mask=`` ``[B, T]`` (or ``seq_lengths=``, the
mask ``t < seq_lengths``). A masked step leaves the state unchanged, any mask (right- or
left-padded or with holes): the unmasked steps are gathered to the front of the sequence,
run with ``seq_lengths`` = their count, and scattered back. The output at a masked step is,
as in Keras, zero with ``zero_output_for_mask=True`` (which ``Bidirectional`` sets whenever
``return_sequences=True``), otherwise the previous output in processing order (the initial
``h`` before the first unmasked step; zero there with Keras' ``unroll=True``).

**Order of outputs.** With ``go_backwards=True`` a Keras layer reads ``xs`` from ``t = T-1``
down to 0 and returns its outputs *in that order* (``ys[0]`` belongs to ``xs[T-1]``), and
with ``return_sequences=False`` the output after ``xs[0]``. ``Bidirectional`` flips its
backward layer's sequence back into input order before merging. ``net`` does the same.

**What has no counterpart** raises a ValueError naming the option: an ``activation`` other
than tanh (tanh or relu for SimpleRNN), a ``recurrent_activation`` other than sigmoid,
``recurrent_dropout > 0``, ``stateful=True``, a compute dtype other than float32,
``merge_mode=None``, a Dense ``activation`` outside linear/relu/sigmoid/tanh/softmax, LoRA
or quantised layers, and any other layer type. ``dropout`` (off at inference, as here),
``Dropout`` layers (identity), ``unroll=True``, ``use_bias=False`` and ``return_state`` are
fine. A Dense without a bias gets a zero bias (``to_keras`` then makes one with
``use_bias=True``: the same outputs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import Cell, GRUParams, LSTMParams, LSTMState, RNNParams, gru, lstm, rnn
from jaxrnn.layers import Bidirectional, DenseParams, Stack, StackParams, dense
from jaxrnn.scan import unroll
from jaxrnn.zoo.gru_original import OriginalGRUCell, OriginalGRUParams, gru_original

Array = jax.Array

__all__ = ["KerasRNN", "KerasLayer", "KerasBidirectional", "KerasParams", "from_keras", "to_keras"]

_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}
_MERGE_MODES = ("concat", "sum", "ave", "mul")


@dataclasses.dataclass(frozen=True)
class KerasLayer:
    """One Keras recurrent layer: a jaxrnn cell and Keras' options that change its outputs.

    Attributes:
      cell: ``jaxrnn.rnn`` (SimpleRNN), ``jaxrnn.gru`` (GRU, reset_after=True),
        ``jaxrnn.zoo.gru_original`` (GRU, reset_after=False) or ``jaxrnn.lstm`` (LSTM).
      return_sequences, go_backwards, zero_output_for_mask, unroll: as in Keras (``unroll``
        only changes the output at masked steps before the first unmasked one).
    """

    cell: Any
    return_sequences: bool = False
    go_backwards: bool = False
    zero_output_for_mask: bool = False
    unroll: bool = False


@dataclasses.dataclass(frozen=True)
class KerasBidirectional:
    """Keras' ``Bidirectional``: two :class:`KerasLayer` s and how their outputs merge."""

    forward: KerasLayer
    backward: KerasLayer
    merge_mode: str = "concat"

    @property
    def return_sequences(self) -> bool:
        return self.forward.return_sequences


class KerasParams(NamedTuple):
    """Params of a :class:`KerasRNN`: the embedding table ``[V, D]`` (or None), one entry per
    recurrent layer (a cell's params, or a :class:`jaxrnn.Bidirectional` pair), the head's."""

    embedding: Optional[Array]
    layers: tuple
    head: Optional[DenseParams] = None


@dataclasses.dataclass(frozen=True)
class KerasRNN:
    """A jaxrnn network with the calling convention of a Keras model (see the module docstring).

    Attributes:
      layers: :class:`KerasLayer` / :class:`KerasBidirectional` entries, in order.
      embedding: ``(input_dim, output_dim, mask_zero)`` of a leading ``Embedding``, or None.
      mask_value: a leading ``Masking`` layer's ``mask_value``, or None.
      head: ``(units, activation)`` of a final ``Dense``, or None.
    """

    layers: tuple
    embedding: Optional[tuple] = None
    mask_value: Optional[float] = None
    head: Optional[tuple] = None

    @property
    def output_size(self) -> int:
        if self.head is not None:
            return self.head[0]
        return _layer_output_size(self.layers[-1])

    def check_params(self, params, name: str = "params") -> int:
        """Checks ``params`` against this network; returns its input size (``D`` after an
        embedding, else ``I``)."""
        if not isinstance(params, KerasParams):
            raise TypeError(f"`{name}` must be KerasParams; got {type(params).__name__}.")
        if self.embedding is None:
            if params.embedding is not None:
                raise ValueError(f"`{name}.embedding` must be None: this network has no Embedding.")
        else:
            want = tuple(self.embedding[:2])
            got = getattr(params.embedding, "shape", None)
            if got is None or tuple(got) != want:
                raise ValueError(f"`{name}.embedding` must have shape {list(want)}; got {got}.")
        if not isinstance(params.layers, (tuple, list)) or len(params.layers) != len(self.layers):
            raise ValueError(f"`{name}.layers` must hold {len(self.layers)} entries; got "
                             f"{len(params.layers) if isinstance(params.layers, (tuple, list)) else type(params.layers).__name__}.")
        input_size = size = None
        for l, (spec, p) in enumerate(zip(self.layers, params.layers)):
            label = f"{name}.layers[{l}]"
            if isinstance(spec, KerasBidirectional):
                if not isinstance(p, Bidirectional):
                    raise TypeError(f"`{label}` must be Bidirectional(forward, backward); got {type(p).__name__}.")
                sizes = {_check_cell_params(spec.forward.cell, p.forward, f"{label}.forward"),
                         _check_cell_params(spec.backward.cell, p.backward, f"{label}.backward")}
                if len(sizes) != 1:
                    raise ValueError(f"`{label}`: forward and backward input sizes differ: {sorted(sizes)}.")
                got = sizes.pop()
            else:
                got = _check_cell_params(spec.cell, p, label)
            if l == 0:
                input_size = got
                if self.embedding is not None and got != self.embedding[1]:
                    raise ValueError(f"`{label}.w_ih` must take the embedding's {self.embedding[1]} features; "
                                     f"got input size {got}.")
            elif got != size:
                raise ValueError(f"`{label}.w_ih` must take the previous layer's {size} features; got input size {got}.")
            size = _layer_output_size(spec)
        if self.head is None:
            if params.head is not None:
                raise ValueError(f"`{name}.head` must be None: this network has no Dense head.")
        else:
            if not isinstance(params.head, DenseParams):
                raise TypeError(f"`{name}.head` must be DenseParams; got {type(params.head).__name__}.")
            for field, shape in {"w": (self.head[0], size), "b": (self.head[0],)}.items():
                got = tuple(getattr(getattr(params.head, field), "shape", ()))
                if got != shape:
                    raise ValueError(f"`{name}.head.{field}` must have shape {list(shape)}; got {got}.")
        return input_size

    def __call__(self, params: KerasParams, h, xs, *, mask=None, seq_lengths=None):
        """``(params, h, xs) -> (h, ys)``, ``ys`` being the Keras model's output.

        Args:
          params: :class:`KerasParams`.
          h: None (zeros), or a tuple with one initial state per recurrent layer.
          xs: ``[B, T, I]`` floats, or ``[B, T]`` integer ids when the network starts with an
            Embedding.
          mask: Keras' ``mask`` ``[B, T]`` (bool), for a network without a Masking layer or
            ``Embedding(mask_zero=True)`` (which compute theirs from ``xs``).
          seq_lengths: ``[B]`` integers, the same as ``mask = arange(T) < seq_lengths``.

        Returns:
          ``(h, ys)``: the final states (one per recurrent layer) and the output, ``[B, T, F]``
          if the last recurrent layer returns sequences, else ``[B, F]``.
        """
        input_size = self.check_params(params)
        xs = xs if hasattr(xs, "dtype") else np.asarray(xs)
        if self.embedding is not None:
            if not jnp.issubdtype(xs.dtype, jnp.integer):
                raise TypeError(f"`xs` must be integer ids [B, T] for a network starting with an Embedding; "
                                f"got dtype {xs.dtype}.")
            if xs.ndim != 2:
                raise ValueError(f"`xs` must have shape [B, T] (integer ids); got {tuple(xs.shape)}.")
            own_mask = (xs != 0) if self.embedding[2] else None
            x = jnp.take(params.embedding, jnp.asarray(xs), axis=0)
        else:
            if not jnp.issubdtype(xs.dtype, jnp.floating):
                raise TypeError(f"`xs` must be a floating-point array [B, T, {input_size}]; got dtype {xs.dtype}.")
            if xs.ndim != 3 or xs.shape[-1] != input_size:
                raise ValueError(f"`xs` must have shape [B, T, {input_size}]; got {tuple(xs.shape)}.")
            x = jnp.asarray(xs)
            own_mask = None
            if self.mask_value is not None:
                own_mask = jnp.any(x != self.mask_value, axis=-1)
                x = x * own_mask[..., None].astype(x.dtype)
        B, T = x.shape[:2]
        if T == 0:
            raise ValueError("`xs` must have at least one time step (Keras needs one); got T=0.")
        m = _caller_mask(mask, seq_lengths, own_mask, B, T)
        states = self._check_state(h)
        new_states = []
        for spec, p, s in zip(self.layers, params.layers, states):
            if isinstance(spec, KerasBidirectional):
                hf, y = _run(spec.forward, p.forward, None if s is None else s[0], x, m)
                hb, y_rev = _run(spec.backward, p.backward, None if s is None else s[1], x, m)
                if spec.return_sequences:
                    y_rev = jnp.flip(y_rev, axis=1)
                x = _merge(spec.merge_mode, y, y_rev)
                new_states.append(Bidirectional(hf, hb))
            else:
                hs, x = _run(spec, p, s, x, m)
                new_states.append(hs)
        if self.head is not None:
            x = _ACTIVATIONS[self.head[1]](dense(params.head, x))
        return tuple(new_states), x

    def _check_state(self, h):
        if h is None:
            return (None,) * len(self.layers)
        if not isinstance(h, (tuple, list)) or len(h) != len(self.layers):
            raise TypeError(f"`h` must be None or a tuple with one state per recurrent layer ({len(self.layers)}); "
                            f"got {type(h).__name__}{'' if not isinstance(h, (tuple, list)) else f' of length {len(h)}'}.")
        for l, (spec, s) in enumerate(zip(self.layers, h)):
            if isinstance(spec, KerasBidirectional) and s is not None and not (isinstance(s, (tuple, list))
                                                                               and len(s) == 2):
                raise TypeError(f"`h[{l}]` must be a Bidirectional(forward, backward) pair; got {type(s).__name__}.")
        return tuple(h)


def _layer_output_size(spec) -> int:
    if isinstance(spec, KerasBidirectional):
        f, b = spec.forward.cell.output_size, spec.backward.cell.output_size
        return f + b if spec.merge_mode == "concat" else f
    return spec.cell.output_size


def _check_cell_params(cell, params, label: str) -> int:
    return cell.check_params(params, label)


def _caller_mask(mask, seq_lengths, own_mask, B: int, T: int):
    """The ``[B, T]`` bool mask the recurrent layers see, or None."""
    if mask is not None and seq_lengths is not None:
        raise ValueError("Pass `mask` or `seq_lengths`, not both.")
    given = mask is not None or seq_lengths is not None
    if given and own_mask is not None:
        raise ValueError("This network computes its mask from `xs` (Masking / Embedding(mask_zero=True)); "
                         "pass neither `mask` nor `seq_lengths`.")
    if own_mask is not None:
        return own_mask
    if mask is not None:
        mask = mask if hasattr(mask, "shape") else np.asarray(mask)
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"`mask` must have shape [B, T] = [{B}, {T}]; got {tuple(mask.shape)}.")
        return jnp.asarray(mask).astype(bool)
    if seq_lengths is not None:
        seq_lengths = seq_lengths if hasattr(seq_lengths, "dtype") else np.asarray(seq_lengths)
        if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
            raise TypeError(f"`seq_lengths` must be an integer array; got dtype {seq_lengths.dtype}.")
        if tuple(seq_lengths.shape) != (B,):
            raise ValueError(f"`seq_lengths` must have shape [B] = [{B}]; got {tuple(seq_lengths.shape)}.")
        return jnp.arange(T)[None, :] < jnp.asarray(seq_lengths)[:, None]
    return None


def _output_part(state):
    """The part of a state that is also the cell's output (``h`` of an ``(h, c)`` pair)."""
    return state.h if isinstance(state, LSTMState) else state


def _run(spec: KerasLayer, params, h0, x: Array, m: Optional[Array]):
    """One Keras recurrent layer over ``x`` ``[B, T, F]``: ``(state, output)``."""
    cell = spec.cell
    B, T = x.shape[:2]
    if h0 is None:
        h0 = cell.initial_state((B,), x.dtype)
    if m is None:
        h, ys = unroll(cell, params, h0, x, reverse=spec.go_backwards)
    else:
        # The unmasked steps gathered to the front (stable), run with seq_lengths = their count,
        # each output then read back at its step; a masked step reads the previous output in
        # processing order, the last unmasked step before it (forward) or after it (backward).
        lengths = jnp.sum(m, axis=1, dtype=jnp.int32)
        order = jnp.argsort(~m, axis=1, stable=True)
        x_packed = jnp.take_along_axis(x, order[..., None], axis=1)
        h, ys_packed = unroll(cell, params, h0, x_packed, seq_lengths=lengths, reverse=spec.go_backwards)
        count = jnp.cumsum(m, axis=1, dtype=jnp.int32)         # unmasked steps at or before t
        if spec.go_backwards:
            src = jnp.where(m, count - 1, count)
            has_prev = src < lengths[:, None]
        else:
            src = count - 1
            has_prev = src >= 0
        read = jnp.take_along_axis(ys_packed, jnp.clip(src, 0, T - 1)[..., None], axis=1)
        if spec.unroll:
            before = jnp.zeros_like(read)
        else:
            before = jnp.broadcast_to(_output_part(h0)[:, None, :], read.shape).astype(read.dtype)
        held = jnp.where(has_prev[..., None], read, before)
        if spec.zero_output_for_mask and not spec.unroll:
            held = jnp.zeros_like(held)
        ys = jnp.where(m[..., None], read, held)
    if spec.go_backwards:
        ys = jnp.flip(ys, axis=1)
    return h, (ys if spec.return_sequences else ys[:, -1])


def _merge(mode: str, y: Array, y_rev: Array) -> Array:
    if mode == "concat":
        return jnp.concatenate([y, y_rev], axis=-1)
    if mode == "sum":
        return y + y_rev
    if mode == "ave":
        return (y + y_rev) / 2
    return y * y_rev


# --------------------------------------------------------------------------- from Keras


def _import_keras():
    try:
        import keras
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("jaxrnn.interop.keras needs Keras 3: pip install 'jaxrnn[keras]'.") from e
    if not hasattr(keras, "Sequential") or int(keras.__version__.split(".")[0]) < 3:
        raise ImportError(f"jaxrnn.interop.keras needs Keras 3; got keras {keras.__version__}.")
    return keras


def _np(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _swap_zr(w: np.ndarray, H: int) -> np.ndarray:
    """Keras' gate order z, r, h <-> PyTorch's r, z, n on the last axis (its own inverse)."""
    return np.concatenate([w[..., H:2 * H], w[..., :H], w[..., 2 * H:]], axis=-1)


def _activation_name(keras, fn) -> Optional[str]:
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # a lambda or another callable Keras cannot name
        return None
    return name if isinstance(name, str) else None


def _describe_layer(layer) -> str:
    return f"{type(layer).__name__} {layer.name!r}"


def _check_float32(layer):
    dtype = getattr(layer, "compute_dtype", "float32")
    if str(dtype) != "float32":
        raise ValueError(f"{_describe_layer(layer)}: `dtype` (compute dtype) must be float32; got {dtype}.")


def _convert_recurrent(keras, layer):
    """A built SimpleRNN / GRU / LSTM layer -> ``(KerasLayer, params)``."""
    kind = type(layer)
    what = _describe_layer(layer)
    if not layer.built or not layer.get_weights():
        raise ValueError(f"{what} is not built: call it on an input (or start the Sequential with keras.Input) first.")
    if layer.stateful:
        raise ValueError(f"{what}: `stateful=True` has no jaxrnn counterpart (pass the state as `h` instead).")
    cell = layer.cell
    if getattr(cell, "recurrent_dropout", 0.0):
        raise ValueError(f"{what}: `recurrent_dropout={cell.recurrent_dropout}` has no jaxrnn counterpart.")
    _check_float32(layer)
    activation = _activation_name(keras, cell.activation)
    allowed = ("tanh", "relu") if kind is keras.layers.SimpleRNN else ("tanh",)
    if activation not in allowed:
        raise ValueError(f"{what}: `activation` must be {' or '.join(allowed)} for jaxrnn; got "
                         f"{activation or cell.activation!r}.")
    if kind is not keras.layers.SimpleRNN:
        rec = _activation_name(keras, cell.recurrent_activation)
        if rec != "sigmoid":
            raise ValueError(f"{what}: `recurrent_activation` must be sigmoid for jaxrnn; got "
                             f"{rec or cell.recurrent_activation!r}.")
    H, use_bias = cell.units, cell.use_bias
    kernel, rec_kernel = _np(cell.kernel), _np(cell.recurrent_kernel)
    bias = _np(cell.bias) if use_bias else None
    if kind is keras.layers.SimpleRNN:
        jcell = rnn(H, nonlinearity=activation, bias=use_bias)
        params = RNNParams(kernel.T, rec_kernel.T, bias, None if bias is None else np.zeros_like(bias))
    elif kind is keras.layers.LSTM:
        jcell = lstm(H, bias=use_bias)
        params = LSTMParams(kernel.T, rec_kernel.T, bias, None if bias is None else np.zeros_like(bias))
    elif cell.reset_after:
        jcell = gru(H, bias=use_bias)
        b_ih, b_hh = (None, None) if bias is None else (_swap_zr(bias[0], H), _swap_zr(bias[1], H))
        params = GRUParams(_swap_zr(kernel, H).T, _swap_zr(rec_kernel, H).T, b_ih, b_hh)
    else:
        jcell = gru_original(H, bias=use_bias)
        b_ih = None if bias is None else _swap_zr(bias, H)
        params = OriginalGRUParams(_swap_zr(kernel, H).T, _swap_zr(rec_kernel, H).T, b_ih,
                                   None if b_ih is None else np.zeros_like(b_ih))
    params = jax.tree.map(lambda a: jnp.asarray(np.ascontiguousarray(a)), params)
    spec = KerasLayer(jcell, return_sequences=bool(layer.return_sequences), go_backwards=bool(layer.go_backwards),
                      zero_output_for_mask=bool(layer.zero_output_for_mask), unroll=bool(layer.unroll))
    return spec, params


def _is_recurrent(keras, layer) -> bool:
    return type(layer) in (keras.layers.SimpleRNN, keras.layers.GRU, keras.layers.LSTM)


def _convert_bidirectional(keras, layer):
    what = _describe_layer(layer)
    if layer.merge_mode not in _MERGE_MODES:
        raise ValueError(f"{what}: `merge_mode` must be one of {_MERGE_MODES} for jaxrnn (a network returns one "
                         f"output); got {layer.merge_mode!r}.")
    _check_float32(layer)
    parts = []
    for sub in (layer.forward_layer, layer.backward_layer):
        if not _is_recurrent(keras, sub):
            raise ValueError(f"{what}: wraps {_describe_layer(sub)}; jaxrnn converts SimpleRNN, GRU and LSTM only.")
        parts.append(_convert_recurrent(keras, sub))
    (fs, fp), (bs, bp) = parts
    if layer.merge_mode != "concat" and fs.cell.output_size != bs.cell.output_size:
        raise ValueError(f"{what}: `merge_mode={layer.merge_mode!r}` needs equal forward and backward units.")
    return KerasBidirectional(fs, bs, layer.merge_mode), Bidirectional(fp, bp)


def _no_extras(layer, n_weights: int):
    if getattr(layer, "lora_enabled", False):
        raise ValueError(f"{_describe_layer(layer)}: LoRA layers have no jaxrnn counterpart (merge the weights first).")
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(f"{_describe_layer(layer)}: quantized layers have no jaxrnn counterpart.")
    if len(layer.get_weights()) != n_weights:
        raise ValueError(f"{_describe_layer(layer)}: expected {n_weights} weight arrays; got "
                         f"{len(layer.get_weights())}.")


def from_keras(layer_or_model):
    """Converts a Keras 3 recurrent layer or ``Sequential`` to ``(net, params)``.

    Args:
      layer_or_model: a built ``keras.layers.SimpleRNN``, ``GRU``, ``LSTM`` or
        ``Bidirectional`` of one of them, or a built ``keras.Sequential`` of: optionally an
        ``Embedding`` or a ``Masking`` layer, then one or more of those recurrent layers
        (``Dropout`` layers anywhere between are identities at inference), then optionally
        one ``Dense``.

    Returns:
      ``(net, params)``: a :class:`KerasRNN` and float32 :class:`KerasParams`; ``net(params,
      None, xs)[1]`` is the model's output for ``xs`` (see the module docstring).

    Raises:
      ValueError: for a configuration with no exact jaxrnn counterpart, naming the option.
      TypeError: for something that is neither a Sequential nor a supported layer.
    """
    keras = _import_keras()
    if isinstance(layer_or_model, keras.Sequential):
        if not layer_or_model.built:
            raise ValueError("`layer_or_model` is not built: start the Sequential with keras.Input(...) or call it "
                             "on an input first.")
        items = list(layer_or_model.layers)
    elif isinstance(layer_or_model, keras.Model):
        raise TypeError(f"`layer_or_model` must be a keras.Sequential or a recurrent layer; got a "
                        f"{type(layer_or_model).__name__} (functional models are not converted).")
    elif isinstance(layer_or_model, keras.layers.Layer):
        items = [layer_or_model]
    else:
        raise TypeError(f"`layer_or_model` must be a Keras layer or Sequential; got {type(layer_or_model).__name__}.")

    embedding = mask_value = head = None
    emb_params = head_params = None
    specs, layer_params = [], []
    for i, layer in enumerate(items):
        kind = type(layer)
        what = f"layer {i} ({_describe_layer(layer)})"
        if kind is keras.layers.InputLayer or kind is keras.layers.Dropout:
            continue
        if head is not None:
            raise ValueError(f"{what} follows the Dense head; jaxrnn takes one Dense, as the last layer.")
        if kind is keras.layers.Embedding:
            if specs or embedding is not None or mask_value is not None:
                raise ValueError(f"{what}: an Embedding must be the first layer.")
            _no_extras(layer, 1)
            _check_float32(layer)
            embedding = (int(layer.input_dim), int(layer.output_dim), bool(layer.mask_zero))
            emb_params = jnp.asarray(_np(layer.get_weights()[0]))
        elif kind is keras.layers.Masking:
            if specs or embedding is not None or mask_value is not None:
                raise ValueError(f"{what}: a Masking layer must come first, before the recurrent layers.")
            mask_value = float(layer.mask_value)
        elif _is_recurrent(keras, layer) or kind is keras.layers.Bidirectional:
            if specs and not specs[-1].return_sequences:
                raise ValueError(f"{what} follows a layer with `return_sequences=False`.")
            if kind is keras.layers.Bidirectional:
                spec, p = _convert_bidirectional(keras, layer)
            else:
                spec, p = _convert_recurrent(keras, layer)
            specs.append(spec)
            layer_params.append(p)
        elif kind is keras.layers.Dense:
            if not specs:
                raise ValueError(f"{what}: a Dense head must follow a recurrent layer.")
            _no_extras(layer, 2 if layer.use_bias else 1)
            _check_float32(layer)
            act = _activation_name(keras, layer.activation)
            if act not in _ACTIVATIONS:
                raise ValueError(f"{what}: `activation` must be one of {sorted(_ACTIVATIONS)}; got "
                                 f"{act or layer.activation!r}.")
            head = (int(layer.units), act)
            w = _np(layer.kernel)
            b = _np(layer.bias) if layer.use_bias else np.zeros((w.shape[1],), np.float32)
            head_params = DenseParams(jnp.asarray(np.ascontiguousarray(w.T)), jnp.asarray(b))
        else:
            raise ValueError(f"{what} has no jaxrnn counterpart; supported: Embedding, Masking, SimpleRNN, GRU, "
                             "LSTM, Bidirectional, Dropout, Dense.")
    if not specs:
        raise ValueError("`layer_or_model` holds no recurrent layer (SimpleRNN, GRU, LSTM or Bidirectional).")
    net = KerasRNN(tuple(specs), embedding=embedding, mask_value=mask_value, head=head)
    params = KerasParams(emb_params, tuple(layer_params), head_params)
    net.check_params(params)
    return net, params


# --------------------------------------------------------------------------- to Keras


def _keras_layer(keras, spec: KerasLayer):
    cell = spec.cell
    common = dict(return_sequences=spec.return_sequences, go_backwards=spec.go_backwards,
                  zero_output_for_mask=spec.zero_output_for_mask, unroll=spec.unroll)
    if isinstance(cell, OriginalGRUCell):
        return keras.layers.GRU(cell.hidden_size, use_bias=cell.bias, reset_after=False, **common)
    if not isinstance(cell, Cell):
        raise ValueError(f"`net`: a {type(cell).__name__} cell has no Keras counterpart.")
    if cell.compute_dtype != jnp.float32:
        raise ValueError(f"`net`: a cell with `compute_dtype={cell.compute_dtype.name}` has no Keras counterpart.")
    if cell.kind.startswith("rnn_"):
        return keras.layers.SimpleRNN(cell.hidden_size, activation=cell.kind[4:], use_bias=cell.bias, **common)
    if cell.kind == "gru":
        return keras.layers.GRU(cell.hidden_size, use_bias=cell.bias, reset_after=True, **common)
    if cell.proj_size:
        raise ValueError("`net`: an LSTM with `proj_size` has no Keras counterpart.")
    return keras.layers.LSTM(cell.hidden_size, use_bias=cell.bias, **common)


def _set_recurrent(keras_layer, cell, p):
    """Loads jaxrnn params into a built Keras recurrent layer."""
    kc = keras_layer.cell
    H = kc.units
    w_ih, w_hh = np.asarray(p.w_ih, np.float32), np.asarray(p.w_hh, np.float32)
    b_ih = None if p.b_ih is None else np.asarray(p.b_ih, np.float32)
    b_hh = None if p.b_hh is None else np.asarray(p.b_hh, np.float32)
    if isinstance(cell, Cell) and cell.kind == "gru":
        kernel, rec = _swap_zr(w_ih.T, H), _swap_zr(w_hh.T, H)
        bias = None if b_ih is None else np.stack([_swap_zr(b_ih, H), _swap_zr(b_hh, H)])
    elif isinstance(cell, OriginalGRUCell):
        kernel, rec = _swap_zr(w_ih.T, H), _swap_zr(w_hh.T, H)
        bias = None if b_ih is None else _swap_zr(b_ih + b_hh, H)
    else:
        kernel, rec = w_ih.T, w_hh.T
        bias = None if b_ih is None else b_ih + b_hh
    kc.kernel.assign(np.ascontiguousarray(kernel))
    kc.recurrent_kernel.assign(np.ascontiguousarray(rec))
    if bias is not None:
        kc.bias.assign(bias)


def _from_jaxrnn(net, params):
    """A jaxrnn cell or :func:`jaxrnn.stack` as the :class:`KerasRNN` that computes its ``ys``."""
    if isinstance(net, Stack):
        if not isinstance(params, StackParams):
            raise TypeError(f"`params` must be the stack's StackParams; got {type(params).__name__}.")
        layers = []
        for cell in net.cells:
            forward = KerasLayer(cell, return_sequences=True)
            layers.append(KerasBidirectional(forward, KerasLayer(cell, return_sequences=True, go_backwards=True))
                          if net.bidirectional else forward)
        head = None if net.head is None else (net.head, "linear")
        return KerasRNN(tuple(layers), head=head), KerasParams(None, tuple(params.layers), params.head)
    if isinstance(net, (Cell, OriginalGRUCell)):
        return KerasRNN((KerasLayer(net, return_sequences=True),)), KerasParams(None, (params,))
    raise TypeError(f"`net` must be a KerasRNN (from from_keras), a jaxrnn cell (rnn, gru, lstm, "
                    f"zoo.gru_original) or a jaxrnn.stack of them; got {type(net).__name__}.")


def to_keras(net, params, *, time_steps: Optional[int] = None):
    """Builds the equivalent ``keras.Sequential`` with these weights loaded.

    Args:
      net, params: from :func:`from_keras` (or a :class:`KerasRNN` built by hand); or a
        jaxrnn cell (``rnn``, ``gru``, ``lstm`` without ``proj_size``,
        ``zoo.gru_original``) or a :func:`jaxrnn.stack` of them (bidirectional or not,
        with or without its linear head) and its params, whose Keras model then returns
        ``net(params, None, xs)[1]``: every layer with ``return_sequences=True``, a
        bidirectional layer as ``Bidirectional(..., merge_mode="concat")``. A stack's
        dropout acts in training only, and is not carried over.
      time_steps: the fixed sequence length of the model's ``keras.Input``; needed by Keras
        for layers with ``unroll=True``, None otherwise.

    Returns:
      A built ``keras.Sequential`` whose output is ``net(params, None, xs)[1]``.

    Raises:
      TypeError: ``net`` is none of the above.
      ValueError: a cell has no Keras counterpart (an LSTM with ``proj_size``, a cell with a
        ``compute_dtype`` other than float32, a custom cell).
    """
    keras = _import_keras()
    if not isinstance(net, KerasRNN):
        net, params = _from_jaxrnn(net, params)
    input_size = net.check_params(params)
    if net.embedding is not None:
        layers = [keras.Input(shape=(time_steps,), dtype="int32"),
                  keras.layers.Embedding(net.embedding[0], net.embedding[1], mask_zero=net.embedding[2])]
    else:
        layers = [keras.Input(shape=(time_steps, input_size))]
        if net.mask_value is not None:
            layers.append(keras.layers.Masking(mask_value=net.mask_value))
    recurrent = []
    for spec in net.layers:
        if isinstance(spec, KerasBidirectional):
            k = keras.layers.Bidirectional(_keras_layer(keras, spec.forward),
                                           backward_layer=_keras_layer(keras, spec.backward),
                                           merge_mode=spec.merge_mode)
        else:
            k = _keras_layer(keras, spec)
        layers.append(k)
        recurrent.append(k)
    if net.head is not None:
        layers.append(keras.layers.Dense(net.head[0], activation=net.head[1]))
    model = keras.Sequential(layers)
    if net.embedding is not None:
        model.layers[0].embeddings.assign(np.asarray(params.embedding, np.float32))
    for spec, k, p in zip(net.layers, recurrent, params.layers):
        if isinstance(spec, KerasBidirectional):
            _set_recurrent(k.forward_layer, spec.forward.cell, p.forward)
            _set_recurrent(k.backward_layer, spec.backward.cell, p.backward)
        else:
            _set_recurrent(k, spec.cell, p)
    if net.head is not None:
        model.layers[-1].kernel.assign(np.ascontiguousarray(np.asarray(params.head.w, np.float32).T))
        model.layers[-1].bias.assign(np.asarray(params.head.b, np.float32))
    return model
