"""The mLSTM cell (jaxrnn.zoo.mlstm): the chunkwise form against the sequential scan and a
loop of ``step``, values and gradients; against mlstm-kernels' JAX native step, chunkwise and
parallel kernels (loaded by file path); against the layer's equations as a float64 numpy
loop; with random initial and reset states, resets at t=0, on chunk edges and inside chunks,
ragged lengths including 0, weak and strong gates, bfloat16 inputs; stack and nnx.RNN."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo.mlstm import MLSTMState, mlstm, mlstm_chunkwise, mlstm_step
from _compat import enable_x64
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

B, I = 3, 12



def tree_rel_rms(a, b) -> float:
    return max(rel_rms(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def make(gate_scale=1.0, seed=0, hidden=16, heads=2, bias=True):
    """A cell and params with every entry random (non-zero biases, gate weights, norm),
    the gate pre-activations scaled by ``gate_scale`` (fla's weak/strong decay test)."""
    cell = mlstm(hidden, num_heads=heads, bias=bias)
    params = cell.init(jax.random.key(seed), I)
    rng = np.random.default_rng(seed)
    noise = lambda p, s: p + s * jnp.asarray(rng.standard_normal(p.shape), p.dtype)
    params = jax.tree.map(lambda p: noise(p, 0.3), params)
    params = params._replace(w_i=params.w_i * 0 + gate_scale * jnp.asarray(rng.standard_normal(params.w_i.shape)) * 0.4,
                             b_i=gate_scale * jnp.asarray(rng.standard_normal(params.b_i.shape), jnp.float32),
                             w_f=gate_scale * jnp.asarray(rng.standard_normal(params.w_f.shape)) * 0.4,
                             b_f=gate_scale * (2.0 + jnp.asarray(rng.standard_normal(params.b_f.shape), jnp.float32)))
    return cell, params


def random_state(cell, seed, batch=(B,)):
    rng = np.random.default_rng(seed)
    s = cell.initial_state(batch)
    return MLSTMState(jnp.asarray(rng.standard_normal(s.c.shape), jnp.float32),
                      jnp.asarray(rng.standard_normal(s.n.shape), jnp.float32),
                      jnp.asarray(rng.uniform(-1, 2, s.m.shape), jnp.float32))


def data(T, seed=1):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    lengths = jnp.asarray([T, max(T // 2 + 1, 0), 0][:B], jnp.int32)
    resets = np.zeros((B, T), bool)
    resets[0, 0] = True                                 # at t = 0
    for t in (16, 32, 64, 65, 100, 130, 257, 499):      # on chunk edges of 16/32/64 and inside
        if t < T:
            resets[0, t] = True
            resets[1, min(t + 3, T - 1)] = True
    resets[2, ::5] = True                               # in a zero-length sequence: no effect
    return xs, lengths, jnp.asarray(resets)


def step_loop(cell, params, h, xs, lengths, resets, reset_state):
    """``unroll``'s semantics as a Python loop of ``cell.step`` (batch-major xs)."""
    ys, step = [], jax.jit(cell.step)
    for t in range(xs.shape[1]):
        enter = (resets[:, t] & (t < lengths))
        h = jax.tree.map(lambda r, s: jnp.where(enter.reshape((-1,) + (1,) * (s.ndim - 1)), r, s), reset_state, h)
        new, y = step(params, h, xs[:, t])
        ok = t < lengths
        h = jax.tree.map(lambda n, o: jnp.where(ok.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, h)
        ys.append(jnp.where(ok[:, None], y, 0.0))
    return h, jnp.stack(ys, axis=1)


# --------------------------------------------------------------------------- float64 loop of the equations


def numpy_layer(cell, params, h, xs, lengths, resets, reset_state):
    """The layer's equations (module docstring) as a float64 numpy loop."""
    p = {k: None if v is None else np.asarray(v, np.float64) for k, v in params._asdict().items()}
    NH = cell.num_heads
    dk, dv = cell.head_dims
    cap = cell.gate_soft_cap
    C, n, m = (np.asarray(a, np.float64).copy() for a in h)
    R = [np.broadcast_to(np.asarray(a, np.float64), b.shape) for a, b in zip(reset_state, (C, n, m))]
    xs = np.asarray(xs, np.float64)
    ys = np.zeros(xs.shape[:2] + (cell.hidden_size,))
    lin = lambda x, w, b: x @ w.T + (0 if b is None else b)
    for bi in range(xs.shape[0]):
        for t in range(int(lengths[bi])):
            if resets[bi, t]:
                C[bi], n[bi], m[bi] = R[0][bi], R[1][bi], R[2][bi]
            x = xs[bi, t]
            q = lin(x, p["w_q"], p["b_q"]).reshape(NH, dk)
            k = lin(x, p["w_k"], p["b_k"]).reshape(NH, dk)
            v = lin(x, p["w_v"], p["b_v"]).reshape(NH, dv)
            o = lin(x, p["w_o"], p["b_o"])
            ig = cap * np.tanh(lin(x, p["w_i"], p["b_i"]) / cap)
            fg = cap * np.tanh(lin(x, p["w_f"], p["b_f"]) / cap)
            hv = np.zeros((NH, dv))
            for hd in range(NH):
                lf = -np.logaddexp(0.0, -fg[hd])
                m_new = max(lf + m[bi, hd], ig[hd])
                fa, ia = np.exp(lf + m[bi, hd] - m_new), np.exp(ig[hd] - m_new)
                C[bi, hd] = fa * C[bi, hd] + ia * np.outer(k[hd], v[hd])
                n[bi, hd] = fa * n[bi, hd] + ia * k[hd]
                m[bi, hd] = m_new
                qs = q[hd] / np.sqrt(dk)
                hv[hd] = C[bi, hd].T @ qs / (max(abs(n[bi, hd] @ qs), np.exp(-m_new)) + cell.eps)
            mu = hv.mean(-1, keepdims=True)
            var = ((hv - mu) ** 2).mean(-1, keepdims=True)
            hn = ((hv - mu) / np.sqrt(var + cell.norm_eps)).reshape(-1) * p["norm_weight"]
            if p["norm_bias"] is not None:
                hn = hn + p["norm_bias"]
            ys[bi, t] = lin(hn / (1 + np.exp(-o)), p["w_out"], p["b_out"])
    return (C, n, m), ys


@pytest.mark.parametrize("mode", ["sequential", "chunked"])
def test_layer_against_float64_loop(mode):
    cell, params = make(seed=3)
    T = 45
    xs, lengths, resets = data(T, seed=4)
    h0 = random_state(cell, 5)
    rs = random_state(cell, 6, batch=())
    h, ys = _unroll_fn(cell, mode, 16 if mode == "chunked" else None)(params, h0, rs, xs, lengths, resets)
    (C, n, m), ys_ref = numpy_layer(cell, params, h0, xs, np.asarray(lengths), np.asarray(resets), rs)
    errs = [rel_rms(ys, ys_ref), rel_rms(h.c, C), rel_rms(h.n, n), rel_rms(h.m, m)]
    print(f"mLSTM {mode} vs float64 loop: rel RMS {max(errs):.2e}")
    assert max(errs) <= 1e-5, errs


# --------------------------------------------------------------------------- mlstm-kernels


def _load(relpath: str):
    mk = pytest.importorskip("mlstm_kernels")
    pytest.importorskip("einops")  # imported by the chunkwise file
    path = pathlib.Path(mk.__file__).parent / relpath
    if not path.exists():
        pytest.skip(f"mlstm-kernels has no {relpath}")
    spec = importlib.util.spec_from_file_location("_mk_" + relpath.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernel_inputs(T, seed, NH=2, dk=8, dv=16, f_scale=1.0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v = f32(B, NH, T, dk), f32(B, NH, T, dk), f32(B, NH, T, dv)
    i = f32(B, NH, T) * 2.0
    f = f_scale * (1.5 + f32(B, NH, T))
    c0, n0, m0 = f32(B, NH, dk, dv), f32(B, NH, dk), jnp.asarray(rng.uniform(-1, 2, (B, NH)), jnp.float32)
    return q, k, v, i, f, c0, n0, m0


def test_step_against_mlstm_kernels_native_step():
    ref = _load("jax/recurrent/native_step.py").mlstm_recurrent_step__native_fw
    q, k, v, i, f, c0, n0, m0 = _kernel_inputs(1, seed=7)
    sq = lambda a: a[:, :, 0]
    h_ref, (c_ref, n_ref, m_ref) = ref(c0, n0, m0[..., None], sq(q), sq(k), sq(v), sq(i)[..., None],
                                       sq(f)[..., None], eps=1e-6)
    state, h = mlstm_step(MLSTMState(c0, n0, m0), sq(q), sq(k), sq(v), sq(i), sq(f), eps=1e-6)
    errs = [rel_rms(h, h_ref), rel_rms(state.c, c_ref), rel_rms(state.n, n_ref), rel_rms(state.m, m_ref[..., 0])]
    print(f"mlstm_step vs mlstm-kernels native_step: rel RMS {max(errs):.2e}")
    assert max(errs) <= 1e-6, errs


@pytest.mark.parametrize("f_scale", [0.1, 1.0, 10.0])
def test_chunkwise_against_mlstm_kernels_chunkwise_native(f_scale):
    ref = _load("jax/chunkwise/native/fw.py").mlstm_chunkwise_fw
    T, L = 96, 32
    q, k, v, i, f, c0, n0, m0 = _kernel_inputs(T, seed=8, f_scale=f_scale)
    h_ref, _, _, (c_ref, n_ref, m_ref), _ = ref(q, k, v, i, f, matC_initial=c0, vecN_initial=n0, scaM_initial=m0,
                                                return_last_states=True, chunk_size=L, eps=1e-6)
    tm = lambda a: jnp.moveaxis(a, 2, 0)
    state, h = mlstm_chunkwise(tm(q), tm(k), tm(v), tm(i), tm(f), MLSTMState(c0, n0, m0), chunk_size=L, eps=1e-6)
    errs = [rel_rms(jnp.moveaxis(h, 0, 2), h_ref), rel_rms(state.c, c_ref), rel_rms(state.n, n_ref),
            rel_rms(state.m, m_ref)]
    print(f"mlstm_chunkwise vs mlstm-kernels chunkwise/native (f x{f_scale}): rel RMS {max(errs):.2e}")
    assert max(errs) <= 1e-5, errs


def test_chunkwise_against_mlstm_kernels_parallel_native():
    """The parallel kernel starts from a zero state with its own stabiliser; with eps = 0 the
    output does not depend on the stabiliser, so both must agree to rounding."""
    ref = _load("jax/parallel/native/fw.py").mlstm_parallel_fw
    T = 70
    q, k, v, i, f, *_ = _kernel_inputs(T, seed=9)
    out = ref(q, k, v, i, f, eps=0.0)
    h_ref = out[0] if isinstance(out, tuple) else out
    tm = lambda a: jnp.moveaxis(a, 2, 0)
    zero = MLSTMState(jnp.zeros((B, 2, 8, 16)), jnp.zeros((B, 2, 8)), jnp.zeros((B, 2)))
    _, h = mlstm_chunkwise(tm(q), tm(k), tm(v), tm(i), tm(f), zero, chunk_size=16, eps=0.0)
    err = rel_rms(jnp.moveaxis(h, 0, 2), h_ref)
    print(f"mlstm_chunkwise vs mlstm-kernels parallel/native: rel RMS {err:.2e}")
    assert err <= 1e-5, err


# --------------------------------------------------------------------------- chunked vs sequential vs step


def _unroll_fn(cell, mode, chunk_size):
    def run(params, h0, rs, xs, lengths, resets):
        return jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, resets=resets, reset_state=rs, mode=mode,
                             chunk_size=chunk_size)
    return jax.jit(run)


def _loss(fn):
    def loss(params, h0, rs, xs, lengths, resets):
        h, ys = fn(params, h0, rs, xs, lengths, resets)
        return jnp.sum(ys * jnp.cos(jnp.arange(ys.shape[-1]))) + sum(jnp.sum(jnp.sin(a)) for a in h)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


@pytest.mark.parametrize("T,gate_scale,chunks", [(1, 1.0, (16,)), (63, 0.1, (16,)), (63, 1.0, (7, 16, 64)),
                                                  (63, 10.0, (16,)), (500, 1.0, (64,))])
def test_chunked_equals_sequential(T, gate_scale, chunks):
    cell, params = make(gate_scale, seed=T)
    xs, lengths, resets = data(T, seed=T + 1)
    h0, rs = random_state(cell, 11), random_state(cell, 12, batch=())
    args = (params, h0, rs, xs, lengths, resets)
    seq = _unroll_fn(cell, "sequential", None)(*args)
    for cs in chunks:
        chk = _unroll_fn(cell, "chunked", cs)(*args)
        err = tree_rel_rms(chk, seq)
        print(f"mLSTM T={T} gates x{gate_scale} chunk {cs}: chunked vs sequential rel RMS {err:.2e}")
        assert err <= 1e-5, err
        assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(chk))
    if T <= 63:
        loop = step_loop(cell, params, h0, xs, lengths, resets, rs)
        assert tree_rel_rms(seq, loop) <= 1e-6


@pytest.mark.parametrize("gate_scale", [0.1, 1.0, 10.0])
def test_chunked_gradients(gate_scale):
    """Gradients w.r.t. params, initial state, reset state and inputs. Each float32 gradient is
    measured against the float64 one: the chunked form must be within 1e-5 of it, or no
    further than 4x the sequential scan's own float32 error (the gradient w.r.t. the reset
    state's normaliser is a small sum of cancelling terms: there the sequential scan itself
    is ~1e-4 off in float32, while the two forms agree to 2e-13 in float64)."""
    T = 63
    cell, params = make(gate_scale, seed=T)
    xs, lengths, resets = data(T, seed=T + 1)
    h0, rs = random_state(cell, 11), random_state(cell, 12, batch=())
    args = (params, h0, rs, xs, lengths, resets)
    g_seq = _loss(_unroll_fn(cell, "sequential", None))(*args)
    g_chk = _loss(_unroll_fn(cell, "chunked", 16))(*args)
    with enable_x64():
        a64 = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, args)
        g64 = _loss(_unroll_fn(cell, "sequential", None))(*a64)
    worst = 0.0
    for c, s, r in zip(jax.tree.leaves(g_chk), jax.tree.leaves(g_seq), jax.tree.leaves(g64)):
        e_chk, e_seq = rel_rms(c, r), rel_rms(s, r)
        assert e_chk <= max(1e-5, 4 * e_seq), (e_chk, e_seq)
        assert bool(jnp.isfinite(c).all())
        worst = max(worst, e_chk)
    print(f"mLSTM gates x{gate_scale}: gradients, chunked vs float64 rel RMS at most {worst:.2e}; "
          f"chunked vs sequential {tree_rel_rms(g_chk, g_seq):.2e}")


@pytest.mark.slow
def test_chunked_equals_sequential_long():
    cell, params = make(1.0, seed=21, hidden=8, heads=2)
    xs, lengths, resets = data(1500, seed=22)
    h0, rs = random_state(cell, 23), random_state(cell, 24, batch=())
    args = (params, h0, rs, xs, lengths, resets)
    err = tree_rel_rms(_unroll_fn(cell, "chunked", 64)(*args), _unroll_fn(cell, "sequential", None)(*args))
    print(f"mLSTM T=1500: chunked vs sequential rel RMS {err:.2e}")
    assert err <= 1e-5, err


def test_bfloat16_inputs():
    """bfloat16 inputs and params: the layer's chunked and sequential forms agree (state and
    gates in float32 in both), and the chunkwise kernel on bfloat16 q, k, v and gates matches
    a float64 loop of the cell on the same (rounded) values."""
    cell, params = make(1.0, seed=31)
    T = 63
    xs, lengths, resets = data(T, seed=32)
    bf = lambda t: jax.tree.map(lambda a: a.astype(jnp.bfloat16), t)
    params16, xs16 = bf(params), bf(xs)
    h0 = cell.initial_state((B,))
    run = lambda mode, cs: jax.jit(lambda p, x: jaxrnn.unroll(cell, p, h0, x, seq_lengths=lengths, resets=resets,
                                                              mode=mode, chunk_size=cs))(params16, xs16)
    chk, seq = run("chunked", 16), run("sequential", None)
    assert chk[1].dtype == jnp.bfloat16 and chk[0].c.dtype == jnp.float32
    err = tree_rel_rms(chk, seq)

    q, k, v, i, f, c0, n0, m0 = _kernel_inputs(T, seed=33)
    q, k, v, i, f = (a.astype(jnp.bfloat16) for a in (q, k, v, i, f))
    tm = lambda a: jnp.moveaxis(a, 2, 0)
    state, h = mlstm_chunkwise(tm(q), tm(k), tm(v), tm(i), tm(f), MLSTMState(c0, n0, m0), chunk_size=16)
    c, n, m = (np.asarray(a, np.float64).copy() for a in (c0, n0, m0))
    q, k, v, i, f = (np.asarray(a.astype(jnp.float32), np.float64) for a in (q, k, v, i, f))
    h_ref = np.zeros(v.shape)
    for t in range(T):
        lf = -np.logaddexp(0.0, -f[..., t])
        m_new = np.maximum(lf + m, i[..., t])
        fa, ia = np.exp(lf + m - m_new), np.exp(i[..., t] - m_new)
        c = fa[..., None, None] * c + ia[..., None, None] * k[..., t, :, None] * v[..., t, None, :]
        n = fa[..., None] * n + ia[..., None] * k[..., t, :]
        m = m_new
        qs = q[..., t, :] / np.sqrt(q.shape[-1])
        den = np.maximum(np.abs((n * qs).sum(-1)), np.exp(-m)) + 1e-6
        h_ref[..., t, :] = np.einsum("bhkv,bhk->bhv", c, qs) / den[..., None]
    err_k = max(rel_rms(jnp.moveaxis(h, 0, 2), h_ref), rel_rms(state.c, c), rel_rms(state.n, n))
    print(f"mLSTM bf16: layer chunked vs sequential rel RMS {err:.2e}; chunkwise kernel on bf16 inputs vs "
          f"float64 loop {err_k:.2e}")
    assert err <= 2e-3 and err_k <= 2e-3, (err, err_k)


def test_float64():
    cell, params = make(1.0, seed=41)
    xs, lengths, resets = data(30, seed=42)
    with enable_x64():
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x64 = xs.astype(jnp.float64)
        h, ys = jaxrnn.unroll(cell, p64, None, x64, seq_lengths=lengths, resets=resets, mode="chunked", chunk_size=8)
        assert h.c.dtype == jnp.float64 and ys.dtype == jnp.float64
        (C, n, m), ys_ref = numpy_layer(cell, p64, cell.initial_state((B,), jnp.float64), x64, np.asarray(lengths),
                                        np.asarray(resets), cell.initial_state((), jnp.float64))
        assert rel_rms(ys, ys_ref) <= 1e-12 and rel_rms(h.c, C) <= 1e-12


def test_stack_and_nnx_chunked_equals_sequential():
    nnx = pytest.importorskip("flax.nnx")
    import jaxrnn.nnx as jnnx

    net = jaxrnn.stack([mlstm(16, num_heads=2), mlstm(16, num_heads=4, bias=True)])
    params = net.init(jax.random.key(0), I)
    params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(np.random.default_rng(1).standard_normal(p.shape),
                                                          p.dtype), params)
    xs, lengths, resets = data(40, seed=2)
    run = lambda mode: jax.jit(lambda p, x: net(p, None, x, seq_lengths=lengths, resets=resets, mode=mode))(params, xs)
    a, b = run("chunked"), run("sequential")
    assert tree_rel_rms(a, b) <= 1e-5
    rnn = jnnx.RNN.from_params(mlstm(16, num_heads=2, bias=True), make(1.0, seed=5)[1])
    a = nnx.jit(lambda m, x: m(x, seq_lengths=lengths, resets=resets, mode="chunked", chunk_size=8))(rnn, xs)
    b = nnx.jit(lambda m, x: m(x, seq_lengths=lengths, resets=resets, mode="sequential"))(rnn, xs)
    assert tree_rel_rms(a, b) <= 1e-5


# --------------------------------------------------------------------------- init, errors


def test_init_is_xlstm_7b():
    cell = mlstm(32, num_heads=4)
    p = cell.init(jax.random.key(0), 24)
    assert p.w_q.shape == (16, 24) and p.w_v.shape == (32, 24) and p.w_out.shape == (32, 32)
    assert bool((p.w_i == 0).all()) and bool((p.w_f == 0).all()) and bool((p.b_i == -10).all())
    np.testing.assert_allclose(p.b_f, np.linspace(3, 6, 4), rtol=1e-6)
    assert p.b_q is None and p.norm_bias is None
    np.testing.assert_allclose(np.std(np.asarray(p.w_q)), np.sqrt(2 / (5 * 24)), rtol=0.2)


def test_errors():
    cell, params = make()
    xs = jnp.ones((T := 5, B, I))
    h = cell.initial_state((B,))
    with pytest.raises(ValueError, match="`reverse"):
        cell.parallel_unroll(params, h, xs, reverse=True)
    with pytest.raises(ValueError, match="`reverse"):
        jaxrnn.unroll(cell, params, None, jnp.ones((B, T, I)), reverse=True, mode="chunked")
    with pytest.raises(ValueError, match="`mode`"):
        cell.parallel_unroll(params, h, xs, mode="fast")
    with pytest.raises(ValueError, match="num_heads"):
        mlstm(10, num_heads=4)
    with pytest.raises(ValueError, match="params.w_k"):
        cell.step(params._replace(w_k=params.w_k[:, :-1]), None, jnp.ones((B, I)))
    with pytest.raises(TypeError, match="MLSTMParams"):
        cell.step(tuple(params), None, jnp.ones((B, I)))
    with pytest.raises(ValueError, match="h.n"):
        cell.step(params, h._replace(n=h.n[..., :-1]), jnp.ones((B, I)))
    with pytest.raises(ValueError, match="feature size"):
        cell.step(params, None, jnp.ones((B, I + 1)))
    # reverse through the generic scan works and equals a reversed loop of the step
    h_rev, ys_rev = jaxrnn.unroll(cell, params, None, jnp.ones((B, T, I)), reverse=True)
    h_fwd, ys_fwd = jaxrnn.unroll(cell, params, None, jnp.ones((B, T, I)))
    assert tree_rel_rms(h_rev, h_fwd) <= 1e-6  # constant input: the same steps in either order
