"""Sequence losses and metrics, masked by ``seq_lengths``."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def sequence_mask(seq_lengths: Array, T: int) -> Array:
    """``mask[..., t] = t < seq_lengths[...]``: a bool array ``[*batch, T]``.

    Example:
      >>> import jax.numpy as jnp
      >>> sequence_mask(jnp.array([3, 1]), 4).astype(int).tolist()
      [[1, 1, 1, 0], [1, 0, 0, 0]]
    """
    seq_lengths = jnp.asarray(seq_lengths)
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"`seq_lengths` must be integers; got dtype {seq_lengths.dtype}.")
    return jnp.arange(T) < seq_lengths[..., None]


def _check_logits_labels(logits, labels, seq_lengths=None):
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must be integer class ids; got dtype {labels.dtype}.")
    if logits.ndim < 1 or tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"`logits` must have shape [*labels.shape, num_classes] = {list(labels.shape) + ['V']}; "
                         f"got {tuple(logits.shape)}.")
    mask = None
    if seq_lengths is not None:
        if labels.ndim < 1:
            raise ValueError("`labels` must have a time axis [..., T] when `seq_lengths` is given.")
        seq_lengths = jnp.asarray(seq_lengths)
        if tuple(seq_lengths.shape) != tuple(labels.shape[:-1]):
            raise ValueError(f"`seq_lengths` must have shape {tuple(labels.shape[:-1])} (labels without T); "
                             f"got {tuple(seq_lengths.shape)}.")
        mask = sequence_mask(seq_lengths, labels.shape[-1])
    return logits, labels, mask


def _masked_mean(values, mask):
    if mask is None:
        return jnp.mean(values)
    values = jnp.where(mask, values, 0)
    return jnp.sum(values) / jnp.maximum(jnp.sum(mask), 1)


def _token_cross_entropy(logits, labels, mask):
    if mask is not None:
        # Padding may hold anything (out-of-range ids, inf): sanitize before computing.
        labels = jnp.where(mask, labels, 0)
        logits = jnp.where(mask[..., None], logits, 0)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean cross-entropy (nats) of integer ``labels [*batch]`` under ``logits [*batch, V]``.

    For many-to-one models (one label per sequence).

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log 4
      1.3863
    """
    logits, labels, _ = _check_logits_labels(logits, labels)
    return jnp.mean(_token_cross_entropy(logits, labels, None))


def sequence_cross_entropy(logits: Array, labels: Array, seq_lengths: Optional[Array] = None) -> Array:
    """Mean per-token cross-entropy (nats) over the valid tokens of a padded batch.

    Args:
      logits: ``[*batch, T, V]``.
      labels: integer ``[*batch, T]``.
      seq_lengths: optional ``[*batch]``: tokens ``t >= seq_lengths`` are ignored
        (whatever their logits and labels). The mean is over all valid tokens of the
        batch (every token weighs the same, like PyTorch's ``ignore_index``).

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.zeros((2, 3, 5))
      >>> labels = jnp.array([[1, 2, 99], [0, 99, 99]])        # 99: padding
      >>> round(float(sequence_cross_entropy(logits, labels, jnp.array([2, 1]))), 4)  # log 5
      1.6094
    """
    logits, labels, mask = _check_logits_labels(logits, labels, seq_lengths)
    return _masked_mean(_token_cross_entropy(logits, labels, mask), mask)


def mean_squared_error(pred: Array, target: Array, seq_lengths: Optional[Array] = None) -> Array:
    """Mean of ``(pred - target) ** 2``, over valid time steps when ``seq_lengths`` is given.

    Args:
      pred, target: ``[*batch, T, *features]`` (same shape).
      seq_lengths: optional ``[*batch]``; steps ``t >= seq_lengths`` are ignored and
        the mean is over the valid elements.

    Example:
      >>> import jax.numpy as jnp
      >>> pred = jnp.array([[1.0, 2.0, 50.0]])
      >>> float(mean_squared_error(pred, jnp.zeros((1, 3)), jnp.array([2])))
      2.5
    """
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"`pred` and `target` must have the same shape; got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}.")
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if seq_lengths is None:
        return jnp.mean(err)
    seq_lengths = jnp.asarray(seq_lengths)
    nb = seq_lengths.ndim
    if pred.ndim <= nb or tuple(pred.shape[:nb]) != tuple(seq_lengths.shape):
        raise ValueError(f"`seq_lengths` of shape {tuple(seq_lengths.shape)} must match the batch dimensions "
                         f"of `pred` [*batch, T, ...]; got `pred` of shape {tuple(pred.shape)}.")
    mask = sequence_mask(seq_lengths, pred.shape[nb])
    mask = mask.reshape(mask.shape + (1,) * (pred.ndim - mask.ndim))
    per_step = math.prod(pred.shape[nb + 1:])
    err = jnp.where(mask, err, 0)
    return jnp.sum(err) / (jnp.maximum(jnp.sum(mask), 1) * per_step)


def accuracy(logits: Array, labels: Array, seq_lengths: Optional[Array] = None) -> Array:
    """Fraction of ``argmax(logits, -1) == labels``, over valid tokens when ``seq_lengths`` is given.

    Example:
      >>> import jax.numpy as jnp
      >>> float(accuracy(jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.array([1, 1])))
      0.5
    """
    logits, labels, mask = _check_logits_labels(logits, labels, seq_lengths)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _masked_mean(correct, mask)


# =============================================================================== truncated BPTT
