"""jaxrnn.matrix.matrix_scan: chunked vs sequential vs a float64 NumPy loop vs fla-core's naive
references, in values and gradients; resets, lengths, h0, decay strengths, bfloat16, errors.
Metric: relative RMS error (fla's), <= 1e-5 in float32, <= 2e-3 in bfloat16."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.test_util import check_grads

from jaxrnn.matrix import matrix_scan
from _compat import enable_x64
from _fla_ref import naive
from _numerics import rel_rms

pytestmark = pytest.mark.slow  # long compiles (the zoo's references and chunked forms): outside the fast lane (`pytest -m "not slow"`)

F32, BF16 = 1e-5, 2e-3



def make(key, B, T, H, dk, dv, *, per_channel=False, delta=True, gate_scale=1.0, reset_p=0.0, dtype=jnp.float32):
    ks = jax.random.split(key, 8)
    q = jax.random.normal(ks[0], (B, T, H, dk))
    k = jax.random.normal(ks[1], (B, T, H, dk))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (B, T, H, dv))
    gshape = (B, T, H, dk) if per_channel else (B, T, H)
    # fla's test convention: logsigmoid of the gate logits, divided by a normaliser 10, 1, 0.1;
    # per_channel=None: no decay at all (log_decay=None: DeltaNet, plain linear attention)
    g = None if per_channel is None else jax.nn.log_sigmoid(jax.random.normal(ks[3], gshape)) / (1.0 / gate_scale)
    beta = jax.random.uniform(ks[4], (B, T, H), minval=0.0, maxval=2.0) if delta else None
    h0 = jax.random.normal(ks[5], (B, H, dk, dv))
    resets = jax.random.bernoulli(ks[6], reset_p, (B, T)) if reset_p else None
    cast = lambda x: None if x is None else x.astype(dtype)
    return dict(q=cast(q), k=cast(k), v=cast(v), log_decay=cast(g), beta=cast(beta), h0=h0, resets=resets)


def loop64(q, k, v, log_decay, beta, h0, resets=None, lengths=None, scale=1.0):
    """The recurrence of the docstring, a float64 NumPy loop."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    g = np.zeros(q.shape[:3]) if log_decay is None else np.asarray(log_decay, np.float64)
    beta = None if beta is None else np.asarray(beta, np.float64)
    B, T, H, dk = q.shape
    S = np.zeros((B, H, dk, v.shape[-1])) if h0 is None else np.array(h0, np.float64)
    o = np.zeros(v.shape)
    S_final = S.copy()
    for b in range(B):
        Sb = S[b].copy()
        L = T if lengths is None else int(lengths[b])
        for t in range(L):
            if resets is not None and resets[b, t]:
                Sb = np.zeros_like(Sb)
            G = np.exp(g[b, t])
            Sb = (G[:, None, None] if G.ndim == 1 else G[:, :, None]) * Sb
            if beta is None:
                Sb = Sb + k[b, t][:, :, None] * v[b, t][:, None, :]
            else:
                kS = np.einsum("hk,hkv->hv", k[b, t], Sb)
                Sb = Sb + beta[b, t][:, None, None] * k[b, t][:, :, None] * (v[b, t] - kS)[:, None, :]
            o[b, t] = scale * np.einsum("hk,hkv->hv", q[b, t], Sb)
        S_final[b] = Sb
    return S_final, o


CASES = [  # (per_channel, delta)
    (False, True),   # Gated DeltaNet
    (False, False),  # linear attention / Mamba-2 / RetNet
    (True, False),   # GLA
    (True, True),    # per-channel decay with the delta rule
    (None, True),    # DeltaNet: no decay (log_decay=None)
    (None, False),   # plain linear attention
]


@pytest.mark.parametrize("per_channel,delta", CASES)
@pytest.mark.parametrize("T,chunk", [(1, 64), (63, 16), (63, 64)])
def test_modes_vs_float64_loop(key, per_channel, delta, T, chunk):
    B, H, dk, dv = 3, 2, 8, 5
    d = make(key, B, T, H, dk, dv, per_channel=per_channel, delta=delta, reset_p=0.1)
    resets = np.array(d["resets"])
    resets[0, 0] = True                     # at t = 0
    if T > 32:
        resets[1, 16] = resets[1, 17] = True    # on a chunk edge (16) and right after it
        resets[2, 40] = True                    # inside a chunk
    lengths = np.array([T, max(T - 20, 0), 0][:B], np.int32)
    kw = dict(resets=jnp.asarray(resets), seq_lengths=jnp.asarray(lengths), scale=0.7)
    S_ref, o_ref = loop64(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], resets, lengths, 0.7)
    for mode in ("sequential", "chunked"):
        S, o = matrix_scan(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], mode=mode,
                           chunk_size=chunk, **kw)
        assert o.dtype == jnp.float32 and S.shape == (B, H, dk, dv)
        assert rel_rms(o, o_ref) <= F32, (mode, rel_rms(o, o_ref))
        assert rel_rms(S, S_ref) <= F32, (mode, rel_rms(S, S_ref))
        np.testing.assert_array_equal(np.asarray(S[2]), np.asarray(d["h0"][2]))  # length 0: h0 exactly
        assert not np.asarray(o[1, lengths[1]:]).any()


@pytest.mark.parametrize("per_channel,delta", CASES)
def test_gradients_chunked_vs_sequential(key, per_channel, delta):
    B, T, H, dk, dv = 2, 37, 2, 6, 4
    d = make(key, B, T, H, dk, dv, per_channel=per_channel, delta=delta)
    resets = jnp.zeros((B, T), bool).at[0, 0].set(True).at[1, 8].set(True).at[1, 13].set(True)
    reset_state = jax.random.normal(jax.random.key(9), d["h0"].shape)
    lengths = jnp.array([T, 30], jnp.int32)
    names = ["q", "k", "v", "h0"] + (["beta"] if delta else []) + (["log_decay"] if per_channel is not None else [])

    def loss(mode, args):
        full = dict(d, **args)
        S, o = matrix_scan(full["q"], full["k"], full["v"], full["log_decay"], full["beta"], full["h0"],
                           resets=resets, reset_state=reset_state, seq_lengths=lengths, mode=mode, chunk_size=8)
        w = jnp.cos(jnp.arange(o.size).reshape(o.shape))
        return jnp.sum(o * w) + jnp.sum(S ** 2)

    args = {n: d[n] for n in names}
    g_seq = jax.grad(functools.partial(loss, "sequential"))(args)
    g_chk = jax.grad(functools.partial(loss, "chunked"))(args)
    for n in names:
        assert rel_rms(g_chk[n], g_seq[n]) <= F32, (n, rel_rms(g_chk[n], g_seq[n]))


@pytest.mark.parametrize("per_channel", [True, None])
def test_gradient_check_small(key, per_channel):
    d = make(key, 1, 9, 1, 3, 2, per_channel=per_channel, delta=True)
    names = ("q", "k", "v", "beta", "h0") + (("log_decay",) if per_channel else ())
    f = lambda q, k, v, b, h0, g=None: matrix_scan(q, k, v, g, b, h0, chunk_size=4)[1]
    args = tuple(np.asarray(d[n], np.float64) for n in names)
    with enable_x64():
        check_grads(f, tuple(jnp.asarray(a) for a in args), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("gate_scale", [0.1, 1.0, 10.0])
def test_decay_strengths_and_no_nan(key, gate_scale):
    """Weak and strong decays (fla's normalisers 10, 1, 0.1), resets everywhere: finite values,
    float32-accurate against the float64 loop, finite gradients."""
    B, T, H, dk, dv = 2, 70, 2, 8, 8
    for per_channel in (False, True):
        d = make(key, B, T, H, dk, dv, per_channel=per_channel, delta=True, gate_scale=gate_scale, reset_p=0.3)
        S_ref, o_ref = loop64(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], np.asarray(d["resets"]))
        S, o = matrix_scan(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], resets=d["resets"],
                           chunk_size=32)
        assert rel_rms(o, o_ref) <= F32 and rel_rms(S, S_ref) <= F32
        grads = jax.grad(lambda g: jnp.sum(matrix_scan(d["q"], d["k"], d["v"], g, d["beta"], d["h0"],
                                                       resets=d["resets"], chunk_size=32)[1] ** 2))(d["log_decay"])
        assert np.isfinite(np.asarray(grads)).all()


def test_all_resets_no_nan(key):
    d = make(key, 1, 20, 1, 4, 4, per_channel=True, delta=True)
    resets = jnp.ones((1, 20), bool)
    f = lambda g: jnp.sum(matrix_scan(d["q"], d["k"], d["v"], g, d["beta"], d["h0"], resets=resets,
                                      chunk_size=8)[1] ** 2)
    assert np.isfinite(float(f(d["log_decay"])))
    assert np.isfinite(np.asarray(jax.grad(f)(d["log_decay"]))).all()


def test_bfloat16(key):
    B, T, H, dk, dv = 2, 100, 2, 16, 16
    d = make(key, B, T, H, dk, dv, delta=True, dtype=jnp.bfloat16)
    S_ref, o_ref = loop64(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"])
    S, o = matrix_scan(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], chunk_size=32)
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    assert rel_rms(o, o_ref) <= BF16 and rel_rms(S, S_ref) <= BF16


@pytest.mark.slow
@pytest.mark.parametrize("T", [500, 1500])
def test_long(key, T):
    d = make(key, 1, T, 1, 8, 8, delta=True, gate_scale=0.1, reset_p=0.01)
    S_ref, o_ref = loop64(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], np.asarray(d["resets"]))
    S, o = matrix_scan(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], resets=d["resets"])
    assert rel_rms(o, o_ref) <= F32 and rel_rms(S, S_ref) <= F32


# --------------------------------------------------------------------------- fla-core references


def _torch(x):
    import torch
    return torch.from_numpy(np.asarray(x, np.float32))


@pytest.mark.parametrize("gate_scale", [0.1, 1.0, 10.0])
def test_fla_gated_delta_rule(key, gate_scale):
    ref = naive("gated_delta_rule")
    d = make(key, 2, 63, 2, 16, 8, delta=True, gate_scale=gate_scale)
    d["beta"] = d["beta"] / 2
    o_ref, S_ref = ref.naive_recurrent_gated_delta_rule(
        _torch(d["q"]), _torch(d["k"]), _torch(d["v"]), _torch(d["beta"]), _torch(d["log_decay"]),
        scale=0.25, initial_state=_torch(d["h0"]), output_final_state=True)
    S, o = matrix_scan(d["q"], d["k"], d["v"], d["log_decay"], d["beta"], d["h0"], chunk_size=16, scale=0.25)
    assert rel_rms(o, o_ref.numpy()) <= F32 and rel_rms(S, S_ref.numpy()) <= F32


def test_fla_delta_rule(key):
    ref = naive("delta_rule")
    d = make(key, 2, 63, 2, 16, 8, delta=True)
    tr = lambda x: _torch(np.swapaxes(np.asarray(x), 1, 2))  # fla's delta_rule naive is [B, H, T, ...]
    o_ref, S_ref = ref.delta_rule_recurrence(tr(d["q"]), tr(d["k"]), tr(d["v"]), tr(d["beta"]),
                                             initial_state=_torch(d["h0"]))
    zero = jnp.zeros_like(d["beta"])
    for g in (None, zero):  # no decay, and a unit decay given explicitly
        for mode in ("chunked", "sequential"):
            S, o = matrix_scan(d["q"], d["k"], d["v"], g, d["beta"], d["h0"], chunk_size=16, scale=16 ** -0.5,
                               mode=mode)
            assert rel_rms(o, np.swapaxes(o_ref.numpy(), 1, 2)) <= F32 and rel_rms(S, S_ref.numpy()) <= F32


@pytest.mark.parametrize("gate_scale", [0.1, 1.0, 10.0])
def test_fla_gla(key, gate_scale):
    ref = naive("gla")
    d = make(key, 2, 63, 2, 16, 8, per_channel=True, delta=False, gate_scale=gate_scale)
    o_ref, S_ref = ref.naive_recurrent_gla(_torch(d["q"]), _torch(d["k"]), _torch(d["v"]), _torch(d["log_decay"]),
                                           initial_state=_torch(d["h0"]), output_final_state=True)
    S, o = matrix_scan(d["q"], d["k"], d["v"], d["log_decay"], None, d["h0"], chunk_size=16, scale=16 ** -0.5)
    assert rel_rms(o, o_ref.numpy()) <= F32 and rel_rms(S, S_ref.numpy()) <= F32


# --------------------------------------------------------------------------- errors


def test_errors():
    q = jnp.zeros((2, 5, 3, 4))
    v = jnp.zeros((2, 5, 3, 6))
    g = jnp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="`k`"):
        matrix_scan(q, q[..., :3], v, g)
    with pytest.raises(ValueError, match="`v`"):
        matrix_scan(q, q, v[:, :4], g)
    with pytest.raises(ValueError, match="`log_decay`"):
        matrix_scan(q, q, v, g[..., :2])
    with pytest.raises(ValueError, match="`beta`"):
        matrix_scan(q, q, v, g, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="`h0`"):
        matrix_scan(q, q, v, g, None, jnp.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="`seq_lengths`"):
        matrix_scan(q, q, v, g, seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="`resets`"):
        matrix_scan(q, q, v, g, resets=jnp.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="`mode`"):
        matrix_scan(q, q, v, g, mode="associative")
    with pytest.raises(TypeError, match="`q`"):
        matrix_scan(jnp.zeros((2, 5, 3, 4), jnp.int32), q, v, g)


@pytest.mark.parametrize("K", [7, 17, 64])
def test_unit_lower_solve_against_float64(K):
    """The delta rule's triangular solve (block inverse + merges, padded for any K) and its
    VJP, against numpy's float64 solve and the VJP of ``jnp.linalg.solve`` in float64."""
    from jaxrnn.matrix import _unit_lower_solve

    k = jax.random.split(jax.random.key(K), 3)
    A = jnp.tril(jax.random.normal(k[0], (3, K, K)) * 0.3, -1)
    R = jax.random.normal(k[1], (3, K, 5))
    dX = jax.random.normal(k[2], (3, K, 5))
    A64, R64, dX64 = (np.asarray(a, np.float64) for a in (A, R, dX))
    want = np.linalg.solve(np.eye(K) + A64, R64)
    # Two right-hand sides (widths 2 and 3) share one inverse.
    X = jnp.concatenate(_unit_lower_solve(A, (R[..., :2], R[..., 2:])), axis=-1)
    assert rel_rms(X, want) <= F32
    _, pull = jax.vjp(lambda A, R: jnp.concatenate(_unit_lower_solve(A, (R[..., :2], R[..., 2:])), axis=-1), A, R)
    dA, dR = pull(dX)
    with enable_x64():
        _, pull64 = jax.vjp(lambda A, R: jnp.linalg.solve(jnp.eye(K) + A, R), jnp.asarray(A64), jnp.asarray(R64))
        dA64, dR64 = (np.asarray(x) for x in pull64(jnp.asarray(dX64)))
    assert rel_rms(dR, dR64) <= F32
    assert rel_rms(dA, np.tril(dA64, -1)) <= F32
    np.testing.assert_array_equal(np.triu(np.asarray(dA)), 0.0)
