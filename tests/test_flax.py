"""jaxrnn.nnx, jaxrnn.linen and jaxrnn.interop.flax against flax itself and the functional code.

* an NNX and a linen model with a jaxrnn stack, trained with flax's own optimizer
  wrapper (nnx.Optimizer / optax on linen params), follow the functional jaxrnn code
  loss for loss from the same initial weights;
* jaxrnn cells inside flax's nnx.RNN / nn.RNN / Bidirectional give jaxrnn's outputs;
* flax's LSTMCell, OptimizedLSTMCell and GRUCell weights converted to jaxrnn give flax's
  outputs, final carries and gradients (1e-5, non-zero biases, random carries), and back;
* nnx.split/merge/state, nnx.jit, dropout in train and eval, a custom cell object.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import jaxrnn
import jaxrnn.linen
import jaxrnn.nnx
from jaxrnn.interop.flax import carry_from_flax, carry_to_flax, from_flax, to_flax_linen, to_flax_nnx

# The bound for agreement with flax's own cells.
FLAX_TOL = dict(atol=1e-5, rtol=1e-5)

B, T, I = 3, 6, 4
LENGTHS = np.array([6, 0, 3], np.int32)          # ragged, one empty sequence


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _close(a, b, **tol):
    tol = tol or FLAX_TOL
    la, da = jax.tree.flatten(a)
    lb, db = jax.tree.flatten(b)
    assert da == db, f"structures differ: {da} vs {db}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def _randomize(params, seed, scale=0.5):
    """Every leaf replaced by U(-scale, scale) values (non-zero biases)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.uniform(-scale, scale, a.shape), a.dtype), params)


def _arrays(tree):
    """The arrays of a pytree holding nnx Variables (``get_value``, or ``.value`` before flax 0.12)."""
    read = lambda v: v.get_value() if hasattr(v, "get_value") else v.value
    return jax.tree.map(lambda v: read(v) if isinstance(v, nnx.Variable) else v, tree,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))


def _paths(state):
    """A state's leaf paths as dotted strings (``rnn.weights.layers.1.w_hh``)."""
    name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    return {".".join(name(k) for k in path if name(k) != "value") for path, _ in paths}


def _valid(ys, lengths):
    """``ys`` with positions past each length zeroed (flax's RNN leaves them as computed)."""
    mask = np.arange(ys.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return jnp.where(mask[..., None], ys, 0.0)


XS = _normal((B, T, I), 0)
TARGET = _normal((B, T, 3), 1)
# Mixed cells and a head; bidirectional layers are covered with flax's Bidirectional below
# (one direction per layer keeps the compile time of these tests down).
NET = jaxrnn.stack([jaxrnn.gru(5), jaxrnn.lstm(4)], head=3)


def _loss_fn(ys):
    return jnp.mean((ys - TARGET) ** 2)


STEPS = 4


@functools.lru_cache(maxsize=None)
def _nnx_initial_params():
    return NNXModel(rngs=nnx.Rngs(0)).rnn.params


@functools.lru_cache(maxsize=None)
def _functional_run():
    """The functional jaxrnn code: optax.adam on the params pytree, from the NNX model's
    initial weights (shared by the NNX and linen tests, computed once)."""
    tx = optax.adam(0.05)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: _loss_fn(NET(p, None, XS, seq_lengths=LENGTHS)[1]))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = _nnx_initial_params()
    losses, opt_state = [], tx.init(params)
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses, params


# ------------------------------------------------------------------------ training parity


class NNXModel(nnx.Module):
    def __init__(self, *, rngs):
        self.rnn = jaxrnn.nnx.RNN(NET, I, rngs=rngs)

    def __call__(self, xs, lengths):
        return self.rnn(xs, seq_lengths=lengths)[1]


@pytest.mark.slow
def test_nnx_model_trains_like_functional_code(assert_close):
    model = NNXModel(rngs=nnx.Rngs(0))
    assert_close(model.rnn.params, _nnx_initial_params())
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: _loss_fn(m(XS, LENGTHS)))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(STEPS)]
    expected, params = _functional_run()
    assert losses[-1] < losses[0]                    # it trains
    assert_close(losses, expected)
    assert_close(model.rnn.params, params)


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, xs, lengths):
        return jaxrnn.linen.RNN(NET)(xs, seq_lengths=lengths)[1]


def test_linen_model_trains_like_functional_code(assert_close):
    model = LinenModel()
    variables = model.init(jax.random.key(0), XS, LENGTHS)
    assert isinstance(jaxrnn.linen.params_of(variables["params"]["RNN_0"]), jaxrnn.StackParams)
    # The same initial weights as the NNX test, so one functional run serves both.
    variables = {"params": {"RNN_0": jaxrnn.linen.variables(_nnx_initial_params())["params"]}}
    tx = optax.adam(0.05)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(lambda p: _loss_fn(model.apply({"params": p}, XS, LENGTHS)))(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    p, losses = variables["params"], []
    for _ in range(STEPS):
        p, opt_state, loss = step(p, opt_state)
        losses.append(float(loss))
    expected, params = _functional_run()
    assert losses[-1] < losses[0]
    assert_close(losses, expected)
    assert_close(jaxrnn.linen.params_of(p["RNN_0"]), params)


# ------------------------------------------------------------------ the module is the call


@pytest.mark.parametrize("net", [jaxrnn.lstm(5), NET], ids=["cell", "stack"])
def test_nnx_rnn_is_the_functional_call(net, assert_close):
    params = _randomize(net.init(jax.random.key(1), I), 2)
    rnn = jaxrnn.nnx.RNN.from_params(net, params)
    h0 = jax.tree.map(lambda z: _normal(z.shape, 3), net.initial_state((B,)))
    assert all(a is b for a, b in zip(jax.tree.leaves(rnn.params), jax.tree.leaves(params)))   # no copy
    call = nnx.jit(lambda m, h: m(XS, h, seq_lengths=LENGTHS))
    if isinstance(net, jaxrnn.Stack):
        functional = jax.jit(lambda p, h: net(p, h, XS, seq_lengths=LENGTHS))
    else:
        functional = jax.jit(lambda p, h: jaxrnn.unroll(net, p, h, XS, seq_lengths=LENGTHS))
    assert_close(call(rnn, h0), functional(params, h0))
    rnn.params = jax.tree.map(lambda a: a * 0.5, params)
    assert_close(call(rnn, h0), functional(jax.tree.map(lambda a: a * 0.5, params), h0))
    with pytest.raises(ValueError, match="`params`"):
        rnn.params = params._replace(**{params._fields[0]: None}) if not isinstance(net, jaxrnn.Stack) \
            else params._replace(head=None)


def test_linen_rnn_is_the_functional_call(assert_close):
    params = _randomize(NET.init(jax.random.key(1), I), 2)
    got = jaxrnn.linen.RNN(NET).apply(jaxrnn.linen.variables(params), XS, seq_lengths=LENGTHS, time_major=False)
    assert_close(got, NET(params, None, XS, seq_lengths=LENGTHS))
    init = jaxrnn.linen.RNN(jaxrnn.gru(5)).init(jax.random.key(0), XS)
    assert isinstance(jaxrnn.linen.params_of(init), jaxrnn.GRUParams)


@pytest.mark.slow
def test_nnx_split_merge_state_and_jit(assert_close):
    model = NNXModel(rngs=nnx.Rngs(0))
    call = nnx.jit(lambda m: m(XS, LENGTHS))
    want = jax.jit(lambda p: NET(p, None, XS, seq_lengths=LENGTHS)[1])(model.rnn.params)
    assert_close(call(model), want)
    graphdef, state = nnx.split(model)
    paths = _paths(state)
    assert "rnn.weights.layers.1.w_hh" in paths and "rnn.weights.head.w" in paths
    assert_close(call(nnx.merge(graphdef, state)), want)
    # A checkpoint's way: nnx.state out, nnx.update into a fresh model.
    params_state = nnx.state(model, nnx.Param)
    fresh = NNXModel(rngs=nnx.Rngs(7))
    assert not np.allclose(call(fresh), want)
    nnx.update(fresh, params_state)
    assert_close(call(fresh), want)
    grads = nnx.jit(nnx.grad(lambda m: _loss_fn(m(XS, LENGTHS))))(model)
    want_grads = jax.jit(jax.grad(lambda p: _loss_fn(NET(p, None, XS, seq_lengths=LENGTHS)[1])))(model.rnn.params)
    assert_close(nnx.merge(graphdef, grads).rnn.params, want_grads)


# ---------------------------------------------------------------------------------- dropout


DROPNET = jaxrnn.stack(jaxrnn.gru(5), num_layers=2, dropout=0.5)


@pytest.mark.slow
def test_nnx_dropout_on_in_train_off_in_eval(assert_close):
    rnn = jaxrnn.nnx.RNN(DROPNET, I, rngs=nnx.Rngs(0, dropout=1))
    call = nnx.jit(lambda m: m(XS)[1])
    plain = jax.jit(lambda p: DROPNET(p, None, XS)[1])(rnn.params)
    a, b = call(rnn), call(rnn)
    assert not np.allclose(a, plain) and not np.allclose(a, b)     # a fresh key each call
    key = jax.random.key(5)
    assert_close(nnx.jit(lambda m, k: m(XS, key=k)[1])(rnn, key),
                 jax.jit(lambda p, k: DROPNET(p, None, XS, key=k)[1])(rnn.params, key))
    rnn.eval()
    assert_close(call(rnn), plain)
    rnn.train()
    assert not np.allclose(call(rnn), plain)
    assert_close(nnx.jit(lambda m: m(XS, deterministic=True)[1])(rnn), plain)
    with pytest.raises(ValueError, match="`rngs`"):
        jaxrnn.nnx.RNN.from_params(DROPNET, rnn.params)(XS)


def test_linen_dropout_on_in_train_off_in_eval(assert_close):
    model = jaxrnn.linen.RNN(DROPNET)
    variables = model.init(jax.random.key(0), XS, deterministic=True)
    plain = DROPNET(jaxrnn.linen.params_of(variables), None, XS)[1]
    assert_close(model.apply(variables, XS, deterministic=True)[1], plain)
    key = jax.random.key(3)
    train = model.apply(variables, XS, deterministic=False, rngs={"dropout": key})[1]
    assert not np.allclose(train, plain)
    assert_close(jaxrnn.linen.RNN(DROPNET, deterministic=False).apply(variables, XS, rngs={"dropout": key})[1],
                 train)


# ----------------------------------------------------------- jaxrnn cells inside flax's RNN


def _carry(cell, seed):
    return jax.tree.map(lambda z: _normal(z.shape, seed), cell.initial_state((B,)))


@pytest.mark.parametrize("cell", [jaxrnn.lstm(5), jaxrnn.gru(5)], ids=repr)
def test_jaxrnn_cell_in_flax_nnx_rnn(cell, assert_close):
    lengths = np.array([6, 1, 3], np.int32)          # flax's RNN cannot return a length-0 carry
    fcell = jaxrnn.nnx.Cell(cell, I, rngs=nnx.Rngs(0))
    fcell.params = _randomize(fcell.params, 1)
    h0 = _carry(cell, 2)
    carry, ys = nnx.RNN(fcell, return_carry=True)(XS, initial_carry=h0, seq_lengths=lengths)
    h, want = jaxrnn.unroll(cell, fcell.params, h0, XS, seq_lengths=lengths)
    assert_close(_valid(ys, lengths), want)
    assert_close(carry, h)


def test_jaxrnn_cell_in_flax_nnx_bidirectional(assert_close):
    """flax's own reversal of padded sequences meets jaxrnn's bidirectional stack."""
    lengths = np.array([6, 1, 3], np.int32)
    cell = jaxrnn.lstm(5)
    fwd, bwd = jaxrnn.nnx.Cell(cell, I, rngs=nnx.Rngs(0)), jaxrnn.nnx.Cell(cell, I, rngs=nnx.Rngs(1))
    bi = nnx.Bidirectional(nnx.RNN(fwd), nnx.RNN(bwd))
    net = jaxrnn.stack(cell, bidirectional=True)
    params = jaxrnn.StackParams((jaxrnn.Bidirectional(fwd.params, bwd.params),))
    assert_close(_valid(bi(XS, seq_lengths=lengths), lengths), net(params, None, XS, seq_lengths=lengths)[1])


@pytest.mark.slow
def test_jaxrnn_cell_in_flax_nnx_rnn_gradient(assert_close):
    cell = jaxrnn.lstm(5)
    layer = nnx.RNN(jaxrnn.nnx.Cell(cell, I, rngs=nnx.Rngs(0)), rngs=False)
    grads = nnx.grad(lambda m: jnp.sum(m(XS) ** 2))(layer)
    want = jax.grad(lambda p: jnp.sum(jaxrnn.unroll(cell, p, None, XS)[1] ** 2))(layer.cell.params)
    assert_close(nnx.merge(nnx.graphdef(layer), grads).cell.params, want)


@pytest.mark.parametrize("cell", [jaxrnn.lstm(5), jaxrnn.gru(5)], ids=repr)
def test_jaxrnn_cell_in_flax_linen_rnn(cell, assert_close):
    lengths = np.array([6, 1, 3], np.int32)
    layer = nn.RNN(jaxrnn.linen.Cell(cell), return_carry=True)
    variables = layer.init(jax.random.key(0), XS)
    params = _randomize(jaxrnn.linen.params_of(variables["params"]["cell"]), 1)
    variables = {"params": {"cell": jaxrnn.linen.variables(params)["params"]}}
    h0 = _carry(cell, 2)
    carry, ys = layer.apply(variables, XS, initial_carry=h0, seq_lengths=lengths)
    h, want = jaxrnn.unroll(cell, params, h0, XS, seq_lengths=lengths)
    assert_close(_valid(ys, lengths), want)
    assert_close(carry, h)


def test_jaxrnn_cell_in_flax_linen_bidirectional(assert_close):
    lengths = np.array([6, 1, 3], np.int32)
    cell = jaxrnn.gru(5)
    bi = nn.Bidirectional(nn.RNN(jaxrnn.linen.Cell(cell)), nn.RNN(jaxrnn.linen.Cell(cell)))
    bvars = bi.init(jax.random.key(1), XS)
    p = bvars["params"]
    pf = jaxrnn.linen.params_of(p["forward_rnn"]["cell"])
    pb = jaxrnn.linen.params_of(p["backward_rnn"]["cell"])
    net = jaxrnn.stack(cell, bidirectional=True)
    want = net(jaxrnn.StackParams((jaxrnn.Bidirectional(pf, pb),)), None, XS, seq_lengths=lengths)[1]
    assert_close(_valid(bi.apply(bvars, XS, seq_lengths=lengths), lengths), want)


# ---------------------------------------------------------------- a custom cell object


class Minimal:
    """A minimal gated cell (not a jaxrnn.Cell): ``f = σ(W_f [x, h] + b)``,
    ``h' = f * h + (1 - f) * tanh(W_x x)``."""

    output_size = 4

    def init(self, key, input_size):
        k1, k2 = jax.random.split(key)
        return {"w_f": jax.random.normal(k1, (4, input_size + 4)) * 0.5, "b": jnp.full((4,), 0.3),
                "w_x": jax.random.normal(k2, (4, input_size)) * 0.5}

    def initial_state(self, batch_shape=(), dtype=jnp.float32):
        return jnp.zeros(tuple(batch_shape) + (4,), dtype)

    def step(self, params, h, x):
        h = self.initial_state(x.shape[:-1]) if h is None else h
        f = jax.nn.sigmoid(jnp.concatenate([x, h], -1) @ params["w_f"].T + params["b"])
        h = f * h + (1 - f) * jnp.tanh(x @ params["w_x"].T)
        return h, h


def _loop(cell, params, h, xs):
    ys = []
    for t in range(xs.shape[1]):
        h, y = cell.step(params, h, xs[:, t])
        ys.append(y)
    return h, jnp.stack(ys, 1)


@pytest.mark.slow
def test_custom_cell_through_flax_cells(assert_close):
    cell = Minimal()
    h0 = _normal((B, 4), 4)
    fcell = jaxrnn.nnx.Cell(cell, I, rngs=nnx.Rngs(0))
    carry, ys = nnx.RNN(fcell, return_carry=True)(XS, initial_carry=h0)
    assert_close((carry, ys), _loop(cell, fcell.params, h0, XS))
    layer = nn.RNN(jaxrnn.linen.Cell(cell), return_carry=True)
    variables = layer.init(jax.random.key(0), XS)
    got = layer.apply(variables, XS, initial_carry=h0)
    assert_close(got, _loop(cell, jaxrnn.linen.params_of(variables["params"]["cell"]), h0, XS))


def _contract_landed() -> bool:
    """Whether jaxrnn.unroll runs any cell object (issue 12's contract, with ``resets``)."""
    import inspect

    return "resets" in inspect.signature(jaxrnn.unroll).parameters


@pytest.mark.skipif(not _contract_landed(), reason="jaxrnn.unroll without the cell contract (issue 12)")
def test_custom_cell_through_sequence_modules(assert_close):
    cell = Minimal()
    h0 = _normal((B, 4), 4)
    rnn = jaxrnn.nnx.RNN(cell, I, rngs=nnx.Rngs(0))
    assert_close(rnn(XS, h0), _loop(cell, rnn.params, h0, XS))
    model = jaxrnn.linen.RNN(cell)
    variables = model.init(jax.random.key(0), XS)
    assert_close(model.apply(variables, XS, h0), _loop(cell, jaxrnn.linen.params_of(variables), h0, XS))


@pytest.mark.skipif(not _contract_landed(), reason="jaxrnn.unroll without `resets` (issue 12)")
@pytest.mark.parametrize("net", [jaxrnn.gru(5), NET], ids=["cell", "stack"])
def test_resets_pass_through_the_modules(net, assert_close):
    resets = np.zeros((B, T), bool)
    resets[0, 2] = resets[2, 4] = True
    params = _randomize(net.init(jax.random.key(1), I), 2)
    run = (lambda p, **kw: net(p, None, XS, **kw)) if isinstance(net, jaxrnn.Stack) else \
        (lambda p, **kw: jaxrnn.unroll(net, p, None, XS, **kw))
    want = run(params, seq_lengths=LENGTHS, resets=resets)
    assert not np.allclose(want[1], run(params, seq_lengths=LENGTHS)[1])
    assert_close(jaxrnn.nnx.RNN.from_params(net, params)(XS, seq_lengths=LENGTHS, resets=resets), want)
    assert_close(jaxrnn.linen.RNN(net).apply(jaxrnn.linen.variables(params), XS, seq_lengths=LENGTHS,
                                             resets=resets), want)


# ------------------------------------------------------------------ flax's cells -> jaxrnn


def _nnx_cell(kind, seed):
    cls = {"lstm": nnx.LSTMCell, "olstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}[kind]
    module = cls(I, 5, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)          # non-zero biases, weights of O(1)
    nnx.update(module, jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape), jnp.float32), state))
    return module


def _flax_carry(kind, seed):
    h = _normal((B, 5), seed)
    return (_normal((B, 5), seed + 1), h) if kind != "gru" else h


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "olstm", "gru"])
def test_flax_nnx_cell_weights_give_flax_outputs_and_gradients(kind):
    module = _nnx_cell(kind, 3)
    carry0 = _flax_carry(kind, 4)
    lengths = np.array([6, 1, 3], np.int32)

    def flax_loss(m):
        carry, ys = nnx.RNN(m, return_carry=True)(XS, initial_carry=carry0, seq_lengths=lengths)
        ys = _valid(ys, lengths)
        loss = jnp.sum(ys * TARGET[..., :1]) + jnp.sum(jnp.stack(jax.tree.leaves(carry)) ** 2)
        return loss, (ys, carry)

    def jaxrnn_loss(m):
        cell, params = from_flax(m)
        h, ys = jaxrnn.unroll(cell, params, carry_from_flax(carry0), XS, seq_lengths=lengths)
        carry = carry_to_flax(h)
        return jnp.sum(ys * TARGET[..., :1]) + jnp.sum(jnp.stack(jax.tree.leaves(carry)) ** 2), (ys, carry)

    # Outputs, final carries, loss and gradients, flax's and through the conversion.
    both = nnx.jit(lambda m: (nnx.value_and_grad(flax_loss, has_aux=True)(m),
                              nnx.value_and_grad(jaxrnn_loss, has_aux=True)(m)))
    flax_out, ours = both(module)
    _close(_arrays(ours), _arrays(flax_out))
    # And back: the same flax weights (the outputs of to_flax_nnx are tested below).
    back = to_flax_nnx(from_flax(module)[1], type(module))
    _close(_arrays(nnx.state(back, nnx.Param)), _arrays(nnx.state(module, nnx.Param)), atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "olstm", "gru"])
def test_flax_linen_cell_weights_give_flax_outputs_and_gradients(kind):
    cls = {"lstm": nn.LSTMCell, "olstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[kind]
    layer = nn.RNN(cls(5), return_carry=True)
    variables = layer.init(jax.random.key(0), XS)
    cell_params = _randomize(variables["params"]["cell"], 6)
    carry0 = _flax_carry(kind, 7)

    def flax_loss(p):
        carry, ys = layer.apply({"params": {"cell": p}}, XS, initial_carry=carry0)
        return jnp.sum(ys * TARGET[..., :1]) + jnp.sum(jnp.stack(jax.tree.leaves(carry)) ** 2), (ys, carry)

    def jaxrnn_loss(p):
        cell, params = from_flax(p)
        h, ys = jaxrnn.unroll(cell, params, carry_from_flax(carry0), XS)
        carry = carry_to_flax(h)
        return jnp.sum(ys * TARGET[..., :1]) + jnp.sum(jnp.stack(jax.tree.leaves(carry)) ** 2), (ys, carry)

    both = jax.jit(lambda p: (jax.value_and_grad(flax_loss, has_aux=True)(p),
                              jax.value_and_grad(jaxrnn_loss, has_aux=True)(p)))
    flax_out, ours = both(cell_params)
    _close(ours, flax_out)
    cell, params = from_flax(cell_params)
    # And back: the same dict (LSTM and linen GRU convert exactly both ways).
    back = to_flax_linen(params)
    _close(back, jax.tree.map(jnp.asarray, cell_params), atol=0, rtol=0)


@pytest.mark.parametrize("cell", [jaxrnn.lstm(5), jaxrnn.gru(5)], ids=repr)
def test_jaxrnn_weights_to_flax(cell):
    """Any jaxrnn LSTM/GRU (both biases non-zero) into linen; into NNX where it has a form."""
    params = _randomize(cell.init(jax.random.key(0), I), 8)
    h0 = _carry(cell, 9)
    h, want = jaxrnn.unroll(cell, params, h0, XS)
    cls = nn.OptimizedLSTMCell(5) if cell == jaxrnn.lstm(5) else nn.GRUCell(5)
    carry, ys = nn.RNN(cls, return_carry=True).apply(
        {"params": {"cell": to_flax_linen(params)}}, XS, initial_carry=carry_to_flax(h0))
    _close(ys, want)
    _close(carry, carry_to_flax(h))
    if isinstance(params, jaxrnn.GRUParams):
        with pytest.raises(ValueError, match="b_hn"):
            to_flax_nnx(params)
        params = params._replace(b_hh=params.b_hh.at[10:].set(0.0))
        h, want = jaxrnn.unroll(cell, params, h0, XS)
    for module in ([to_flax_nnx(params), to_flax_nnx(params, nnx.LSTMCell)]
                   if isinstance(params, jaxrnn.LSTMParams) else [to_flax_nnx(params)]):
        carry, ys = nnx.RNN(module, return_carry=True)(XS, initial_carry=carry_to_flax(h0))
        _close(ys, want)
        _close(carry, carry_to_flax(h))


def test_flax_conversion_errors():
    with pytest.raises(TypeError, match="`source`"):
        from_flax(jnp.ones(3))
    with pytest.raises(ValueError, match="keys"):
        from_flax({"ii": {}})
    with pytest.raises(ValueError, match="`source.gate_fn`"):
        from_flax(nnx.GRUCell(2, 3, gate_fn=jax.nn.relu, rngs=nnx.Rngs(0)))
    w = lambda *shape: np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match="w_hr"):
        to_flax_linen(jaxrnn.LSTMParams(w(16, 3), w(16, 2), w(16), w(16), w(2, 4)))
    with pytest.raises(TypeError, match="LSTMParams or GRUParams"):
        to_flax_linen(jaxrnn.RNNParams(w(4, 3), w(4, 4), w(4), w(4)))
    with pytest.raises(ValueError, match="`cell_type`"):
        to_flax_nnx(jaxrnn.LSTMParams(w(16, 3), w(16, 4), w(16), w(16)), nnx.GRUCell)


def test_module_errors():
    with pytest.raises(TypeError, match="`net`"):
        jaxrnn.nnx.RNN(object(), 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`in_features`"):
        jaxrnn.nnx.RNN(jaxrnn.gru(4))
    with pytest.raises(TypeError, match="`cell`"):
        jaxrnn.nnx.Cell(NET, 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`net`"):
        jaxrnn.linen.RNN(object()).init(jax.random.key(0), XS)
