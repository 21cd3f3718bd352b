"""Open cells: any function ``step(params, h, x) -> (h, y)`` or object on the contract runs
under ``jaxrnn.unroll`` and ``jaxrnn.stack`` with every option, equal to a Python loop.

The reference is :func:`jaxrnn.reference.python_unroll` (a Python ``for`` loop of the cell's
own ``step``, masked with ``jnp.where``), values and gradients with respect to params, the
initial state and the inputs, with non-zero biases, random initial states, ragged lengths
including 0.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn._compat import subjaxprs
from jaxrnn.reference import python_stack, python_unroll

I, H, T = 3, 4, 5


# ------------------------------------------------------------------ cells written by a user
def lstm_fn(params, h, x):
    """An LSTM as a researcher writes it: dict params, dict state."""
    z = x @ params["w"] + h["h"] @ params["u"] + params["b"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * h["c"] + jax.nn.sigmoid(i) * jnp.tanh(g)
    hn = jax.nn.sigmoid(o) * jnp.tanh(c)
    return {"h": hn, "c": c}, hn


def lstm_fn_params(seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    u = lambda *s: jnp.asarray(rng.uniform(-scale, scale, s), jnp.float32)
    return {"w": u(I, 4 * H), "u": u(H, 4 * H), "b": u(4 * H)}


class MGUState(NamedTuple):
    h: jax.Array
    steps: jax.Array  # a second leaf, of another shape: how many steps each sequence took


class MGUParams(NamedTuple):
    w: jax.Array
    u: jax.Array
    b: jax.Array


@dataclasses.dataclass(frozen=True)
class MGU:
    """A minimal gated unit (Zhou et al. 2016) as a cell object, NamedTuple state;
    ``project``/``update`` when ``split`` is True."""

    hidden_size: int = H
    split: bool = False

    @property
    def output_size(self):
        return self.hidden_size

    def init(self, key, input_size):
        k1, k2, k3 = jax.random.split(key, 3)
        Hh = self.hidden_size
        return MGUParams(jax.random.uniform(k1, (input_size, 2 * Hh), minval=-0.6, maxval=0.6),
                         jax.random.uniform(k2, (Hh, 2 * Hh), minval=-0.6, maxval=0.6),
                         jax.random.uniform(k3, (2 * Hh,), minval=-0.6, maxval=0.6))

    def initial_state(self, batch_shape=(), dtype=jnp.float32):
        return MGUState(jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype),
                        jnp.zeros(tuple(batch_shape) + (1,), dtype))

    def _update(self, p, h, gx):
        Hh = self.hidden_size
        f = jax.nn.sigmoid(gx[..., :Hh] + h.h @ p.u[:, :Hh])
        n = jnp.tanh(gx[..., Hh:] + (f * h.h) @ p.u[:, Hh:])
        hn = (1 - f) * h.h + f * n
        return MGUState(hn, h.steps + 1), hn

    def step(self, p, h, x):
        return self._update(p, h, x @ p.w + p.b)

    def __getattr__(self, name):
        if name in ("project", "update") and self.split:
            return {"project": lambda p, xs: xs @ p.w + p.b, "update": self._update}[name]
        raise AttributeError(name)


def _random_state(h, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), h)


def _data(batch=(3,), seed=0):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal(batch + (T, I)), jnp.float32)
    return xs


def _loss(run, cell, params, h, xs, w, **opts):
    hT, ys = run(cell, params, h, xs, **opts)
    return jnp.sum(jnp.sin(ys) * w) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(hT))


def _compare(cell, params, h, xs, assert_close, *, ref_opts=None, jit=True, **opts):
    """unroll and python_unroll: loss value and gradients w.r.t. (params, h, xs)."""
    ref_opts = {k: v for k, v in opts.items() if k not in ("unroll", "remat", "hoist")} if ref_opts is None else ref_opts
    out = jax.eval_shape(lambda: jaxrnn.unroll(cell, params, h, xs, **opts))[1]
    w = jnp.asarray(np.random.default_rng(9).standard_normal(out.shape), jnp.float32)
    got_fn = jax.value_and_grad(functools.partial(_loss, jaxrnn.unroll, cell, **opts), argnums=(0, 1, 2))
    got = (jax.jit(got_fn) if jit else got_fn)(params, h, xs, w)
    ref = jax.value_and_grad(functools.partial(_loss, python_unroll, cell, **ref_opts), argnums=(0, 1, 2))(
        params, h, xs, w)
    assert_close(got, ref, err_msg=str(opts))
    # and the forward values themselves
    assert_close(jaxrnn.unroll(cell, params, h, xs, **opts), python_unroll(cell, params, h, xs, **ref_opts),
                 err_msg=str(opts))


LENGTHS = jnp.array([T, 0, 2])
RESETS = jnp.array([[0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [0, 0, 1, 1, 0]], bool)

OPTIONS = [
    dict(),
    dict(seq_lengths=LENGTHS),
    dict(seq_lengths=LENGTHS, reverse=True),
    dict(unroll=2, remat=2, seq_lengths=LENGTHS),
    dict(remat=True, reverse=True),
    dict(resets=RESETS, seq_lengths=LENGTHS),
    dict(resets=RESETS, seq_lengths=LENGTHS, reverse=True, remat=3),
    dict(hoist=False, seq_lengths=LENGTHS, resets=RESETS),
]


@pytest.mark.slow
@pytest.mark.parametrize("opts", OPTIONS, ids=[",".join(o) or "plain" for o in OPTIONS])
def test_plain_function_matches_python_loop(opts, assert_close):
    params = lstm_fn_params()
    h = _random_state({"h": jnp.zeros((3, H)), "c": jnp.zeros((3, H))}, 1)
    _compare(lstm_fn, params, h, _data(), assert_close, **opts)


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True], ids=["step", "project-update"])
@pytest.mark.parametrize("opts", OPTIONS[1:3] + OPTIONS[5:7], ids=["lengths", "reverse", "resets", "resets-rev"])
def test_cell_object_matches_python_loop(split, opts, assert_close):
    cell = MGU(split=split)
    params = cell.init(jax.random.key(0), I)
    h = _random_state(cell.initial_state((3,)), 2)
    _compare(cell, params, h, _data(), assert_close, **opts)


@pytest.mark.slow
def test_time_major_many_batch_dims_and_unbatched(assert_close):
    params = lstm_fn_params()
    xs = _data((2, 3))                                       # [2, 3, T, I]
    h = _random_state({"h": jnp.zeros((2, 3, H)), "c": jnp.zeros((2, 3, H))}, 3)
    lengths = jnp.array([[T, 0, 2], [1, 3, T]])
    resets = jnp.asarray(np.random.default_rng(4).random((2, 3, T)) < 0.3)
    _compare(lstm_fn, params, h, xs, assert_close, seq_lengths=lengths, resets=resets, reverse=True)
    xs_tm, resets_tm = jnp.moveaxis(xs, 2, 0), jnp.moveaxis(resets, 2, 0)
    _compare(lstm_fn, params, h, xs_tm, assert_close, seq_lengths=lengths, resets=resets_tm, time_major=True)
    h1 = jax.tree.map(lambda a: a[0, 0], h)                  # a single sequence: [T, I], state [H]
    _compare(lstm_fn, params, h1, xs[0, 0], assert_close, resets=resets[0, 0])


def test_h_none_starts_from_initial_state_and_functions_need_h():
    cell = MGU()
    params = cell.init(jax.random.key(0), I)
    xs = _data()
    a = jaxrnn.unroll(cell, params, None, xs, seq_lengths=LENGTHS)
    b = jaxrnn.unroll(cell, params, cell.initial_state((3,)), xs, seq_lengths=LENGTHS)
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="`h` must be given"):
        jaxrnn.unroll(lstm_fn, lstm_fn_params(), None, xs)


@pytest.mark.slow
def test_vmap_and_grad_of_unroll(assert_close):
    """vmap over a batch of parameter sets equals a loop over them."""
    params = jax.tree.map(lambda *a: jnp.stack(a), lstm_fn_params(0), lstm_fn_params(1))
    h = {"h": jnp.zeros((3, H)), "c": jnp.zeros((3, H))}
    xs = _data()
    f = lambda p: jaxrnn.unroll(lstm_fn, p, h, xs, seq_lengths=LENGTHS, resets=RESETS)[1]
    got = jax.vmap(f)(params)
    for k in range(2):
        assert_close(got[k], f(jax.tree.map(lambda a: a[k], params)))
    g = jax.vmap(jax.grad(lambda p: jnp.sum(f(p) ** 2)))(params)
    assert_close(jax.tree.map(lambda a: a[1], g), jax.grad(lambda p: jnp.sum(f(p) ** 2))(
        jax.tree.map(lambda a: a[1], params)))


def conv_cell(params, h, x):
    """A tiny convolutional RNN cell over [*batch, H, W, C] frames."""
    conv = lambda a, w: jax.lax.conv_general_dilated(a, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hn = jnp.tanh(conv(x, params["w"]) + conv(h, params["u"]) + params["b"])
    return hn, hn


@pytest.mark.slow
def test_num_feature_axes_conv_cell(assert_close):
    rng = np.random.default_rng(5)
    u = lambda *s: jnp.asarray(rng.uniform(-0.4, 0.4, s), jnp.float32)
    params = {"w": u(3, 3, 2, 3), "u": u(3, 3, 3, 3), "b": u(3)}
    xs = jnp.asarray(rng.standard_normal((2, T, 2, 2, 2)), jnp.float32)   # [B, T, H, W, C]
    h = jnp.asarray(rng.standard_normal((2, 2, 2, 3)), jnp.float32)      # 8 rows: hoisted on the CPU too
    opts = dict(seq_lengths=jnp.array([T, 2]), resets=jnp.array([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]], bool),
                num_feature_axes=3)
    ref_opts = {k: v for k, v in opts.items()}
    _compare(conv_cell, params, h, xs, assert_close, ref_opts=ref_opts, **opts)
    # the input convolution is hoisted: the loop holds one convolution (of h)
    jaxpr = jax.make_jaxpr(lambda p, h, xs: jaxrnn.unroll(conv_cell, p, h, xs, num_feature_axes=3))(params, h, xs)
    assert _count_in_loop(jaxpr, "conv_general_dilated") == 1


# ---------------------------------------------------------------------------- hoisting
def _subjaxprs(eqn):
    """The jaxprs in an equation's params (:func:`jaxrnn._compat.subjaxprs`), except that a
    ``lax.platform_dependent`` choice (a cond with ``branches_platforms``, which older jax
    keeps in the jaxpr) yields only the branch that runs here, on the CPU."""
    platforms = eqn.params.get("branches_platforms")
    if platforms is None:
        yield from subjaxprs(eqn)
        return
    cpu = [i for i, ps in enumerate(platforms) if ps is not None and "cpu" in ps]
    yield eqn.params["branches"][cpu[0] if cpu else platforms.index(None)].jaxpr


def _count(jaxpr, name):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for sub in _subjaxprs(eqn):
            n += _count(sub, name)
    return n


def _loops(jaxpr):
    """The scans in ``jaxpr`` (searched inside custom_vjp calls, jit, ...), not nested in a scan."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            yield eqn
        else:
            for sub in _subjaxprs(eqn):
                yield from _loops(sub)


def _outside(jaxpr, name):
    """Equations named ``name`` outside every scan."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            out.append(eqn)
        if eqn.primitive.name != "scan":
            for sub in _subjaxprs(eqn):
                out += _outside(sub, name)
    return out


def _count_in_loop(closed, name):
    loops = list(_loops(closed.jaxpr))
    assert len(loops) == 1, [e.primitive.name for e in closed.jaxpr.eqns]
    return _count(loops[0].params["jaxpr"].jaxpr, name)


def test_hoisting_moves_the_input_projection_out_of_the_loop():
    """Fails if hoisting silently stops: with it, the loop body of the plain-function LSTM
    holds one matrix product (h @ U) and the x @ W product is outside, over all steps;
    with ``hoist=False`` the loop holds both."""
    params = lstm_fn_params()
    h = {"h": jnp.zeros((3, H)), "c": jnp.zeros((3, H))}
    xs = _data()
    run = lambda hoist: jax.make_jaxpr(lambda p, h, xs: jaxrnn.unroll(lstm_fn, p, h, xs, hoist=hoist))(params, h, xs)
    hoisted, plain = run(True), run(False)
    assert _count_in_loop(hoisted, "dot_general") == 1
    assert _count_in_loop(plain, "dot_general") == 2
    dots = _outside(hoisted.jaxpr, "dot_general")
    assert any(T in e.outvars[0].aval.shape for e in dots), "x @ W over all T steps outside the loop"


def test_weight_gradients_outside_the_backward_loop(assert_close):
    """With the generic VJP (custom_vjp=True, the default) the backward loop of the
    plain-function LSTM holds one matrix product per step (dz @ U.T) and dU is one
    product over the whole sequence; autodiff (custom_vjp=False) holds two (dU += h.T @ dz
    too). Same gradients either way."""
    params = lstm_fn_params()
    h = _random_state({"h": jnp.zeros((3, H)), "c": jnp.zeros((3, H))}, 1)
    xs = _data()
    loss = lambda p, cv: jnp.sum(jnp.sin(jaxrnn.unroll(lstm_fn, p, h, xs, seq_lengths=LENGTHS, resets=RESETS,
                                                       custom_vjp=cv)[1]))
    for cv, per_step in ((True, 1), (False, 2)):
        jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, cv=cv)))(params)
        loops = list(_loops(jaxpr.jaxpr))
        assert len(loops) == 2  # forward and backward
        assert _count(loops[1].params["jaxpr"].jaxpr, "dot_general") == per_step, cv
    assert_close(jax.grad(functools.partial(loss, cv=True))(params), jax.grad(functools.partial(loss, cv=False))(params))


def test_hoist_false_gives_identical_results():
    params = lstm_fn_params()
    h = _random_state({"h": jnp.zeros((3, H)), "c": jnp.zeros((3, H))}, 1)
    xs = _data()
    a = jax.jit(lambda: jaxrnn.unroll(lstm_fn, params, h, xs, seq_lengths=LENGTHS))()
    b = jax.jit(lambda: jaxrnn.unroll(lstm_fn, params, h, xs, seq_lengths=LENGTHS, hoist=False))()
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


def test_light_x_only_work_stays_in_the_loop():
    """x-only work without a matrix product (here ``2 * x``) is not worth a ``[T, ...]``
    buffer: it stays in the loop, with the step's other operations."""
    f = lambda p, h, x: (jnp.tanh(p * h + 2.0 * x), h)
    jaxpr = jax.make_jaxpr(lambda xs: jaxrnn.unroll(f, 0.5, jnp.zeros((3, I)), xs))(_data())
    assert _count_in_loop(jaxpr, "tanh") == 1
    assert _count_in_loop(jaxpr, "mul") == 2  # p * h and 2 * x, both in the loop


# ---------------------------------------------------------------------------- stacks
@pytest.mark.slow
def test_bidirectional_stack_mixing_custom_and_builtin_cells(assert_close):
    net = jaxrnn.stack([MGU(split=True), jaxrnn.gru(3), MGU()], bidirectional=True, head=2)
    params = net.init(jax.random.key(1), I)
    xs = _data()
    h = _random_state(net.initial_state((3,)), 6)
    opts = dict(seq_lengths=LENGTHS, resets=RESETS)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((3, T, 2)), jnp.float32)

    def loss(run, params, h, xs):
        hT, ys = run(params, h, xs)
        return jnp.sum(jnp.sin(ys) * w) + sum(jnp.sum(jnp.cos(l)) for l in jax.tree.leaves(hT))

    got = jax.jit(jax.value_and_grad(lambda *a: loss(functools.partial(net, **opts), *a), argnums=(0, 1, 2)))(
        params, h, xs)
    ref = jax.value_and_grad(lambda *a: loss(functools.partial(python_stack, net, **opts), *a),
                             argnums=(0, 1, 2))(params, h, xs)
    assert_close(got, ref)


@pytest.mark.slow
def test_unidirectional_stack_step_and_dropout_with_custom_cells(assert_close):
    net = jaxrnn.stack([jaxrnn.lstm(5), MGU(split=True)], dropout=0.3, head=2)
    params = net.init(jax.random.key(2), I)
    xs = _data()
    h, ys = net(params, None, xs)
    state, outs = None, []
    for t in range(T):
        state, y = net.step(params, state, xs[:, t])
        outs.append(y)
    assert_close(jnp.stack(outs, 1), ys)
    assert_close(state, h)
    _, yd = net(params, None, xs, key=jax.random.key(3))
    assert not np.allclose(yd, ys)  # dropout between layers is on with a key
    # a unidirectional stack is itself a cell: unroll runs it step by step, as net(...)
    assert_close(jaxrnn.unroll(net, params, None, xs), (h, ys))


# ---------------------------------------------------------------------------- errors
def test_errors_name_cell_and_params():
    xs = _data()
    h = {"h": jnp.zeros((3, H)), "c": jnp.zeros((3, H))}
    with pytest.raises(TypeError, match="`cell` returned a state of another structure"):
        jaxrnn.unroll(lambda p, h, x: (lstm_fn(p, h, x)[0]["h"], lstm_fn(p, h, x)[1]), lstm_fn_params(), h, xs)
    with pytest.raises(ValueError, match="`cell` returned a state leaf"):
        jaxrnn.unroll(lambda p, h, x: ({"h": lstm_fn(p, h, x)[0]["h"][:, :2], "c": h["c"]}, h["c"]),
                      lstm_fn_params(), h, xs)
    with pytest.raises(ValueError, match="`cell` returned a state leaf"):
        jaxrnn.unroll(lambda p, h, x: ({"h": h["h"].astype(jnp.bfloat16), "c": h["c"]}, h["c"]),
                      lstm_fn_params(), h, xs)
    with pytest.raises(ValueError, match="`cell` returned y"):
        jaxrnn.unroll(lambda p, h, x: (h, jnp.zeros((H,))), lstm_fn_params(), h, xs)
    with pytest.raises(ValueError, match=r"`h\['c'\]` must have the batch dimensions"):
        jaxrnn.unroll(lstm_fn, lstm_fn_params(), {"h": jnp.zeros((3, H)), "c": jnp.zeros((2, H))}, xs)
    with pytest.raises(TypeError, match="`cells\\[0\\]`.*plain function"):
        jaxrnn.stack([lstm_fn])

    class NoInit:
        output_size = H

        def step(self, p, h, x):
            return h, h

        def initial_state(self, batch_shape=(), dtype=jnp.float32):
            return jnp.zeros(tuple(batch_shape) + (H,), dtype)

    with pytest.raises(TypeError, match="lacks `init`"):
        jaxrnn.stack([NoInit(), jaxrnn.gru(3)])
    with pytest.raises(ValueError, match="`resets` must have shape"):
        jaxrnn.unroll(lstm_fn, lstm_fn_params(), h, xs, resets=jnp.zeros((3, T + 1), bool))
    with pytest.raises(TypeError, match="`resets` must be a boolean"):
        jaxrnn.unroll(lstm_fn, lstm_fn_params(), h, xs, resets=jnp.zeros((3, T)))
    with pytest.raises(ValueError, match="`mode='associative'` needs"):
        jaxrnn.unroll(lstm_fn, lstm_fn_params(), h, xs, mode="associative")


def test_torch_net_with_wrong_params_names_params():
    torch = pytest.importorskip("torch")
    net6, _ = jaxrnn.from_torch(torch.nn.LSTM(6, 4, batch_first=True))
    _, p5 = jaxrnn.from_torch(torch.nn.LSTM(5, 4, batch_first=True))
    with pytest.raises(ValueError, match="`params` do not fit this network"):
        net6(p5, None, jnp.ones((2, 3, 6)))
