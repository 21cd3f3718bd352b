"""Data parallelism over many devices with JAX's own sharding (``jax.sharding``).

Data parallelism in JAX needs no special step function: put the params on every
device (replicated), split the batch along its leading axis over the devices
(sharded), and ``jax.jit`` the ordinary single-device train step. The compiler
(GSPMD) partitions the computation; the gradient of a *mean* loss over the global
batch comes out already averaged over the devices, and every device applies the
same update to its copy of the params::

    mesh = jaxrnn.distributed.data_mesh()                   # all devices, one axis "data"
    params = jaxrnn.distributed.replicate(params, mesh)     # a full copy on every device
    opt_state = jaxrnn.distributed.replicate(opt_state, mesh)

    @jax.jit
    def train_step(params, opt_state, batch):            # written for one device
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for batch in batches:                                # leading axis: the global batch
        batch = jaxrnn.distributed.shard_batch(batch, mesh) # B / n examples per device
        params, opt_state, loss = train_step(params, opt_state, batch)

``jaxrnn.train.make_train_step(..., mesh=mesh)`` and ``fit(..., mesh=mesh)`` do the
two placements for you.

The batch size must divide by the number of devices. When it does not (the last
batch of an epoch), pad it with :func:`pad_batch` and weight the per-example losses
with the returned weights, so the padding contributes nothing::

    batch, weights = jaxrnn.distributed.pad_batch(batch, mesh.shape["data"])
    # in the loss: jnp.sum(weights * per_example_loss) / jnp.sum(weights)

Multi-host (a TPU pod slice, several GPU machines): start every process with
``jax.distributed.initialize()`` before anything else touches JAX, then run the
same program on every host. :func:`data_mesh` spans the devices of *all* hosts;
each process passes its *own* slice of the data (its local batch, whose size must
divide by its number of local devices) to :func:`shard_batch`, which assembles one
global array with ``jax.make_array_from_process_local_data``; the global batch is
the concatenation of the local batches in process order. :func:`replicate` expects
the same values on every host (initialise the params from the same key).
The guide "Data parallelism and multiple hosts" in the documentation walks through a launch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_mesh", "shard_batch", "replicate", "pad_batch", "batch_sharding", "replicated_sharding"]


def data_mesh(devices: Optional[Sequence[jax.Device]] = None, axis_name: str = "data") -> Mesh:
    """A one-axis :class:`jax.sharding.Mesh` over ``devices`` for data parallelism.

    Args:
      devices: the devices to use; None means ``jax.devices()``, every device of every
        process (after ``jax.distributed.initialize()`` on multi-host setups).
      axis_name: the name of the mesh axis the batch is split over.

    Returns:
      ``Mesh(devices, (axis_name,))``.

    Example:
      >>> import jax, jaxrnn.distributed
      >>> mesh = jaxrnn.distributed.data_mesh()
      >>> mesh.shape["data"] == jax.device_count()
      True
    """
    if devices is None:
        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must hold at least one device; got an empty sequence.")
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"`axis_name` must be a non-empty string; got {axis_name!r}.")
    return Mesh(np.array(devices, dtype=object), (axis_name,))


def batch_sharding(mesh: Mesh, axis_name: str = "data") -> NamedSharding:
    """The sharding of a batch: leading axis split over ``axis_name``, other axes whole."""
    _check_axis(mesh, axis_name)
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh, *, axis_name: str = "data") -> Any:
    """Splits every leaf of ``batch`` along its leading axis over the devices of ``mesh``.

    Each leaf (``xs [B, T, I]``, ``seq_lengths [B]``, ``labels [B, ...]`` ...) becomes a
    global ``jax.Array`` whose leading axis is divided over the mesh axis ``axis_name``
    (replicated over any other mesh axis). Scalar leaves are replicated.

    On a single host ``B`` is the global batch size. On several hosts every process
    passes its own local batch; the result is the global batch, the local batches
    concatenated in process order (``jax.make_array_from_process_local_data``).

    Args:
      batch: a pytree of arrays (numpy or jax) sharing a leading batch axis.
      mesh: from :func:`data_mesh` (or any mesh with an ``axis_name`` axis).
      axis_name: the mesh axis to split the batch over.

    Returns:
      The same pytree, each leaf a sharded ``jax.Array``.

    Raises:
      ValueError: if a leaf's leading dimension does not divide by the number of
        devices along ``axis_name`` (the local ones on a multi-host run); pad the
        batch with :func:`pad_batch` first.
    """
    sharding = batch_sharding(mesh, axis_name)
    replicated = replicated_sharding(mesh)
    n_global, n_local = _data_parts(mesh, axis_name)
    multi = jax.process_count() > 1
    n = n_local if multi else n_global

    def put(path, x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding if x.ndim else replicated)  # already global
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if x.ndim == 0:
            return _put(x, replicated, multi)
        if x.shape[0] % n:
            where = "local batch of this process" if multi else "batch"
            scope = f"{n} devices that process {jax.process_index()} holds on" if multi else f"{n} devices of"
            drop = f", or drop the last {x.shape[0] % n} examples" if x.shape[0] > n else ""
            raise ValueError(
                f"`batch{jax.tree_util.keystr(path)}` has a leading (batch) dimension of {x.shape[0]}, which does "
                f"not divide over the {scope} mesh axis {axis_name!r} (shape {tuple(x.shape)}). Make the "
                f"{where} a multiple of {n}: pad it with `jaxrnn.distributed.pad_batch(batch, {n})` and weight "
                f"the loss with the returned weights{drop}."
            )
        return _put(x, sharding, multi)

    return jax.tree_util.tree_map_with_path(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a full copy of every leaf of ``tree`` (params, optimizer state) on every device.

    The result never aliases ``tree``'s buffers (even when a leaf already sits where it
    should), so a train step that donates the replicated state leaves ``tree`` intact.
    On several hosts every process must pass the same values.

    Example:
      >>> import jax, jax.numpy as jnp, jaxrnn, jaxrnn.distributed
      >>> mesh = jaxrnn.distributed.data_mesh()
      >>> params = jaxrnn.lstm(4).init(jax.random.key(0), input_size=3)
      >>> params = jaxrnn.distributed.replicate(params, mesh)
      >>> params.w_ih.sharding.is_fully_replicated
      True
    """
    sharding = replicated_sharding(mesh)
    multi = jax.process_count() > 1

    def put(x):
        if isinstance(x, jax.Array):
            # A copy first: device_put(..., may_alias=False) still hands the source
            # buffer to one of the devices when replicating onto several (jax 0.10).
            x = jnp.array(x, copy=True)
            if not x.is_fully_addressable:
                return jax.device_put(x, sharding)
        elif not hasattr(x, "shape"):
            x = np.asarray(x)
        return _put(x, sharding, multi)

    return jax.tree.map(put, tree)


def pad_batch(batch: Any, multiple: int) -> tuple:
    """Pads the leading axis of every leaf of ``batch`` up to a multiple of ``multiple``.

    The padding rows repeat the last example (so every padded row is a valid input,
    e.g. a sequence of positive length, and no NaN can arise from it), and the
    returned ``weights`` mark them with 0. Weight the per-example losses to make the
    padded batch give exactly the loss and gradient of the original one::

        batch, weights = pad_batch(batch, mesh.shape["data"])
        loss = jnp.sum(weights * per_example_loss) / jnp.sum(weights)

    (For a per-token loss, multiply the token mask by ``weights[:, None]``.)

    Args:
      batch: a pytree of arrays sharing a leading batch dimension ``B >= 1``.
      multiple: the padded size is the smallest multiple of ``multiple`` that is ``>= B``
        (on several hosts: the number of local devices, for the local batch).

    Returns:
      ``(padded_batch, weights)``: ``weights`` is a float32 ``[B_padded]`` array, 1 for
      real examples and 0 for padding. Leaves stay numpy or jax arrays as they came.

    Example:
      >>> import numpy as np, jaxrnn.distributed
      >>> batch, w = jaxrnn.distributed.pad_batch({"xs": np.ones((5, 3)), "y": np.arange(5)}, 4)
      >>> batch["xs"].shape, batch["y"].tolist(), w.tolist()
      ((8, 3), [0, 1, 2, 3, 4, 4, 4, 4], [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"`multiple` must be a positive int; got {multiple!r}.")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(batch)
    if not leaves:
        raise ValueError("`batch` must hold at least one array; got an empty pytree.")
    sizes = {}
    for path, x in leaves:
        shape = np.shape(x)
        if not shape:
            raise ValueError(f"`batch{jax.tree_util.keystr(path)}` is a scalar; every leaf needs a leading batch axis.")
        sizes.setdefault(shape[0], jax.tree_util.keystr(path))
    if len(sizes) != 1:
        raise ValueError(
            "`batch` leaves must share one leading (batch) dimension; got "
            + ", ".join(f"{b} for `batch{p}`" for b, p in sizes.items()) + "."
        )
    B = next(iter(sizes))
    if B == 0:
        raise ValueError("`batch` is empty (leading dimension 0); there is no example to pad with.")
    padded = -(-B // int(multiple)) * int(multiple)
    weights = np.zeros((padded,), np.float32)
    weights[:B] = 1.0
    if padded == B:
        return batch, weights
    index = np.minimum(np.arange(padded), B - 1)

    def pad(x):
        if isinstance(x, np.ndarray) or not hasattr(x, "shape"):
            return np.asarray(x)[index]
        return x[index]

    return jax.tree_util.tree_unflatten(treedef, [pad(x) for _, x in leaves]), weights


# --------------------------------------------------------------------------- helpers


def _check_axis(mesh: Mesh, axis_name: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh (see `data_mesh`); got {type(mesh).__name__}.")
    if axis_name not in mesh.axis_names:
        raise ValueError(f"`axis_name` {axis_name!r} is not an axis of `mesh`; its axes are {mesh.axis_names}.")


def _data_parts(mesh: Mesh, axis_name: str) -> tuple:
    """(number of batch shards over the mesh, number of them held by this process)."""
    _check_axis(mesh, axis_name)
    axis = mesh.axis_names.index(axis_name)
    devices = np.moveaxis(mesh.devices, axis, 0)
    devices = devices.reshape(devices.shape[0], -1)
    me = jax.process_index()
    local = sum(any(d.process_index == me for d in row) for row in devices)
    return devices.shape[0], local


def _put(x, sharding: NamedSharding, multi: bool):
    if multi:
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.device_put(x, sharding)
