"""The error measure the reference tests share.

``rel_rms(x, ref)``: the RMS of the difference over the RMS of the reference, in float64 (the
measure fla-core's tests use). Test modules import it by name, so that the ``_error_report``
plugin, which wraps each test module's ``rel_rms``, records every comparison.
"""

from __future__ import annotations

import numpy as np


def rel_rms(x, ref) -> float:
    """Relative RMS error of ``x`` against ``ref`` (same shape), in float64."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    return float(np.sqrt(np.mean((x - ref) ** 2)) / max(np.sqrt(np.mean(ref ** 2)), 1e-30))
