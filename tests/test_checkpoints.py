"""`jaxrnn.train` checkpoints: the SHA-256 checksum refuses damaged files; format 1 still reads.

A checkpoint file is a msgpack header ``{"format", "version": 2, "size", "sha256"}``
followed by ``size`` bytes of msgpack data (state and config) whose SHA-256 the
header holds. These tests damage files byte by byte and check that every damaged
file is refused with a ValueError naming it, instead of restoring other weights.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn import train
from jaxrnn.cells import LSTMParams

DATA = pathlib.Path(__file__).parent / "data"

# What restore_checkpoint says of a damaged file (the tests in test_train.py match
# "not a valid checkpoint" too).
DAMAGED = "not a valid checkpoint|not a jaxrnn checkpoint|damaged"


@jax.jit
def small_state():
    """A TrainState after three adam updates: an LSTM (projection, no bias) and a GRU."""
    net = jaxrnn.stack([jaxrnn.lstm(3, proj_size=2, bias=False), jaxrnn.gru(2)], head=2)
    tx = optax.adam(1e-2)
    state = train.TrainState.create(net.init(jax.random.key(0), 2), tx)
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p) + 0.1, state.params)
    for _ in range(3):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = train.TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
    return state


@pytest.fixture(scope="module")
def state():
    return small_state()


@pytest.fixture
def saved(tmp_path, state):
    path = tmp_path / "run.ckpt"
    train.save_checkpoint(path, state, config={"hidden": [3, 2], "lr": 1e-2})
    return path


def leaves_equal(a, b):
    la, da = jax.tree.flatten(a)
    lb, db = jax.tree.flatten(b)
    assert da == db, f"structures differ:\n{da}\n{db}"
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def split(data: bytes):
    """(header dict, offset of the data after it) of a checkpoint file's bytes."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    header = unpacker.unpack()
    return header, unpacker.tell()


def array_spans(data: bytes, state):
    """(start, end) of every array's raw bytes in the file, found by their content."""
    spans = []
    for leaf in jax.tree.leaves(state):
        raw = np.asarray(leaf).tobytes()
        if len(raw) >= 8:
            start = data.find(raw)
            assert start >= 0 and data.find(raw, start + 1) < 0, "an array's bytes must occur exactly once"
            spans.append((start, start + len(raw)))
    return spans


def refused(path, target, damaged: bytes):
    """True if restoring ``damaged`` (written at ``path``) raises a ValueError naming the file."""
    path.write_bytes(damaged)
    try:
        train.restore_checkpoint(path, target)
    except ValueError as e:
        assert str(path) in str(e), str(e)
        return True
    return False


# ------------------------------------------------------------------------------ round trip

@pytest.mark.slow
def test_round_trip_is_exact_and_the_header_holds_the_checksum(saved, state):
    data = saved.read_bytes()
    header, offset = split(data)
    assert header["format"] == "jaxrnn.checkpoint" and header["version"] == 2
    assert header["size"] == len(data) - offset
    import hashlib

    assert header["sha256"] == hashlib.sha256(data[offset:]).hexdigest()

    target = jax.tree.map(jnp.zeros_like, state)
    restored, config = train.restore_checkpoint(saved, target)
    assert type(restored) is train.TrainState
    leaves_equal(restored, state)
    assert config == {"hidden": [3, 2], "lr": 1e-2}
    leaves_equal(train.restore_checkpoint(saved, jax.eval_shape(small_state))[0], state)


# ------------------------------------------------------------------------------ damage

def test_a_flipped_byte_in_the_array_data_is_refused(tmp_path, saved, state):
    """Format 1 restored such a file silently with other weights; now every byte of every array counts."""
    data = saved.read_bytes()
    spans = array_spans(data, state)
    assert sum(e - s for s, e in spans) >= 0.8 * sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    bad = tmp_path / "bad.ckpt"
    missed = []
    for start, end in spans:
        for i in range(start, end):
            for mask in (0x01, 0x80):
                damaged = bytearray(data)
                damaged[i] ^= mask
                if not refused(bad, state, bytes(damaged)):
                    missed.append((i, mask))
    assert not missed, f"damaged files restored without an error: (offset, xor mask) {missed[:10]}"
    with pytest.raises(ValueError, match=f"{bad}.*damaged.*SHA-256"):
        train.restore_checkpoint(bad, state)
    assert saved.read_bytes() == data


def test_a_flipped_byte_anywhere_is_refused(tmp_path, saved, state):
    """Header, structure, dtypes, shapes, config: any single damaged byte of the file is refused."""
    data = saved.read_bytes()
    bad = tmp_path / "bad.ckpt"
    missed = [i for i in range(len(data)) if not refused(bad, state, data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])]
    assert not missed, f"damaged files restored without an error at offsets {missed[:10]}"


def test_a_damaged_header_is_refused(tmp_path, saved, state):
    data = saved.read_bytes()
    header, offset = split(data)
    bad = tmp_path / "bad.ckpt"

    def with_header(**changes):
        return msgpack.packb({**header, **changes}) + data[offset:]

    assert with_header() == data
    cases = {
        "another checksum": with_header(sha256="0" * 64),
        "a checksum that is not hex": with_header(sha256="checksum"),
        "a smaller size": with_header(size=header["size"] - 1),
        "a larger size": with_header(size=header["size"] + 1),
        "a size that is not an int": with_header(size="10"),
        "no checksum": msgpack.packb({k: v for k, v in header.items() if k != "sha256"}) + data[offset:],
        "another format": with_header(format="other.checkpoint"),
        "an unknown version": with_header(version=3),
        "version 1 (no checksum) for version 2 data": with_header(version=1),
        "no header": data[offset:],
    }
    for what, damaged in cases.items():
        assert refused(bad, state, damaged), what
    bad.write_bytes(with_header(version=3))
    with pytest.raises(ValueError, match="version 3"):
        train.restore_checkpoint(bad, state)


def test_truncated_or_extended_files_are_refused(tmp_path, saved, state):
    data = saved.read_bytes()
    _, offset = split(data)
    bad = tmp_path / "bad.ckpt"
    for n in sorted({0, 1, offset - 1, offset, offset + 1, len(data) // 2, len(data) - 1}):
        assert refused(bad, state, data[:n]), n
    bad.write_bytes(data[:-1])
    with pytest.raises(ValueError, match=f"{bad}.*damaged.*truncated"):
        train.restore_checkpoint(bad, state)
    assert refused(bad, state, data + b"\x00")


# ------------------------------------------------------------------------------ format 1

def legacy_state():
    """The state in tests/data/checkpoint_v1.msgpack: a dict of params with an LSTM and adam's
    state, every leaf ``arange * 0.37 + i - 1.5`` (written by jaxrnn's format-1 writer)."""
    z = lambda *shape: np.zeros(shape, np.float32)
    params = {"lstm": LSTMParams(z(12, 2), z(12, 2), None, None, z(2, 3)), "head": {"w": z(2, 2), "b": z(2)}}
    shapes = jax.eval_shape(lambda p: train.TrainState.create(p, optax.adam(1e-2)), params)
    leaves, treedef = jax.tree.flatten(shapes)
    return jax.tree.unflatten(treedef, [(np.arange(x.size).reshape(x.shape) * 0.37 + i - 1.5).astype(x.dtype)
                                        for i, x in enumerate(leaves)])


def test_format_1_checkpoints_still_restore():
    path = DATA / "checkpoint_v1.msgpack"
    header, offset = split(path.read_bytes())
    assert header["version"] == 1 and offset == os.path.getsize(path)     # one msgpack object, no checksum
    expected = legacy_state()
    target = jax.tree.map(jnp.zeros_like, expected)
    restored, config = train.restore_checkpoint(path, target)
    leaves_equal(restored, jax.tree.map(jnp.asarray, expected))
    assert config == {"hidden": [3, 2], "lr": 0.01, "name": "legacy"}
