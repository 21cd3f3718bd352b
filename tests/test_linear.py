"""``jaxrnn.linear.linear_scan`` in every mode against float64 references.

Two references, both float64:

* :func:`numpy_reference`, a plain numpy loop that runs each sequence *segment by
  segment* (splitting it at its resets, each segment from its own start state, walked
  backwards with ``reverse``): the definition of the semantics, written without the
  ``(a, b)`` rewriting that ``linear_scan`` does;
* :func:`jax_reference`, a float64 ``lax.scan`` of the same step with ``where`` masks,
  differentiated by plain autodiff: the reference for gradients (its values are checked
  against the numpy one first).

"Relative" errors are ``max|x - ref| / max|ref|`` over an array.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.linear import MODES, auto_mode, linear_scan
from _compat import enable_x64

VALUE_TOL = 1e-5   # float32 against float64, relative
GRAD_TOL = 1e-4


def rel_err(x, ref) -> float:
    dtype = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(ref) else np.float64
    x, ref = np.asarray(x, dtype), np.asarray(ref, dtype)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    return float(np.max(np.abs(x - ref)) / max(scale, 1e-30)) if ref.size else 0.0


# --------------------------------------------------------------------------- references


def numpy_reference(a, b, h0, r, lengths, resets, reverse):
    """``(h_final [N, H], hs [N, T, H])``; arrays complex or real, float64, batch-major ``[N, T, H]``."""
    N, T, H = b.shape
    hs = np.zeros_like(b)
    final = np.array(h0, copy=True)
    for n in range(N):
        L = int(lengths[n])
        if L == 0:
            continue
        starts = [0] + [t for t in range(1, L) if resets[n, t]]
        segments = list(zip(starts, starts[1:] + [L]))
        for k, (s, e) in enumerate(segments):
            if reverse:
                h = h0[n] if k == len(segments) - 1 else r[n]
                steps = range(e - 1, s - 1, -1)
            else:
                h = r[n] if (k > 0 or resets[n, 0]) else h0[n]
                steps = range(s, e)
            for t in steps:
                h = a[n, t] * h + b[n, t]
                hs[n, t] = h
        final[n] = hs[n, 0] if reverse else hs[n, L - 1]
    return final, hs


def jax_reference(a, b, h0, r, lengths, resets, reverse):
    """The step semantics as a float64 ``lax.scan`` (time-major ``[T, N, H]``, complex or real)."""
    T = b.shape[0]
    t = jnp.arange(T)[:, None]
    valid = t < lengths[None, :]
    if reverse:  # the state entering step t comes from t + 1
        enter = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])]) & (t + 1 < lengths[None, :])
    else:
        enter = resets

    def step(h, inp):
        a_t, b_t, e_t, v_t = inp
        h_in = jnp.where(e_t[:, None], r, h)
        h_new = a_t * h_in + b_t
        return jnp.where(v_t[:, None], h_new, h), jnp.where(v_t[:, None], h_new, 0)

    return jax.lax.scan(step, h0, (a, b, enter, valid), reverse=reverse)


def make_problem(batch_shape, T, H, seed, cplx=False):
    """Random ``a`` (|a| in [0.5, 0.99]), ``b``, ``h0``, ``reset_state``, ragged lengths with 0
    and T, and resets (including one at step 0), as float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    shape = tuple(batch_shape) + (T, H)
    mag = rng.uniform(0.5, 0.99, shape)
    parts = lambda x: (x.real.copy(), x.imag.copy()) if cplx else x
    if cplx:
        a = mag * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        h0 = rng.standard_normal(shape[:-2] + (H,)) + 1j * rng.standard_normal(shape[:-2] + (H,))
        r = rng.standard_normal(shape[:-2] + (H,)) + 1j * rng.standard_normal(shape[:-2] + (H,))
    else:
        a = mag * rng.choice([-1.0, 1.0], shape, p=[0.1, 0.9])
        b = rng.standard_normal(shape)
        h0 = rng.standard_normal(shape[:-2] + (H,))
        r = rng.standard_normal(shape[:-2] + (H,))
    N = int(np.prod(batch_shape))
    lengths = rng.integers(0, T + 1, N)
    lengths[0], lengths[-1] = T, 0
    if N > 2:
        lengths[1] = max(T - 1, 0)
    resets = rng.random((N, T)) < min(0.5, 3.0 / max(T, 1))
    resets[0, 0] = True
    return dict(a=a, b=b, h0=h0, r=r, lengths=lengths.reshape(batch_shape).astype(np.int32),
                resets=resets.reshape(tuple(batch_shape) + (T,)), parts=parts)


CHUNKS = {1: 1, 7: 3, 40: 8, 512: None, 4096: 100}


@functools.lru_cache(maxsize=None)
def _value_and_grads(mode, reverse, chunk_size, cplx):
    """Jitted ``(h, hs, grads)`` of ``sum(w * hs) + sum(v * h)`` w.r.t. (a, b, h0, reset_state)."""

    def loss(a, b, h0, r, lengths, resets, w, v):
        h, hs = linear_scan(a, b, h0, seq_lengths=lengths, resets=resets, reset_state=r, reverse=reverse,
                            mode=mode, chunk_size=chunk_size)
        total = sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(hs), w))
        total += sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(h), v))
        return total, (h, hs)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _reference_grads(p, reverse, cplx, w, v):
    """float64 values and autodiff gradients of the same loss from :func:`jax_reference`."""
    with enable_x64(True):
        def loss(a, b, h0, r):
            if cplx:
                a, b, h0, r = (x[0] + 1j * x[1] for x in (a, b, h0, r))
            tm = lambda x: jnp.moveaxis(x, -2, 0).reshape(x.shape[-2], -1, x.shape[-1])
            N, H = int(np.prod(p["lengths"].shape)), p["b"].shape[-1]
            resets_T = jnp.asarray(tm(p["resets"][..., None])[..., 0])
            h, hs = jax_reference(tm(a), tm(b), h0.reshape(N, H), r.reshape(N, H),
                                  jnp.asarray(p["lengths"].reshape(-1)), resets_T, reverse)
            hs = jnp.moveaxis(hs, 0, 1).reshape(p["b"].shape)
            h = h.reshape(p["h0"].shape)
            out = (hs.real, hs.imag) if cplx else (hs,)
            fin = (h.real, h.imag) if cplx else (h,)
            total = sum(jnp.sum(x * y) for x, y in zip(out, w)) + sum(jnp.sum(x * y) for x, y in zip(fin, v))
            return total, (h, hs)

        args = tuple(jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), p["parts"](p[k])) for k in "a b h0 r".split())
        w64 = tuple(jnp.asarray(x, jnp.float64) for x in w)
        v64 = tuple(jnp.asarray(x, jnp.float64) for x in v)
        w, v = w64, v64
        (_, (h, hs)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(*args)
        return np.asarray(h), np.asarray(hs), jax.tree.map(np.asarray, grads)


def _check(mode, T, reverse, cplx, batch_shape=(3, 2), H=3, seed=0):
    p = make_problem(batch_shape, T, H, seed, cplx)
    N = int(np.prod(batch_shape))
    flat = lambda x: x.reshape((N,) + x.shape[len(batch_shape):])
    h_np, hs_np = numpy_reference(flat(p["a"]), flat(p["b"]), flat(p["h0"]), flat(p["r"]), p["lengths"].reshape(-1),
                                  flat(p["resets"]), reverse)
    h_np, hs_np = h_np.reshape(p["h0"].shape), hs_np.reshape(p["b"].shape)
    rng = np.random.default_rng(seed + 100)
    n_parts = 2 if cplx else 1
    w = tuple(rng.standard_normal(p["b"].shape) for _ in range(n_parts))
    v = tuple(rng.standard_normal(p["h0"].shape) for _ in range(n_parts))

    h_ref, hs_ref, g_ref = _reference_grads(p, reverse, cplx, w, v)
    assert rel_err(hs_ref, hs_np) < 1e-12 and rel_err(h_ref, h_np) < 1e-12  # the two references agree

    f32 = lambda x: jax.tree.map(lambda y: jnp.asarray(y, jnp.float32), x)
    fn = _value_and_grads(mode, reverse, CHUNKS[T] if mode == "chunked" else None, cplx)
    (_, (h, hs)), grads = fn(*(f32(p["parts"](p[k])) for k in "a b h0 r".split()), jnp.asarray(p["lengths"]),
                             jnp.asarray(p["resets"]), f32(w), f32(v))
    as_c = (lambda x: np.asarray(x[0], np.float64) + 1j * np.asarray(x[1], np.float64)) if cplx else np.asarray
    assert rel_err(as_c(hs), hs_np) < VALUE_TOL
    assert rel_err(as_c(h), h_np) < VALUE_TOL
    N_valid = p["lengths"].reshape(batch_shape)
    h0_32 = p["h0"].astype(np.complex64 if cplx else np.float32)
    assert np.all(as_c(h)[N_valid == 0] == h0_32[N_valid == 0])  # zero length: h0 exactly
    for name, g, gr in zip("a b h0 reset_state".split(), grads, g_ref):
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(gr)):
            assert rel_err(x, y) < GRAD_TOL, (name, rel_err(x, y))


GRID = [(mode, T, reverse) for mode in MODES for T in (1, 7) for reverse in (False, True)]
GRID += [("sequential", T, reverse) for T in (512, 4096) for reverse in (False, True)]
# The parallel modes compile for seconds each at long T on a CPU: both directions, split over the two lengths.
GRID += [("associative", 512, True), ("associative", 4096, False), ("chunked", 512, False), ("chunked", 4096, True)]


@pytest.mark.slow
@pytest.mark.parametrize("mode, T, reverse", GRID)
def test_every_mode_against_float64(mode, T, reverse):
    """Values within 1e-5, gradients (a, b, h0, reset_state) within 1e-4 of float64, with
    ragged lengths (0 and T included), resets (one at step 0) and a random initial state."""
    _check(mode, T, reverse, cplx=False)


@pytest.mark.parametrize("mode, T, reverse", [(m, 7, True) for m in MODES])
def test_complex_pairs_against_float64(mode, T, reverse):
    _check(mode, T, reverse=reverse, cplx=True, batch_shape=(4,), H=2, seed=1)


@pytest.mark.parametrize("mode", MODES)
def test_no_options_and_time_major(mode):
    """The plain path (no masks, h0=None), the time-major layout and a single [T, H]
    sequence give the same numbers."""
    p = make_problem((2,), 33, 4, seed=3)
    a, b = jnp.asarray(p["a"], jnp.float32), jnp.asarray(p["b"], jnp.float32)

    @jax.jit
    def run(a, b):
        kw = dict(mode=mode, chunk_size=8)
        return (linear_scan(a, b, **kw), linear_scan(jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1), time_major=True,
                                                     **kw), linear_scan(a[0], b[0], **kw))

    (h, hs), (h_tm, hs_tm), (h1, hs1) = run(a, b)
    _, hs_np = numpy_reference(p["a"], p["b"], np.zeros((2, 4)), np.zeros((2, 4)), np.array([33, 33]),
                               np.zeros((2, 33), bool), False)
    assert rel_err(hs, hs_np) < VALUE_TOL and rel_err(h, hs_np[:, -1]) < VALUE_TOL
    np.testing.assert_array_equal(np.asarray(hs_tm), np.swapaxes(np.asarray(hs), 0, 1))
    np.testing.assert_array_equal(np.asarray(h_tm), np.asarray(h))
    assert rel_err(hs1, hs_np[0]) < VALUE_TOL and hs1.shape == (33, 4) and h1.shape == (4,)


@pytest.mark.parametrize("mode", MODES)
def test_broadcast_a(mode):
    """``a`` of shape [H] and [B, 1, H] (constant over time) broadcast, and its gradient has
    its own shape (the sum over the broadcast axes)."""
    rng = np.random.default_rng(4)
    B, T, H = 3, 20, 5
    a_h = rng.uniform(0.5, 0.95, (H,)).astype(np.float32)
    a_b = rng.uniform(0.5, 0.95, (B, 1, H)).astype(np.float32)
    b = rng.standard_normal((B, T, H)).astype(np.float32)
    f = lambda a_, b_: jnp.sum(linear_scan(a_, b_, mode=mode, chunk_size=6)[1] ** 2)
    grads = jax.jit(lambda a1, a2, b_: [jax.grad(f)(x, b_) for x in (a1, a2, jnp.broadcast_to(a1, b_.shape),
                                                                     jnp.broadcast_to(a2, b_.shape))])
    g_h, g_b, g_h_full, g_b_full = grads(jnp.asarray(a_h), jnp.asarray(a_b), jnp.asarray(b))
    assert g_h.shape == a_h.shape and g_b.shape == a_b.shape
    assert rel_err(g_h, np.asarray(g_h_full).sum(axis=(0, 1))) < 1e-5
    assert rel_err(g_b, np.asarray(g_b_full).sum(axis=1, keepdims=True)) < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_bf16_accumulates_in_float32(mode):
    """bf16 inputs: the scan runs and returns float32, equal to the float32 scan of the same
    (up-cast) numbers and within 1e-5 of float64 at T=4096; a bf16 accumulation would be
    off by ~1e-2. Gradients come back in bf16, the inputs' dtype."""
    p = make_problem((2,), 4096, 4, seed=5)
    a = jnp.asarray(p["a"], jnp.bfloat16)
    b = jnp.asarray(p["b"], jnp.bfloat16)
    run = jax.jit(lambda a, b: (linear_scan(a, b, mode=mode), linear_scan(a.astype(jnp.float32), b.astype(jnp.float32),
                                                                           mode=mode)[1]))
    (h, hs), hs32 = run(a, b)
    assert hs.dtype == h.dtype == jnp.float32
    assert rel_err(hs, hs32) < 1e-6
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _, hs_np = numpy_reference(a64, b64, np.zeros((2, 4)), np.zeros((2, 4)), np.array([4096, 4096]),
                               np.zeros((2, 4096), bool), False)
    assert rel_err(hs, hs_np) < VALUE_TOL
    ga, gb = jax.eval_shape(jax.grad(lambda a_, b_: jnp.sum(linear_scan(a_, b_, mode=mode)[1]), argnums=(0, 1)), a, b)
    assert ga.dtype == gb.dtype == jnp.bfloat16


def test_float64_kept_under_x64():
    with enable_x64(True):
        p = make_problem((2,), 64, 3, seed=6)
        run = jax.jit(lambda a, b, h0, n: [linear_scan(a, b, h0, seq_lengths=n, mode=m, chunk_size=10) for m in MODES])
        for h, hs in run(jnp.asarray(p["a"]), jnp.asarray(p["b"]), jnp.asarray(p["h0"]), jnp.asarray(p["lengths"])):
            assert hs.dtype == jnp.float64
            _, hs_np = numpy_reference(p["a"], p["b"], p["h0"], p["r"], p["lengths"], np.zeros((2, 64), bool), False)
            assert rel_err(hs, hs_np) < 1e-12


@pytest.mark.slow
def test_chunk_sizes_agree():
    """Every chunk size, dividing T or not, gives the sequential answer."""
    p = make_problem((2,), 50, 3, seed=7)
    args = [jnp.asarray(p[k], jnp.float32) for k in ("a", "b", "h0")]
    kw = dict(seq_lengths=jnp.asarray(p["lengths"]), resets=jnp.asarray(p["resets"]),
              reset_state=jnp.asarray(p["r"], jnp.float32))
    for K in (7, 64):  # padded chunks; one chunk longer than T
        run = jax.jit(lambda *args: [(linear_scan(*args, **kw, reverse=r),
                                      linear_scan(*args, **kw, reverse=r, mode="chunked", chunk_size=K))
                                     for r in (False, True)])
        for (_, ref), (_, hs) in run(*args):
            assert rel_err(hs, ref) < 1e-6, K


def test_zero_length_time_axis():
    h, hs = linear_scan(jnp.ones((2, 0, 3)), jnp.ones((2, 0, 3)), jnp.full((2, 3), 2.0), mode="associative")
    assert hs.shape == (2, 0, 3) and np.all(np.asarray(h) == 2.0)


def test_auto_mode():
    assert auto_mode(65536, backend="cpu") == "sequential"
    assert auto_mode(4096, backend="gpu") == "chunked"
    assert auto_mode(64, backend="tpu") == "sequential"
    a = jnp.full((1, 5, 2), 0.5)
    np.testing.assert_array_equal(np.asarray(linear_scan(a, a, mode="auto")[1]), np.asarray(linear_scan(a, a)[1]))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(mode="parallel"), ValueError, "`mode`"),
        (dict(mode="chunked", chunk_size=0), ValueError, "`chunk_size`"),
        (dict(seq_lengths=jnp.array([1.0, 2.0])), TypeError, "`seq_lengths`"),
        (dict(seq_lengths=jnp.array([1, 2, 3])), ValueError, "`seq_lengths`"),
        (dict(resets=jnp.zeros((2, 5), jnp.int32)), TypeError, "`resets`"),
        (dict(resets=jnp.zeros((5, 2), bool)), ValueError, "`resets`"),
        (dict(reset_state=jnp.zeros((2, 3))), ValueError, "`reset_state`"),
    ],
)
def test_errors_name_the_argument(kwargs, exc, match):
    a = jnp.full((2, 5, 3), 0.5)
    with pytest.raises(exc, match=match):
        linear_scan(a, a, **kwargs)


@pytest.mark.slow
def test_lengths_outside_range_act_as_the_nearest_bound():
    """One meaning in jit or not (no host sync): a length above T acts as T, below 0 as 0."""
    a = jnp.full((2, 5, 3), 0.5)
    for mode in ("sequential", "chunked"):
        got = linear_scan(a, a, seq_lengths=jnp.array([9, -1]), mode=mode, chunk_size=2)
        want = linear_scan(a, a, seq_lengths=jnp.array([5, 0]), mode=mode, chunk_size=2)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))


def test_errors_shapes_and_pairs():
    b = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="`a` must broadcast"):
        linear_scan(jnp.ones((2, 5, 4)), b)
    with pytest.raises(ValueError, match="`b` must have rank"):
        linear_scan(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="`h0` must broadcast"):
        linear_scan(b, b, jnp.ones((3, 3)))
    with pytest.raises(TypeError, match="`a`"):
        linear_scan(b, (b, b))
    with pytest.raises(TypeError, match="`b` must be a floating"):
        linear_scan(b, jnp.ones((2, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match="`b`'s real and imaginary"):
        linear_scan((b, b), (b, b[:, :4]))
