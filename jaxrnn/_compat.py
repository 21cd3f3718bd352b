"""What differs between the JAX versions jaxrnn supports (jax 0.7.2, Colab's, to the newest).

One room for every version shim, so that the rest of the library reads one API:

* the jaxpr internals behind automatic hoisting (:mod:`jaxrnn.hoist`): literals and dropped
  variables, binding one equation again (``Primitive.get_bind_params`` returns
  ``(subfuns, params)`` in jax 0.7 and ``params`` in jax 0.10; the equation's context, ``eqn.ctx``,
  re-entered around the bind), and the jaxprs an equation's params hold;
* ``jax_version`` / ``jaxlib_version``: the versions in use, as tuples of ints.

* ``widen_low_precision_products``: XLA:CPU before jaxlib 0.10.1 has no kernel for some
  bfloat16 x bfloat16 -> float32 products (``Unsupported element type for DotThunk::Execute:
  BF16 x BF16 = F32`` on jaxlib 0.7.2, for a ``[T, N, K]`` product, eagerly and inside some
  jitted programs). There the operands, already rounded to bfloat16, are widened to float32
  before the product: a bfloat16 (or float16) value is exactly a float32 value and the product
  of two is exact in float32, so the result is the one the native kernel computes (float32
  accumulation), up to the order of the sum.

Each shim gives the same result on every version; nothing here changes a number.
"""

from __future__ import annotations

import contextlib
import re

import jax

try:  # jax >= 0.4.3x
    from jax.extend.core import Literal
except ImportError:  # pragma: no cover
    from jax.core import Literal

try:  # jax >= 0.8
    from jax.extend.core import DropVar
except ImportError:  # jax 0.7: still public in jax.core
    from jax.core import DropVar

__all__ = ["DropVar", "Literal", "bind_equation", "equation_context", "is_drop", "is_literal",
           "jax_version", "jaxlib_version", "subjaxprs", "widen_low_precision_products"]


def _version_tuple(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


#: ``(major, minor, patch)`` of the jax and jaxlib in use.
jax_version = _version_tuple(jax.__version__)
try:
    import jaxlib

    jaxlib_version = _version_tuple(jaxlib.__version__)
except (ImportError, AttributeError):  # pragma: no cover
    jaxlib_version = jax_version


# ------------------------------------------------------------------ low-precision products
def widen_low_precision_products(operand_dtype, result_dtype) -> bool:
    """Whether a product of ``operand_dtype`` operands into ``result_dtype`` must widen its
    operands to ``result_dtype`` first: a 16-bit float into float32, on XLA:CPU (the default
    backend) before jaxlib 0.10.1, which lacks the kernel. Exact (see the module's notes)."""
    return (jaxlib_version < (0, 10, 1) and jax.numpy.dtype(operand_dtype).itemsize == 2
            and jax.numpy.dtype(result_dtype) != jax.numpy.dtype(operand_dtype) and jax.default_backend() == "cpu")


# ---------------------------------------------------------------------------- jaxpr internals
def is_literal(v) -> bool:
    """Whether the jaxpr atom ``v`` is a literal (read ``v.val``), not a variable."""
    return isinstance(v, Literal)


def is_drop(v) -> bool:
    """Whether the output variable ``v`` is dropped (``_`` in a printed jaxpr)."""
    return isinstance(v, DropVar)


def equation_context(eqn):
    """The context manager that re-enters ``eqn``'s context (compute type, mesh, XLA
    metadata) around a bind, or a null context where the equation has none."""
    manager = getattr(getattr(eqn, "ctx", None), "manager", None)
    return contextlib.nullcontext() if manager is None else manager


def bind_equation(eqn, invals):
    """Binds ``eqn``'s primitive to ``invals`` with its params, as ``jax.core.eval_jaxpr``
    does: a list of outputs where the primitive has several, one output otherwise."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = ()
    if isinstance(bind_params, tuple):  # older jax (0.7.2 among them): (subfuns, params)
        subfuns, bind_params = bind_params
    with equation_context(eqn):
        return eqn.primitive.bind(*subfuns, *invals, **bind_params)


def subjaxprs(eqn):
    """The jaxprs in ``eqn``'s params (scan and while bodies, cond branches, jit and
    custom_vjp calls), as ``jax.extend.core.jaxprs_in_params`` (jax >= 0.10) gives them."""
    try:
        from jax.extend.core import jaxprs_in_params
    except ImportError:  # jax < 0.10: the same walk over the params
        jaxprs_in_params = _jaxprs_in_params
    yield from jaxprs_in_params(eqn.params)


def _jaxprs_in_params(params):
    for v in params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(x, "eqns"):
                yield x
            elif hasattr(getattr(x, "jaxpr", None), "eqns"):
                yield x.jaxpr
