"""Training utilities: an optax train state, jitted train/eval steps, a fit loop,
masked sequence losses, truncated backpropagation through time, sampling from a
language model, and msgpack checkpoints.

The pieces are plain functions around one pytree, :class:`TrainState`::

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = jaxrnn.train.TrainState.create(params, tx)
    step = jaxrnn.train.make_train_step(loss_fn, tx)         # loss_fn(params, batch, key)
    state, history = jaxrnn.train.fit(state, step, data, key=key, num_steps=1000)
    jaxrnn.train.save_checkpoint("run.ckpt", state, config={"seed": 0})

Reproducibility: a train step hands ``loss_fn`` the key ``fold_in(key, state.step)``,
and :func:`fit` finds its place in the data from ``state.step``. A run restored from
a checkpoint and given the same ``key`` and data therefore continues exactly like
the uninterrupted run (bit for bit on the same machine).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import optax
from jax import lax

Array = jax.Array

__all__ = [
    "TrainState",
    "make_train_step",
    "make_eval_step",
    "fit",
    "sequence_mask",
    "softmax_cross_entropy",
    "sequence_cross_entropy",
    "mean_squared_error",
    "accuracy",
    "stop_gradient_state",
    "make_tbptt_step",
    "generate",
    "save_checkpoint",
    "restore_checkpoint",
]


# =============================================================================== state


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      params: the model's params (any pytree).
      opt_state: the optax optimizer state for ``params``.
      step: number of optimizer updates applied so far, an int32 scalar array.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> state = TrainState.create({"w": jnp.zeros(3)}, optax.sgd(0.1))
      >>> int(state.step)
      0
    """

    params: Any
    opt_state: Any
    step: Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        """A fresh state: ``tx.init(params)`` and step 0."""
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(f"`tx` must be an optax.GradientTransformation; got {type(tx).__name__}.")
        return cls(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


# =============================================================================== steps


def _split_loss(out, name: str = "loss_fn"):
    """``loss`` or ``(loss, aux_dict)`` -> ``(loss, aux_dict)``, checked at trace time."""
    if isinstance(out, tuple) and len(out) == 2:
        loss, aux = out
    else:
        loss, aux = out, None
    aux = {} if aux is None else aux
    _check_scalar(loss, f"the loss returned by `{name}`")
    if not isinstance(aux, Mapping):
        raise TypeError(f"`{name}` must return `loss` or `(loss, aux)` with `aux` a dict of scalars; "
                        f"got aux of type {type(aux).__name__}.")
    for k, v in aux.items():
        if k in ("loss", "grad_norm"):
            raise ValueError(f"`{name}`'s aux dict must not use the reserved key {k!r}.")
        _check_scalar(v, f"aux[{k!r}] returned by `{name}`")
    return loss, dict(aux)


def _check_scalar(x, what: str):
    shape = getattr(x, "shape", None)
    if shape is None and not isinstance(x, (int, float)):
        raise TypeError(f"{what} must be a scalar; got {type(x).__name__}.")
    if shape is not None and tuple(shape) != ():
        raise ValueError(f"{what} must be a scalar; got shape {tuple(shape)}.")


def _step_key(key, step):
    return None if key is None else jax.random.fold_in(key, step)


def _with_mesh(fn, mesh, batch_argnum: int):
    """Wraps ``fn`` so that its batch is sharded over ``mesh``'s "data" axis."""
    if mesh is None:
        return fn

    def wrapped(*args):
        from jaxrnn import parallel  # imported lazily: optional module

        args = list(args)
        args[batch_argnum] = parallel.shard_batch(args[batch_argnum], mesh)
        return fn(*args)

    wrapped.__wrapped__ = fn
    wrapped.__doc__ = fn.__doc__
    return wrapped


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, jit: bool = True,
                    donate: bool = True, mesh=None) -> Callable:
    """Builds ``step(state, batch, key) -> (state, metrics)``: one optimizer update.

    Gradient clipping, schedules and weight decay belong to the optax chain, e.g.
    ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` or ``-> (loss, aux)`` with
        ``aux`` a dict of scalar metrics. ``key`` is ``fold_in(key, state.step)``, a
        fresh key for every step even when ``step`` is always given the same key
        (None when ``step`` gets None).
      tx: the optax transformation; ``state.opt_state`` must come from ``tx.init``.
      jit: compile the step with :func:`jax.jit`.
      donate: with ``jit``, donate the input ``state``'s buffers to the output: the
        state passed in, and arrays it shares (such as the ``params`` given to
        :meth:`TrainState.create`), must not be used again. :func:`fit` copies the
        state first, so its caller's arrays survive.
      mesh: an optional :class:`jax.sharding.Mesh`; each batch is sharded over its
        ``"data"`` axis with :func:`jaxrnn.parallel.shard_batch` (the state should be
        replicated, see :func:`jaxrnn.parallel.replicate`; :func:`fit` does it).

    Returns:
      ``step(state, batch, key=None) -> (state, metrics)``, ``metrics`` a dict of
      scalars ``{"loss", "grad_norm" (before clipping), **aux}``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> loss_fn = lambda p, batch, key: jnp.mean((batch @ p - 1.0) ** 2)
      >>> tx = optax.sgd(0.1)
      >>> step = make_train_step(loss_fn, tx)
      >>> state, metrics = step(TrainState.create(jnp.zeros(2), tx), jnp.ones((4, 2)))
      >>> sorted(metrics), int(state.step)
      (['grad_norm', 'loss'], 1)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(f"`tx` must be an optax.GradientTransformation; got {type(tx).__name__}.")

    def objective(params, batch, key):
        return _split_loss(loss_fn(params, batch, key))

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, batch, key=None):
        (loss, aux), grads = grad_fn(state.params, batch, _step_key(key, state.step))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(params, opt_state, state.step + 1), metrics

    if jit:
        step = jax.jit(step, donate_argnums=(0,) if donate else ())
    return _with_mesh(step, mesh, batch_argnum=1)


def make_eval_step(loss_fn: Callable, *, jit: bool = True, mesh=None) -> Callable:
    """Builds ``eval_step(params, batch) -> metrics`` from the training ``loss_fn``.

    ``loss_fn(params, batch, None)`` is called (``key=None``: no dropout); the result
    is ``{"loss", **aux}``.

    Example:
      >>> import jax.numpy as jnp
      >>> ev = make_eval_step(lambda p, b, key: (jnp.sum(p * b), {"n": jnp.float32(b.size)}))
      >>> {k: float(v) for k, v in ev(jnp.ones(2), jnp.ones(2)).items()}
      {'loss': 2.0, 'n': 2.0}
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")

    def eval_step(params, batch):
        loss, aux = _split_loss(loss_fn(params, batch, None))
        return {"loss": loss, **aux}

    if jit:
        eval_step = jax.jit(eval_step)
    return _with_mesh(eval_step, mesh, batch_argnum=1)


# =============================================================================== fit


def _evaluate(eval_step, params, eval_data, mesh):
    """Mean of each metric over the batches of ``eval_data`` (batches weigh equally)."""
    sums, n = None, 0
    batches = eval_data() if callable(eval_data) else eval_data
    for batch in batches:
        if mesh is not None:
            from jaxrnn import parallel

            batch = parallel.shard_batch(batch, mesh)
        m = eval_step(params, batch)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        n += 1
    if n == 0:
        raise ValueError("`eval_data` yielded no batches (a one-shot iterator is used up by the first "
                         "evaluation: pass a list, or a callable returning a fresh iterable).")
    return {k: float(v) / n for k, v in jax.device_get(sums).items()}


def fit(
    state: TrainState,
    train_step: Callable,
    data: Union[Iterable, Callable[[int], Iterable]],
    *,
    key: Optional[Array],
    num_steps: Optional[int] = None,
    epochs: Optional[int] = None,
    eval_step: Optional[Callable] = None,
    eval_data=None,
    eval_every: Optional[int] = None,
    progress: bool = True,
    log_every: int = 10,
    callback: Optional[Callable] = None,
    time_budget: Optional[float] = None,
    mesh=None,
):
    """Trains ``state`` with ``train_step`` over ``data``; returns ``(state, history)``.

    ``num_steps`` and ``epochs`` are totals counted from step 0: they include the
    ``state.step`` updates already applied, so a state restored from a checkpoint
    trains on to the same end. Likewise, the first ``state.step`` batches of the
    data stream (epoch after epoch) are skipped, so a resumed run sees the batches
    the uninterrupted run would have seen next; whole epochs are skipped without
    iterating when ``len(data(epoch))`` is defined. With the same ``key``, a resumed
    run reproduces the uninterrupted one exactly.

    Args:
      state: a :class:`TrainState`. It is copied first, so a donating ``train_step``
        leaves the caller's arrays intact.
      train_step: ``train_step(state, batch, key) -> (state, metrics)``, e.g. from
        :func:`make_train_step`. It is given ``key`` unchanged at every step
        (:func:`make_train_step` folds in the step number).
      data: an iterable of batches (iterated again for every epoch; a one-shot
        iterator therefore gives one epoch), or ``data(epoch) -> iterable``, called
        for every epoch (shuffle there, e.g. with ``fold_in(key, epoch)``).
      key: PRNG key handed to ``train_step`` (None for deterministic models).
      num_steps: stop when ``state.step`` reaches this.
      epochs: stop after this many passes over the data. If neither ``num_steps``,
        ``epochs`` nor ``time_budget`` is given, one epoch.
      eval_step: ``eval_step(params, batch) -> metrics`` (:func:`make_eval_step`).
      eval_data: an iterable of evaluation batches, or a callable returning one.
        Metrics are averaged over its batches and recorded as ``"eval_<name>"``.
      eval_every: evaluate every this many steps; None evaluates at the end of each
        epoch. Training always ends with an evaluation when ``eval_step`` is given.
      progress: show a tqdm progress bar (loss, steps/s).
      log_every: record the mean training metrics every this many steps.
      callback: ``callback(state, record) -> bool | None``, called at every log
        with the record just appended to the history (a dict of floats). Return
        True to stop training. The next step donates ``state``'s buffers: use it
        there and then (e.g. ``save_checkpoint``), or copy what you keep.
      time_budget: stop after this many seconds (wall clock, compilation and
        evaluation included; checked before each step).
      mesh: an optional :class:`jax.sharding.Mesh`: the state is replicated over
        it and each batch sharded over its ``"data"`` axis (``jaxrnn.parallel``).

    Returns:
      ``(state, history)``. ``history`` is a dict of lists: ``"step"``, ``"time"``
      (seconds since ``fit`` started) and one list per training metric (``"loss"``,
      ``"grad_norm"``, aux...) averaged over each log window; ``"eval_step"``,
      ``"eval_time"`` and ``"eval_<metric>"`` for every evaluation.

    Raises:
      ValueError: for invalid stopping options or an empty ``data``.

    Example:
      Checkpoint every 100 steps; restoring and calling ``fit`` again with the same
      arguments finishes the run exactly as if it had never stopped::

        def save(state, record):
            if record["step"] % 100 == 0:
                save_checkpoint("run.ckpt", state, config=config)

        state, history = fit(state, step, data, key=key, num_steps=10_000,
                             log_every=100, callback=save)
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"`state` must be a TrainState; got {type(state).__name__}.")
    for name, v in (("num_steps", num_steps), ("epochs", epochs), ("eval_every", eval_every)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 0 or (name == "eval_every" and v < 1)):
            raise ValueError(f"`{name}` must be a {'positive' if name == 'eval_every' else 'non-negative'} int "
                             f"or None; got {v!r}.")
    if not isinstance(log_every, (int, np.integer)) or log_every < 1:
        raise ValueError(f"`log_every` must be a positive int; got {log_every!r}.")
    if time_budget is not None and not time_budget >= 0:
        raise ValueError(f"`time_budget` must be a non-negative number of seconds or None; got {time_budget!r}.")
    if (eval_step is None) != (eval_data is None):
        raise ValueError("`eval_step` and `eval_data` must be given together.")
    if not (callable(data) or hasattr(data, "__iter__")):
        raise TypeError(f"`data` must be an iterable of batches or a callable(epoch); got {type(data).__name__}.")
    if num_steps is None and epochs is None and time_budget is None:
        epochs = 1

    t0 = time.monotonic()
    if mesh is not None:
        from jaxrnn import parallel

        state = parallel.replicate(state, mesh)  # a copy: never aliases the caller's arrays
    else:
        state = jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, state)

    step = int(jax.device_get(state.step))
    history: dict = {"step": [], "time": [], "loss": []}
    window: list = []
    last_eval = None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None
        if num_steps is not None:
            total = num_steps
        elif epochs is not None and not callable(data) and hasattr(data, "__len__"):
            total = epochs * len(data)
        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)

    def log():
        nonlocal window
        if not window:
            return False
        ms = jax.device_get(window)
        record = {"step": step, "time": time.monotonic() - t0}
        for k in ms[0]:
            record[k] = float(np.mean([m[k] for m in ms]))
        window = []
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "time")}, refresh=False)
        return bool(callback(state, record)) if callback is not None else False

    def evaluate():
        nonlocal last_eval
        metrics = _evaluate(eval_step, state.params, eval_data, mesh)
        history.setdefault("eval_step", []).append(step)
        history.setdefault("eval_time", []).append(time.monotonic() - t0)
        for k, v in metrics.items():
            history.setdefault(f"eval_{k}", []).append(v)
        last_eval = step
        if bar is not None:
            bar.write(f"step {step}: " + ", ".join(f"eval_{k}={v:.4g}" for k, v in metrics.items()))

    def out_of_time():
        return time_budget is not None and time.monotonic() - t0 >= time_budget

    # Batches already consumed by the run that produced `state`.
    to_skip = step
    stop = False
    pending = None
    epoch = 0
    try:
        while not stop:
            if epochs is not None and epoch >= epochs:
                break
            if num_steps is not None and step >= num_steps:
                break
            batches = data(epoch) if callable(data) else data
            if to_skip and hasattr(batches, "__len__") and len(batches) <= to_skip and len(batches) > 0:
                to_skip -= len(batches)
                epoch += 1
                continue
            seen = 0
            it = iter(batches)
            while True:
                # Checked before drawing a batch, so a shared iterator loses none.
                if not to_skip and ((num_steps is not None and step >= num_steps) or out_of_time()):
                    stop = True
                    break
                try:
                    batch = next(it)
                except StopIteration:
                    break
                seen += 1
                if to_skip:
                    to_skip -= 1
                    continue
                if mesh is not None:
                    from jaxrnn import parallel

                    batch = parallel.shard_batch(batch, mesh)
                state, metrics = train_step(state, batch, key)
                # Keep at most one step in flight: time checks stay honest and host
                # work on the next batch still overlaps the device.
                if pending is not None:
                    jax.block_until_ready(pending)
                pending = metrics["loss"]
                window.append(metrics)
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % log_every == 0 and log():
                    stop = True
                    break
                if eval_step is not None and eval_every is not None and step % eval_every == 0:
                    evaluate()
            if seen == 0 and not stop:
                if epoch == 0:
                    raise ValueError("`data` yielded no batches.")
                break  # a one-shot iterator is exhausted
            epoch += 1
            if not stop and eval_step is not None and eval_every is None and last_eval != step:
                evaluate()
        log()
        if eval_step is not None and last_eval != step:
            evaluate()
    finally:
        if bar is not None:
            bar.close()
    return state, history


# =============================================================================== losses


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


def stop_gradient_state(h):
    """``h`` with gradients blocked: ``jax.tree.map(lax.stop_gradient, h)``.

    Carry the state from one chunk of a long sequence to the next through this, so
    the backward pass stops at the chunk boundary (truncated BPTT).
    """
    return jax.tree.map(lax.stop_gradient, h)


def make_tbptt_step(loss_fn: Callable, tx: optax.GradientTransformation, *, jit: bool = True,
                    donate: bool = True) -> Callable:
    """Builds a truncated-BPTT step: ``step(state, h, chunk, key) -> (state, h, metrics)``.

    A long sequence is cut into chunks along time; the state ``h`` flows forward
    from chunk to chunk, gradients do not::

        h = None
        for chunk in chunks:            # e.g. xs[:, i*K:(i+1)*K]
            state, h, metrics = step(state, h, chunk, key)

    Args:
      loss_fn: ``loss_fn(params, h, chunk, key) -> (loss, (h_new, aux))`` where
        ``aux`` is a dict of scalars (or None); ``h`` may be None on the first chunk.
      tx: the optax transformation.
      jit, donate: as in :func:`make_train_step` (``h`` is not donated).

    Returns:
      ``step(state, h, chunk, key=None) -> (state, h_new, metrics)`` with ``h_new``
      passed through :func:`stop_gradient_state` and ``metrics`` as in
      :func:`make_train_step`. ``loss_fn`` gets ``fold_in(key, state.step)``.
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")

    def objective(params, h, chunk, key):
        out = loss_fn(params, h, chunk, key)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2):
            raise TypeError("`loss_fn` must return `(loss, (h_new, aux))` for truncated BPTT.")
        loss, (h_new, aux) = out
        loss, aux = _split_loss((loss, aux))
        return loss, (h_new, aux)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, h, chunk, key=None):
        (loss, (h_new, aux)), grads = grad_fn(state.params, h, chunk, _step_key(key, state.step))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(params, opt_state, state.step + 1), stop_gradient_state(h_new), metrics

    if jit:
        step = jax.jit(step, donate_argnums=(0,) if donate else ())
    return step


# =============================================================================== generation


def _one_hot_embed(size):
    return lambda ids: jax.nn.one_hot(ids, size, dtype=jnp.float32)


def _generate_impl(net, embed, length, params, key, prime, temperature):
    input_size = net.check_params(params)
    embed_fn = _one_hot_embed(input_size) if embed is None else embed
    # The prime goes through `net.step` one token at a time, exactly like generated tokens.
    def feed(h, tok):
        h, logits = net.step(params, h, embed_fn(tok))
        return h, logits

    h, logits_P = lax.scan(feed, net.initial_state(()), prime)
    logits = logits_P[-1]
    safe_t = jnp.where(temperature > 0, temperature, 1.0)

    def sample(carry, k):
        h, logits = carry
        greedy = jnp.argmax(logits, axis=-1)
        sampled = jax.random.categorical(k, logits.astype(jnp.float32) / safe_t, axis=-1)
        tok = jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)
        h, logits = net.step(params, h, embed_fn(tok))
        return (h, logits), tok

    if length == 0:
        return prime
    _, toks = lax.scan(sample, (h, logits), jax.random.split(key, length))
    return jnp.concatenate([prime, toks])


_generate_jit = jax.jit(_generate_impl, static_argnums=(0, 1, 2))


def generate(net, params, key: Array, prime, length: int, *, temperature: float = 1.0,
             embed: Optional[Callable] = None) -> Array:
    """Samples ``length`` tokens from a language model after a ``prime``.

    The model is a unidirectional :class:`jaxrnn.Stack` whose outputs are logits over
    the vocabulary (build it with ``head=vocab_size``). The prime is fed token by
    token with :meth:`jaxrnn.Stack.step`, then every sampled token is fed back; the
    loop is a jitted ``lax.scan``.

    Args:
      net: a unidirectional ``jaxrnn.Stack`` (or anything with ``step``,
        ``check_params`` and ``initial_state`` of the same conventions).
      params: the net's params.
      key: PRNG key; the same key gives the same text.
      prime: int array ``[P]`` (``P >= 1``) of token ids.
      length: number of tokens to sample.
      temperature: softmax temperature; 0 means greedy (argmax) decoding.
      embed: ``embed(token_ids) -> x`` (e.g. an embedding lookup closed over a
        table); default: one-hot vectors of the net's input size, which must then
        equal its output size (the vocabulary). Must be hashable (a function is).

    Returns:
      int32 array ``[P + length]``: the prime followed by the sampled tokens.

    Example:
      >>> import jax, jaxrnn
      >>> net = jaxrnn.stack(jaxrnn.gru(16), head=5)
      >>> params = net.init(jax.random.key(0), input_size=5)
      >>> generate(net, params, jax.random.key(1), jax.numpy.array([0, 3]), 6).shape
      (8,)
    """
    for attr in ("step", "check_params", "initial_state"):
        if not hasattr(net, attr):
            raise TypeError(f"`net` must be a unidirectional jaxrnn.Stack; got {type(net).__name__}.")
    if getattr(net, "bidirectional", False):
        raise ValueError("`net` must be unidirectional: generation runs one step at a time.")
    input_size = net.check_params(params)
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"`length` must be a non-negative int; got {length!r}.")
    prime_np = None
    if not isinstance(prime, jax.core.Tracer):
        prime_np = np.asarray(prime)
    prime = jnp.asarray(prime)
    if prime.ndim != 1 or prime.shape[0] < 1 or not jnp.issubdtype(prime.dtype, jnp.integer):
        raise ValueError(f"`prime` must be a 1-D int array of at least one token id; got "
                         f"{prime.dtype} array of shape {tuple(prime.shape)}.")
    if embed is None:
        vocab = getattr(net, "output_size", input_size)
        if vocab != input_size:
            raise ValueError(f"With the default one-hot `embed`, the net's input size ({input_size}) must equal "
                             f"its output size, the vocabulary ({vocab}); pass `embed` otherwise.")
        if prime_np is not None and (prime_np.min() < 0 or prime_np.max() >= vocab):
            raise ValueError(f"`prime` token ids must lie in [0, {vocab}); got {prime_np.tolist()}.")
    if not isinstance(temperature, jax.core.Tracer) and not float(temperature) >= 0:
        raise ValueError(f"`temperature` must be >= 0; got {temperature!r}.")
    return _generate_jit(net, embed, int(length), params, key, prime.astype(jnp.int32),
                         jnp.asarray(temperature, jnp.float32))


# =============================================================================== checkpoints

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
