"""The Mamba-2 mixer (jaxrnn.zoo.mamba2): the chunked form (over jaxrnn.matrix.matrix_scan)
against the sequential scan and a loop of ``step``, values and gradients; against the layer's
equations as a float64 numpy loop and with fla-core's pure-torch ``naive_recurrent_simple_gla``
(the scalar-decay case, loaded by file path) as its SSD core; with random initial and reset
states, resets at t=0, on chunk edges and inside chunks (the convolution window restarts
too), ragged lengths including 0, weak and strong decay, bfloat16 inputs; stack and nnx.RNN."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.zoo.mamba2 import Mamba2State, mamba2
from _compat import enable_x64
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

pytest.importorskip("jaxrnn.matrix")

B, I = 3, 12



def tree_rel_rms(a, b) -> float:
    return max(rel_rms(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def make(decay_scale=1.0, seed=0, hidden=16, groups=2, bias=True):
    """A small cell (4 heads of 8 channels, state 8) and params with every entry random,
    the decay ``dt A`` scaled by ``decay_scale`` (fla's weak/strong decay test)."""
    cell = mamba2(hidden, state_size=8, head_dim=8, num_groups=groups, bias=bias)
    params = cell.init(jax.random.key(seed), I)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    return cell, params._replace(A_log=params.A_log + np.log(decay_scale))


def random_state(cell, seed, batch=(B,)):
    rng = np.random.default_rng(seed)
    s = cell.initial_state(batch)
    return Mamba2State(*(jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in s))


def data(T, seed=1):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    lengths = jnp.asarray([T, T // 2 + 1, 0][:B], jnp.int32)
    resets = np.zeros((B, T), bool)
    resets[0, 0] = True                                 # at t = 0
    for t in (2, 16, 32, 64, 65, 100, 130, 257, 499):   # on chunk edges of 16/32/64 and inside
        if t < T:
            resets[0, t] = True
            resets[1, min(t + 3, T - 1)] = True
    resets[2, ::5] = True                               # in a zero-length sequence: no effect
    return xs, lengths, jnp.asarray(resets)


def step_loop(cell, params, h, xs, lengths, resets, reset_state):
    """``unroll``'s semantics as a Python loop of ``cell.step`` (batch-major xs)."""
    ys, step = [], jax.jit(cell.step)
    for t in range(xs.shape[1]):
        enter = resets[:, t] & (t < lengths)
        h = jax.tree.map(lambda r, s: jnp.where(enter.reshape((-1,) + (1,) * (s.ndim - 1)), r, s), reset_state, h)
        new, y = step(params, h, xs[:, t])
        ok = t < lengths
        h = jax.tree.map(lambda n, o: jnp.where(ok.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, h)
        ys.append(jnp.where(ok[:, None], y, 0.0))
    return h, jnp.stack(ys, axis=1)


# --------------------------------------------------------------------------- float64 numpy


def _np(params):
    return {k: None if v is None else np.asarray(v, np.float64) for k, v in params._asdict().items()}


def silu(a):
    return a / (1 + np.exp(-a))


def softplus(a):
    return np.logaddexp(0.0, a)


def _front(cell, p, x, window):
    """In-projection and convolution of one step: ``(z, x [NH, P], B, C [NH, N], dt [NH], window)``."""
    Di, G, N, NH, P = cell.d_inner, cell.num_groups, cell.state_size, cell.num_heads, cell.head_dim
    zxbcdt = p["in_proj"] @ x + (0 if p["in_bias"] is None else p["in_bias"])
    z, xbc, dt = zxbcdt[:Di], zxbcdt[Di:Di + cell.conv_dim], zxbcdt[Di + cell.conv_dim:]
    window = np.concatenate([window[1:], xbc[None]], axis=0)             # [K, conv_dim], oldest first
    xbc = silu((window * p["conv_weight"].T).sum(0) + (0 if p["conv_bias"] is None else p["conv_bias"]))
    xh = xbc[:Di].reshape(NH, P)
    rep = lambda a: np.repeat(a.reshape(G, N), NH // G, axis=0)
    return z, xh, rep(xbc[Di:Di + G * N]), rep(xbc[Di + G * N:]), softplus(dt + p["dt_bias"]), window


def _back(cell, p, y, xh, z):
    y = (y + p["D"][:, None] * xh).reshape(-1) * silu(z)
    g = y.reshape(cell.num_groups, -1)
    g = g / np.sqrt((g ** 2).mean(-1, keepdims=True) + cell.norm_eps)
    out = p["out_proj"] @ (g.reshape(-1) * p["norm_weight"])
    return out + (0 if p["out_bias"] is None else p["out_bias"])


def numpy_layer(cell, params, h, xs, lengths, resets, reset_state):
    """The layer's equations (module docstring) as a float64 numpy loop."""
    p = _np(params)
    conv, S = (np.asarray(a, np.float64).copy() for a in h)
    R = [np.broadcast_to(np.asarray(a, np.float64), b.shape) for a, b in zip(reset_state, (conv, S))]
    xs = np.asarray(xs, np.float64)
    ys = np.zeros(xs.shape[:2] + (cell.hidden_size,))
    A = -np.exp(p["A_log"])
    for b in range(xs.shape[0]):
        for t in range(int(lengths[b])):
            if resets[b, t]:
                conv[b], S[b] = R[0][b], R[1][b]
            window = np.concatenate([np.zeros_like(conv[b][:1]), conv[b]], axis=0)
            z, xh, Bm, Cm, dt, window = _front(cell, p, xs[b, t], window)
            conv[b] = window[1:]
            S[b] = np.exp(dt * A)[:, None, None] * S[b] + Bm[:, :, None] * (dt[:, None] * xh)[:, None, :]
            ys[b, t] = _back(cell, p, np.einsum("hnp,hn->hp", S[b], Cm), xh, z)
    return (conv, S), ys


@pytest.mark.parametrize("mode", ["sequential", "chunked"])
def test_layer_against_float64_loop(mode):
    cell, params = make(seed=3)
    xs, lengths, resets = data(45, seed=4)
    h0, rs = random_state(cell, 5), random_state(cell, 6, batch=())
    h, ys = _unroll_fn(cell, mode, 16 if mode == "chunked" else None)(params, h0, rs, xs, lengths, resets)
    (conv, S), ys_ref = numpy_layer(cell, params, h0, xs, np.asarray(lengths), np.asarray(resets), rs)
    errs = [rel_rms(ys, ys_ref), rel_rms(h.conv, conv), rel_rms(h.ssm, S)]
    print(f"Mamba-2 {mode} vs float64 loop: rel RMS {max(errs):.2e}")
    assert max(errs) <= 1e-5, errs


def test_layer_with_fla_naive_ssd_core():
    """The layer with fla-core's torch ``naive_recurrent_simple_gla`` (float64) as its SSD:
    ``q = C``, ``k = B``, ``v = dt x``, ``g = dt A``, scale 1, the initial state ``h0.ssm``."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("einops")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ops" / "simple_gla" / "naive.py"
    if not path.exists():
        pytest.skip("fla-core has no ops/simple_gla/naive.py")
    mod_spec = importlib.util.spec_from_file_location("_fla_simple_gla_naive", path)
    naive = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(naive)

    cell, params = make(seed=7)
    T = 40
    xs, _, _ = data(T, seed=8)
    h0 = random_state(cell, 9)
    p = _np(params)
    A = -np.exp(p["A_log"])
    front = []
    for b in range(B):
        window = np.concatenate([np.zeros((1, cell.conv_dim)), np.asarray(h0.conv[b], np.float64)], axis=0)
        rows = []
        for t in range(T):
            *parts, window = _front(cell, p, np.asarray(xs[b, t], np.float64), window)
            rows.append(parts)
        front.append(rows)
    get = lambda i: torch.tensor(np.array([[r[i] for r in rows] for rows in front]))   # [B, T, ...]
    z, xh, Bm, Cm, dt = (get(i) for i in range(5))
    v = dt[..., None] * xh
    g = dt * torch.tensor(A)
    o, S = naive.naive_recurrent_simple_gla(Cm, Bm, v, g, scale=1.0,
                                            initial_state=torch.tensor(np.asarray(h0.ssm, np.float64)),
                                            output_final_state=True)
    o = o.double().numpy()
    ys_ref = np.array([[_back(cell, p, o[b, t], xh[b, t].numpy(), z[b, t].numpy()) for t in range(T)]
                       for b in range(B)])
    h, ys = jaxrnn.unroll(cell, params, h0, xs, mode="chunked", chunk_size=16)
    errs = [rel_rms(ys, ys_ref), rel_rms(h.ssm, S.double().numpy())]
    print(f"Mamba-2 chunked vs layer over fla naive_recurrent_simple_gla: rel RMS {max(errs):.2e}")
    assert max(errs) <= 1e-5, errs


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


@pytest.mark.parametrize("T,decay_scale,chunks", [(1, 1.0, (16,)), (63, 0.1, (16,)), (63, 1.0, (7, 16, 64)),
                                                   (63, 10.0, (16,)), (500, 1.0, (64,))])
def test_chunked_equals_sequential(T, decay_scale, chunks):
    cell, params = make(decay_scale, seed=T)
    xs, lengths, resets = data(T, seed=T + 1)
    h0, rs = random_state(cell, 11), random_state(cell, 12, batch=())
    args = (params, h0, rs, xs, lengths, resets)
    seq = _unroll_fn(cell, "sequential", None)(*args)
    for cs in chunks:
        chk = _unroll_fn(cell, "chunked", cs)(*args)
        err = tree_rel_rms(chk, seq)
        print(f"Mamba-2 T={T} decay x{decay_scale} chunk {cs}: chunked vs sequential rel RMS {err:.2e}")
        assert err <= 1e-5, err
        assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(chk))
    if T <= 63:
        loop = step_loop(cell, params, h0, xs, lengths, resets, rs)
        assert tree_rel_rms(seq, loop) <= 1e-6
        par_seq = cell.parallel_unroll(params, h0, jnp.swapaxes(xs, 0, 1), seq_lengths=lengths, resets=resets.T,
                                       reset_state=rs, mode="sequential")
        assert tree_rel_rms((par_seq[0], jnp.swapaxes(par_seq[1], 0, 1)), seq) <= 1e-5


@pytest.mark.parametrize("decay_scale", [0.1, 1.0, 10.0])
def test_chunked_gradients(decay_scale):
    """Gradients w.r.t. params, initial state, reset state and inputs, chunked against
    sequential; each float32 gradient also against the float64 one."""
    T = 63
    cell, params = make(decay_scale, seed=T)
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
    err = tree_rel_rms(g_chk, g_seq)
    print(f"Mamba-2 decay x{decay_scale}: gradients chunked vs sequential rel RMS {err:.2e}, "
          f"chunked vs float64 at most {worst:.2e}")


@pytest.mark.slow
def test_chunked_equals_sequential_long():
    cell, params = make(1.0, seed=21, hidden=8, groups=1)
    xs, lengths, resets = data(1500, seed=22)
    h0, rs = random_state(cell, 23), random_state(cell, 24, batch=())
    args = (params, h0, rs, xs, lengths, resets)
    err = tree_rel_rms(_unroll_fn(cell, "chunked", 64)(*args), _unroll_fn(cell, "sequential", None)(*args))
    print(f"Mamba-2 T=1500: chunked vs sequential rel RMS {err:.2e}")
    assert err <= 1e-5, err


def test_bfloat16_inputs():
    """bfloat16 inputs and params: the chunked and sequential forms agree (the SSM state, the
    decay and dt in float32 in both; matrix_scan's own bf16 tests cover the SSD kernel)."""
    cell, params = make(1.0, seed=31)
    xs, lengths, resets = data(63, seed=32)
    bf = lambda t: jax.tree.map(lambda a: a.astype(jnp.bfloat16), t)
    params16, xs16 = bf(params), bf(xs)
    h0 = cell.initial_state((B,), jnp.bfloat16)
    run = lambda mode, cs: jax.jit(lambda p, x: jaxrnn.unroll(cell, p, h0, x, seq_lengths=lengths, resets=resets,
                                                              mode=mode, chunk_size=cs))(params16, xs16)
    chk, seq = run("chunked", 16), run("sequential", None)
    assert chk[1].dtype == jnp.bfloat16 and chk[0].ssm.dtype == jnp.float32
    err = tree_rel_rms(chk, seq)
    print(f"Mamba-2 bf16: chunked vs sequential rel RMS {err:.2e}")
    assert err <= 2e-3, err
    assert all(bool(jnp.isfinite(a.astype(jnp.float32)).all()) for a in jax.tree.leaves(chk))


def test_stack_and_nnx_chunked_equals_sequential():
    nnx = pytest.importorskip("flax.nnx")
    import jaxrnn.nnx as jnnx

    small = lambda **kw: mamba2(16, state_size=8, head_dim=8, **kw)
    net = jaxrnn.stack([small(), small(num_groups=2, bias=True)])
    params = net.init(jax.random.key(0), I)
    params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(np.random.default_rng(1).standard_normal(p.shape),
                                                          p.dtype), params)
    xs, lengths, resets = data(40, seed=2)
    run = lambda mode: jax.jit(lambda p, x: net(p, None, x, seq_lengths=lengths, resets=resets, mode=mode))(params, xs)
    a, b = run("chunked"), run("sequential")
    assert tree_rel_rms(a, b) <= 1e-5
    rnn = jnnx.RNN.from_params(small(num_groups=2, bias=True), make(1.0, seed=5)[1])
    a = nnx.jit(lambda m, x: m(x, seq_lengths=lengths, resets=resets, mode="chunked", chunk_size=8))(rnn, xs)
    b = nnx.jit(lambda m, x: m(x, seq_lengths=lengths, resets=resets, mode="sequential"))(rnn, xs)
    assert tree_rel_rms(a, b) <= 1e-5


# --------------------------------------------------------------------------- init, errors


def test_init_is_mamba_ssm():
    cell = mamba2(32, state_size=16, head_dim=16, dt_min=0.001, dt_max=0.1)
    p = cell.init(jax.random.key(0), 24)
    NH = 4
    assert p.in_proj.shape == (2 * 64 + 2 * 16 + NH, 24) and p.conv_weight.shape == (64 + 32, 4)
    assert p.out_proj.shape == (32, 64) and p.in_bias is None and p.out_bias is None
    assert p.A_log.dtype == p.D.dtype == p.dt_bias.dtype == jnp.float32
    A = np.exp(np.asarray(p.A_log))
    assert (A >= 1).all() and (A <= 16).all()
    dt = np.logaddexp(0.0, np.asarray(p.dt_bias, np.float64))            # softplus(dt_bias) = dt
    assert (dt >= 0.001 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    assert bool((p.D == 1).all()) and bool((p.norm_weight == 1).all())
    assert float(jnp.abs(p.conv_weight).max()) <= 0.5 and float(jnp.abs(p.in_proj).max()) <= 1 / np.sqrt(24)


def test_errors():
    cell, params = make()
    T = 5
    xs = jnp.ones((T, B, I))
    h = cell.initial_state((B,))
    with pytest.raises(ValueError, match="`reverse"):
        cell.parallel_unroll(params, h, xs, reverse=True)
    with pytest.raises(ValueError, match="`reverse"):
        jaxrnn.unroll(cell, params, None, jnp.ones((B, T, I)), reverse=True, mode="chunked")
    with pytest.raises(ValueError, match="`mode`"):
        cell.parallel_unroll(params, h, xs, mode="fast")
    with pytest.raises(ValueError, match="head_dim"):
        mamba2(16, head_dim=5)
    with pytest.raises(ValueError, match="params.conv_weight"):
        cell.step(params._replace(conv_weight=params.conv_weight[:, :-1]), None, jnp.ones((B, I)))
    with pytest.raises(TypeError, match="Mamba2Params"):
        cell.step(tuple(params), None, jnp.ones((B, I)))
    with pytest.raises(ValueError, match="h.ssm"):
        cell.step(params, h._replace(ssm=h.ssm[..., :-1]), jnp.ones((B, I)))
    with pytest.raises(ValueError, match="feature size"):
        cell.step(params, None, jnp.ones((B, I + 1)))
