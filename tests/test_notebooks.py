"""The notebooks in examples/notebooks run top to bottom without an error (small sizes).

Each notebook is executed with nbclient on the ``python3`` kernel with
``JAXRNN_NOTEBOOK_SMALL=1``. The kernel is a fresh process, so the data-parallel notebook
gets its 8 virtual CPU devices from its own first cell. The committed notebooks must also
be the ones ``examples/notebooks/_build.py`` generates (outputs aside), so a cell edited in
the generator cannot silently diverge from the notebook a reader sees.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import nbclient  # the `test` extra: nbclient, nbformat, ipykernel
import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]  # executes the notebooks: outside the fast lane (`pytest -m "not slow"`)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "examples" / "notebooks"
NAMES = ["quickstart", "scan_vs_loop", "tpu_data_parallel"]


def _builder():
    spec = importlib.util.spec_from_file_location("_notebook_build", NOTEBOOK_DIR / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_generator(name):
    saved = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    built = _builder().build(name)
    assert [(c.cell_type, c.source) for c in saved.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"{name}.ipynb differs from examples/notebooks/_build.py: rerun `python examples/notebooks/_build.py --execute`"
    )
    assert saved.cells[1].cell_type == "code" and "JAXRNN_REPO" in saved.cells[1].source


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXRNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel must not inherit a device-count flag from this process's environment.
    monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                             if "force_host_platform_device_count" not in f))
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "(small sizes)" in text  # the flag reached the kernel
    assert any("image/png" in o.get("data", {}) for o in outputs), "every notebook draws a plot"
    if name == "tpu_data_parallel":
        assert "8 devices:" in text and "all-reduce in the compiled step: True" in text
