"""The fit loop: steps over the data with a progress bar, evaluation, a history and a time budget."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.train.state import TrainState

Array = jax.Array


def _evaluate(eval_step, params, eval_data, mesh):
    """Mean of each metric over the batches of ``eval_data`` (batches weigh equally)."""
    sums, n = None, 0
    batches = eval_data() if callable(eval_data) else eval_data
    for batch in batches:
        if mesh is not None:
            from jaxrnn import distributed

            batch = distributed.shard_batch(batch, mesh)
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
        it and each batch sharded over its ``"data"`` axis (``jaxrnn.distributed``).

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
        from jaxrnn import distributed

        state = distributed.replicate(state, mesh)  # a copy: never aliases the caller's arrays
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
                    from jaxrnn import distributed

                    batch = distributed.shard_batch(batch, mesh)
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
