"""Helpers shared by the benchmark scripts: environment, timing, JSON and tables.

Timing follows one rule: compile time and run time are measured apart. A compile is
``jax.jit(fn).lower(*args).compile()`` of a freshly built function (so no cache hides
it); a run is a call of the compiled function, after warm-up, waited on with
``jax.block_until_ready``, reported as the median over repeats in milliseconds.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

__all__ = ["device_info", "device_slug", "time_compile", "time_fn", "write_json", "print_table", "format_table",
           "import_baseline"]


def device_info() -> dict:
    """The device, backend and versions a result was measured with (JSON-ready)."""
    import jaxlib

    try:
        import jaxrnn

        jaxrnn_version = jaxrnn.__version__
    except Exception:  # a benchmark may run without the library installed
        jaxrnn_version = None
    dev = jax.devices()[0]
    return {
        "device": str(getattr(dev, "device_kind", dev.platform)),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "jaxrnn": jaxrnn_version,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def device_slug(info: Optional[dict] = None) -> str:
    """A file-name-safe device name: ``"cpu"``, ``"nvidia_h100_80gb_hbm3"``, ..."""
    info = info or device_info()
    name = "cpu" if info["backend"] == "cpu" else info["device"]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def time_compile(fn: Callable, *args) -> tuple[float, Any]:
    """Seconds to trace, lower and compile ``jax.jit(fn)`` for ``args``; and the executable.

    Pass a freshly built ``fn`` (a new closure) to measure a cold compile: jax caches
    traces and executables per function object.
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0, compiled


def time_fn(fn: Callable, *args, repeats: int = 10, warmup: int = 1, budget_s: Optional[float] = None) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds, waiting for the result.

    Args:
      fn: any callable returning arrays (a compiled executable, a jitted or an eager
        function).
      *args: its arguments.
      repeats: number of timed calls (at least 1).
      warmup: untimed calls before them.
      budget_s: if set, stop repeating once the timed calls have taken this long (at
        least one timed call is always made), so slow eager loops stay bounded.

    Returns:
      The median time per call, in ms.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1; got {repeats}.")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return 1e3 * statistics.median(times)


def rel_rms(got, want) -> float:
    """Relative RMS error ``sqrt(mean((got - want)²) / mean(want²))`` (fla's metric), in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2)))


def write_json(path, records: Sequence[dict], **header) -> pathlib.Path:
    """Writes ``{**header, "records": records}`` to ``path`` (parents created), returns the path.

    ``header`` usually holds ``benchmark=...``, ``env=device_info()`` and ``config=...``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(header)
    payload["records"] = list(records)
    path.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def format_table(rows: Sequence[dict], columns: Sequence[str], formats: Optional[dict] = None) -> str:
    """Rows of dicts as an aligned text table; ``formats`` maps a column to a format spec.

    Missing values and None print as ``-``.
    """
    formats = formats or {}

    def cell(row, col):
        v = row.get(col)
        if v is None:
            return "-"
        fmt = formats.get(col)
        if fmt and isinstance(v, (int, float)):
            return format(v, fmt)
        return str(v)

    body = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(r.get(c)) for r in rows) for c in columns]
    just = lambda s, i: s.rjust(widths[i]) if numeric[i] else s.ljust(widths[i])
    lines = ["  ".join(just(c, i) for i, c in enumerate(columns)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(just(s, i) for i, s in enumerate(b)) for b in body]
    return "\n".join(lines)


def _is_number(v) -> bool:
    return v is None or isinstance(v, (int, float, np.integer, np.floating))


def print_table(rows: Sequence[dict], columns: Sequence[str], formats: Optional[dict] = None, title: str = "",
                file=None) -> None:
    """Prints :func:`format_table`, preceded by ``title`` if given."""
    file = file or sys.stdout
    if title:
        print(f"\n{title}", file=file)
    print(format_table(rows, columns, formats), file=file, flush=True)


def save_figure(fig, path) -> pathlib.Path:
    """Writes a matplotlib figure as PNG (creating the folder) and closes it."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def import_baseline(rev: str):
    """The ``jaxrnn`` package at git revision ``rev``, imported as ``jaxrnn_baseline``."""
    root = pathlib.Path(__file__).resolve().parents[1]
    tmp = pathlib.Path(tempfile.mkdtemp())
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "jaxrnn"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        text = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, check=True, capture_output=True,
                              text=True).stdout
        out = tmp / f.replace("jaxrnn", "jaxrnn_baseline", 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(re.sub(r"\bjaxrnn\b", "jaxrnn_baseline", text))
    for name in [m for m in sys.modules if m == "jaxrnn_baseline" or m.startswith("jaxrnn_baseline.")]:
        del sys.modules[name]  # a second call (another revision) imports afresh
    sys.path.insert(0, str(tmp))
    return importlib.import_module("jaxrnn_baseline")
