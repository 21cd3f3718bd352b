"""Networks of cells: stacks, bidirectional layers, dropout between layers, a dense head.

A network keeps the cell convention, ``(params, h, xs) -> (h, ys)``::

    net = jaxrnn.stack([jaxrnn.gru(64), jaxrnn.lstm(32)], bidirectional=True, dropout=0.1, head=10)
    params = net.init(key, input_size=8)
    h, ys = net(params, None, xs, seq_lengths=lengths, key=dropout_key)

A bidirectional layer runs, for every sequence,::

    h_fwd, ys_fwd = unroll(fwd_cell, ..., xs, seq_lengths)                 # t = 0 .. L-1
    h_bwd, ys_bwd = unroll(bwd_cell, ..., xs, seq_lengths, reverse=True)   # t = L-1 .. 0
    ys = concatenate([ys_fwd, ys_bwd], axis=-1)

so padding never enters the backward direction first, exactly like PyTorch on a packed
sequence. Dropout (probability ``dropout``) is applied to the outputs of every layer
but the last, only when a ``key`` is passed; without a key the network is deterministic.

The state ``h`` of a network is a tuple with one entry per layer: the cell's state, or a
:class:`Bidirectional` ``(forward, backward)`` pair of states. ``None`` means zeros.
A unidirectional stack is also a cell: :meth:`Stack.step` advances every layer by one
time step (TensorFlow's ``MultiRNNCell``), for generating token by token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import scan as _scan
from jaxrnn.cells import _describe, check_input, state_dtype
from jaxrnn.contract import feature_axes, missing, uses

Array = jax.Array

__all__ = ["Stack", "StackParams", "DenseParams", "Bidirectional", "stack"]


class DenseParams(NamedTuple):
    """A dense layer in ``torch.nn.Linear`` layout: ``y = x @ w.T + b``, ``w: [out, in]``."""

    w: Array
    b: Array


class Bidirectional(NamedTuple):
    """A (forward, backward) pair: the params or the state of a bidirectional layer."""

    forward: Any
    backward: Any


class StackParams(NamedTuple):
    """Params of a :class:`Stack`: one entry per layer, and the head's (or None)."""

    layers: tuple
    head: Optional[DenseParams] = None


@dataclasses.dataclass(frozen=True)
class Stack:
    """A stack of recurrent layers; build it with :func:`stack`."""

    cells: tuple
    bidirectional: bool = False
    dropout: float = 0.0
    head: Optional[int] = None

    @property
    def num_layers(self) -> int:
        return len(self.cells)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Feature size of ``ys``: the head's size, or the last layer's (times 2 if bidirectional)."""
        if self.head is not None:
            return self.head
        return self.cells[-1].output_size * self.num_directions

    def __repr__(self) -> str:
        opts = ""
        if self.bidirectional:
            opts += ", bidirectional=True"
        if self.dropout:
            opts += f", dropout={self.dropout}"
        if self.head is not None:
            opts += f", head={self.head}"
        return f"stack([{', '.join(map(repr, self.cells))}]{opts})"

    # ------------------------------------------------------------------ init
    def init(self, key: Array, input_size: int) -> StackParams:
        """Initial params for inputs of size ``input_size``."""
        keys = jax.random.split(key, self.num_layers + 1)
        layers, size = [], input_size
        for cell, k in zip(self.cells, keys[:-1]):
            if self.bidirectional:
                kf, kb = jax.random.split(k)
                layers.append(Bidirectional(cell.init(kf, size), cell.init(kb, size)))
            else:
                layers.append(cell.init(k, size))
            size = cell.output_size * self.num_directions
        head = None
        if self.head is not None:
            bound = 1.0 / math.sqrt(size)
            kw, kb = jax.random.split(keys[-1])
            head = DenseParams(
                jax.random.uniform(kw, (self.head, size), jnp.float32, -bound, bound),
                jax.random.uniform(kb, (self.head,), jnp.float32, -bound, bound),
            )
        return StackParams(tuple(layers), head)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype=jnp.float32) -> tuple:
        """Zero state: a tuple with one entry per layer."""
        states = []
        for cell in self.cells:
            s = cell.initial_state(batch_shape, dtype)
            states.append(Bidirectional(s, cell.initial_state(batch_shape, dtype)) if self.bidirectional else s)
        return tuple(states)

    # -------------------------------------------------------------- checking
    def check_params(self, params, name: str = "params") -> Optional[int]:
        """Checks ``params`` against this network; returns the input size (None when the
        first layer's cell cannot tell it: a custom cell without ``check_params``)."""
        if not isinstance(params, StackParams):
            raise TypeError(f"`{name}` must be StackParams for {self!r}; got {type(params).__name__}.")
        if len(params.layers) != self.num_layers:
            raise ValueError(
                f"`{name}.layers` must have {self.num_layers} entries for {self!r}; got {len(params.layers)}."
            )
        input_size = size = None
        for l, (cell, p) in enumerate(zip(self.cells, params.layers)):
            label = f"{name}.layers[{l}]"
            check = getattr(cell, "check_params", None)
            if self.bidirectional:
                if not isinstance(p, Bidirectional):
                    raise TypeError(f"`{label}` must be Bidirectional(forward, backward); got {type(p).__name__}.")
                sizes = {None} if check is None else {check(p.forward, f"{label}.forward"),
                                                      check(p.backward, f"{label}.backward")}
                if len(sizes) != 1:
                    raise ValueError(f"`{label}`: forward and backward input sizes differ: {sorted(sizes)}.")
                got = sizes.pop()
            else:
                got = None if check is None else check(p, label)
            if l == 0:
                input_size = got
            elif got is not None and size is not None and got != size:
                raise ValueError(
                    f"`{label}.w_ih` must take the previous layer's {size} features; got input size {got}."
                )
            size = cell.output_size * self.num_directions
        if self.head is None:
            if params.head is not None:
                raise ValueError(f"`{name}.head` must be None: {self!r} has no head.")
        else:
            want = {"w": (self.head, size), "b": (self.head,)}
            if not isinstance(params.head, DenseParams):
                raise TypeError(f"`{name}.head` must be DenseParams; got {type(params.head).__name__}.")
            for field, shape in want.items():
                got = tuple(getattr(params.head, field).shape)
                if got != shape:
                    raise ValueError(f"`{name}.head.{field}` must have shape {list(shape)}; got {got}.")
        return input_size

    def check_state(self, h, batch_shape: tuple, name: str = "h", dtype=jnp.float32) -> tuple:
        if h is None:
            return self.initial_state(batch_shape, dtype)
        if not isinstance(h, (tuple, list)) or len(h) != self.num_layers:
            raise TypeError(
                f"`{name}` must be a tuple with one state per layer ({self.num_layers}) or None; "
                f"got {_describe(h)}."
            )
        out = []
        for l, (cell, s) in enumerate(zip(self.cells, h)):
            if self.bidirectional:
                if not (isinstance(s, (tuple, list)) and len(s) == 2):
                    raise TypeError(f"`{name}[{l}]` must be a Bidirectional(forward, backward) pair; got {_describe(s)}.")
                out.append(Bidirectional(_check_cell_state(cell, s[0], batch_shape, f"{name}[{l}].forward", dtype),
                                         _check_cell_state(cell, s[1], batch_shape, f"{name}[{l}].backward", dtype)))
            else:
                out.append(_check_cell_state(cell, s, batch_shape, f"{name}[{l}]", dtype))
        return tuple(out)

    # --------------------------------------------------------------- running
    def __call__(
        self,
        params: StackParams,
        h,
        xs: Array,
        *,
        seq_lengths: Optional[Array] = None,
        resets: Optional[Array] = None,
        reset_state=None,
        key: Optional[Array] = None,
        deterministic: Optional[bool] = None,
        time_major: bool = False,
        unroll: Optional[int] = None,
        remat: Union[bool, int] = False,
        hoist: bool = True,
        num_feature_axes: Optional[int] = None,
        custom_vjp: bool = True,
        mode="sequential",
        chunk_size: Optional[int] = None,
    ):
        """Runs the network over a sequence: ``(params, h, xs) -> (h, ys)``.

        Args:
          params: from :meth:`init`.
          h: a tuple of per-layer states, or None for zeros.
          xs: ``[*batch, T, *features]`` (``[T, *batch, *features]`` if ``time_major``).
          seq_lengths: optional ``[*batch]`` integer lengths (see :func:`jaxrnn.unroll`).
          resets: optional ``[*batch, T]`` boolean segment starts, for every layer and
            direction (see :func:`jaxrnn.unroll`).
          reset_state: the state each segment starts from (a tuple like ``h``), or None
            for zeros.
          key: PRNG key for dropout between layers.
          deterministic: whether dropout is off, as flax's ``deterministic``: True turns it
            off even with a ``key``; False turns it on and needs a ``key``; None (default)
            turns it on exactly when a ``key`` is given.
          time_major, unroll, remat, hoist, num_feature_axes, custom_vjp, mode, chunk_size:
            as in :func:`jaxrnn.unroll`, for every layer (an option that applies to no
            layer raises, naming it).

        Returns:
          ``(h, ys)``: per-layer final states and the outputs of the last layer
          (after the head, if any), ``[*batch, T, output_size]``.
        """
        mode = _scan._check_mode(mode)
        for cell in self.cells:
            _scan.check_options(cell, mode, unroll=unroll, remat=remat, hoist=hoist, custom_vjp=custom_vjp,
                                chunk_size=chunk_size, num_feature_axes=num_feature_axes)
        if num_feature_axes is not None and num_feature_axes != self.num_feature_axes:
            raise ValueError(f"`num_feature_axes` must be {self.num_feature_axes} (or None) for this stack, "
                             f"whose first layer is {self.cells[0]!r}; got {num_feature_axes!r}.")
        train = _dropout_on(self.dropout, key, deterministic)
        static = dict(reverse=False, time_major=bool(time_major), unroll=unroll, remat=remat, hoist=bool(hoist),
                      custom_vjp=bool(custom_vjp), mode=mode, chunk_size=chunk_size, train=train)
        xs, seq_lengths, resets = _scan._as_array(xs), _scan._as_array(seq_lengths), _scan._as_array(resets)
        return _scan.call_compiled(_stack_impl, self, static, params, h, xs, seq_lengths, resets, reset_state,
                                   key if train else None, custom_vjp=custom_vjp)

    def _call(self, o, params, h, xs, seq_lengths, resets, reset_state, key):
        time_major, unroll, remat, hoist = o["time_major"], o["unroll"], o["remat"], o["hoist"]
        custom_vjp, mode, chunk_size = o["custom_vjp"], o["mode"], o["chunk_size"]
        input_size = self.check_params(params)
        F = self.num_feature_axes
        xs = check_input(xs, input_size, min_rank=F + 1, name="xs", feature_axes=F)
        xs_T, batch_shape, restore = _scan.to_time_major(xs, time_major, F, flatten=F == 1)
        T = xs_T.shape[0]
        lengths = _scan.check_seq_lengths(seq_lengths, batch_shape, T, flatten=F == 1)
        resets_T = _scan.check_resets(resets, batch_shape, T, time_major)
        states = self.check_state(h, batch_shape, dtype=state_dtype(xs, params))
        resets_states = None
        if resets_T is not None:
            resets_T = resets_T.reshape(xs_T.shape[: xs_T.ndim - F])
            if reset_state is not None:
                resets_states = self.check_state(reset_state, batch_shape, "reset_state",
                                                 dtype=state_dtype(xs, params))
        flat = lambda s: jax.tree.map(lambda a: a.reshape(xs_T.shape[1:xs_T.ndim - F] + a.shape[len(batch_shape):]), s)
        keys = list(jax.random.split(key, self.num_layers)) if key is not None else None
        opts = dict(lengths=lengths, resets=resets_T, unroll=unroll, remat=remat, hoist=hoist,
                    custom_vjp=custom_vjp, mode=mode, chunk_size=chunk_size)
        unflat = lambda s: jax.tree.map(lambda a: a.reshape(tuple(batch_shape) + a.shape[xs_T.ndim - F - 1:]), s)
        new_states, ys = [], xs_T
        for l, (cell, p, s) in enumerate(zip(self.cells, params.layers, states)):
            rs = None if resets_states is None else resets_states[l]
            if self.bidirectional:
                cf, yf = _scan.run(cell, p.forward, flat(s.forward), ys, **opts,
                                   reset_state=None if rs is None else flat(rs.forward))
                cb, yb = _scan.run(cell, p.backward, flat(s.backward), ys, reverse=True, **opts,
                                   reset_state=None if rs is None else flat(rs.backward))
                new_states.append(Bidirectional(unflat(cf), unflat(cb)))
                ys = jnp.concatenate([yf, yb], axis=-1)
            else:
                c, ys = _scan.run(cell, p, flat(s), ys, **opts, reset_state=None if rs is None else flat(rs))
                new_states.append(unflat(c))
            if keys is not None and l < self.num_layers - 1:
                ys = _dropout(keys[l], ys, self.dropout)
        if params.head is not None:
            ys = dense(params.head, ys)
        return tuple(new_states), restore(ys)

    @property
    def num_feature_axes(self) -> int:
        """Feature axes of the network's input: the first layer's cell's."""
        return feature_axes(self.cells[0], None)

    def step(self, params: StackParams, h, x: Array, *, key: Optional[Array] = None,
             deterministic: Optional[bool] = None):
        """One time step through every layer, ``(params, h, x) -> (h, y)``.

        Only for unidirectional stacks (a backward direction needs the whole sequence).
        ``x`` is ``[*batch, input_size]``; ``y`` is the head's output if there is one.
        ``key`` and ``deterministic`` as in :meth:`__call__`.
        """
        if self.bidirectional:
            raise ValueError("`step` needs a unidirectional stack: a backward direction needs the whole sequence.")
        input_size = self.check_params(params)
        F = self.num_feature_axes
        x = check_input(x, input_size, min_rank=F, name="x", feature_axes=F)
        batch_shape = tuple(x.shape[: x.ndim - F])
        states = self.check_state(h, batch_shape, dtype=state_dtype(x, params))
        keys = list(jax.random.split(key, self.num_layers)) if _dropout_on(self.dropout, key, deterministic) else None
        new_states, y = [], x
        for l, (cell, p, s) in enumerate(zip(self.cells, params.layers, states)):
            if uses(cell, "project", "update"):
                s, y = cell.update(p, s, cell.project(p, y))
            else:
                s, y = cell.step(p, s, y)
            new_states.append(s)
            if keys is not None and l < self.num_layers - 1:
                y = _dropout(keys[l], y, self.dropout)
        if params.head is not None:
            y = dense(params.head, y)
        return tuple(new_states), y


def _stack_impl(net, static, params, h, xs, seq_lengths, resets, reset_state, key):
    return net._call(dict(static), params, h, xs, seq_lengths, resets, reset_state, key)


def _dropout_on(rate, key, deterministic) -> bool:
    """Whether dropout runs: see :meth:`Stack.__call__`'s ``deterministic``."""
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"`deterministic` must be True, False or None; got {deterministic!r}.")
    if deterministic is False and key is None and rate > 0:
        raise ValueError("`deterministic=False` turns dropout on, which needs a PRNG `key`; got key=None.")
    if deterministic is True:
        return False
    return key is not None and rate > 0


def _check_cell_state(cell, s, batch_shape, name, dtype):
    """A layer's state checked by its cell (built-in cells), or against the structure and
    shapes of the cell's initial state (any cell); None gives the initial state."""
    if hasattr(cell, "check_state"):
        return cell.check_state(s, batch_shape, name, dtype=dtype)
    want = cell.initial_state(batch_shape, dtype)
    if s is None:
        return want
    if jax.tree.structure(s) != jax.tree.structure(want):
        raise TypeError(f"`{name}` must have the structure of {cell!r}'s state, {jax.tree.structure(want)}; "
                        f"got {jax.tree.structure(s)}.")
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(want)):
        if tuple(getattr(a, "shape", ())) != tuple(b.shape):
            raise ValueError(f"`{name}` leaves must have shapes {[tuple(x.shape) for x in jax.tree.leaves(want)]}; "
                             f"got {[tuple(getattr(x, 'shape', ())) for x in jax.tree.leaves(s)]}.")
    return s


def dense(params: DenseParams, x: Array) -> Array:
    """``x @ w.T + b`` over the last axis."""
    return jnp.einsum("...i,oi->...o", x, params.w) + params.b


def _dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def stack(
    cells,
    *,
    num_layers: Optional[int] = None,
    bidirectional: bool = False,
    dropout: float = 0.0,
    head: Optional[int] = None,
) -> Stack:
    """A network of recurrent layers (see the module docstring).

    Args:
      cells: one cell per layer (mixed types allowed, e.g. ``[gru(64), lstm(32)]``),
        or a single cell repeated ``num_layers`` times.
      num_layers: with a single cell, how many layers.
      bidirectional: every layer runs both directions; outputs are concatenated.
      dropout: dropout probability on the outputs of every layer but the last.
      head: if set, a dense layer mapping the last layer's outputs to ``head`` features.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> net = jaxrnn.stack([jaxrnn.gru(8), jaxrnn.lstm(4)], bidirectional=True, head=3)
      >>> params = net.init(jax.random.key(0), input_size=5)
      >>> h, ys = net(params, None, jnp.ones((2, 7, 5)), seq_lengths=jnp.array([7, 3]))
      >>> ys.shape, len(h)
      ((2, 7, 3), 2)
    """
    if callable(getattr(cells, "step", None)) or callable(cells):
        cells = (cells,) * (1 if num_layers is None else int(num_layers))
    else:
        cells = tuple(cells)
        if num_layers is not None and num_layers != len(cells):
            raise ValueError(f"`num_layers` ({num_layers}) disagrees with the {len(cells)} cells given.")
    if not cells:
        raise ValueError("`cells` must hold at least one cell.")
    for i, c in enumerate(cells):
        if not callable(getattr(c, "step", None)):
            what = "a plain function" if callable(c) else type(c).__name__
            raise TypeError(
                f"`cells[{i}]` must be a cell object with `step`, `init`, `initial_state` and `output_size` "
                f"(jaxrnn.rnn/gru/lstm, a jaxrnn.zoo cell, your own); got {what}.")
        lacking = missing(c, ("init", "initial_state", "output_size"))
        if lacking:
            raise TypeError(f"`cells[{i}]` ({c!r}) lacks {', '.join('`' + m + '`' for m in lacking)}: "
                            f"a stack needs them to build its params and zero states.")
    if len({feature_axes(c, None) for c in cells}) != 1:
        raise ValueError("`cells` must all take inputs with the same number of feature axes.")
    if not (0.0 <= float(dropout) < 1.0):
        raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
    if head is not None and (not isinstance(head, (int, np.integer)) or head < 1):
        raise ValueError(f"`head` must be a positive int or None; got {head!r}.")
    return Stack(cells=cells, bidirectional=bool(bidirectional), dropout=float(dropout), head=head)
