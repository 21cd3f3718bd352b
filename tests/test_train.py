"""`jaxrnn.train`: train steps, fit, losses and masks, truncated BPTT, generation, checkpoints."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn import train

B, T, I = 6, 7, 2


# ----------------------------------------------------------------------------- a small task

def make_data(epoch, num_batches=4):
    """Ragged running-sum regression: y_t = sum_{s<=t} x_s[0]; one epoch of batches."""
    rng = np.random.default_rng(1000 + epoch)
    out = []
    for _ in range(num_batches):
        xs = rng.normal(size=(B, T, I)).astype(np.float32)
        lens = rng.integers(1, T + 1, size=B).astype(np.int32)
        ys = np.cumsum(xs[..., :1], axis=1) * 0.5
        out.append((xs, ys, lens))
    return out


class Task:
    """A GRU with a dense head, trained with input noise (so the per-step key matters)."""

    def __init__(self):
        self.net = jaxrnn.stack(jaxrnn.gru(16), head=1)
        self.tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
        self.step = train.make_train_step(self.loss_fn, self.tx)
        self.eval_step = train.make_eval_step(self.loss_fn)

    def loss_fn(self, params, batch, key):
        xs, ys, lens = batch
        if key is not None:
            xs = xs + 0.05 * jax.random.normal(key, xs.shape)
        _, out = self.net(params, None, xs, seq_lengths=lens)
        return train.mean_squared_error(out, ys, lens), {"tokens": jnp.sum(lens).astype(jnp.float32)}

    def init(self, seed=0):
        return train.TrainState.create(self.net.init(jax.random.key(seed), I), self.tx)


@pytest.fixture(scope="module")
def task():
    return Task()


def leaves_equal(a, b):
    la, da = jax.tree.flatten(a)
    lb, db = jax.tree.flatten(b)
    assert da == db, f"structures differ:\n{da}\n{db}"
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- steps and fit

@pytest.mark.slow
def test_train_step_metrics_and_grad_norm(task):
    state = task.init()
    batch = make_data(0)[0]
    key = jax.random.key(3)
    grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, batch, jax.random.fold_in(key, 0))[0]))(state.params)
    updates, _ = task.tx.update(grads, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)
    new, metrics = task.step(task.init(), batch, key)
    assert set(metrics) == {"loss", "grad_norm", "tokens"}
    assert all(jnp.shape(v) == () for v in metrics.values())
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
    assert float(metrics["tokens"]) == float(batch[2].sum())
    assert int(new.step) == 1
    # the update is the optax chain's, applied to those gradients
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new.params, expected)


def test_train_step_rejects_bad_loss_fn():
    tx = optax.sgd(0.1)
    state = train.TrainState.create(jnp.ones(3), tx)
    with pytest.raises(ValueError, match="scalar"):
        train.make_train_step(lambda p, b, k: p * b, tx)(state, jnp.ones(3))
    with pytest.raises(ValueError, match="reserved"):
        train.make_train_step(lambda p, b, k: (jnp.sum(p), {"loss": jnp.sum(p)}), tx)(state, jnp.ones(3))


def test_loss_falls(task):
    state, history = train.fit(task.init(), task.step, make_data, key=jax.random.key(1), epochs=12,
                               log_every=4, progress=False, eval_step=task.eval_step,
                               eval_data=lambda: make_data(-1, 2))
    assert history["step"][-1] == int(state.step) == 48
    assert history["loss"][-1] < 0.3 * history["loss"][0], history["loss"]
    # evaluated at the end of every epoch
    assert history["eval_step"] == [4 * (e + 1) for e in range(12)]
    assert history["eval_loss"][-1] < 0.3 * history["eval_loss"][0]
    assert len(history["time"]) == len(history["step"]) and history["time"] == sorted(history["time"])


def test_resume_reproduces_uninterrupted_run(task, tmp_path):
    key = jax.random.key(7)
    full, h_full = train.fit(task.init(), task.step, make_data, key=key, num_steps=11, log_every=1,
                             progress=False)
    half, h_half = train.fit(task.init(), task.step, make_data, key=key, num_steps=6, log_every=1,
                             progress=False)
    path = tmp_path / "run.ckpt"
    train.save_checkpoint(path, half, config={"seed": 0})
    restored, config = train.restore_checkpoint(path, task.init(seed=123))
    assert config == {"seed": 0}
    rest, h_rest = train.fit(restored, task.step, make_data, key=key, num_steps=11, log_every=1,
                             progress=False)
    assert h_half["step"] + h_rest["step"] == h_full["step"] == list(range(1, 12))
    assert h_half["loss"] + h_rest["loss"] == h_full["loss"]          # bit for bit
    leaves_equal(rest, full)


def test_fit_does_not_consume_callers_state(task):
    state = task.init()
    train.fit(state, task.step, make_data(0), key=jax.random.key(0), num_steps=2, progress=False)
    train.fit(state, task.step, make_data(0), key=jax.random.key(0), num_steps=2, progress=False)
    assert int(state.step) == 0


def test_fit_stopping_rules(task):
    state = task.init()
    key = jax.random.key(0)
    batches = make_data(0, 3)
    s, h = train.fit(state, task.step, batches, key=key, epochs=2, progress=False, log_every=100)
    assert int(s.step) == 6 and h["step"] == [6]
    s, h = train.fit(state, task.step, iter(batches), key=key, epochs=5, progress=False)  # one-shot iterator
    assert int(s.step) == 3
    s, h = train.fit(state, task.step, make_data, key=key, num_steps=5, progress=False, log_every=2)
    assert int(s.step) == 5 and h["step"] == [2, 4, 5]
    s, h = train.fit(state, task.step, make_data, key=key, time_budget=0.0, progress=False)
    assert int(s.step) == 0 and h == {"step": [], "time": [], "loss": []}

    def forever(epoch):
        while True:
            yield batches[0]

    s, h = train.fit(state, task.step, forever, key=key, time_budget=1.0, progress=False, log_every=1)
    assert int(s.step) == h["step"][-1] >= 1

    s, h = train.fit(state, task.step, make_data, key=key, num_steps=50, log_every=3, progress=False,
                     callback=lambda st, rec: rec["step"] >= 6)
    assert int(s.step) == 6 and h["step"] == [3, 6]
    with pytest.raises(ValueError, match="no batches"):
        train.fit(state, task.step, [], key=key, epochs=1, progress=False)


def test_fit_eval_every_and_progress_bar(task, capsys):
    s, h = train.fit(task.init(), task.step, make_data, key=jax.random.key(0), num_steps=5, eval_every=2,
                     eval_step=task.eval_step, eval_data=make_data(-1, 2), progress=True)
    assert h["eval_step"] == [2, 4, 5]
    assert set(h) >= {"eval_loss", "eval_tokens", "eval_time", "loss", "grad_norm", "tokens"}
    ev = [task.eval_step(s.params, b) for b in make_data(-1, 2)]
    np.testing.assert_allclose(h["eval_loss"][-1], np.mean([float(m["loss"]) for m in ev]), rtol=1e-6)


def test_fit_on_a_one_device_mesh_matches(task):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    key = jax.random.key(2)
    _, h_ref = train.fit(task.init(), task.step, make_data, key=key, num_steps=3, log_every=1, progress=False)
    step = train.make_train_step(task.loss_fn, task.tx, mesh=mesh)
    s, h = train.fit(task.init(), step, make_data, key=key, num_steps=3, log_every=1, progress=False, mesh=mesh)
    np.testing.assert_allclose(h["loss"], h_ref["loss"], rtol=1e-5)


# ----------------------------------------------------------------------------- losses and masks

def test_sequence_mask():
    m = train.sequence_mask(jnp.array([[0, 3], [1, 5]]), 4)
    assert m.dtype == jnp.bool_ and m.shape == (2, 2, 4)
    np.testing.assert_array_equal(m.astype(int), [[[0, 0, 0, 0], [1, 1, 1, 0]], [[1, 0, 0, 0], [1, 1, 1, 1]]])


def _log_softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@jax.jit
def all_losses(logits, labels, lens, pred, target):
    return {
        "seq_ce": train.sequence_cross_entropy(logits, labels, lens),
        "seq_ce_nomask": train.sequence_cross_entropy(logits, labels),
        "ce": train.softmax_cross_entropy(logits[..., 0, :], labels[..., 0]),
        "acc": train.accuracy(logits, labels, lens),
        "acc_nomask": train.accuracy(logits, labels),
        "mse": train.mean_squared_error(pred, target, lens),
        "mse_nomask": train.mean_squared_error(pred, target),
        "grad_ce": jax.grad(train.sequence_cross_entropy)(logits, labels, lens),
    }


V = 4


def loss_inputs(key):
    """Logits [2, 3, T, V] (batch shape (2, 3)), labels, ragged lengths (0 and T included), regression pairs."""
    k1, k2, k3 = jax.random.split(key, 3)
    logits = jax.random.normal(k1, (2, 3, T, V)) * 2
    labels = jax.random.randint(k2, (2, 3, T), 0, V)
    lens = jnp.array([[T, 0, 3], [1, 5, 2]], jnp.int32)
    pred = jax.random.normal(k3, (2, 3, T, 2))
    return logits, labels, lens, pred, pred[::-1]


@pytest.mark.slow
def test_losses_against_numpy(key):
    logits, labels, lens, pred, target = loss_inputs(key)
    got = all_losses(logits, labels, lens, pred, target)
    lp = _log_softmax_np(np.asarray(logits, np.float64))
    nll = -np.take_along_axis(lp, np.asarray(labels)[..., None], -1)[..., 0]
    valid = np.arange(T) < np.asarray(lens)[..., None]
    np.testing.assert_allclose(got["seq_ce"], nll[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(got["seq_ce_nomask"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["ce"], nll[..., 0].mean(), rtol=1e-5)
    correct = np.argmax(np.asarray(logits), -1) == np.asarray(labels)
    np.testing.assert_allclose(got["acc"], correct[valid].mean(), rtol=1e-6)
    np.testing.assert_allclose(got["acc_nomask"], correct.mean(), rtol=1e-6)
    sq = (np.asarray(pred) - np.asarray(target)) ** 2
    np.testing.assert_allclose(got["mse"], sq[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(got["mse_nomask"], sq.mean(), rtol=1e-5)


def test_masked_losses_ignore_padding(key):
    logits, labels, lens, pred, target = loss_inputs(key)
    k3 = jax.random.fold_in(key, 1)
    pad = np.asarray(~train.sequence_mask(lens, T))
    junk_logits = np.where(pad[..., None], np.where(np.asarray(jax.random.bernoulli(k3, 0.5, logits.shape)),
                                                    np.inf, 1e4), logits).astype(np.float32)
    junk_labels = np.where(pad, -7, labels).astype(np.int32)     # out of range
    junk_pred = np.where(pad[..., None], np.inf, pred).astype(np.float32)
    clean = all_losses(logits, labels, lens, pred, target)
    junk = all_losses(junk_logits, junk_labels, lens, junk_pred, target)
    for name in ("seq_ce", "acc", "mse", "grad_ce"):
        assert np.isfinite(np.asarray(junk[name])).all(), name
        np.testing.assert_array_equal(junk[name], clean[name], err_msg=name)
    assert not np.asarray(junk["grad_ce"])[pad].any()
    # no valid token at all: a finite zero loss
    empty = all_losses(logits, labels, jnp.zeros((2, 3), lens.dtype), pred, target)
    assert float(empty["seq_ce"]) == 0.0 and float(empty["mse"]) == 0.0


def test_loss_shape_errors():
    with pytest.raises(ValueError, match="`logits`"):
        train.sequence_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), int))
    with pytest.raises(ValueError, match="`seq_lengths`"):
        train.sequence_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), int), jnp.array([1, 2, 3]))
    with pytest.raises(TypeError, match="`labels`"):
        train.softmax_cross_entropy(jnp.zeros((2, 4)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="`pred`"):
        train.mean_squared_error(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


# ----------------------------------------------------------------------------- truncated BPTT

@pytest.mark.slow
def test_tbptt_carries_state_and_blocks_gradients(key):
    cell = jaxrnn.lstm(5)
    kp, kx, kh = jax.random.split(key, 3)
    params = cell.init(kp, I)
    xs = jax.random.normal(kx, (3, 12, I))
    h0 = jaxrnn.LSTMState(*jax.random.normal(kh, (2, 3, 5)))

    def loss_fn(p, h, chunk, key):
        h, ys = jaxrnn.unroll(cell, p, h, chunk)
        return jnp.mean(ys ** 2), (h, {"last": ys[0, -1, 0]})

    # With a zero learning rate the chunks see the same params: the carried state is exact.
    step = train.make_tbptt_step(loss_fn, optax.sgd(0.0), donate=False)
    state = train.TrainState.create(params, optax.sgd(0.0))
    h = h0
    for i in range(3):
        state, h, metrics = step(state, h, xs[:, 4 * i: 4 * (i + 1)])
    h_full, _ = jax.jit(jaxrnn.unroll, static_argnums=0)(cell, params, h0, xs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), h, h_full)
    assert int(state.step) == 3 and set(metrics) == {"loss", "grad_norm", "last"}

    # The step's gradient treats the incoming state as a constant: it is the chunk's own gradient.
    h1, _ = jax.jit(jaxrnn.unroll, static_argnums=0)(cell, params, h0, xs[:, :4])
    g_chunk = jax.jit(jax.grad(lambda p: loss_fn(p, h1, xs[:, 4:8], None)[0]))(params)
    _, _, m = step(train.TrainState.create(params, optax.sgd(0.0)), h1, xs[:, 4:8])
    np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(g_chunk), rtol=1e-5)

    # Through stop_gradient_state, the second chunk's loss has no gradient w.r.t. the first chunk's input.
    def two_chunks(x1, detach):
        h, _ = jaxrnn.unroll(cell, params, h0, x1)
        if detach:
            h = train.stop_gradient_state(h)
        return loss_fn(params, h, xs[:, 4:8], None)[0]

    grad = jax.jit(jax.grad(two_chunks), static_argnums=1)
    assert not np.asarray(grad(xs[:, :4], True)).any()
    assert np.abs(np.asarray(grad(xs[:, :4], False))).max() > 1e-4


# ----------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def lm():
    V = 6
    net = jaxrnn.stack([jaxrnn.gru(16), jaxrnn.lstm(8)], head=V)
    params = net.init(jax.random.key(4), V)
    params = params._replace(head=params.head._replace(w=params.head.w * 8))   # peaked distributions
    return net, params, V


def python_decode(net, params, prime, length, embed):
    step = jax.jit(lambda h, tok: net.step(params, h, embed(tok)))
    h, out = net.initial_state(()), list(prime)
    for tok in prime:
        h, logits = step(h, jnp.array(tok))
    for _ in range(length):
        tok = int(jnp.argmax(logits))
        out.append(tok)
        h, logits = step(h, jnp.array(tok))
    return out


@pytest.mark.slow
def test_generate_shape_and_determinism(lm):
    net, params, V = lm
    prime = jnp.array([1, 4, 0])
    a = train.generate(net, params, jax.random.key(0), prime, 20)
    assert a.shape == (23,) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a[:3], prime)
    assert ((a >= 0) & (a < V)).all()
    np.testing.assert_array_equal(a, train.generate(net, params, jax.random.key(0), prime, 20))
    b = train.generate(net, params, jax.random.key(1), prime, 20)
    assert (a != b).any()
    assert train.generate(net, params, jax.random.key(0), prime, 0).tolist() == prime.tolist()


@pytest.mark.slow
def test_generate_greedy_matches_python_loop(lm):
    net, params, V = lm
    prime = [2, 5]
    one_hot = lambda ids: jax.nn.one_hot(ids, V)
    got = train.generate(net, params, jax.random.key(0), jnp.array(prime), 12, temperature=0.0)
    assert got.tolist() == python_decode(net, params, prime, 12, one_hot)
    # a custom embedding (a table lookup) into a net of another input size
    net2 = jaxrnn.stack(jaxrnn.gru(10), head=V)
    params2 = net2.init(jax.random.key(5), 3)
    table = jax.random.normal(jax.random.key(6), (V, 3))
    embed = lambda ids: table[ids]
    got = train.generate(net2, params2, jax.random.key(0), jnp.array(prime), 9, temperature=0, embed=embed)
    assert got.tolist() == python_decode(net2, params2, prime, 9, embed)


def test_generate_errors(lm):
    net, params, V = lm
    with pytest.raises(ValueError, match="`prime`"):
        train.generate(net, params, jax.random.key(0), jnp.array([V]), 3)
    with pytest.raises(ValueError, match="`prime`"):
        train.generate(net, params, jax.random.key(0), jnp.array([], int), 3)
    bi = jaxrnn.stack(jaxrnn.gru(4), bidirectional=True, head=V)
    with pytest.raises(ValueError, match="unidirectional"):
        train.generate(bi, bi.init(jax.random.key(0), V), jax.random.key(0), jnp.array([1]), 3)
    other = jaxrnn.stack(jaxrnn.gru(4), head=V + 1)
    with pytest.raises(ValueError, match="embed"):
        train.generate(other, other.init(jax.random.key(0), V), jax.random.key(0), jnp.array([1]), 3)


# ----------------------------------------------------------------------------- checkpoints

ADAMW = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))


@functools.lru_cache(maxsize=None)
def ckpt_state(hidden=5, tx=ADAMW, abstract=False):
    """A state with None leaves (no bias), an LSTM projection and a non-trivial adam state."""
    net = jaxrnn.stack([jaxrnn.lstm(hidden, proj_size=3, bias=False), jaxrnn.gru(4)], head=2)

    @jax.jit
    def make():
        params = net.init(jax.random.key(0), 3)
        state = train.TrainState.create(params, tx)
        grads = jax.tree.map(lambda p: jnp.sin(p * 3.0) + 0.1, params)
        for _ in range(3):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            state = train.TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
        return state

    return jax.eval_shape(make) if abstract else make()


@pytest.mark.slow
def test_checkpoint_round_trip_is_exact(tmp_path):
    state = ckpt_state()
    config = {"lr": 1e-3, "name": "run", "layers": [5, 4], "nested": {"flag": True, "none": None}, "seed": 2**40}
    path = tmp_path / "ckpt.msgpack"
    train.save_checkpoint(path, state, config=config)
    target = ckpt_state()._replace(step=jnp.zeros((), jnp.int32))
    target = jax.tree.map(jnp.zeros_like, target)
    restored, cfg = train.restore_checkpoint(str(path), target)
    assert type(restored) is train.TrainState and int(restored.step) == 3
    leaves_equal(restored, state)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
    assert cfg == config
    train.save_checkpoint(path, state)                          # overwrite, no config
    assert train.restore_checkpoint(path, target)[1] is None
    assert sorted(os.listdir(tmp_path)) == ["ckpt.msgpack"]     # no temporary files left


def test_restore_rejects_corrupt_and_mismatched_files(tmp_path):
    state = ckpt_state()
    path = tmp_path / "ckpt"
    train.save_checkpoint(path, state, config={"a": 1})
    good = path.read_bytes()

    truncated = tmp_path / "truncated"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    for p in (truncated, garbage):
        before = p.read_bytes()
        with pytest.raises(ValueError, match="not a valid checkpoint|not a jaxrnn checkpoint"):
            train.restore_checkpoint(p, state)
        assert p.read_bytes() == before

    with pytest.raises(ValueError, match=r"params/layers/0/w_ih.*target.*\[28, 3\].*checkpoint.*\[20, 3\]"):
        train.restore_checkpoint(path, ckpt_state(hidden=7, abstract=True))            # shapes differ
    with pytest.raises(ValueError, match="structure"):
        train.restore_checkpoint(path, ckpt_state(tx=optax.sgd(0.1), abstract=True))  # optimizer differs
    with pytest.raises(ValueError, match="structure"):
        train.restore_checkpoint(path, state.params)
    assert path.read_bytes() == good

    # a failed save (unserializable config) leaves the previous checkpoint in place
    with pytest.raises(TypeError, match="`config`"):
        train.save_checkpoint(path, state, config={"fn": print})
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "garbage", "truncated"]
    leaves_equal(train.restore_checkpoint(path, state)[0], state)
    leaves_equal(train.restore_checkpoint(path, ckpt_state(abstract=True))[0], state)   # an abstract target


def test_checkpoint_of_any_pytree_with_prng_keys(tmp_path):
    tree = {"key": jax.random.key(11), "raw": jax.random.PRNGKey(2), "w": jnp.arange(3.0), "n": 4, "none": None}
    train.save_checkpoint(tmp_path / "c", tree, config={"k": [1, 2]})
    target = {"key": jax.random.key(0), "raw": jax.random.PRNGKey(0), "w": jnp.zeros(3), "n": 0, "none": None}
    restored, config = train.restore_checkpoint(tmp_path / "c", target)
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(tree["key"]))
    assert restored["key"].dtype == tree["key"].dtype
    leaves_equal({k: v for k, v in restored.items() if k != "key"}, {k: v for k, v in tree.items() if k != "key"})
    assert config == {"k": [1, 2]}


def test_fit_draws_no_batch_past_the_stop(task):
    batches = iter(make_data(0, 4) + make_data(1, 4))
    s, _ = train.fit(task.init(), task.step, batches, key=jax.random.key(0), num_steps=3, progress=False)
    assert int(s.step) == 3 and len(list(batches)) == 5
