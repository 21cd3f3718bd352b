"""`jaxrnn.unroll` (lax.scan, hoisted projection, fused VJP) against the Python loop.

Each test compiles its comparison as one jitted function: compiling is what costs here.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.reference import python_unroll
from _compat import enable_x64

CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm", "lstm_proj")
T, I, H = 5, 3, 4

# Layouts: (batch shape, time_major, seq_lengths); lengths cover 0, 1, T and in-between.
LAYOUTS = {
    "batch": ((4,), False, [T, 0, 2, 1]),
    "time": ((4,), True, [T, 0, 2, 1]),
    "single": ((), False, 3),
    "multi": ((2, 3), False, [[T, 0, 2], [1, 4, 3]]),
    "multi_time": ((2, 3), True, [[T, 0, 2], [1, 4, 3]]),
}

UNROLL_STATIC = ("reverse", "time_major", "unroll", "remat", "custom_vjp")
unroll_jit = jax.jit(jaxrnn.unroll, static_argnums=0, static_argnames=UNROLL_STATIC)


@pytest.fixture
def inputs(make_cell, random_params, random_state, normal):
    """``inputs(name, batch_shape, time_major, T=, I=, H=) -> (cell, params, h0, xs)``."""

    def make(name, batch_shape, time_major=False, *, T=T, I=I, H=H, seed=0):
        cell = make_cell(name, H)
        shape = (T,) + batch_shape + (I,) if time_major or not batch_shape else batch_shape + (T, I)
        return (cell, random_params(cell, I, seed), random_state(cell, batch_shape, seed + 1),
                normal(shape, seed + 2))

    return make


def time_first(ys, batch_shape, time_major):
    """ys as [T, *batch, F] whatever the layout."""
    return ys if (time_major or not batch_shape) else jnp.moveaxis(ys, -2, 0)


def check_padding(h, ys, h0, lengths, batch_shape, time_major):
    """Exact semantics of padding: zero outputs past each length, h0 at length 0."""
    ys_T = np.asarray(time_first(ys, batch_shape, time_major))
    past = np.arange(ys_T.shape[0]).reshape((-1,) + (1,) * len(batch_shape)) >= np.asarray(lengths)
    assert past.any() and (ys_T[past] == 0).all()
    empty = np.asarray(lengths) == 0
    for got, init in zip(jax.tree.leaves(h), jax.tree.leaves(h0)):
        np.testing.assert_array_equal(np.asarray(got)[empty], np.asarray(init)[empty])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_forward_matches_python_loop(name, reverse, inputs, assert_close):
    batch_shape, time_major, lengths = LAYOUTS["batch"]
    cell, params, h0, xs = inputs(name, batch_shape)
    lengths = jnp.asarray(lengths)

    @jax.jit
    def run(params, h0, xs, lengths):
        return [(jaxrnn.unroll(cell, params, h0, xs, seq_lengths=n, reverse=reverse),
                 python_unroll(cell, params, h0, xs, seq_lengths=n, reverse=reverse)) for n in (None, lengths)]

    for (h, ys), ref in run(params, h0, xs, lengths):
        assert ys.shape == xs.shape[:-1] + (cell.output_size,)
        assert jax.tree.structure(h) == jax.tree.structure(h0)
        assert_close((h, ys), ref)
    check_padding(h, ys, h0, lengths, batch_shape, time_major)


LAYOUT_CASES = [("lstm_proj", layout) for layout in LAYOUTS] + [("gru", "single"), ("gru", "multi_time")]


@pytest.mark.parametrize("name,layout", LAYOUT_CASES)
def test_layouts_match_python_loop(name, layout, inputs, assert_close):
    """Batch-major, time-major, no batch dimension and several batch dimensions."""
    batch_shape, time_major, lengths = LAYOUTS[layout]
    cell, params, h0, xs = inputs(name, batch_shape, time_major)
    lengths = jnp.asarray(lengths)
    opts = dict(reverse=True, time_major=time_major)
    # The same sequences as a flat batch-major batch [N, T, I] (for batched layouts).
    flat = lambda a: a.reshape((-1,) + a.shape[len(batch_shape):])
    to_bm = lambda a: jnp.moveaxis(a, 0, len(batch_shape)) if time_major else a

    @jax.jit
    def run(params, h0, xs, lengths):
        out = jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, **opts)
        ref = python_unroll(cell, params, h0, xs, seq_lengths=lengths, **opts)
        if not batch_shape:
            return out, ref, None
        return out, ref, jaxrnn.unroll(cell, params, jax.tree.map(flat, h0), flat(to_bm(xs)),
                                       seq_lengths=lengths.reshape(-1), reverse=True)

    (h, ys), ref, flat_out = run(params, h0, xs, lengths)
    assert ys.shape == xs.shape[:-1] + (cell.output_size,)
    assert_close((h, ys), ref)
    check_padding(h, ys, h0, lengths, batch_shape, time_major)
    if batch_shape:
        assert_close((jax.tree.map(flat, h), flat(to_bm(ys))), flat_out)


def _loss(run, cell, params, h0, xs, seq_lengths, w_ys, **opts):
    h, ys = run(cell, params, h0, xs, seq_lengths=seq_lengths, **opts)
    return jnp.sum(ys * w_ys) + sum(jnp.sum(jnp.sin(3.0 * s)) for s in jax.tree.leaves(h))


# Every cell runs both backward passes (fused custom VJP and autodiff of the scan);
# lstm_proj (the longest backward code path) also runs a grid of the other options:
# remat x unroll x reverse x time_major x lengths.
GRAD_CASES = [(n, [dict(custom_vjp=True, reverse=True), dict(custom_vjp=False, reverse=True)]) for n in CELLS] + [
    ("lstm_proj", [dict(custom_vjp=True, remat=True), dict(custom_vjp=False, remat=2, unroll=3)]),
    ("lstm_proj", [dict(custom_vjp=True, remat=3, unroll=3, time_major=True, reverse=True),
                   dict(custom_vjp=False, unroll=3, time_major=True, reverse=True)]),
    ("lstm_proj", [dict(custom_vjp=True, remat=2, unroll=3, lengths=False)]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,variants", GRAD_CASES,
                         ids=[f"{n}-" + ",".join(f"{k}={v}" for k, v in o[0].items()) for n, o in GRAD_CASES])
def test_gradients_match_python_loop(name, variants, inputs, normal, assert_close):
    """Gradients w.r.t. params, h0 and xs: fused VJP, autodiff of the scan, the loop."""
    shared = dict(variants[0])
    use_lengths = shared.pop("lengths", True)
    time_major, reverse = shared.get("time_major", False), shared.get("reverse", False)
    cell, params, h0, xs = inputs(name, (3,), time_major)
    lengths = jnp.array([T, 0, 3]) if use_lengths else None
    w_ys = normal(xs.shape[:-1] + (cell.output_size,), seed=7)
    variants = [{k: v for k, v in o.items() if k != "lengths"} for o in variants]

    @jax.jit
    def grads(params, h0, xs, lengths):
        grad = lambda run, **o: jax.value_and_grad(_loss, argnums=(2, 3, 4))(run, cell, params, h0, xs, lengths,
                                                                              w_ys, **o)
        return grad(python_unroll, reverse=reverse, time_major=time_major), [grad(jaxrnn.unroll, **o) for o in variants]

    (ref_loss, ref_grads), results = grads(params, h0, xs, lengths)
    assert float(jnp.abs(ref_grads[0].w_hh).max()) > 1e-3  # so the comparison means something
    for options, (loss, g_all) in zip(variants, results):
        assert_close(loss, ref_loss, err_msg=f"loss {options}")
        for label, g, g_ref in zip(("params", "h0", "xs"), g_all, ref_grads):
            assert jax.tree.structure(g) == jax.tree.structure(g_ref)
            assert_close(g, g_ref, err_msg=f"d loss / d {label} {options}")
        # A zero-length sequence's initial state passes straight to the final state.
        if use_lengths:
            for dh0, h in zip(jax.tree.leaves(g_all[1]), jax.tree.leaves(h0)):
                assert_close(dh0[1], 3.0 * jnp.cos(3.0 * h[1]))


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_column_blocks_match_python_loop(name, monkeypatch, inputs, normal, assert_close):
    """The forward and backward loops' products in column blocks (on two CPU cores, see
    jaxrnn.tuning.column_blocks), forced here on small sizes with uneven blocks: outputs,
    final state and gradients equal the Python loop's, with ragged lengths, both ways."""
    from jaxrnn import tuning

    monkeypatch.setattr(tuning, "_cpu_cores", lambda: 2)
    cell, params, h0, xs = inputs(name, (3,), H=5)
    monkeypatch.setattr(tuning, "_BLOCK_ELEMENTS", params.w_hh.size // 3 + 1)  # about three blocks
    jax.clear_caches()  # unroll's compiled programs were traced with the unpatched choices
    widths = []
    for w, loop in ((params.w_hh.T, "forward"), (params.w_hh, "backward")):
        blocks = tuning.column_blocks(w, 3, loop, "cpu")
        assert blocks is not None and len(blocks) > 1, loop
        np.testing.assert_array_equal(jnp.concatenate(blocks, axis=1), w)
        widths.append({b.shape[1] for b in blocks})
    assert max(len(w) for w in widths) > 1, widths  # uneven blocks in at least one loop
    lengths = jnp.array([T, 0, 3])
    w_ys = normal(xs.shape[:-1] + (cell.output_size,), seed=7)
    for reverse in (False, True):
        def loss(run, params, h0, xs):
            return _loss(run, cell, params, h0, xs, lengths, w_ys, reverse=reverse)

        ref = jax.value_and_grad(functools.partial(loss, python_unroll), argnums=(0, 1, 2))(params, h0, xs)
        got = jax.jit(jax.value_and_grad(functools.partial(loss, jaxrnn.unroll), argnums=(0, 1, 2)))(params, h0, xs)
        assert_close(got, ref, err_msg=f"reverse={reverse}")


def test_column_blocks_only_for_small_products_on_two_cores(monkeypatch):
    from jaxrnn import tuning

    w = jnp.zeros((256, 1024))  # LSTM H256: w_hh.T; w_hh is its transpose
    monkeypatch.setattr(tuning, "_cpu_cores", lambda: 2)
    assert [b.shape for b in tuning.column_blocks(w, 32, "forward", "cpu")] == [(256, 256)] * 4
    assert tuning.column_blocks(w.T, 32, "backward", "cpu") is None  # 16.8 MFLOP a step: left whole
    assert [b.shape for b in tuning.column_blocks(w.T, 16, "backward", "cpu")] == [(1024, 64)] * 4
    gru = jnp.zeros((768, 256))  # GRU H256: w_hh, in three equal-as-can-be blocks
    assert [b.shape for b in tuning.column_blocks(gru, 16, "backward", "cpu")] == [(768, 86)] * 2 + [(768, 84)]
    assert tuning.column_blocks(jnp.zeros((128, 512)), 1, "forward", "cpu") is None  # one block's worth already
    assert tuning.column_blocks(jnp.zeros((512, 2048)), 64, "forward", "cpu") is None  # 134 MFLOP a step
    monkeypatch.setattr(tuning, "_cpu_cores", lambda: 4)
    assert tuning.column_blocks(w, 32, "forward", "cpu") is None
    assert tuning.column_blocks(w.T, 4, "backward", "cpu") is None


def _float64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_float64_matches_python_loop(name, inputs, normal):
    """With ``jax_enable_x64`` and float64 inputs everything runs in float64 (no silent
    float32): outputs, final state and every gradient of the fused paths (custom VJP, the
    CPU's in-place buffer, batch-major, column blocks) equal the Python loop's to 1e-12,
    ~10^7 times tighter than float32 allows: the custom VJP is the exact gradient."""
    with enable_x64(True):
        cell, params, h0, xs = inputs(name, (4,))
        params, h0, xs = _float64((params, h0, xs))
        lengths = jnp.array([T, 0, 2, 1])
        w_ys = _float64(normal(xs.shape[:-1] + (cell.output_size,), seed=7))
        for opts in (dict(reverse=True), dict(reverse=False, time_major=True), dict(remat=2)):
            xs_in = jnp.swapaxes(xs, 0, 1) if opts.get("time_major") else xs
            w_in = jnp.swapaxes(w_ys, 0, 1) if opts.get("time_major") else w_ys

            def loss(run, params, h0, xs):
                return _loss(run, cell, params, h0, xs, lengths, w_in, **opts)

            ref_opts = {k: v for k, v in opts.items() if k != "remat"}
            ref = jax.value_and_grad(lambda *a: _loss(python_unroll, cell, *a, lengths, w_in, **ref_opts),
                                     argnums=(0, 1, 2))(params, h0, xs_in)
            got = jax.jit(jax.value_and_grad(functools.partial(loss, jaxrnn.unroll), argnums=(0, 1, 2)))(
                params, h0, xs_in)
            for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
                assert g.dtype == jnp.float64, (opts, g.dtype)
                np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12, err_msg=str(opts))
        h, ys = jaxrnn.unroll(cell, params, None, xs, seq_lengths=lengths)  # h=None: zeros in float64
        assert ys.dtype == jnp.float64 and all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(h))
        h, y = cell.step(params, None, xs[:, 0])
        assert y.dtype == jnp.float64 and all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(h))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gru", "lstm_proj"])
def test_float64_column_blocks(name, monkeypatch, inputs):
    """The blocked loop products (see jaxrnn.tuning.column_blocks) in float64, against the
    Python loop to 1e-12."""
    from jaxrnn import tuning

    monkeypatch.setattr(tuning, "_cpu_cores", lambda: 2)
    with enable_x64(True):
        cell, params, h0, xs = inputs(name, (3,), H=5)
        params, h0, xs = _float64((params, h0, xs))
        monkeypatch.setattr(tuning, "_BLOCK_ELEMENTS", params.w_hh.size // 3 + 1)
        jax.clear_caches()
        assert tuning.column_blocks(params.w_hh, 3, "backward", "cpu") is not None
        lengths = jnp.array([T, 0, 3])
        f = lambda run, p: jnp.sum(jnp.sin(run(cell, p, h0, xs, seq_lengths=lengths, reverse=True)[1]))
        got = jax.jit(jax.value_and_grad(functools.partial(f, jaxrnn.unroll)))(params)
        ref = jax.value_and_grad(functools.partial(f, python_unroll))(params)
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gru", "lstm_proj", "rnn_relu"])
def test_check_grads_float64(name, inputs):
    """Numerical gradients in float64, at check_grads' float64 defaults (eps 1e-4,
    tolerances 1e-5): the fused custom VJP with ragged lengths, reversed."""
    with enable_x64(True):
        cell, params, h0, xs = inputs(name, (2,), T=3, I=2, H=3)
        params, h0, xs = _float64((params, h0, xs))
        lengths = jnp.array([3, 2])

        @jax.jit
        def f(params, h0, xs):
            h, ys = jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, reverse=True)
            return jnp.sum(ys * jnp.cos(ys)), h

        check_grads(f, (params, h0, xs), order=2, modes=("rev",))


# Numerical gradients in float32: eps=1e-2 and tolerances of 1e-2 are the standard
# setting (central differences are O(eps^2) accurate for these smooth losses). The loop
# reference is plain autodiff; numerical checks of the fast paths on the distinct
# backward code paths (GRU keeps b_hn inside the loop; LSTM with projection) suffice.
CHECK = dict(modes=("rev",), eps=1e-2, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("name,custom_vjp", [("gru", True), ("lstm_proj", True), ("rnn_tanh", False)])
def test_check_grads(name, custom_vjp, inputs):
    cell, params, h0, xs = inputs(name, (2,), T=3, I=2, H=3)
    lengths = jnp.array([3, 2])

    @jax.jit
    def f(params, h0, xs):
        h, ys = jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, custom_vjp=custom_vjp, reverse=True)
        return jnp.sum(ys * jnp.cos(ys)), h

    check_grads(f, (params, h0, xs), order=1, **CHECK)


@pytest.mark.slow
def test_check_grads_second_order(inputs):
    """The fused backward pass is itself differentiable (Hessian-vector products)."""
    cell, params, h0, xs = inputs("lstm_proj", (2,), T=3, I=2, H=3)

    @jax.jit
    def f(params, xs):
        _, ys = jaxrnn.unroll(cell, params, h0, xs, seq_lengths=jnp.array([3, 1]), custom_vjp=True)
        return jnp.sum(ys**2)

    check_grads(f, (params, xs), order=2, **CHECK)


def test_forward_mode_without_custom_vjp(inputs, normal, assert_close):
    cell, params, h0, xs = inputs("lstm_proj", (2,))
    dxs = normal(xs.shape, seed=3)
    opts = dict(seq_lengths=jnp.array([T, 2]), reverse=True)

    @jax.jit
    def run(xs, dxs):
        return (jax.jvp(lambda x: jaxrnn.unroll(cell, params, h0, x, custom_vjp=False, **opts), (xs,), (dxs,)),
                jax.jvp(lambda x: python_unroll(cell, params, h0, x, **opts), (xs,), (dxs,)))

    out, ref = run(xs, dxs)
    assert_close(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name,reverse", [(n, True) for n in CELLS] + [("lstm", False)])
def test_seq_length_edges(name, reverse, inputs, assert_close):
    """Lengths 0, 1, T and in-between, compiled and eager; a zero-length row returns exactly h0."""
    cell, params, h0, xs = inputs(name, (4,))
    lengths = jnp.array([0, 1, T, 3])
    h, ys = unroll_jit(cell, params, h0, xs, seq_lengths=lengths, reverse=reverse)
    h_ref, ys_ref = python_unroll(cell, params, h0, xs, seq_lengths=lengths, reverse=reverse)
    assert_close(ys, ys_ref)
    assert_close(h, h_ref)
    assert_close(jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, reverse=reverse), (h, ys))  # eager
    for got, init in zip(jax.tree.leaves(h), jax.tree.leaves(h0)):
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(init[0]))
    assert not np.any(np.asarray(ys[0]))
    assert not np.any(np.asarray(ys[1, 1:]))
    assert not np.any(np.asarray(ys[3, 3:]))
    # Length 1, reversed or not, is one step from h0 on x[0].
    h1, y1 = cell.step(params, jax.tree.map(lambda s: s[1], h0), xs[1, 0])
    assert_close(ys[1, 0], y1)
    assert_close(jax.tree.map(lambda s: s[1], h), h1)
    # All lengths T (same compiled function) is the same as no lengths.
    full = unroll_jit(cell, params, h0, xs, seq_lengths=jnp.full((4,), T), reverse=reverse)
    assert_close(full, python_unroll(cell, params, h0, xs, reverse=reverse))


def test_lengths_out_of_range_under_jit_are_clipped(inputs, assert_close):
    cell, params, h0, xs = inputs("lstm", (3,))
    clipped = unroll_jit(cell, params, h0, xs, seq_lengths=jnp.array([T + 2, -1, 2]))
    expected = unroll_jit(cell, params, h0, xs, seq_lengths=jnp.array([T, 0, 2]))
    assert_close(clipped, expected)


@pytest.mark.parametrize("name", CELLS)
def test_size_one_everything(name, make_cell, random_params, random_state, normal, assert_close):
    """B = T = I = H = 1 (H = 2 with proj_size = 1), with and without reverse, remat and lengths."""
    cell = make_cell(name, 1) if name != "lstm_proj" else jaxrnn.lstm(2, proj_size=1)
    params, h0, xs = random_params(cell, 1), random_state(cell, (1,)), normal((1, 1, 1))
    cases = [dict(unroll=3), dict(reverse=True, remat=True, seq_lengths=jnp.array([1]))]

    @jax.jit
    def run(params, h0, xs):
        return [(jaxrnn.unroll(cell, params, h0, xs, **o),
                 python_unroll(cell, params, h0, xs, seq_lengths=o.get("seq_lengths"), reverse=o.get("reverse", False)))
                for o in cases]

    for out, ref in run(params, h0, xs):
        assert_close(out, ref)


@pytest.mark.parametrize("name", ["gru", "lstm_proj"])
def test_empty_sequence(name, inputs):
    cell, params, h0, xs = inputs(name, (2,), T=0)
    h, ys = jaxrnn.unroll(cell, params, h0, xs, seq_lengths=jnp.array([0, 0]))
    assert ys.shape == (2, 0, cell.output_size)
    for got, init in zip(jax.tree.leaves(h), jax.tree.leaves(h0)):
        np.testing.assert_array_equal(got, init)


@pytest.mark.parametrize("name", ["gru", "lstm", "lstm_proj"])
@pytest.mark.parametrize("batch", [(0,), (2, 0)])
def test_empty_batch(name, batch, inputs):
    """A batch dimension of size 0 runs, and differentiates, to empty outputs and zero
    gradients (it used to fail reshaping zero-sized arrays with -1)."""
    cell, params, h0, xs = inputs(name, batch)
    h, ys = jaxrnn.unroll(cell, params, h0, xs)
    assert ys.shape == batch + (T, cell.output_size)
    grads = jax.grad(lambda p, x: jnp.sum(jaxrnn.unroll(cell, p, None, x)[1]), argnums=(0, 1))(params, xs)
    assert grads[1].shape == xs.shape
    for g in jax.tree.leaves(grads[0]):
        np.testing.assert_array_equal(g, np.zeros_like(g))


def _loop_body_copies(hlo_text: str, shape: str) -> int:
    """How many ``copy`` instructions of ``shape`` the while-loop bodies of an optimised
    HLO module hold (each one would run at every step)."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
    count, current = 0, None
    for line in hlo_text.splitlines():
        header = re.match(r"^%?([\w.\-]+) .*\{$", line)
        if header:
            current = header.group(1)
        elif line.startswith("}"):
            current = None
        elif current in bodies and re.search(re.escape(shape) + r"\{[\d,]*\} copy\(", line):
            count += 1
    return count


def _rearrangements_of(hlo_text: str, shape: str) -> list:
    """The instructions of an optimised HLO module that copy or transpose (possibly
    fused) a parameter of ``shape``, or a bitcast of one: what moving it into another
    order takes."""
    names = set(re.findall(r"%([\w.\-]+) = " + re.escape(shape) + r"\{[\d,]*\} parameter\(", hlo_text))
    names |= {b for b, src in re.findall(r"%([\w.\-]+) = \S+ bitcast\(%([\w.\-]+)\)", hlo_text) if src in names}
    found = []
    for line in hlo_text.splitlines():
        m = re.search(r"= \S+ (copy|transpose|fusion)\(([^)]*)\)", line)
        if m and (m.group(1) != "fusion" or "kind=kLoop" in line):
            if {a.strip().lstrip("%") for a in m.group(2).split(",")} & names:
                found.append(line.strip()[:120])
    return found


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the in-place LSTM and GRU passes are CPU-only")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("B, T", [(1, 40), (4, 12), (32, 8)])
def test_gradient_updates_its_buffer_in_place(kind, B, T, key):
    """On the CPU the LSTM and GRU gradients reuse one [T, B, G*H] buffer ([B, T, G*H]
    for batch-major inputs) in place. If XLA ever had to copy it inside a loop, every step
    would copy the whole buffer (7x slower at B=1 in one variant tried): this guards the
    structure of the compiled program. Batch-major inputs are never copied into
    time-major order, nor their gradient out of it."""
    H, I = 16, 8
    cell = getattr(jaxrnn, kind)(H)
    G = cell.num_gates
    params = cell.init(key, I)
    for time_major in (False, True):
        xs = jnp.ones((T, B, I) if time_major else (B, T, I))
        buffer = f"f32[{T},{B},{G * H}]" if time_major else f"f32[{B},{T},{G * H}]"
        for lengths in (None, jnp.full((B,), T // 2)):
            for reverse in (False, True):
                def loss(p, xs):
                    ys = jaxrnn.unroll(cell, p, None, xs, seq_lengths=lengths, reverse=reverse, time_major=time_major)[1]
                    return jnp.sum(ys**2)

                text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile().as_text()
                label = (time_major, lengths, reverse)
                assert len(re.findall(r"\bwhile\(", text)) >= 2  # the forward and the backward loop
                assert buffer + "{" in text, label  # the buffer is there (so the next check means something)
                assert _loop_body_copies(text, buffer) == 0, label
                if not time_major and B > 1:
                    assert _rearrangements_of(text, f"f32[{B},{T},{I}]") == [], label


@pytest.mark.slow
def test_gru_inference_keeps_its_two_nonlinearities_apart(monkeypatch, key, assert_close):
    """GRU inference on the CPU computes sigmoid(r, z) apart, behind an optimization
    barrier, so that XLA does not fuse it with the n gate's tanh (which it would leave
    unvectorised). This guards the structure of the compiled program; with the choice off
    there is no barrier, and the outputs are the same. The choice is the CPU's
    (jaxrnn.tuning.separates_nonlinearities): the accelerators' variant has no barrier."""
    from jaxrnn import tuning

    cell = jaxrnn.gru(8)
    params = jax.tree.map(lambda a: a + 0.1, cell.init(key, 4))
    xs = jnp.linspace(-2.0, 2.0, 60).reshape(3, 5, 4)
    outs, counts = [], []
    for policy, separate in (("cpu", True), ("cpu", False), ("gpu", None)):
        if separate is not None:
            monkeypatch.setattr(tuning, "separates_nonlinearities", lambda backend, s=separate: s)
        jax.clear_caches()
        with tuning.policy(policy):
            run = jax.jit(lambda p, x: jaxrnn.unroll(cell, p, None, x)[1])
            counts.append(len(re.findall(r"\bopt-barrier\(", run.lower(params, xs).as_text(dialect="hlo"))))
            outs.append(run(params, xs))
    monkeypatch.undo()
    jax.clear_caches()
    assert counts == [1, 0, 0]
    assert_close(outs[0], outs[1])
    assert_close(outs[0], outs[2])


@pytest.mark.slow
@pytest.mark.parametrize("assembled", [True, False])
def test_gru_recurrent_cotangent_assembled_or_not(assembled, monkeypatch, normal, key, assert_close):
    """The GRU's in-place backward pass takes dW_hh and db_hh from d(a) = [d(gx) of r, z;
    dn * r], either assembled or not (jaxrnn.tuning.assembles_recurrent_cotangent, which
    decides by size): both equal the Python loop's gradients, with ragged lengths (one
    zero), resets, a random initial state and non-zero biases, both ways and in both
    layouts."""
    from jaxrnn import tuning

    monkeypatch.setattr(tuning, "assembles_recurrent_cotangent", lambda nbytes, backend: assembled)
    jax.clear_caches()
    B, T_, I, H = 3, 6, 4, 5
    for bias in (True, False):
        cell = jaxrnn.gru(H, bias=bias)
        params = jax.tree.map(lambda a: a + 0.1, cell.init(key, I))
        h0 = normal((B, H), seed=1)
        xs = normal((B, T_, I), seed=2)
        lengths = jnp.array([T_, 0, 4])
        resets = jnp.zeros((B, T_), bool).at[0, 2].set(True).at[2, 1].set(True)
        w_ys = normal((B, T_, H), seed=3)
        for reverse in (False, True):
            for time_major in (False, True):
                swap = (lambda a: jnp.swapaxes(a, 0, 1)) if time_major else (lambda a: a)

                def loss(run, params, h0, xs):
                    h, ys = run(cell, params, h0, xs, seq_lengths=lengths, resets=swap(resets), reverse=reverse,
                                time_major=time_major)
                    return jnp.sum(ys * swap(w_ys)) + jnp.sum(jnp.sin(3.0 * h))

                args = (params, h0, swap(xs))
                ref = jax.value_and_grad(functools.partial(loss, python_unroll), argnums=(0, 1, 2))(*args)
                got = jax.jit(jax.value_and_grad(functools.partial(loss, jaxrnn.unroll), argnums=(0, 1, 2)))(*args)
                assert_close(got, ref, err_msg=f"bias={bias} reverse={reverse} time_major={time_major}")


def test_h_none_is_zero_state(inputs, assert_close):
    cell, params, _, xs = inputs("lstm_proj", (2,))
    run = jax.jit(lambda h: jaxrnn.unroll(cell, params, h, xs, reverse=True))
    assert_close(run(None), run(cell.initial_state((2,))))


@pytest.mark.slow
def test_vmap_equals_batch(inputs, assert_close):
    cell, params, h0, xs = inputs("gru", (3,))
    lengths = jnp.array([T, 0, 2])
    run = lambda h, x, n: jaxrnn.unroll(cell, params, h, x, seq_lengths=n, reverse=True)
    assert_close(jax.jit(jax.vmap(run))(h0, xs, lengths), python_unroll(cell, params, h0, xs, seq_lengths=lengths,
                                                                         reverse=True))


def test_remat_chunks_match(inputs, assert_close):
    """Chunk lengths that do not divide T, 1 and longer than T, give the same result."""
    cell, params, h0, xs = inputs("lstm", (2,), T=7)
    lengths = jnp.array([7, 4])

    @jax.jit
    def run(params, h0, xs, lengths):
        return [jaxrnn.unroll(cell, params, h0, xs, seq_lengths=lengths, reverse=True, remat=k) for k in (1, 3, 9)]

    ref = python_unroll(cell, params, h0, xs, seq_lengths=lengths, reverse=True)
    for out in run(params, h0, xs, lengths):
        assert_close(out, ref)
