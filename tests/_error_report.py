"""A pytest plugin that records every relative RMS error the reference tests compute.

The reference tests (``test_matrix.py`` and the ``test_zoo_*.py`` modules) measure each
comparison with ``rel_rms(got, want)`` from ``_numerics``, imported by name into each module.
This plugin wraps that name in each test's module while the test runs
and appends, per test, the number of comparisons and the largest error to a JSON-lines file::

    JAXRNN_ERROR_REPORT=/tmp/errors.jsonl pytest -p _error_report tests/test_matrix.py ...

so that a closing note can list every reference comparison with its largest error, as measured.
Without ``JAXRNN_ERROR_REPORT`` it does nothing.
"""

from __future__ import annotations

import json
import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    path = os.environ.get("JAXRNN_ERROR_REPORT")
    module = getattr(item, "module", None)
    original = getattr(module, "rel_rms", None)
    if not path or original is None:
        yield
        return
    seen = []

    def recording(*args, **kwargs):
        err = original(*args, **kwargs)
        seen.append(float(err))
        return err

    module.rel_rms = recording
    try:
        outcome = yield
    finally:
        module.rel_rms = original
    if seen:
        with open(path, "a") as f:
            f.write(json.dumps(dict(test=item.nodeid, n=len(seen), max_rel_rms=max(seen),
                                    passed=outcome.excinfo is None)) + "\n")
