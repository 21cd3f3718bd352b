"""Test helpers over the JAX versions the suite runs on (jax 0.7.2 up to the newest).

``enable_x64``: a context manager turning on 64-bit types, ``jax.enable_x64`` where it exists
(jax >= 0.8), ``jax.experimental.enable_x64`` before. Both take the same ``new_val=True``.
"""

import jax

try:
    enable_x64 = jax.enable_x64
except AttributeError:  # jax < 0.8
    from jax.experimental import enable_x64  # noqa: F401
