"""A zoo of research cells on the jaxrnn cell contract.

Each cell is one module with its equations in its docstring, a hoisted input projection
(``project``/``update``), ``init`` options like the built-in cells, and tests against a
Python loop and an independent implementation where one exists.
"""

from jaxrnn.zoo.peephole import PeepholeLSTMCell, PeepholeLSTMParams, peephole_lstm
from jaxrnn.zoo.layernorm import LayerNormGRUCell, LayerNormGRUParams, LayerNormLSTMCell, LayerNormLSTMParams, layernorm_gru, layernorm_lstm
from jaxrnn.zoo.convlstm import ConvLSTMCell, ConvLSTMParams, conv_lstm
from jaxrnn.zoo.gru_original import OriginalGRUCell, OriginalGRUParams, gru_original
from jaxrnn.zoo.mingru import MinGRUCell, MinGRUParams, MinLSTMCell, MinLSTMParams, min_gru, min_lstm
from jaxrnn.zoo.lru import LRUCell, LRUParams, LRUState, lru
from jaxrnn.zoo.rglru import RGLRUCell, RGLRUParams, RGLRUState, rglru
from jaxrnn.zoo.s6 import S6Cell, S6Params, S6State, s6
from jaxrnn.zoo.slstm import SLSTMCell, SLSTMParams, SLSTMState, slstm
from jaxrnn.zoo.mamba2 import Mamba2Cell, Mamba2Params, Mamba2State, mamba2
from jaxrnn.zoo.mlstm import MLSTMCell, MLSTMParams, MLSTMState, mlstm
from jaxrnn.zoo.deltanet import GatedDeltaNetCell, GatedDeltaNetParams, MatrixCellState, deltanet, gated_deltanet
from jaxrnn.zoo.gla import GLACell, GLAParams, gla

__all__ = [
    "GLACell",
    "GLAParams",
    "GatedDeltaNetCell",
    "GatedDeltaNetParams",
    "MatrixCellState",
    "deltanet",
    "gated_deltanet",
    "gla",
    "MLSTMCell",
    "MLSTMParams",
    "MLSTMState",
    "Mamba2Cell",
    "Mamba2Params",
    "Mamba2State",
    "mamba2",
    "mlstm",
    "ConvLSTMCell",
    "ConvLSTMParams",
    "LRUCell",
    "LRUParams",
    "LRUState",
    "LayerNormGRUCell",
    "LayerNormGRUParams",
    "LayerNormLSTMCell",
    "LayerNormLSTMParams",
    "MinGRUCell",
    "MinGRUParams",
    "MinLSTMCell",
    "MinLSTMParams",
    "OriginalGRUCell",
    "OriginalGRUParams",
    "PeepholeLSTMCell",
    "PeepholeLSTMParams",
    "conv_lstm",
    "gru_original",
    "layernorm_gru",
    "layernorm_lstm",
    "lru",
    "min_gru",
    "min_lstm",
    "peephole_lstm",
    "RGLRUCell",
    "RGLRUParams",
    "RGLRUState",
    "rglru",
    "S6Cell",
    "S6Params",
    "S6State",
    "s6",
    "SLSTMCell",
    "SLSTMParams",
    "SLSTMState",
    "slstm",
]
