"""Deprecated: the old name of :mod:`jaxrnn.distributed` (data parallelism over devices).

"Parallel" in jaxrnn now means parallel in time (:func:`jaxrnn.linear_scan`,
:class:`jaxrnn.Newton`); data parallelism over devices and hosts lives in
:mod:`jaxrnn.distributed`, with the same functions. This module re-exports them and warns
(``DeprecationWarning``) when it is imported; it will be removed in the release after next.
"""

import warnings

from jaxrnn.distributed import (batch_sharding, data_mesh, pad_batch, replicate, replicated_sharding,
                                shard_batch)

__all__ = ["data_mesh", "shard_batch", "replicate", "pad_batch", "batch_sharding", "replicated_sharding"]

warnings.warn("`jaxrnn.parallel` is deprecated: import `jaxrnn.distributed` instead (same functions).",
              DeprecationWarning, stacklevel=2)
