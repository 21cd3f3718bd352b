"""jaxrnn: recurrent neural networks in JAX, exact to PyTorch and fast."""

from jaxrnn.cells import Cell, GRUParams, LSTMParams, LSTMState, RNNParams, gru, lstm, rnn
from jaxrnn.scan import default_unroll, unroll
from jaxrnn.layers import Bidirectional, DenseParams, Stack, StackParams, stack
from jaxrnn.interop.torch import TorchRNN, from_torch, to_torch, to_torch_state_dict

__version__ = "0.1.0"

__all__ = [
    "Bidirectional",
    "DenseParams",
    "Stack",
    "StackParams",
    "TorchRNN",
    "from_torch",
    "stack",
    "to_torch",
    "to_torch_state_dict",
    "Cell",
    "GRUParams",
    "LSTMParams",
    "LSTMState",
    "RNNParams",
    "default_unroll",
    "gru",
    "lstm",
    "rnn",
    "unroll",
]
