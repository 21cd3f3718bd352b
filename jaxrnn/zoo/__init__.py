"""A zoo of research cells on the jaxrnn cell contract.

Each cell is one module with its equations in its docstring, a hoisted input projection
(``project``/``update``), ``init`` options like the built-in cells, and tests against a
Python loop and an independent implementation where one exists.
"""

from jaxrnn.zoo.peephole import PeepholeLSTMCell, PeepholeLSTMParams, peephole_lstm
