"""jaxrnn: recurrent neural networks in JAX, exact to PyTorch and fast.

The public surface, small on purpose:

* cells (``rnn``, ``gru``, ``lstm``) -- bundles of pure functions over NamedTuple params
  in PyTorch's layout: ``cell.init``, ``cell.step(params, h, x) -> (h, y)``; any function
  ``step(params, h, x) -> (h, y)`` or object on the same contract is a cell too
  (``RecurrentCell``, :mod:`jaxrnn.contract`);
* ``unroll(cell, params, h, xs) -> (h, ys)`` -- a cell over a sequence with ``lax.scan``,
  with lengths, resets, reverse and remat;
* ``stack(...)`` -- stacks, bidirectional layers, dropout, a dense head; itself
  ``(params, h, xs) -> (h, ys)``;
* ``from_torch`` / ``to_torch`` / ``to_torch_state_dict``, ``from_keras`` / ``to_keras``,
  ``from_flax`` / ``to_flax_linen`` / ``to_flax_nnx`` -- weights in and out (torch and keras
  imported lazily); ``jaxrnn.nnx`` and ``jaxrnn.linen`` -- flax modules over any cell or stack;
* ``jaxrnn.zoo`` -- research cells on the same contract (peephole, layer-norm, original GRU,
  ConvLSTM, minGRU/minLSTM, LRU); ``linear_scan`` and ``Newton``/``newton_unroll`` --
  evaluation in parallel over time;
* ``jaxrnn.train`` -- optax train state, steps, fit loop, losses, checkpoints, sampling;
* ``jaxrnn.distributed`` -- data parallelism over a ``jax.sharding.Mesh`` (``jaxrnn.parallel``,
  its old name, still imports, with a ``DeprecationWarning``).
"""

from jaxrnn import distributed, train, zoo
from jaxrnn import rl
from jaxrnn.cells import (Cell, GRUCell, GRUParams, LSTMCell, LSTMParams, LSTMState, RNNCell, RNNParams, gru,
                          lstm, rnn)
from jaxrnn.contract import FunctionCell, RecurrentCell
from jaxrnn.interop.flax import from_flax, to_flax_linen, to_flax_nnx
from jaxrnn.interop.keras import KerasRNN, from_keras, to_keras
from jaxrnn.interop.torch import TorchRNN, from_torch, to_torch, to_torch_state_dict
from jaxrnn.linear import linear_scan
from jaxrnn.matrix import matrix_scan
from jaxrnn.newton import Newton, NewtonInfo, newton_unroll
from jaxrnn.layers import Bidirectional, DenseParams, Stack, StackParams, stack
from jaxrnn.scan import default_unroll, unroll
from jaxrnn.train import (
    TrainState,
    fit,
    generate,
    make_eval_step,
    make_train_step,
    restore_checkpoint,
    save_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "Bidirectional",
    "Cell",
    "DenseParams",
    "FunctionCell",
    "GRUCell",
    "GRUParams",
    "KerasRNN",
    "LSTMCell",
    "LSTMParams",
    "LSTMState",
    "Newton",
    "NewtonInfo",
    "RNNCell",
    "RNNParams",
    "RecurrentCell",
    "Stack",
    "StackParams",
    "TorchRNN",
    "TrainState",
    "default_unroll",
    "distributed",
    "fit",
    "from_flax",
    "from_keras",
    "from_torch",
    "generate",
    "gru",
    "linear_scan",
    "lstm",
    "make_eval_step",
    "make_train_step",
    "matrix_scan",
    "newton_unroll",
    "restore_checkpoint",
    "rl",
    "rnn",
    "save_checkpoint",
    "stack",
    "to_flax_linen",
    "to_flax_nnx",
    "to_keras",
    "to_torch",
    "to_torch_state_dict",
    "train",
    "unroll",
    "zoo",
]


#: Submodules imported on first use: ``jaxrnn.nnx`` and ``jaxrnn.linen`` import flax (so that
#: ``import jaxrnn`` imports no flax, torch or keras), ``jaxrnn.parallel`` warns.
_LAZY_SUBMODULES = ("linen", "nnx", "parallel")


def __getattr__(name):
    # `jaxrnn.parallel`, the deprecated name of `jaxrnn.distributed`, is imported (and warns) on first use only.
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"jaxrnn.{name}")
    raise AttributeError(f"module 'jaxrnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
