"""The zoo cells (peephole LSTM, layer-norm LSTM and GRU, ConvLSTM) against independent code.

Each cell's ``step`` is checked against a plain numpy float64 loop of its equations written
in another form (TensorFlow's layout and gate order for the peephole LSTM, PyTorch's
``custom_lstms.py`` for the layer-norm LSTM, an explicit shifted-window convolution for
ConvLSTM) and, where one exists, a real implementation: ``custom_lstms.py``'s
``LayerNormLSTMCell`` transcribed in torch with ``nn.LayerNorm``, flax's
``nn.ConvLSTMCell`` with converted weights. ``update(params, h, project(params, x))`` must
be ``step``, and gradients pass ``jax.test_util.check_grads`` in float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrnn.cells import LSTMState
from jaxrnn.zoo.convlstm import ConvLSTMParams, conv_lstm
from jaxrnn.zoo.layernorm import layernorm_gru, layernorm_lstm
from jaxrnn.zoo.peephole import peephole_lstm
from _compat import enable_x64

H, I = 3, 2                    # hidden and input size of the vector cells
SPATIAL, KERNEL = (4, 3), (3, 2)   # ConvLSTM frames (height, width) and an uneven kernel

CELLS = ("peephole", "layernorm_lstm", "layernorm_gru", "convlstm")


def make(name, **kw):
    if name == "peephole":
        return peephole_lstm(H, **kw)
    if name == "layernorm_lstm":
        return layernorm_lstm(H, **kw)
    if name == "layernorm_gru":
        return layernorm_gru(H, **kw)
    return conv_lstm(H, KERNEL, spatial_shape=SPATIAL, **kw)


def feature_shape(name):
    return SPATIAL + (I,) if name == "convlstm" else (I,)


def state_shape(name):
    return SPATIAL + (H,) if name == "convlstm" else (H,)


def random_params(cell, seed=0, dtype=np.float32):
    """The cell's params with every leaf random: non-zero biases and peepholes, LayerNorm
    gains around 1."""
    rng = np.random.default_rng(seed)
    p = jax.eval_shape(lambda key: cell.init(key, I), jax.random.key(0))      # shapes only: no compile
    fields = []
    for name, leaf in zip(p._fields, p):
        if leaf is None:
            fields.append(None)
            continue
        a = rng.uniform(-0.7, 0.7, leaf.shape)
        fields.append(jnp.asarray(1.0 + a if name.endswith("_weight") else a, dtype))
    return type(p)(*fields)


def random_state(name, batch_shape, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    r = lambda: jnp.asarray(rng.standard_normal(tuple(batch_shape) + state_shape(name)), dtype)
    return r() if name == "layernorm_gru" else LSTMState(r(), r())


def random_inputs(name, shape, seed=2, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape) + feature_shape(name)), dtype)


# ----------------------------------------------------------------------------- numpy references


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def f64(tree):
    return [None if a is None else np.asarray(a, np.float64) for a in tree]


def np_peephole_tf(p, state, x, forget_bias=0.0):
    """TensorFlow 1's ``LSTMCell(use_peepholes=True)`` in its own layout: one kernel
    ``[I + H, 4H]`` over ``concat([x, h])``, gates (i, j, f, o), one bias, peepholes
    ``w_i_diag, w_f_diag`` on ``c_prev`` and ``w_o_diag`` on the new ``c``."""
    w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co = f64(p)
    Hh = w_hh.shape[1]
    tf_order = (0, 2, 1, 3)            # torch blocks (i, f, g, o) -> TF's (i, j, f, o)
    W = np.concatenate([w_ih, w_hh], axis=1)
    kernel = np.concatenate([W[k * Hh:(k + 1) * Hh] for k in tf_order], axis=0).T
    b = b_ih + b_hh
    bias = np.concatenate([b[k * Hh:(k + 1) * Hh] for k in tf_order])
    m_prev, c_prev = state
    lstm_matrix = np.concatenate([x, m_prev], axis=-1) @ kernel + bias
    i, j, f, o = np.split(lstm_matrix, 4, axis=-1)
    c = sigmoid(f + forget_bias + w_cf * c_prev) * c_prev + sigmoid(i + w_ci * c_prev) * np.tanh(j)
    m = sigmoid(o + w_co * c) * np.tanh(c)
    return (m, c), m


def np_layer_norm(a, weight, bias, eps=1e-5):
    mu = a.mean(-1, keepdims=True)
    var = ((a - mu) ** 2).mean(-1, keepdims=True)
    return (a - mu) / np.sqrt(var + eps) * weight + bias


def np_layernorm_lstm(p, state, x):
    """``custom_lstms.py``'s ``LayerNormLSTMCell.forward``, line by line."""
    w_ih, w_hh, li_w, li_b, lh_w, lh_b, lc_w, lc_b = f64(p)
    hx, cx = state
    igates = np_layer_norm(x @ w_ih.T, li_w, li_b)
    hgates = np_layer_norm(hx @ w_hh.T, lh_w, lh_b)
    ingate, forgetgate, cellgate, outgate = np.split(igates + hgates, 4, axis=-1)
    ingate, forgetgate, outgate = sigmoid(ingate), sigmoid(forgetgate), sigmoid(outgate)
    cellgate = np.tanh(cellgate)
    cy = np_layer_norm(forgetgate * cx + ingate * cellgate, lc_w, lc_b)
    hy = outgate * np.tanh(cy)
    return (hy, cy), hy


def np_layernorm_gru(p, h, x):
    w_ih, w_hh, li_w, li_b, lh_w, lh_b = f64(p)
    ax = np.split(np_layer_norm(x @ w_ih.T, li_w, li_b), 3, axis=-1)
    ah = np.split(np_layer_norm(h @ w_hh.T, lh_w, lh_b), 3, axis=-1)
    r = sigmoid(ax[0] + ah[0])
    z = sigmoid(ax[1] + ah[1])
    n = np.tanh(ax[2] + r * ah[2])
    h_new = (1 - z) * n + z * h
    return h_new, h_new


def np_conv_same(x, w):
    """"SAME" cross-correlation as a sum of shifted windows: x ``[..., h, w, in]``, w
    ``[out, in, kh, kw]``; padding ``(k - 1) // 2`` before and the rest after (XLA's rule)."""
    _, _, kh, kw = w.shape
    hs, ws = x.shape[-3:-1]
    pad = [(0, 0)] * (x.ndim - 3) + [((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)]
    xp = np.pad(x, pad)
    out = 0.0
    for a in range(kh):
        for b in range(kw):
            out = out + xp[..., a:a + hs, b:b + ws, :] @ w[:, :, a, b].T
    return out


def np_convlstm(p, state, x):
    w_ih, w_hh, b_ih, b_hh = f64(p)
    h, c = state
    s = np_conv_same(x, w_ih) + b_ih + np_conv_same(h, w_hh) + b_hh
    i, f, g, o = np.split(s, 4, axis=-1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h_new = sigmoid(o) * np.tanh(c_new)
    return (h_new, c_new), h_new


NUMPY_STEP = {"peephole": np_peephole_tf, "layernorm_lstm": np_layernorm_lstm, "layernorm_gru": np_layernorm_gru,
              "convlstm": np_convlstm}


def np_state(name, state):
    return np.asarray(state, np.float64) if name == "layernorm_gru" else tuple(f64(state))


# ----------------------------------------------------------------------------- step vs references


@pytest.mark.parametrize("batch_shape", [(), (2, 1)])
@pytest.mark.parametrize("name", CELLS)
def test_step_matches_numpy_float64(name, batch_shape):
    """Four steps in float64 against the numpy loop to 1e-12: without batch dimensions from
    ``h=None`` (the zero state), with two from a random state."""
    with enable_x64(True):
        cell = make(name)
        p = random_params(cell, dtype=np.float64)
        xs = random_inputs(name, (4,) + batch_shape, dtype=np.float64)
        if batch_shape:
            h = random_state(name, batch_shape, dtype=np.float64)
            ref = np_state(name, h)
        else:
            h = None
            ref = jax.tree.map(np.zeros_like, np_state(name, cell.initial_state((), jnp.float64)))
        step = jax.jit(cell.step)
        for x in xs:
            h, y = step(p, h, x)
            ref, y_ref = NUMPY_STEP[name](p, ref, np.asarray(x))
            assert y.dtype == jnp.float64 and y.shape == batch_shape + state_shape(name)
            np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-12, atol=1e-12)
            for got, want in zip(jax.tree.leaves(h), jax.tree.leaves(ref)):
                assert got.dtype == jnp.float64
                np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_peephole_without_peepholes_is_torch_lstm():
    """Zero peepholes give ``torch.nn.LSTM``'s step (the built-in ``jaxrnn.lstm``)."""
    import jaxrnn

    cell = peephole_lstm(H)
    p = random_params(cell, seed=3)
    zero = jnp.zeros((H,))
    p = p._replace(w_ci=zero, w_cf=zero, w_co=zero)
    h, x = random_state("peephole", (2,)), random_inputs("peephole", (2,))
    got, _ = cell.step(p, h, x)
    want, _ = jaxrnn.lstm(H).step(jaxrnn.LSTMParams(*p[:4]), h, x)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    full, _ = cell.step(random_params(cell, seed=3), h, x)
    assert float(jnp.abs(full.c - got.c).max()) > 1e-3        # the peepholes do act


def test_layernorm_lstm_matches_torch_custom_lstms():
    """PyTorch's ``benchmarks/fastrnns/custom_lstms.py`` ``LayerNormLSTMCell`` (its
    ``forward`` with ``nn.LayerNorm``, transcribed) in float64, weights copied in."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TorchLayerNormLSTMCell(nn.Module):
        def __init__(self, input_size, hidden_size):
            super().__init__()
            self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size))
            self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size))
            self.layernorm_i = nn.LayerNorm(4 * hidden_size)
            self.layernorm_h = nn.LayerNorm(4 * hidden_size)
            self.layernorm_c = nn.LayerNorm(hidden_size)

        def forward(self, input, state):
            hx, cx = state
            igates = self.layernorm_i(torch.mm(input, self.weight_ih.t()))
            hgates = self.layernorm_h(torch.mm(hx, self.weight_hh.t()))
            ingate, forgetgate, cellgate, outgate = (igates + hgates).chunk(4, 1)
            ingate, forgetgate = torch.sigmoid(ingate), torch.sigmoid(forgetgate)
            cellgate, outgate = torch.tanh(cellgate), torch.sigmoid(outgate)
            cy = self.layernorm_c((forgetgate * cx) + (ingate * cellgate))
            hy = outgate * torch.tanh(cy)
            return hy, (hy, cy)

    with enable_x64(True):
        cell = layernorm_lstm(H)
        p = random_params(cell, seed=4, dtype=np.float64)
        module = TorchLayerNormLSTMCell(I, H).double()
        with torch.no_grad():
            for target, value in [(module.weight_ih, p.w_ih), (module.weight_hh, p.w_hh),
                                  (module.layernorm_i.weight, p.ln_i_weight), (module.layernorm_i.bias, p.ln_i_bias),
                                  (module.layernorm_h.weight, p.ln_h_weight), (module.layernorm_h.bias, p.ln_h_bias),
                                  (module.layernorm_c.weight, p.ln_c_weight), (module.layernorm_c.bias, p.ln_c_bias)]:
                target.copy_(torch.from_numpy(np.array(value)))
        h = random_state("layernorm_lstm", (2,), dtype=np.float64)
        state = tuple(torch.from_numpy(np.array(a)) for a in h)
        step = jax.jit(cell.step)
        for x in random_inputs("layernorm_lstm", (3, 2), dtype=np.float64):
            h, y = step(p, h, x)
            with torch.no_grad():
                y_t, state = module(torch.from_numpy(np.array(x)), state)
            np.testing.assert_allclose(np.asarray(y), y_t.numpy(), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(h.c), state[1].numpy(), rtol=1e-12, atol=1e-12)


def flax_to_convlstm(variables, forget_offset=1.0):
    """flax ``nn.ConvLSTMCell`` params -> :class:`ConvLSTMParams`: kernels ``[kh, kw, in, 4F]``
    to ``[4F, in, kh, kw]``, gate blocks (i, g, f, o) to (i, f, g, o), flax's run-time
    ``σ(f + 1)`` folded into ``b_hh``."""
    ih, hh = variables["params"]["ih"], variables["params"]["hh"]
    F = ih["bias"].shape[0] // 4
    order = np.concatenate([np.arange(k * F, (k + 1) * F) for k in (0, 2, 1, 3)])
    kernel = lambda k: jnp.transpose(k, (3, 2, 0, 1))[order]
    b_hh = hh["bias"][order].at[F:2 * F].add(forget_offset)
    return ConvLSTMParams(kernel(ih["kernel"]), kernel(hh["kernel"]), ih["bias"][order], b_hh)


def test_convlstm_matches_flax():
    """flax's ``nn.ConvLSTMCell`` (an uneven 3x2 kernel, random biases) in float64 over
    three frames from a random state, against ``step`` with converted weights."""
    import flax.linen as nn

    with enable_x64(True):
        module = nn.ConvLSTMCell(features=H, kernel_size=KERNEL, param_dtype=jnp.float64)
        xs = random_inputs("convlstm", (3, 2), dtype=np.float64)
        h = random_state("convlstm", (2,), dtype=np.float64)
        variables = jax.eval_shape(module.init, jax.random.key(0), (h.c, h.h), xs[0])   # shapes only
        rng = np.random.default_rng(5)
        variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape)), variables)
        p = flax_to_convlstm(variables)
        cell = conv_lstm(H, KERNEL)
        carry = (h.c, h.h)
        apply, step = jax.jit(module.apply), jax.jit(cell.step)
        for x in xs:
            carry, y_flax = apply(variables, carry, x)
            h, y = step(p, h, x)
            np.testing.assert_allclose(np.asarray(y), np.asarray(y_flax), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(h.c), np.asarray(carry[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_convlstm_matches_keras(assert_close):
    """Keras 3's ``ConvLSTM2D(padding="same")`` (gates i, f, c, o like ours; kernels
    ``[kh, kw, in, 4F]``, one bias) over three frames, against ``step`` with the kernels
    transposed to ``[4F, in, kh, kw]``."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("Keras runs on another backend than jax")
    layer = keras.layers.ConvLSTM2D(H, KERNEL, padding="same", return_sequences=True, return_state=True)
    xs = np.asarray(random_inputs("convlstm", (2, 3), seed=20))
    layer.build(xs.shape)
    rng = np.random.default_rng(21)
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    ys_keras, h_keras, c_keras = layer(xs)
    kernel, recurrent, bias = layer.get_weights()
    p = ConvLSTMParams(jnp.transpose(kernel, (3, 2, 0, 1)), jnp.transpose(recurrent, (3, 2, 0, 1)),
                       jnp.asarray(bias), jnp.zeros_like(bias))
    step, h, ys = jax.jit(conv_lstm(H, KERNEL).step), None, []
    for t in range(3):
        h, y = step(p, h, xs[:, t])
        ys.append(y)
    assert_close(jnp.stack(ys, 1), np.asarray(ys_keras))
    assert_close(h, LSTMState(np.asarray(h_keras), np.asarray(c_keras)))


# ----------------------------------------------------------------------------- hoisting, gradients


@pytest.mark.parametrize("name", CELLS)
def test_project_update_is_step(name):
    """``project`` over a whole ``[B, T, ...]`` sequence at once, then ``update`` per step,
    gives ``step``'s states and outputs."""
    cell = make(name)
    p = random_params(cell, seed=6)
    xs = random_inputs(name, (2, 3), seed=7)
    gx = cell.project(p, xs)
    assert gx.shape[:-1] == xs.shape[:-1]
    h1 = h2 = random_state(name, (2,), seed=8)
    step, update = jax.jit(cell.step), jax.jit(cell.update)
    for t in range(3):
        h1, y1 = step(p, h1, xs[:, t])
        h2, y2 = update(p, h2, gx[:, t])
        for a, b in zip(jax.tree.leaves((h1, y1)), jax.tree.leaves((h2, y2))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CELLS)
def test_check_grads_float64(name):
    """Numerical against reverse-mode gradients of two steps in float64, with respect to
    params, state and inputs."""
    with enable_x64(True):
        cell = make(name)
        p = random_params(cell, seed=9, dtype=np.float64)
        h = random_state(name, (2,), seed=10, dtype=np.float64)
        xs = random_inputs(name, (2, 2), seed=11, dtype=np.float64)

        @jax.jit
        def f(p, h, xs):
            h, y0 = cell.step(p, h, xs[0])
            h, y1 = cell.step(p, h, xs[1])
            return jnp.sum(y0 * jnp.cos(y1)), h

        check_grads(f, (p, h, xs), order=1, modes=("rev",))


# ----------------------------------------------------------------------------- init, options, errors


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_init_schemes(name):
    """``"uniform"``: PyTorch's U(±1/sqrt(fan)) everywhere; ``"orthogonal"``: each gate's
    recurrent block orthogonal, zero biases but ``forget_bias``, LayerNorm gains 1."""
    p = make(name).init(jax.random.key(1), I)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
    fan = H * (np.prod(KERNEL) if name == "convlstm" else 1)
    for w in (p.w_ih, p.w_hh):
        assert float(jnp.abs(w).max()) <= 1 / np.sqrt(fan) and float(jnp.abs(w).std()) > 0
    kw = {} if name == "layernorm_gru" else dict(forget_bias=1.5)
    q = make(name, init="orthogonal", **kw).init(jax.random.key(1), I)
    G = 3 if name == "layernorm_gru" else 4
    for g in range(G):
        block = np.asarray(q.w_hh[g * H:(g + 1) * H]).reshape(H, -1)
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    if name.startswith("layernorm"):
        gains = (q.ln_i_weight, q.ln_h_weight) + ((q.ln_c_weight,) if name == "layernorm_lstm" else ())
        for a in gains + (p.ln_i_weight,):
            np.testing.assert_array_equal(np.asarray(a), 1.0)
        bias = q.ln_i_bias + q.ln_h_bias
    else:
        assert float(jnp.abs(p.b_ih).max()) > 0.0
        bias = q.b_ih + q.b_hh
    if kw:
        np.testing.assert_array_equal(np.asarray(bias[H:2 * H]), 1.5)
        np.testing.assert_array_equal(np.asarray(bias[:H]), 0.0)
        np.testing.assert_array_equal(np.asarray(bias[2 * H:]), 0.0)
    else:
        np.testing.assert_array_equal(np.asarray(bias), 0.0)
    if name == "peephole":
        assert float(jnp.abs(p.w_co).max()) > 0.0 and float(jnp.abs(q.w_co).max()) == 0.0


@pytest.mark.parametrize("name", ["peephole", "convlstm"])
def test_no_bias(name):
    cell = make(name, bias=False)
    p = random_params(cell)
    assert p.b_ih is None and p.b_hh is None
    h, y = cell.step(p, None, random_inputs(name, (2,)))
    assert y.shape == (2,) + state_shape(name)
    with pytest.raises(ValueError, match="`forget_bias`"):
        make(name, bias=False, forget_bias=1.0)


@pytest.mark.parametrize("name", CELLS)
def test_contract_attributes(name):
    cell = make(name)
    assert cell.output_size == H
    assert hash(cell) == hash(make(name)) and cell == make(name)
    state = cell.initial_state((2, 3), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    for leaf in jax.tree.leaves(state):
        assert leaf.shape == (2, 3) + state_shape(name)
    assert getattr(cell, "num_feature_axes", 1) == (3 if name == "convlstm" else 1)
    assert repr(cell).startswith({"peephole": "peephole_lstm(", "layernorm_lstm": "layernorm_lstm(",
                                  "layernorm_gru": "layernorm_gru(", "convlstm": "conv_lstm("}[name])


def test_convlstm_spatial_shape():
    cell = conv_lstm(H, 3)
    with pytest.raises(ValueError, match="`spatial_shape`"):
        cell.initial_state((2,))
    assert cell.initial_state((2,), spatial_shape=(5, 6)).h.shape == (2, 5, 6, H)
    p = random_params(cell)
    h, y = cell.step(p, None, jnp.ones((5, 6, I)))                    # zero state shaped like the frame
    assert y.shape == (5, 6, H)
    with pytest.raises(ValueError, match="`kernel_size`"):
        conv_lstm(H, (3, 0))
    with pytest.raises(ValueError, match="`h.h` must have shape"):
        cell.step(p, cell.initial_state((2,), spatial_shape=(5, 5)), jnp.ones((2, 5, 6, I)))


@pytest.mark.parametrize("name", CELLS)
def test_errors_name_the_argument(name):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="`hidden_size`"):
            make(name).__class__(bad)
    with pytest.raises(ValueError, match="`init`"):
        make(name, init="glorot")
    cell = make(name)
    p = random_params(cell)
    with pytest.raises(ValueError, match="`input_size`"):
        cell.init(jax.random.key(5), 0)
    x = random_inputs(name, (2,))
    with pytest.raises(ValueError, match=f"`x` must have feature size {I}"):
        cell.step(p, None, jnp.ones(x.shape[:-1] + (I + 1,)))
    with pytest.raises(TypeError, match="`x` must be a floating-point array"):
        cell.step(p, None, x.astype(jnp.int32))
    with pytest.raises(TypeError, match="`params` must be"):
        cell.step(tuple(p), None, x)
    with pytest.raises(ValueError, match="`params.w_hh` must have shape"):
        cell.step(p._replace(w_hh=p.w_hh[:-1]), None, x)
    with pytest.raises((ValueError, TypeError), match="`h"):
        cell.step(p, jnp.zeros((3,) + state_shape(name)) if name == "layernorm_gru" else
                  LSTMState(jnp.zeros((3,) + state_shape(name)), jnp.zeros((3,) + state_shape(name))), x)


# ----------------------------------------------------------------------------- through jaxrnn.unroll / stack


@functools.lru_cache(maxsize=None)
def jitted_step(cell):
    """One jitted ``step`` per cell (cells are hashable), so its compilations are shared."""
    return jax.jit(cell.step)


def loop_reference(cell, p, h0, xs, lengths, resets=None, reverse=False):
    """Each series on its own, segment by segment, with the cell's jitted ``step``: the
    definition of ``seq_lengths``, ``resets`` and ``reverse`` spelled out.

    Series ``b`` has steps ``0..lengths[b]-1``, cut into segments where ``resets`` is True;
    forwards, the first segment starts from ``h0[b]`` (from zeros if ``resets[b, 0]``), every
    later one from zeros; with ``reverse`` each segment runs backwards, the last in time
    from ``h0[b]``, every other from zeros. Outputs past the length are zero; the final
    state is the one after the last step taken (``h0[b]`` for a zero length).
    """
    step = jitted_step(cell)
    B, T = xs.shape[:2]
    resets = np.zeros((B, T), bool) if resets is None else np.asarray(resets)
    ys = np.zeros(xs.shape[:2] + state_shape_of(cell))
    finals = []
    for b in range(B):
        L = int(lengths[b])
        h_b = jax.tree.map(lambda a: a[b], h0)
        zero = jax.tree.map(jnp.zeros_like, h_b)
        starts = [0] + [t for t in range(1, L) if resets[b, t]]
        segments = list(zip(starts, starts[1:] + [L])) if L else []
        state = h_b
        if reverse:
            for i, (s, e) in enumerate(reversed(segments)):
                state = h_b if i == 0 else zero
                for t in reversed(range(s, e)):
                    state, y = step(p, state, xs[b, t])
                    ys[b, t] = np.asarray(y)
        else:
            for i, (s, e) in enumerate(segments):
                if i > 0 or resets[b, 0]:
                    state = zero
                for t in range(s, e):
                    state, y = step(p, state, xs[b, t])
                    ys[b, t] = np.asarray(y)
        finals.append(state)
    return jax.tree.map(lambda *a: jnp.stack(a), *finals), ys


def state_shape_of(cell):
    """The shape of one series' output: the (first) state array's."""
    return tuple(jax.tree.leaves(cell.initial_state(()))[0].shape)


@pytest.mark.parametrize("case", ["zero_state", "resets", "reverse_resets"])
@pytest.mark.parametrize("name", CELLS)
def test_unroll_matches_loop_of_step(name, case, assert_close):
    """``jaxrnn.unroll`` of each cell object (its hoisted ``project``/``update`` path) with
    ragged lengths including 0, against :func:`loop_reference`: from the cell's own
    ``initial_state`` (``h=None``; ConvLSTM's from its ``spatial_shape``) without resets,
    and from a random state with resets in both directions."""
    import jaxrnn

    cell = make(name)
    p = random_params(cell, seed=12)
    T = 5
    xs = random_inputs(name, (3, T), seed=13)
    lengths = np.array([T, 0, 3])
    resets = np.zeros((3, T), bool)
    if case == "zero_state":
        h0, h0_ref, resets_in = None, cell.initial_state((3,)), None
    else:
        h0 = h0_ref = random_state(name, (3,), seed=14)
        resets[0, [0, 2, 3]] = True        # a reset at 0, then segments [0,2) [2,3) [3,5)
        resets[2, [1, 4]] = True           # segments [0,1) [1,3); the reset at 4 lies past the length
        resets_in = jnp.asarray(resets)
    reverse = case == "reverse_resets"
    h, ys = jax.jit(lambda p, h0, xs: jaxrnn.unroll(cell, p, h0, xs, seq_lengths=jnp.asarray(lengths),
                                                    resets=resets_in, reverse=reverse))(p, h0, xs)
    h_ref, ys_ref = loop_reference(cell, p, h0_ref, xs, lengths, resets, reverse=reverse)
    assert_close(ys, ys_ref)
    assert_close(h, h_ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["peephole"])
def test_unroll_gradients_match_loop(name):
    """Gradients (params, initial state, inputs) of a reversed, reset, ragged unroll equal
    those of the Python loop's, in float64."""
    import jaxrnn

    with enable_x64(True):
        cell = make(name)
        p = random_params(cell, seed=15, dtype=np.float64)
        xs = random_inputs(name, (2, 4), seed=16, dtype=np.float64)
        h0 = random_state(name, (2,), seed=17, dtype=np.float64)
        lengths = jnp.array([4, 3])
        resets = jnp.array([[False, False, True, False], [False, True, False, False]])

        def loss_unroll(p, h0, xs):
            h, ys = jaxrnn.unroll(cell, p, h0, xs, seq_lengths=lengths, resets=resets, reverse=True)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(h.c ** 2)

        def loss_loop(p, h0, xs):                    # the same loop, written for autodiff
            total = 0.0
            c_final = []
            for b, segments in enumerate([[(0, 2), (2, 4)], [(0, 1), (1, 3)]]):
                h_b = jax.tree.map(lambda a: a[b], h0)
                for i, (s, e) in enumerate(reversed(segments)):
                    state = h_b if i == 0 else jax.tree.map(jnp.zeros_like, h_b)
                    for t in reversed(range(s, e)):
                        state, y = cell.step(p, state, xs[b, t])
                        total = total + jnp.sum(jnp.sin(y))
                c_final.append(state.c)
            return total + sum(jnp.sum(c ** 2) for c in c_final)

        got = jax.jit(jax.grad(loss_unroll, argnums=(0, 1, 2)))(p, h0, xs)
        want = jax.jit(jax.grad(loss_loop, argnums=(0, 1, 2)))(p, h0, xs)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["peephole"])
def test_bidirectional_stack_with_gru(name, assert_close):
    """``jaxrnn.stack([zoo cell, jaxrnn.gru], bidirectional=True)`` with ragged lengths and
    resets, against both directions of each layer run as per-series, per-segment loops and
    concatenated."""
    import jaxrnn

    cell, gru = make(name), jaxrnn.gru(4)
    net = jaxrnn.stack([cell, gru], bidirectional=True)
    params = net.init(jax.random.key(0), input_size=I)
    leaves, treedef = jax.tree.flatten(params)     # non-zero everything; LayerNorm gains (init 1) stay near 1
    rng = np.random.default_rng(18)
    params = treedef.unflatten([jnp.asarray(rng.uniform(-0.6, 0.6, a.shape), a.dtype) + (a == 1) for a in leaves])
    xs = random_inputs(name, (3, 4), seed=19)
    lengths = np.array([4, 0, 2])
    resets = np.array([[False, False, True, False], [False, True, False, False], [False, True, False, False]])
    h, ys = jax.jit(lambda params, xs: net(params, None, xs, seq_lengths=jnp.asarray(lengths),
                                           resets=jnp.asarray(resets)))(params, xs)

    inputs, finals = xs, []
    for layer_cell, layer in zip([cell, gru], params.layers):
        zeros = layer_cell.initial_state((3,))
        h_f, y_f = loop_reference(layer_cell, layer.forward, zeros, inputs, lengths, resets)
        h_b, y_b = loop_reference(layer_cell, layer.backward, zeros, inputs, lengths, resets, reverse=True)
        finals.append((h_f, h_b))
        inputs = jnp.asarray(np.concatenate([y_f, y_b], axis=-1), jnp.float32)
    assert_close(ys, inputs)
    for (h_f, h_b), got in zip(finals, h):
        assert_close(got.forward, h_f)
        assert_close(got.backward, h_b)
