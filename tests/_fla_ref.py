"""Loads fla-core's pure-torch reference files (``fla/ops/*/naive.py``) by path.

Importing the ``fla`` package wants triton; each naive file needs only torch and einops, so it
is loaded on its own with ``importlib.util.spec_from_file_location``. Tests call
:func:`naive` after ``pytest.importorskip("torch")``; it skips when fla-core is not installed.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest


def naive(op: str):
    """The module ``fla/ops/<op>/naive.py`` of the installed fla-core, or a pytest skip."""
    pytest.importorskip("torch")
    pytest.importorskip("einops")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core is not installed")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "ops" / op / "naive.py"
    if not path.exists():
        pytest.skip(f"fla-core has no {path}")
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module
