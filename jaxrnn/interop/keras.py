"""Weights in and out of Keras 3 ``SimpleRNN``, ``GRU``, ``LSTM``, ``Bidirectional``, a
``Sequential`` stack of them, and functional ``keras.Model(inputs, outputs)`` graphs of them.

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

**Functional models** become a :class:`KerasGraph` with a dict ``{layer name: params}``::

    net, params = jaxrnn.interop.keras.from_keras(model)  # keras.Model(inputs, outputs)
    h, outputs = net(params, None, inputs)                # outputs == model(inputs)

``inputs`` as Keras takes them (one array, or a list in ``model.inputs`` order, or a dict by
Input name), ``outputs`` as Keras returns them, ``h`` one state per recurrent layer call.
The graph is read from Keras' own nodes (each layer call and its arguments): Input ->
Masking / Embedding -> recurrent layers -> Dropout -> Dense, ``return_state`` outputs fed to
``initial_state=``, masks and states given as inputs (``layer(x, mask=m)``), shared layers.
Masks follow Keras: an implicit mask reaches a recurrent layer only when it is called on the
sequence alone (not with ``initial_state=``). Any other layer or op raises, naming it.

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
import inspect
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import Cell, GRUParams, LSTMParams, LSTMState, RNNParams, gru, lstm, rnn
from jaxrnn.layers import Bidirectional, DenseParams, Stack, StackParams, dense
from jaxrnn.scan import unroll
from jaxrnn.zoo.gru_original import OriginalGRUCell, OriginalGRUParams, gru_original

Array = jax.Array

__all__ = ["KerasRNN", "KerasLayer", "KerasBidirectional", "KerasParams", "KerasGraph", "KerasNode", "KerasInput",
           "KerasEmbedding", "KerasMasking", "KerasDropout", "KerasDense", "from_keras", "to_keras"]

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
            hs, x = _run_layer(spec, p, s, x, m)
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


def _run_layer(spec, params, h0, x: Array, m: Optional[Array]):
    """A :class:`KerasLayer` or :class:`KerasBidirectional` over ``x``: ``(state, output)``."""
    if isinstance(spec, KerasBidirectional):
        hf, y = _run(spec.forward, params.forward, None if h0 is None else h0[0], x, m)
        hb, y_rev = _run(spec.backward, params.backward, None if h0 is None else h0[1], x, m)
        if spec.return_sequences:
            y_rev = jnp.flip(y_rev, axis=1)
        return Bidirectional(hf, hb), _merge(spec.merge_mode, y, y_rev)
    return _run(spec, params, h0, x, m)


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


def _convert_dense(keras, layer, what: str):
    """A built Dense layer -> ``(KerasDense, DenseParams)`` (a zero bias without ``use_bias``)."""
    _no_extras(layer, 2 if layer.use_bias else 1)
    _check_float32(layer)
    act = _activation_name(keras, layer.activation)
    if act not in _ACTIVATIONS:
        raise ValueError(f"{what}: `activation` must be one of {sorted(_ACTIVATIONS)}; got "
                         f"{act or layer.activation!r}.")
    w = _np(layer.kernel)
    b = _np(layer.bias) if layer.use_bias else np.zeros((w.shape[1],), np.float32)
    return KerasDense(int(layer.units), act), DenseParams(jnp.asarray(np.ascontiguousarray(w.T)), jnp.asarray(b))


def _dropout_rate(layer) -> float:
    """The dropout a layer applies in training (Dropout's rate; a recurrent layer's input dropout)."""
    parts = [layer, getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None)]
    rates = [getattr(layer, "rate", 0.0) or 0.0]
    rates += [getattr(getattr(part, "cell", None), "dropout", 0.0) or 0.0 for part in parts]
    return float(max(rates))


def from_keras(layer_or_model):
    """Converts a Keras 3 recurrent layer, ``Sequential`` or functional model to ``(net, params)``.

    Args:
      layer_or_model: a built ``keras.layers.SimpleRNN``, ``GRU``, ``LSTM`` or
        ``Bidirectional`` of one of them, or a built ``keras.Sequential`` of: optionally an
        ``Embedding`` or a ``Masking`` layer, then one or more of those recurrent layers
        (``Dropout`` layers anywhere between are identities at inference), then optionally
        one ``Dense``; or a functional ``keras.Model(inputs, outputs)`` whose layers are
        ``Embedding``, ``Masking``, those recurrent layers, ``Dropout`` and ``Dense``,
        wired in any way (``return_state`` outputs as another layer's ``initial_state=``,
        masks and states as inputs, shared layers).

    Returns:
      ``(net, params)``: for a layer or a Sequential a :class:`KerasRNN` and float32
      :class:`KerasParams`, ``net(params, None, xs)[1]`` being the model's output for
      ``xs``; for a functional model a :class:`KerasGraph` and a dict ``{layer name:
      params}``, ``net(params, None, inputs)[1]`` being the model's outputs for ``inputs``
      (see the module docstring).

    Raises:
      ValueError: for a configuration with no exact jaxrnn counterpart, naming the option,
        and for any other layer or op in a functional model, naming it.
      TypeError: for something that is neither a Sequential, a functional model nor a
        supported layer (a subclassed ``keras.Model`` has no graph to read).
    """
    keras = _import_keras()
    if isinstance(layer_or_model, keras.Sequential):
        if not layer_or_model.built:
            raise ValueError("`layer_or_model` is not built: start the Sequential with keras.Input(...) or call it "
                             "on an input first.")
        items = list(layer_or_model.layers)
    elif isinstance(layer_or_model, keras.Model):
        if not hasattr(layer_or_model, "_nodes_by_depth"):
            raise TypeError(f"`layer_or_model` must be a keras.Sequential, a functional keras.Model or a recurrent "
                            f"layer; got a subclassed {type(layer_or_model).__name__} (it has no graph to read).")
        return _from_functional(keras, layer_or_model)
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
            dense_spec, head_params = _convert_dense(keras, layer, what)
            head = (dense_spec.units, dense_spec.activation)
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


def _keras_layer(keras, spec: KerasLayer, **extra):
    cell = spec.cell
    common = dict(return_sequences=spec.return_sequences, go_backwards=spec.go_backwards,
                  zero_output_for_mask=spec.zero_output_for_mask, unroll=spec.unroll, **extra)
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
    """Builds the equivalent ``keras.Sequential`` (or functional ``keras.Model``) with these
    weights loaded.

    Args:
      net, params: from :func:`from_keras` (a :class:`KerasRNN`, or a :class:`KerasGraph`,
        rebuilt as a functional model with the same layer names, wiring and outputs); or a
        jaxrnn cell (``rnn``, ``gru``, ``lstm`` without ``proj_size``,
        ``zoo.gru_original``) or a :func:`jaxrnn.stack` of them (bidirectional or not,
        with or without its linear head) and its params, whose Keras model then returns
        ``net(params, None, xs)[1]``: every layer with ``return_sequences=True``, a
        bidirectional layer as ``Bidirectional(..., merge_mode="concat")``. A stack's
        dropout acts in training only, and is not carried over.
      time_steps: the fixed sequence length of the model's ``keras.Input``; needed by Keras
        for layers with ``unroll=True``, None otherwise (a :class:`KerasGraph` keeps its
        Inputs' shapes).

    Returns:
      A built ``keras.Sequential`` (a ``keras.Model`` for a :class:`KerasGraph`) whose
      output is ``net(params, None, xs)[1]``.

    Raises:
      TypeError: ``net`` is none of the above.
      ValueError: a cell has no Keras counterpart (an LSTM with ``proj_size``, a cell with a
        ``compute_dtype`` other than float32, a custom cell).
    """
    keras = _import_keras()
    if isinstance(net, KerasGraph):
        return _graph_to_keras(keras, net, params)
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


# --------------------------------------------------------------------------- functional models


@dataclasses.dataclass(frozen=True)
class KerasInput:
    """One ``keras.Input`` of a functional model.

    Attributes:
      name: the Input's name (the key when inputs are given as a dict).
      shape: its shape without the batch axis, None for a free length, e.g. ``(None, 3)``.
      dtype: its dtype name, e.g. ``"float32"``, ``"int32"``, ``"bool"``.
    """

    name: str
    shape: tuple
    dtype: str


@dataclasses.dataclass(frozen=True)
class KerasEmbedding:
    """Keras' ``Embedding``: ``x = table[ids]``; with ``mask_zero`` also ``mask = ids != 0``."""

    input_dim: int
    output_dim: int
    mask_zero: bool = False


@dataclasses.dataclass(frozen=True)
class KerasMasking:
    """Keras' ``Masking``: ``mask = any(x != mask_value, -1)``, ``x * mask``."""

    mask_value: float = 0.0


@dataclasses.dataclass(frozen=True)
class KerasDropout:
    """Keras' ``Dropout``: the identity at inference (``rate`` is kept for :func:`to_keras`)."""

    rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class KerasDense:
    """Keras' ``Dense``: ``activation(x @ w.T + b)`` over the last axis (params: ``DenseParams``)."""

    units: int
    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class KerasNode:
    """One call of a layer in a :class:`KerasGraph`, reading and writing numbered values.

    Values are numbered in order: the model's inputs ``0 .. n-1``, then the outputs of each
    node in node order.

    Attributes:
      layer: the layer's name: its key in ``KerasGraph.layers`` and in the params dict. A
        layer called twice (shared weights) has two nodes with the same name.
      x: the value the layer is called on.
      mask: the value passed to a recurrent layer as ``mask=`` (``[B, T]``, read as bool):
        a boolean input, or the mask an ``Embedding(mask_zero=True)`` / ``Masking`` node
        wrote (Keras passes it on implicitly); None for no mask.
      initial_state: the values passed as ``initial_state=``, in Keras' flat order (``h``;
        ``h, c`` for an LSTM; forward then backward for a ``Bidirectional``); ``()`` for none.
      outputs: the values written: Keras' outputs in order (the output, then with
        ``return_state=True`` the final states in the same flat order); an
        ``Embedding(mask_zero=True)`` or a ``Masking`` node writes its mask second.
    """

    layer: str
    x: int
    mask: Optional[int] = None
    initial_state: tuple = ()
    outputs: tuple = ()


def _is_recurrent_spec(spec) -> bool:
    return isinstance(spec, (KerasLayer, KerasBidirectional))


def _state_count(spec) -> int:
    """How many arrays Keras uses for this layer's state (``initial_state=``, ``return_state``)."""
    if isinstance(spec, KerasBidirectional):
        return _state_count(spec.forward) + _state_count(spec.backward)
    return 2 if isinstance(spec.cell, Cell) and spec.cell.kind == "lstm" else 1


def _flat_state(state) -> list:
    if isinstance(state, Bidirectional):
        return _flat_state(state.forward) + _flat_state(state.backward)
    if isinstance(state, LSTMState):
        return [state.h, state.c]
    return [state]


def _state_from_flat(spec, arrays: list):
    if isinstance(spec, KerasBidirectional):
        n = _state_count(spec.forward)
        return Bidirectional(_state_from_flat(spec.forward, arrays[:n]), _state_from_flat(spec.backward, arrays[n:]))
    return LSTMState(*arrays) if len(arrays) == 2 else arrays[0]


@dataclasses.dataclass(frozen=True)
class KerasGraph:
    """A Keras functional model as a jaxrnn network: ``(params, h, inputs) -> (h, outputs)``.

    Made by :func:`from_keras` from a ``keras.Model(inputs, outputs)``; :func:`to_keras`
    rebuilds the Keras model. The params are a dict ``{layer name: params}`` for the layers
    with weights: a cell's params (SimpleRNN, GRU, LSTM), a :class:`jaxrnn.Bidirectional`
    pair, the ``[V, D]`` table of an Embedding, :class:`jaxrnn.layers.DenseParams`.

    The graph is a sequence of :class:`KerasNode` s over numbered values: each reads
    values written before it, so running the nodes in order computes the model::

        values = list(inputs)
        for node in nodes:
            values[node.outputs] = layer[node.layer](values[node.x],
                                                     mask=values[node.mask],
                                                     initial_state=values[node.initial_state])
        return values[outputs]

    Attributes:
      inputs: one :class:`KerasInput` per model input, in ``model.inputs`` order.
      layers: ``(name, spec)`` pairs, one per layer: a :class:`KerasLayer` /
        :class:`KerasBidirectional` (recurrent), :class:`KerasEmbedding`,
        :class:`KerasMasking`, :class:`KerasDropout` or :class:`KerasDense`.
      nodes: the layer calls, in an order where every value is written before it is read.
      outputs: the values the model returns.
      output_keys: the keys when the model returns a dict; else None.
      single_output: whether the model returns one array (else a list, or a dict).
    """

    inputs: tuple
    layers: tuple
    nodes: tuple
    outputs: tuple
    output_keys: Optional[tuple] = None
    single_output: bool = True

    @property
    def recurrent_nodes(self) -> tuple:
        """Indices into ``nodes`` of the recurrent layer calls: the entries of ``h``."""
        specs = dict(self.layers)
        return tuple(i for i, n in enumerate(self.nodes) if _is_recurrent_spec(specs[n.layer]))

    def check_params(self, params, name: str = "params") -> None:
        """Checks ``params`` (a dict ``{layer name: params}``) against the graph's layers."""
        if not isinstance(params, dict):
            raise TypeError(f"`{name}` must be a dict {{layer name: params}}; got {type(params).__name__}.")
        want = {n for n, spec in self.layers if not isinstance(spec, (KerasMasking, KerasDropout))}
        if set(params) != want:
            raise ValueError(f"`{name}` must have the keys {sorted(want)}; got {sorted(map(str, params))}.")
        for layer, spec in self.layers:
            label, p = f"{name}[{layer!r}]", params.get(layer)
            if isinstance(spec, KerasBidirectional):
                if not isinstance(p, Bidirectional):
                    raise TypeError(f"`{label}` must be Bidirectional(forward, backward); got {type(p).__name__}.")
                sizes = {_check_cell_params(spec.forward.cell, p.forward, f"{label}.forward"),
                         _check_cell_params(spec.backward.cell, p.backward, f"{label}.backward")}
                if len(sizes) != 1:
                    raise ValueError(f"`{label}`: forward and backward input sizes differ: {sorted(sizes)}.")
            elif isinstance(spec, KerasLayer):
                _check_cell_params(spec.cell, p, label)
            elif isinstance(spec, KerasEmbedding):
                got = getattr(p, "shape", None)
                if got is None or tuple(got) != (spec.input_dim, spec.output_dim):
                    raise ValueError(f"`{label}` must have shape [{spec.input_dim}, {spec.output_dim}]; got {got}.")
            elif isinstance(spec, KerasDense):
                if not isinstance(p, DenseParams):
                    raise TypeError(f"`{label}` must be DenseParams; got {type(p).__name__}.")
                w, b = getattr(p.w, "shape", ()), getattr(p.b, "shape", ())
                if len(w) != 2 or w[0] != spec.units or tuple(b) != (spec.units,):
                    raise ValueError(f"`{label}` must have w [{spec.units}, F] and b [{spec.units}]; got w "
                                     f"{tuple(w)}, b {tuple(b)}.")

    def _bind_inputs(self, inputs) -> list:
        n = len(self.inputs)
        if isinstance(inputs, dict):
            names = [i.name for i in self.inputs]
            if set(inputs) != set(names):
                raise ValueError(f"`inputs` as a dict must have the keys {names} (the Inputs' names); got "
                                 f"{sorted(map(str, inputs))}.")
            inputs = [inputs[k] for k in names]
        elif isinstance(inputs, (list, tuple)):
            inputs = list(inputs)
        elif n == 1:
            inputs = [inputs]
        else:
            raise TypeError(f"`inputs` must be a list of {n} arrays in `model.inputs` order "
                            f"({[i.name for i in self.inputs]}) or a dict by name; got {type(inputs).__name__}.")
        if len(inputs) != n:
            raise ValueError(f"`inputs` must hold {n} arrays ({[i.name for i in self.inputs]}); got {len(inputs)}.")
        out = []
        for spec, x in zip(self.inputs, inputs):
            x = x if hasattr(x, "dtype") else np.asarray(x)
            label = f"`inputs[{spec.name!r}]`"
            shape = tuple(x.shape)
            if len(shape) != len(spec.shape) + 1 or any(w is not None and w != g for w, g in zip(spec.shape, shape[1:])):
                want = ", ".join(["B"] + ["?" if d is None else str(d) for d in spec.shape])
                raise ValueError(f"{label} must have shape [{want}]; got {shape}.")
            for kind, word in ((jnp.bool_, "bool"), (jnp.integer, "integer"), (jnp.floating, "floating-point")):
                if jnp.issubdtype(jnp.dtype(spec.dtype), kind) and not jnp.issubdtype(x.dtype, kind):
                    raise TypeError(f"{label} must be {word} (its keras.Input is {spec.dtype}); got {x.dtype}.")
            out.append(jnp.asarray(x))
        return out

    def _check_state(self, h) -> tuple:
        rec = self.recurrent_nodes
        if h is None:
            return (None,) * len(rec)
        if not isinstance(h, (tuple, list)) or len(h) != len(rec):
            raise TypeError(f"`h` must be None or a tuple with one entry (a state or None) per recurrent layer "
                            f"call ({len(rec)}: {[self.nodes[i].layer for i in rec]}); got "
                            f"{len(h) if isinstance(h, (tuple, list)) else type(h).__name__}.")
        for i, s in zip(rec, h):
            if s is not None and self.nodes[i].initial_state:
                raise ValueError(f"`h` has a state for {self.nodes[i].layer!r}, whose initial state comes from the "
                                 "graph (`initial_state=`); pass None there.")
        return tuple(h)

    def __call__(self, params: dict, h, inputs):
        """``(params, h, inputs) -> (h, outputs)``, ``outputs`` being the Keras model's.

        Args:
          params: ``{layer name: params}`` (see the class docstring).
          h: None, or a tuple with one entry per recurrent layer call (``recurrent_nodes``
            order): an initial state (as in :class:`KerasRNN`) or None for zeros. A call
            whose initial state comes from the graph (``initial_state=``) takes None.
          inputs: what the Keras model takes: one array, or a list in ``model.inputs``
            order (or a dict by Input name) for several: ``[B, T, I]`` floats, ``[B, T]``
            integer ids for an Embedding, ``[B, T]`` booleans for a ``mask=``,
            ``[B, H]`` floats for an ``initial_state=``.

        Returns:
          ``(h, outputs)``: the final state of every recurrent layer call (a tuple, in
          ``recurrent_nodes`` order) and the model's output(s): one array, a list, or a
          dict, as the Keras model returns them.
        """
        self.check_params(params)
        values = self._bind_inputs(inputs)
        states = iter(self._check_state(h))
        specs = dict(self.layers)
        finals = []
        for node in self.nodes:
            spec, p, x = specs[node.layer], params.get(node.layer), values[node.x]
            what = f"layer {node.layer!r}"
            if _is_recurrent_spec(spec):
                s = next(states)
                if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim != 3:
                    raise ValueError(f"{what} must be called on floats [B, T, F]; got {x.dtype} {tuple(x.shape)}.")
                size = _check_cell_params(spec.forward.cell if isinstance(spec, KerasBidirectional) else spec.cell,
                                          p.forward if isinstance(spec, KerasBidirectional) else p, what)
                if x.shape[-1] != size:
                    raise ValueError(f"{what} takes {size} features; got an input of shape {tuple(x.shape)}.")
                if x.shape[1] == 0:
                    raise ValueError(f"{what}: the input must have at least one time step (Keras needs one); got T=0.")
                m = None
                if node.mask is not None:
                    m = values[node.mask]
                    if tuple(m.shape) != tuple(x.shape[:2]):
                        raise ValueError(f"{what}: `mask` must have shape [B, T] = {list(x.shape[:2])}; got "
                                         f"{tuple(m.shape)}.")
                    m = m.astype(bool)
                if node.initial_state:
                    s = _state_from_flat(spec, [values[v] for v in node.initial_state])
                s, y = _run_layer(spec, p, s, x, m)
                finals.append(s)
                outs = [y] + _flat_state(s) if len(node.outputs) > 1 else [y]
            elif isinstance(spec, KerasEmbedding):
                if not jnp.issubdtype(x.dtype, jnp.integer):
                    raise TypeError(f"{what} (Embedding) must be called on integer ids; got dtype {x.dtype}.")
                outs = [jnp.take(p, x, axis=0)]
                if spec.mask_zero:
                    outs.append(x != 0)
            elif isinstance(spec, KerasMasking):
                m = jnp.any(x != spec.mask_value, axis=-1)
                outs = [jnp.where(m[..., None], x, 0).astype(x.dtype), m]
            elif isinstance(spec, KerasDropout):
                outs = [x]
            else:
                if x.shape[-1] != p.w.shape[1]:
                    raise ValueError(f"{what} (Dense) takes {p.w.shape[1]} features; got an input of shape "
                                     f"{tuple(x.shape)}.")
                outs = [_ACTIVATIONS[spec.activation](dense(p, x))]
            if len(outs) != len(node.outputs):
                raise ValueError(f"{what}: the node lists {len(node.outputs)} outputs; the layer gives {len(outs)}.")
            values.extend(outs)
        ys = [values[v] for v in self.outputs]
        if self.output_keys is not None:
            ys = dict(zip(self.output_keys, ys))
        elif self.single_output:
            ys = ys[0]
        return tuple(finals), ys


_FUNCTIONAL_SUPPORTED = "InputLayer, Embedding, Masking, SimpleRNN, GRU, LSTM, Bidirectional, Dropout, Dense"


def _flat_tensors(value, keras) -> Optional[list]:
    """A KerasTensor or a (nested) list of them as a flat list; None for None; else False."""
    if value is None:
        return None
    if isinstance(value, keras.KerasTensor):
        return [value]
    if isinstance(value, (list, tuple)):
        flat = []
        for v in value:
            f = _flat_tensors(v, keras)
            if not f:
                return False
            flat.extend(f)
        return flat
    return False


def _from_functional(keras, model):
    """A functional ``keras.Model`` -> ``(KerasGraph, params)``, reading its nodes."""
    inputs = list(model.inputs)
    value_of = {id(kt): i for i, kt in enumerate(inputs)}  # KerasTensor -> value number
    graph_inputs = []
    for kt in inputs:
        op = kt._keras_history.operation
        graph_inputs.append(KerasInput(str(op.name), tuple(kt.shape[1:]), str(kt.dtype)))
    # Embedding(mask_zero) and Masking compute their masks with ops (NotEqual, Any) that Keras
    # hangs on the graph and passes on as `mask=`: such a mask is read as the layer's output.
    mask_owner = {}
    for depth_nodes in model._nodes_by_depth.values():
        for node in depth_nodes:
            if type(node.operation) in (keras.layers.Embedding, keras.layers.Masking) and node.outputs:
                mk = getattr(node.outputs[0], "_keras_mask", None)
                if mk is not None:
                    mask_owner[id(mk)] = node
    n_values = [len(inputs)]
    specs, params, nodes, done = {}, {}, [], set()

    def value(kt, context):
        if id(kt) in value_of:
            return value_of[id(kt)]
        owner = mask_owner.get(id(kt))
        if owner is not None:
            convert(owner)
            return value_of[id(kt)]
        hist = getattr(kt, "_keras_history", None)
        if hist is None or hist.operation is None:
            raise ValueError(f"{context}: a tensor that is not connected to the model's inputs.")
        node = hist.operation._inbound_nodes[hist.node_index]
        if node.is_input:
            raise ValueError(f"{context}: an Input that is not among `model.inputs` ({hist.operation.name!r}).")
        convert(node)
        return value_of[id(kt)]

    def convert(node):
        if id(node) in done:
            return
        op = node.operation
        kind = type(op)
        what = _describe_layer(op)
        supported = (_is_recurrent(keras, op) or kind in (
            keras.layers.Bidirectional, keras.layers.Embedding, keras.layers.Masking, keras.layers.Dropout,
            keras.layers.Dense))
        if not supported:
            raise ValueError(f"{what} has no jaxrnn counterpart in a functional model; supported: "
                             f"{_FUNCTIONAL_SUPPORTED}.")
        try:
            bound = inspect.signature(op.call).bind(*node.arguments.args, **node.arguments.kwargs).arguments
        except TypeError as e:  # pragma: no cover - Keras bound them when the model was built
            raise ValueError(f"{what}: cannot read its call arguments ({e}).") from e
        names = list(bound)
        x_kt = bound[names[0]]
        if not isinstance(x_kt, keras.KerasTensor):
            raise ValueError(f"{what}: its input `{names[0]}` must be one tensor; got {type(x_kt).__name__}.")
        recurrent = _is_recurrent(keras, op) or kind is keras.layers.Bidirectional
        allowed = {names[0], "training"} | ({"mask", "initial_state"} if recurrent else set())
        for arg in names:
            if arg not in allowed and bound[arg] is not None:
                raise ValueError(f"{what}: the call argument `{arg}` has no jaxrnn counterpart.")
        if bound.get("training") is True and _dropout_rate(op):
            raise ValueError(f"{what} is called with `training=True`: its dropout would act at inference.")
        x = value(x_kt, what)
        mask, initial = None, ()
        if recurrent:
            mask_arg = bound.get("mask")
            if mask_arg is not None:
                if not isinstance(mask_arg, keras.KerasTensor):
                    raise ValueError(f"{what}: `mask` must be a tensor of the graph; got {type(mask_arg).__name__}.")
                mask = value(mask_arg, what)
            flat = _flat_tensors(bound.get("initial_state"), keras)
            if flat is False:
                raise ValueError(f"{what}: `initial_state` must be tensors of the graph (e.g. keras.Input or "
                                 "another layer's states).")
            initial = tuple(value(kt, what) for kt in flat) if flat else ()
        name = str(op.name)
        if name not in specs:
            if _is_recurrent(keras, op):
                specs[name], params[name] = _convert_recurrent(keras, op)
            elif kind is keras.layers.Bidirectional:
                specs[name], params[name] = _convert_bidirectional(keras, op)
            elif kind is keras.layers.Embedding:
                _no_extras(op, 1)
                _check_float32(op)
                specs[name] = KerasEmbedding(int(op.input_dim), int(op.output_dim), bool(op.mask_zero))
                params[name] = jnp.asarray(_np(op.get_weights()[0]))
            elif kind is keras.layers.Masking:
                specs[name] = KerasMasking(float(op.mask_value))
            elif kind is keras.layers.Dropout:
                specs[name] = KerasDropout(float(op.rate))
            else:
                specs[name], params[name] = _convert_dense(keras, op, what)
        spec = specs[name]
        outs = list(node.outputs)
        if _is_recurrent_spec(spec):
            want = 1 + _state_count(spec) if op.return_state else 1
            if initial and len(initial) != _state_count(spec):
                raise ValueError(f"{what}: `initial_state` must hold {_state_count(spec)} tensors; got {len(initial)}.")
        else:
            want = 1
        if len(outs) != want:  # pragma: no cover - Keras' own layers
            raise ValueError(f"{what}: expected {want} outputs; got {len(outs)}.")
        if isinstance(spec, (KerasEmbedding, KerasMasking)):
            mk = getattr(outs[0], "_keras_mask", None)
            if (mk is not None) != (isinstance(spec, KerasMasking) or spec.mask_zero):  # pragma: no cover
                raise ValueError(f"{what}: Keras' mask for this layer is not where jaxrnn expects it.")
            if mk is not None:
                outs.append(mk)
        first = n_values[0]
        for i, kt in enumerate(outs):
            value_of[id(kt)] = first + i
        n_values[0] += len(outs)
        nodes.append(KerasNode(name, x, mask, initial, tuple(range(first, first + len(outs)))))
        done.add(id(node))

    struct = model._outputs_struct
    if isinstance(struct, dict):
        keys = tuple(struct)
        flat_out = [struct[k] for k in keys]
    elif isinstance(struct, (list, tuple)):
        keys, flat_out = None, list(struct)
    else:
        keys, flat_out = None, [struct]
    outputs = []
    for i, kt in enumerate(flat_out):
        if not isinstance(kt, keras.KerasTensor):
            raise ValueError(f"`model` output {i} must be a tensor; got {type(kt).__name__} (nested outputs are not "
                             "converted).")
        outputs.append(value(kt, f"model output {i}"))
    if not any(_is_recurrent_spec(s) for s in specs.values()):
        raise ValueError("`layer_or_model` holds no recurrent layer (SimpleRNN, GRU, LSTM or Bidirectional).")
    net = KerasGraph(tuple(graph_inputs), tuple(specs.items()), tuple(nodes), tuple(outputs), output_keys=keys,
                     single_output=keys is None and not isinstance(struct, (list, tuple)))
    net.check_params(params)
    return net, params


def _graph_to_keras(keras, net: KerasGraph, params: dict):
    """Rebuilds the functional ``keras.Model`` of a :class:`KerasGraph`, weights loaded."""
    net.check_params(params)
    specs = dict(net.layers)
    returns_state = {n.layer for n in net.nodes if len(n.outputs) > 1 and _is_recurrent_spec(specs[n.layer])}
    inputs = [keras.Input(shape=i.shape, dtype=i.dtype, name=i.name) for i in net.inputs]
    values = list(inputs)
    made = {}
    for node in net.nodes:
        spec = specs[node.layer]
        layer = made.get(node.layer)
        if layer is None:
            extra = dict(return_state=True) if node.layer in returns_state else {}
            if isinstance(spec, KerasBidirectional):
                layer = keras.layers.Bidirectional(
                    _keras_layer(keras, spec.forward, **extra),
                    backward_layer=_keras_layer(keras, spec.backward, **extra),
                    merge_mode=spec.merge_mode, name=node.layer)
            elif isinstance(spec, KerasLayer):
                layer = _keras_layer(keras, spec, name=node.layer, **extra)
            elif isinstance(spec, KerasEmbedding):
                layer = keras.layers.Embedding(spec.input_dim, spec.output_dim, mask_zero=spec.mask_zero,
                                               name=node.layer)
            elif isinstance(spec, KerasMasking):
                layer = keras.layers.Masking(spec.mask_value, name=node.layer)
            elif isinstance(spec, KerasDropout):
                layer = keras.layers.Dropout(spec.rate, name=node.layer)
            elif isinstance(spec, KerasDense):
                layer = keras.layers.Dense(spec.units, activation=spec.activation, name=node.layer)
            else:
                raise TypeError(f"`net.layers[{node.layer!r}]`: {type(spec).__name__} is not a layer spec.")
            made[node.layer] = layer
        kwargs = {}
        if node.mask is not None:
            kwargs["mask"] = values[node.mask]
        if node.initial_state:
            kwargs["initial_state"] = [values[v] for v in node.initial_state]
        out = layer(values[node.x], **kwargs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if isinstance(spec, KerasMasking) or (isinstance(spec, KerasEmbedding) and spec.mask_zero):
            outs.append(out._keras_mask)
        if len(outs) != len(node.outputs) or node.outputs[0] != len(values):
            raise ValueError(f"`net.nodes`: the node of {node.layer!r} must write values {len(values)}.. "
                             f"({len(outs)} of them); it lists {node.outputs}.")
        values.extend(outs)
    outs = [values[v] for v in net.outputs]
    if net.output_keys is not None:
        outs = dict(zip(net.output_keys, outs))
    elif net.single_output:
        outs = outs[0]
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outs)
    for name, layer in made.items():
        spec, p = specs[name], params.get(name)
        if isinstance(spec, KerasBidirectional):
            _set_recurrent(layer.forward_layer, spec.forward.cell, p.forward)
            _set_recurrent(layer.backward_layer, spec.backward.cell, p.backward)
        elif isinstance(spec, KerasLayer):
            _set_recurrent(layer, spec.cell, p)
        elif isinstance(spec, KerasEmbedding):
            layer.embeddings.assign(np.asarray(p, np.float32))
        elif isinstance(spec, KerasDense):
            layer.kernel.assign(np.ascontiguousarray(np.asarray(p.w, np.float32).T))
            layer.bias.assign(np.asarray(p.b, np.float32))
    return model
