"""Checkpoints: msgpack files, no pickle, atomic writes, SHA-256 checked."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import msgpack
import numpy as np


Array = jax.Array


# A checkpoint file is two msgpack objects, one after the other:
#   header = {"format": "jaxrnn.checkpoint", "version": 2, "size": n, "sha256": hex digest}
#   data   = n bytes: flax.serialization.msgpack_serialize({"state": state_dict, "config": config})
# and the header's "sha256" is the SHA-256 of those n bytes. Format 1 (jaxrnn before the
# checksum) was a single object {"format", "version": 1, "state", "config"}; it is still read.
_FORMAT = "jaxrnn.checkpoint"
_VERSION = 2
_LEGACY_VERSION = 1


def _flatten_state_dict(sd, prefix=""):
    """Nested state dict -> {"a/b/c": leaf}; leaves are arrays, scalars or None."""
    if isinstance(sd, dict):
        out = {}
        if not sd:
            out[prefix or "/"] = "{}"
        for k in sd:
            out.update(_flatten_state_dict(sd[k], f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: sd}


def _leaf_spec(x):
    if x is None:
        return "None"
    if isinstance(x, str):
        return x
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    return f"{np.dtype(x.dtype)}{list(x.shape)}"


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(x):
    """A leaf as numpy (typed PRNG keys as their uint32 key data)."""
    if _is_key(x):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable:
            if not x.sharding.is_fully_replicated:
                raise ValueError("`state` holds an array sharded across processes; save_checkpoint needs every "
                                 "array fully replicated or addressable from this process.")
            x = x.addressable_data(0)
        return np.asarray(x)
    return x


def _as_saved(x):
    """What :func:`_to_host` makes of ``x``, without moving data (for comparing specs)."""
    if _is_key(x):
        return jax.ShapeDtypeStruct(jax.random.key_data(x).shape, jnp.uint32)
    return x


def _describe_tree(flat) -> str:
    return "{" + ", ".join(f"{k}: {_leaf_spec(v)}" for k, v in flat.items()) + "}"


def _damaged(path: str, why: str) -> ValueError:
    return ValueError(f"`path` {path!r} is not a valid checkpoint: the file is damaged ({why}).")


def _read_checkpoint(path: str) -> dict:
    """The ``{"state", "config"}`` payload of a checkpoint file, its checksum verified."""
    from flax import serialization

    with open(path, "rb") as f:
        data = f.read()
    # Only the header is parsed here; the reader pulls small chunks from the file's bytes.
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False,
                                max_buffer_size=max(len(data), 1))
    try:
        header = unpacker.unpack()
    except Exception as e:  # OutOfData, FormatError, StackError, UnicodeDecodeError, ...
        raise ValueError(f"`path` {path!r} is not a valid checkpoint (damaged or truncated): "
                         f"{type(e).__name__}: {e}") from e
    if not (isinstance(header, dict) and header.get("format") == _FORMAT):
        raise ValueError(f"`path` {path!r} is not a jaxrnn checkpoint (damaged, or written by something else).")
    version = header.get("version")
    if version == _VERSION:
        size, digest = header.get("size"), header.get("sha256")
        if set(header) != {"format", "version", "size", "sha256"} or type(size) is not int \
                or not isinstance(digest, str):
            raise _damaged(path, f"its header is not a format-{_VERSION} header: {repr(header)[:200]}")
        body = memoryview(data)[unpacker.tell():]
        if len(body) < size:
            raise _damaged(path, f"truncated: {len(body)} of its {size} bytes of data are there")
        if len(body) > size:
            raise _damaged(path, f"{len(body) - size} bytes follow the end of its {size} bytes of data")
        if hashlib.sha256(body).hexdigest() != digest:
            raise _damaged(path, "the SHA-256 checksum of its data does not match the one saved in its header: "
                                 "the file changed after it was written")
    elif version == _LEGACY_VERSION and "state" in header:
        body = data  # format 1: the header is the whole payload, with no checksum to verify
    else:
        raise ValueError(f"`path` {path!r} has checkpoint version {version!r} (a damaged file, or one written by "
                         f"a newer jaxrnn); this jaxrnn reads versions {_LEGACY_VERSION} and {_VERSION}.")
    try:
        payload = serialization.msgpack_restore(body)
    except Exception as e:
        raise ValueError(f"`path` {path!r} is not a valid checkpoint (damaged or truncated): "
                         f"{type(e).__name__}: {e}") from e
    if not (isinstance(payload, dict) and "state" in payload and "config" in payload):
        raise ValueError(f"`path` {path!r} is not a jaxrnn checkpoint (damaged, or written by something else).")
    return payload


def save_checkpoint(path, state, *, config: Optional[dict] = None) -> None:
    """Writes ``state`` (any pytree of arrays, e.g. a :class:`TrainState`) and ``config``.

    The file is msgpack (``flax.serialization``; no pickle): a small header
    ``{"format": "jaxrnn.checkpoint", "version": 2, "size": n, "sha256": digest}``
    followed by the ``n`` bytes of data (state and config), whose SHA-256 the header
    holds, so that :func:`restore_checkpoint` refuses a file changed by even one byte.
    It is written to a temporary file in the same directory, flushed to disk and
    renamed over ``path``, so ``path`` always holds either the old or the new
    complete checkpoint.

    On several processes, call it from one (``jax.process_index() == 0``) with a
    replicated state.

    Args:
      path: file to write.
      state: the pytree to save (arrays, numpy arrays, Python scalars, None; typed
        PRNG keys are saved as their key data).
      config: optional dict of msgpack-serializable values (str, int, float, bool,
        None, lists, dicts, numpy arrays) saved beside the state, e.g. the model's
        hyperparameters and seed. Tuples come back as lists.

    Raises:
      TypeError: if ``config`` is not a dict or cannot be serialized (nothing is written).
    """
    from flax import serialization

    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"`config` must be a dict or None; got {type(config).__name__}.")
    sd = serialization.to_state_dict(jax.tree.map(_to_host, state))
    try:
        data = serialization.msgpack_serialize({"state": sd, "config": None if config is None else dict(config)})
    except Exception as e:  # msgpack raises TypeError / ValueError / OverflowError
        raise TypeError(f"`config` or `state` cannot be serialized to msgpack: {e}") from e
    header = msgpack.packb({"format": _FORMAT, "version": _VERSION, "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX); best effort elsewhere
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def restore_checkpoint(path, target):
    """Reads a checkpoint written by :func:`save_checkpoint`; returns ``(state, config)``.

    Args:
      path: the checkpoint file (only read, never modified).
      target: a pytree of the saved structure (e.g. a freshly created
        :class:`TrainState`, or ``jax.eval_shape`` of the function that creates
        one); only its structure, shapes, dtypes and shardings are used. Restored
        arrays are placed like ``target``'s (on the default device for a
        ``jax.ShapeDtypeStruct`` without sharding).

    Returns:
      ``(state, config)``: ``state`` of ``target``'s type, ``config`` the saved dict
      (or None).

    Checkpoints of version 1 (jaxrnn before the checksum) are still read; they
    carry no checksum, so damage inside their array data cannot be detected.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is not a valid checkpoint: damaged (its data does
        not match the SHA-256 checksum or the size in its header, or the header is
        damaged), truncated, or not a jaxrnn checkpoint; or if its structure, shapes
        or dtypes differ from ``target`` (the message names the first mismatching
        leaf, or shows both structures).
    """
    from flax import serialization

    path = os.fspath(path)
    payload = _read_checkpoint(path)

    want = _flatten_state_dict(serialization.to_state_dict(jax.tree.map(_as_saved, target)))
    got = _flatten_state_dict(payload["state"])
    if set(want) != set(got):
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        raise ValueError(
            f"The checkpoint {path!r} does not match the structure of `target`.\n"
            f"  in `target` only: {missing}\n  in the checkpoint only: {extra}\n"
            f"  `target` structure: {_describe_tree(want)}\n"
            f"  checkpoint structure: {_describe_tree(got)}"
        )
    for k in want:
        w, g = want[k], got[k]
        if (w is None) != (g is None) or (w is not None and _leaf_spec(w) != _leaf_spec(g)):
            raise ValueError(f"The checkpoint {path!r} does not match `target` at leaf {k!r}: "
                             f"`target` has {_leaf_spec(w)}, the checkpoint has {_leaf_spec(g)}.")
    try:
        restored = serialization.from_state_dict(jax.tree.map(_as_saved, target), payload["state"])
    except Exception as e:
        raise ValueError(f"The checkpoint {path!r} does not match the structure of `target`: {e}") from e

    def place(t, r):
        if _is_key(t):
            return jax.random.wrap_key_data(jax.device_put(np.asarray(r), t.sharding), impl=jax.random.key_impl(t))
        if isinstance(t, jax.Array):
            return jax.device_put(np.asarray(r), t.sharding)
        if isinstance(t, jax.ShapeDtypeStruct):
            return jax.device_put(np.asarray(r), t.sharding) if t.sharding is not None else jnp.asarray(r)
        if isinstance(t, np.ndarray):
            return np.asarray(r)
        return r

    restored = jax.tree.map(place, target, restored)
    return restored, payload.get("config")
