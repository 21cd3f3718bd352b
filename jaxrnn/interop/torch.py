"""Weights in and out of ``torch.nn.RNN``, ``GRU`` and ``LSTM``.

torch is imported lazily, only by the functions that need it; jaxrnn never depends on it.

    net, params = jaxrnn.from_torch(module)           # any num_layers / bidirectional / ...
    h_n, ys = net(params, h_0, xs, seq_lengths=None)  # torch's layouts, a pure function
    module.load_state_dict(jaxrnn.to_torch_state_dict(net, params))

``net`` takes and returns torch's layouts: ``xs`` is ``[B, T, I]`` if the module is
``batch_first`` else ``[T, B, I]`` (``[T, I]`` unbatched); ``h`` is ``h_0`` of shape
``[D * num_layers, B, H_out]`` (``(h_0, c_0)`` for LSTM, ``c_0`` being
``[D * num_layers, B, H]``), or None for zeros, and ``h_n`` likewise. With
``seq_lengths``, ``net`` computes what torch computes on
``pack_padded_sequence(xs, seq_lengths, enforce_sorted=False)`` followed by
``pad_packed_sequence(..., total_length=T)``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import Cell, GRUParams, LSTMParams, LSTMState, RNNParams, gru, lstm, rnn
from jaxrnn.layers import Bidirectional, Stack, StackParams, stack

__all__ = ["TorchRNN", "from_torch", "to_torch_state_dict", "to_torch"]


@dataclasses.dataclass(frozen=True)
class TorchRNN:
    """A jaxrnn network with the calling convention of a ``torch.nn`` recurrent module."""

    net: Stack
    batch_first: bool = False
    input_size: Optional[int] = None

    @property
    def mode(self) -> str:
        kind = self.net.cells[0].kind
        return {"rnn_tanh": "RNN", "rnn_relu": "RNN", "gru": "GRU", "lstm": "LSTM"}[kind]

    def __call__(self, params: StackParams, h, xs, seq_lengths=None, *, resets=None, key=None, unroll=None,
                 remat=False):
        """``(params, h_0, xs) -> (h_n, ys)`` in torch's layouts (see the module docstring);
        ``resets`` (``[B, T]`` if ``batch_first`` else ``[T, B]``) as in :func:`jaxrnn.unroll`."""
        net = self.net
        if self.input_size is not None:
            got = net.check_params(params)
            if got != self.input_size:
                raise ValueError(
                    f"`params` do not fit this network: it was built for input size {self.input_size} "
                    f"(the torch module's), the params take {got}.")
        if not hasattr(xs, "ndim"):
            xs = jnp.asarray(xs)
        if xs.ndim not in (2, 3):
            raise ValueError(f"`xs` must have rank 2 (unbatched) or 3; got shape {tuple(xs.shape)}.")
        unbatched = xs.ndim == 2
        batch_shape = () if unbatched else ((xs.shape[0],) if self.batch_first else (xs.shape[1],))
        states = None if h is None else self._split_state(h, batch_shape)
        states, ys = net(params, states, xs, seq_lengths=seq_lengths, resets=resets, key=key,
                         time_major=not self.batch_first, unroll=unroll, remat=remat)
        return self._join_state(states), ys

    # torch stacks states as [num_layers * D, ...], index l * D + d.
    def _split_state(self, h, batch_shape):
        net, D = self.net, self.net.num_directions
        lstm_ = self.mode == "LSTM"
        if lstm_:
            if not (isinstance(h, (tuple, list)) and len(h) == 2):
                raise TypeError(f"`h` must be an (h_0, c_0) pair for an LSTM; got {type(h).__name__}.")
            parts = {"h": h[0], "c": h[1]}
        else:
            if isinstance(h, (tuple, list)):
                raise TypeError(f"`h` must be a single array h_0 for a {self.mode}; got a {type(h).__name__}.")
            parts = {"h": h}
        sizes = {"h": net.cells[0].output_size, "c": net.cells[0].hidden_size}
        for name, arr in parts.items():
            label = "h" if not lstm_ else ("h[0] (h_0)" if name == "h" else "h[1] (c_0)")
            want = (D * net.num_layers,) + tuple(batch_shape) + (sizes[name],)
            if not hasattr(arr, "shape") or tuple(arr.shape) != want:
                raise ValueError(f"`{label}` must have shape {list(want)}; got {getattr(arr, 'shape', type(arr))}.")
        states = []
        for l, cell in enumerate(net.cells):
            def pick(i):
                return LSTMState(parts["h"][i], parts["c"][i]) if lstm_ else parts["h"][i]
            states.append(Bidirectional(pick(2 * l), pick(2 * l + 1)) if D == 2 else pick(l))
        return tuple(states)

    def _join_state(self, states):
        flat = []
        for s in states:
            flat.extend([s.forward, s.backward] if self.net.bidirectional else [s])
        if self.mode == "LSTM":
            return (jnp.stack([s.h for s in flat]), jnp.stack([s.c for s in flat]))
        return jnp.stack(flat)


def _np(t):
    """A torch tensor as numpy: float64 stays float64 where jax has float64 (``jax_enable_x64``),
    anything else becomes float32."""
    torch = __import__("torch")
    dtype = torch.float64 if (t.dtype == torch.float64 and jax.config.jax_enable_x64) else torch.float32
    return np.asarray(t.detach().cpu().to(dtype=dtype).numpy())


def from_torch(module):
    """Converts a ``torch.nn.RNN``, ``GRU`` or ``LSTM`` to ``(net, params)``.

    Args:
      module: the torch module (any ``num_layers``, ``bidirectional``,
        ``batch_first``, ``bias``, ``nonlinearity``, ``proj_size``, ``dropout``).

    Returns:
      ``(net, params)``: a :class:`TorchRNN` and float32 :class:`StackParams` (float64 for
      a double-precision module with ``jax_enable_x64``).
    """
    import torch  # noqa: F401  (lazy: torch is optional)

    mode = type(module).__name__
    if mode not in ("RNN", "GRU", "LSTM"):
        raise TypeError(f"`module` must be a torch.nn.RNN, GRU or LSTM; got {mode}.")
    H = module.hidden_size
    if mode == "RNN":
        cell = rnn(H, nonlinearity=module.nonlinearity, bias=module.bias)
    elif mode == "GRU":
        cell = gru(H, bias=module.bias)
    else:
        cell = lstm(H, proj_size=getattr(module, "proj_size", 0), bias=module.bias)
    net = stack(cell, num_layers=module.num_layers, bidirectional=module.bidirectional, dropout=module.dropout)
    sd = module.state_dict()
    layers = []
    for l in range(module.num_layers):
        dirs = []
        for suffix in ([""] + (["_reverse"] if module.bidirectional else [])):
            get = lambda name: jnp.asarray(_np(sd[f"{name}_l{l}{suffix}"])) if f"{name}_l{l}{suffix}" in sd else None
            fields = [get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")]
            if mode == "LSTM":
                dirs.append(LSTMParams(*fields, get("weight_hr")))
            else:
                dirs.append((GRUParams if mode == "GRU" else RNNParams)(*fields))
        layers.append(Bidirectional(*dirs) if module.bidirectional else dirs[0])
    params = StackParams(tuple(layers), None)
    tnet = TorchRNN(net, batch_first=module.batch_first, input_size=module.input_size)
    net.check_params(params)
    return tnet, params


def to_torch_state_dict(net: TorchRNN | Stack, params: StackParams) -> dict:
    """The ``state_dict`` of the equivalent torch module: float32 ``torch.Tensor`` values
    (float64 for float64 params)."""
    import torch

    stack_ = net.net if isinstance(net, TorchRNN) else net
    stack_.check_params(params)
    if params.head is not None:
        raise ValueError("`params.head` has no torch.nn.RNN/GRU/LSTM counterpart; export it separately.")
    out = {}
    for l, p in enumerate(params.layers):
        pairs = [("", p.forward), ("_reverse", p.backward)] if stack_.bidirectional else [("", p)]
        for suffix, q in pairs:
            names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh", "w_hr": "weight_hr"}
            for field, tname in names.items():
                value = getattr(q, field, None)
                if value is not None:
                    dtype = np.float64 if value.dtype == np.float64 else np.float32
                    out[f"{tname}_l{l}{suffix}"] = torch.from_numpy(np.array(value, dtype=dtype))
    return out


def to_torch(net: TorchRNN | Stack, params: StackParams, *, batch_first: Optional[bool] = None):
    """Builds the equivalent ``torch.nn.RNN/GRU/LSTM`` with these weights loaded."""
    import torch

    stack_ = net.net if isinstance(net, TorchRNN) else net
    if batch_first is None:
        batch_first = net.batch_first if isinstance(net, TorchRNN) else True
    if not all(isinstance(c, Cell) for c in stack_.cells):
        raise ValueError("`net` must be made of jaxrnn.rnn/gru/lstm cells: torch.nn.RNN/GRU/LSTM have no "
                         f"counterpart for {[c for c in stack_.cells if not isinstance(c, Cell)]}.")
    kinds = {c.kind for c in stack_.cells}
    sizes = {(c.hidden_size, c.proj_size, c.bias) for c in stack_.cells}
    if len(kinds) != 1 or len(sizes) != 1:
        raise ValueError("torch modules need every layer of one cell type and size; this stack mixes them.")
    cell: Cell = stack_.cells[0]
    input_size = stack_.check_params(params)
    common = dict(input_size=input_size, hidden_size=cell.hidden_size, num_layers=stack_.num_layers,
                  bias=cell.bias, batch_first=batch_first, dropout=stack_.dropout,
                  bidirectional=stack_.bidirectional)
    if cell.kind.startswith("rnn"):
        module = torch.nn.RNN(nonlinearity=cell.kind[4:], **common)
    elif cell.kind == "gru":
        module = torch.nn.GRU(**common)
    else:
        module = torch.nn.LSTM(proj_size=cell.proj_size, **common)
    state_dict = to_torch_state_dict(stack_, params)
    if any(v.dtype == torch.float64 for v in state_dict.values()):
        module = module.double()
    module.load_state_dict(state_dict)
    return module
