"""Automatic hoisting: the input projection of any step function, out of the loop.

A researcher writes the natural step, ``z = x @ W + h @ U + b; ...``, not a
``project``/``update`` pair. :func:`split` reads the step's jaxpr and sorts every
operation by what it depends on:

* **params only** (``W.T``, a reshaped bias): computed once, before the loop;
* **x, not h** (``x @ W``, any x-only transform): computed for every time step at once,
  before the loop (the step's operations under ``vmap`` over time, so ``x @ W`` becomes
  one ``[T*N, I] x [I, G]`` product);
* **h** (``h @ U`` and everything downstream): the loop body, which reads the first
  two parts' results.

The three parts together are the step's own operations, unchanged and in their order, so
the results are identical to running the step as written (``hoist=False``), and gradients
come from autodiff as usual. Operations with side effects stay in the loop. The x-only
part is hoisted where it pays: when it contains a matrix product or a convolution
(otherwise it stays in the loop). The params-only part always leaves the loop: a weight
sliced or transposed inside a step (``h @ w[:2 * H].T``) is otherwise sliced and transposed
again at every step, which XLA:CPU does not hoist by itself (a GRU written so took 1.6x the
time, fwd+bwd, B1 T1000 H128). The same split applies to a cell's ``update`` (with the
projected input as ``x``).

The jaxpr is read with a small part of JAX's internals (equations' primitives, params,
variables and effects; ``Primitive.bind``), the same that ``jax.core.eval_jaxpr`` uses. What
differs between JAX versions (binding an equation again, literals, dropped variables) lives in
:mod:`jaxrnn._compat`, and ``tests/test_hoist.py``, run on the lowest and the newest supported
jax, fails if hoisting silently stops or changes a result.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax

from jaxrnn._compat import bind_equation as _bind
from jaxrnn._compat import is_drop as _is_drop
from jaxrnn._compat import is_literal as _is_literal

#: Primitives whose presence in the x-only part makes hoisting worth it.
_HEAVY = frozenset({"dot_general", "conv_general_dilated"})
_PARAMS, _X, _H = 0, 1, 2


class Split(NamedTuple):
    """A step function split in three (see the module docstring).

    ``constants(params) -> c`` runs once; ``precompute(params, xs_T) -> r_T`` runs the
    x-only part for all ``T`` steps at once (``xs_T`` has time on axis 0); ``body(c, h,
    r_t) -> (h, y)`` is the loop body.

    ``probes`` are the loop's matrix products of a constant weight ``c[i]`` with a value
    that depends on ``h`` (``h @ U``), as ``(i, shape, dtype)`` of each product's result:
    ``body(c, h, r_t, e)`` adds ``e[k]`` to the ``k``-th product and returns
    ``((h, y), a)``, with ``a[k]`` its other operand; :meth:`weight_grads` is then the
    gradient of every such weight, summed over time, from the stacked ``a`` and the
    cotangents of ``e`` (see :func:`jaxrnn.scan`'s generic VJP).
    """

    constants: Callable
    precompute: Callable
    body: Callable
    probes: tuple = ()
    weight_grads: Optional[Callable] = None


def _eval(eqns, env, probes=None):
    """Evaluates ``eqns`` in order, reading and writing ``env`` (as ``jax.core.eval_jaxpr``).
    ``probes`` maps an equation to ``(e, operand position, outputs list)``: its result gets
    ``e`` added and its other operand is appended to the list."""
    for eqn in eqns:
        invals = [v.val if _is_literal(v) else env[v] for v in eqn.invars]
        outs = _bind(eqn, invals)
        if probes is not None and id(eqn) in probes:
            e, pos, seen = probes[id(eqn)]
            outs = outs + e
            seen.append(invals[1 - pos])
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            if not _is_drop(v):
                env[v] = o


def _feeds(eqn, later, outvars) -> bool:
    """Whether an output of ``eqn`` is read by one of the ``later`` equations or returned."""
    outs = set(v for v in eqn.outvars if not _is_drop(v))
    return any(v in outs for e in later for v in e.invars if not _is_literal(v)) or any(
        v in outs for v in outvars if not _is_literal(v))


def split(step: Callable, params, h, x, hoist_x: bool = True) -> Optional[Split]:
    """Splits ``step(params, h, x) -> (h, y)`` for values shaped like ``params``, ``h`` and
    one step's ``x``; None where nothing is worth hoisting (no x-only matrix product or
    convolution, no params-only work read by the loop) nor any weight to probe. With
    ``hoist_x=False`` the x-only part stays in the loop (see
    :func:`jaxrnn.tuning.hoists_inputs`)."""
    p_leaves, p_def = jax.tree.flatten(params)
    h_leaves, h_def = jax.tree.flatten(h)
    x_leaves, x_def = jax.tree.flatten(x)
    out_def = []

    def flat_step(p, hh, xx):
        out = step(jax.tree.unflatten(p_def, p), jax.tree.unflatten(h_def, hh), jax.tree.unflatten(x_def, xx))
        leaves, tree = jax.tree.flatten(out)
        out_def.append(tree)
        return leaves

    closed = jax.make_jaxpr(flat_step)(p_leaves, h_leaves, x_leaves)
    jaxpr, consts = closed.jaxpr, closed.consts
    n_p, n_h = len(p_leaves), len(h_leaves)
    kind = {v: _PARAMS for v in jaxpr.constvars}
    for i, v in enumerate(jaxpr.invars):
        kind[v] = _PARAMS if i < n_p else (_H if i < n_p + n_h else _X)
    parts = {_PARAMS: [], _X: [], _H: []}
    for eqn in jaxpr.eqns:
        k = max([kind[v] for v in eqn.invars if not _is_literal(v)], default=_PARAMS)
        if eqn.effects:
            k = _H
        parts[k].append(eqn)
        for v in eqn.outvars:
            kind[v] = k
    hoist_x = hoist_x and any(e.primitive.name in _HEAVY for e in parts[_X])
    if not hoist_x:  # the x-only part stays in the loop, in the step's order
        for e in parts[_X]:
            for v in e.outvars:
                kind[v] = _H
        parts[_H] = [e for e in jaxpr.eqns if e in parts[_X] or e in parts[_H]]
        parts[_X] = []
    # What the loop reads of the parts before it (and the outputs that come from them).
    read = [v for e in parts[_H] for v in e.invars] + list(jaxpr.outvars)
    seen = set()
    needed = {_PARAMS: [], _X: []}
    for v in read:
        if not _is_literal(v) and kind[v] != _H and v not in seen:
            seen.add(v)
            needed[kind[v]].append(v)
    p_vars, h_vars, x_vars = jaxpr.invars[:n_p], jaxpr.invars[n_p:n_p + n_h], jaxpr.invars[n_p + n_h:]
    tree = out_def[0]

    def start(p):
        env = dict(zip(jaxpr.constvars, consts))
        env.update(zip(p_vars, jax.tree.leaves(p)))
        return env

    def constants(p):
        env = start(p)
        _eval(parts[_PARAMS], env)
        return [env[v] for v in needed[_PARAMS]]

    def precompute(p, xs_T):
        def one(x_t):
            env = start(p)
            env.update(zip(x_vars, jax.tree.leaves(x_t)))
            _eval(parts[_PARAMS] + parts[_X], env)
            return [env[v] for v in needed[_X]]

        return jax.vmap(one)(xs_T)

    # Products of a constant weight with a value that changes every step (h-dependent, or
    # x itself when the x-only part stays in the loop); a weight qualifies when the loop
    # reads it nowhere else.
    index = {v: i for i, v in enumerate(needed[_PARAMS])}
    candidates = []
    for e in parts[_H]:
        if e.primitive.name == "dot_general" and len(e.invars) == 2 and not any(map(_is_literal, e.invars)):
            ka, kb = kind[e.invars[0]], kind[e.invars[1]]
            if ka != _PARAMS and e.invars[1] in index and kb == _PARAMS:
                candidates.append((e, 1))
            elif kb != _PARAMS and e.invars[0] in index and ka == _PARAMS:
                candidates.append((e, 0))
    uses = {}
    for e in parts[_H]:
        for v in e.invars:
            if not _is_literal(v) and v in index:
                uses[v] = uses.get(v, 0) + 1
    probed = [(e, pos) for e, pos in candidates
              if uses[e.invars[pos]] == sum(1 for e2, p2 in candidates if e2.invars[p2] is e.invars[pos])
              and e.invars[pos] not in set(jaxpr.outvars)]
    probes = tuple((index[e.invars[pos]], e.outvars[0].aval.shape, e.outvars[0].aval.dtype) for e, pos in probed)
    if not hoist_x and not probes and not any(_feeds(e, parts[_H], jaxpr.outvars) for e in parts[_PARAMS]):
        return None

    def body(c, hh, r_t, e=None):
        env = dict(zip(needed[_PARAMS], c))
        env.update(zip(needed[_X], r_t))
        env.update(zip(h_vars, jax.tree.leaves(hh)))
        seen = []
        _eval(parts[_H], env, None if e is None else {id(eq): (e_k, pos, seen) for (eq, pos), e_k in zip(probed, e)})
        out = jax.tree.unflatten(tree, [v.val if _is_literal(v) else env[v] for v in jaxpr.outvars])
        return out if e is None else (out, seen)

    def weight_grads(c, a_T, ct_e_T):
        """Cotangents of ``c`` from the probed products: ``sum_t`` of each product's
        transpose, one product over the whole sequence per weight."""
        grads = [None] * len(c)
        for (eq, pos), (i, _, _), a, ct in zip(probed, probes, a_T, ct_e_T):
            def prod(w, a=a, eq=eq, pos=pos):
                one = lambda a_t: _bind(eq, [a_t, w] if pos == 1 else [w, a_t])
                return jax.vmap(one)(a)
            g = jax.vjp(prod, c[i])[1](ct)[0]
            grads[i] = g if grads[i] is None else grads[i] + g
        return grads

    return Split(constants, precompute, body, probes, weight_grads)
