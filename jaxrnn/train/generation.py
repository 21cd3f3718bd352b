"""Sampling from a language model, one token at a time, under ``jit``."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


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
