"""The API reference, generated from the package's ``__all__`` lists.

Every public module (a module of ``jaxrnn`` with no ``_``-prefixed part in its name) gets a
page under ``docs/api/``; every name in every ``__all__`` gets a page of its own through
autosummary, documented once, at its canonical path: ``jaxrnn.X`` when ``jaxrnn.__all__``
exports the same object, otherwise the shortest public module whose ``__all__`` holds it.
New modules and new names (a zoo cell, a new primitive) appear without editing the docs.
The top-level page groups ``jaxrnn.__all__`` by the sections below; a name in no section
is listed under "Other public names" until someone files it.

``check_coverage`` (also run by ``docs/check_api_coverage.py`` on the built site) fails
when a public name has no docstring or no page.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
from pathlib import Path

import jaxrnn

# Sections of the top-level page: (title, names in jaxrnn.__all__).
TOP_LEVEL_SECTIONS = [
    ("Cells", ["rnn", "gru", "lstm", "Cell", "RNNCell", "GRUCell", "LSTMCell", "RNNParams", "GRUParams",
               "LSTMParams", "LSTMState"]),
    ("The cell contract", ["RecurrentCell", "FunctionCell"]),
    ("Running a cell over a sequence", ["unroll", "default_unroll"]),
    ("Networks", ["stack", "Stack", "StackParams", "DenseParams", "Bidirectional"]),
    ("Parallel in time", ["linear_scan", "matrix_scan", "Newton", "NewtonInfo", "newton_unroll"]),
    ("Training", ["TrainState", "make_train_step", "make_eval_step", "fit", "generate", "save_checkpoint",
                  "restore_checkpoint"]),
    ("Weights in and out", ["from_torch", "to_torch", "to_torch_state_dict", "TorchRNN", "from_keras", "to_keras",
                            "KerasRNN", "from_flax", "to_flax_linen", "to_flax_nnx"]),
    ("Subpackages", ["zoo", "train", "rl", "distributed", "parallel", "nnx", "linen"]),
]


def public_modules():
    """``{name: module}`` for jaxrnn and every public submodule, in import order."""
    mods = {"jaxrnn": jaxrnn}
    for info in pkgutil.walk_packages(jaxrnn.__path__, "jaxrnn."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        mods[info.name] = importlib.import_module(info.name)
    return mods


def public_names(mods=None):
    """``[(module_name, name, obj)]`` for every name in every ``__all__``."""
    mods = public_modules() if mods is None else mods
    out = []
    for modname, mod in mods.items():
        for name in getattr(mod, "__all__", ()):
            out.append((modname, name, getattr(mod, name)))
    return out


def canonical_paths(mods=None):
    """``{id(obj): "dotted.path"}``: where each public object is documented."""
    mods = public_modules() if mods is None else mods
    where = {}
    for modname, name, obj in sorted(public_names(mods), key=lambda t: (t[0] != "jaxrnn", t[0].count("."), t[0])):
        if inspect.ismodule(obj):
            where.setdefault(id(obj), obj.__name__)
        else:
            where.setdefault(id(obj), f"{modname}.{name}")
    return where


def _is_documented(obj):
    doc = inspect.getdoc(obj)
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj) or callable(obj):
        if not doc:
            return False
        # a NamedTuple without a docstring of its own gets "Name(field, ...)"
        if inspect.isclass(obj) and issubclass(obj, tuple) and doc.startswith(obj.__name__ + "("):
            return False
    return True  # constants (MODES, ...) are documented by their page and their module's docstring


def _autosummary(paths, modname):
    # names relative to the page's module (automodule made it the current module)
    lines = [".. autosummary::", "   :toctree: _autosummary", "   :nosignatures:", ""]
    lines += [f"   {p[len(modname) + 1:] if p.startswith(modname + '.') else p}" for p in paths]
    return lines + [""]


def _page_modules(mods, where):
    """Modules that get a page: all public ones but those whose name is a documented object
    (``jaxrnn.zoo.lru`` is the function; its module folds into ``jaxrnn.zoo``)."""
    taken = set(where.values())
    return {m: mod for m, mod in mods.items() if m == "jaxrnn" or m not in taken or inspect.ismodule(
        _resolve(m))}


_MISSING = object()


def _lookup(path):
    """The object at a dotted ``jaxrnn...`` path, or ``_MISSING``."""
    modname, _, name = path.rpartition(".")
    if not modname.startswith("jaxrnn"):
        return _MISSING
    try:
        return getattr(importlib.import_module(modname), name)
    except (ImportError, AttributeError, ValueError):
        owner = _lookup(modname)
        return _MISSING if owner is _MISSING else getattr(owner, name, _MISSING)


def _resolve(path):
    obj = _lookup(path)
    return None if obj is _MISSING else obj


def _home(modname, page_mods):
    while modname not in page_mods:
        modname = modname.rpartition(".")[0]
    return modname


def generate(outdir: Path):
    """Write ``outdir/index.rst`` and one ``outdir/<module>.rst`` per public module."""
    mods = public_modules()
    where = canonical_paths(mods)
    page_mods = _page_modules(mods, where)
    shutil.rmtree(outdir, ignore_errors=True)  # no stale pages of renamed names
    outdir.mkdir(parents=True)
    # names documented on each page: objects whose canonical path lives in that page's module (or a folded one)
    on_page = {m: [] for m in page_mods}
    for modname, name, obj in public_names(mods):
        path = where[id(obj)]
        if inspect.ismodule(obj):
            continue
        if f"{modname}.{name}" != path:
            continue
        on_page[_home(modname, page_mods)].append(path)

    pages = []
    for modname, mod in page_mods.items():
        title = f"``{modname}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {modname}", "   :no-members:", ""]
        documented = on_page[modname]
        if modname == "jaxrnn":
            by_name = {p.rpartition(".")[2]: p for p in documented}
            filed = set()
            for heading, names in TOP_LEVEL_SECTIONS:
                paths = [by_name[n] for n in names if n in by_name]
                modules = [n for n in names if n in getattr(jaxrnn, "__all__", ()) and inspect.ismodule(
                    getattr(jaxrnn, n)) and n not in by_name]
                filed.update(names)
                if not paths and not modules:
                    continue
                lines += [heading, "-" * len(heading), ""]
                if paths:
                    lines += _autosummary(paths, modname)
                for n in modules:
                    lines += [f"* :mod:`jaxrnn.{n}`", ""]
            rest = [p for n, p in by_name.items() if n not in filed]
            if rest:
                lines += ["Other public names", "------------------", ""] + _autosummary(rest, modname)
        elif documented:
            lines += ["Contents", "--------", ""] + _autosummary(
                sorted(dict.fromkeys(documented), key=str.lower), modname)
        elsewhere = sorted({where[id(getattr(mod, n))] for n in getattr(mod, "__all__", ())} - set(documented)
                           - {modname})
        if modname != "jaxrnn" and elsewhere:
            lines += ["Also exported here", "------------------", "",
                      "These names are documented where they are exported first:", ""]
            lines += [f"* :py:obj:`{p}`" for p in elsewhere] + [""]
        (outdir / f"{modname}.rst").write_text("\n".join(lines))
        pages.append(modname)

    index = ["API reference", "=============", "",
             "Every public name of jaxrnn, generated from the docstrings. Each module's page lists "
             "what its ``__all__`` exports; a name exported in several places is documented once, "
             "at the shortest path (``jaxrnn.unroll`` rather than ``jaxrnn.scan.unroll``).", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {m}" for m in pages]
    (outdir / "index.rst").write_text("\n".join(index) + "\n")
    return pages


def check_coverage(documented_names):
    """Problems with the API reference, as a list of strings (empty when complete).

    Args:
      documented_names: the set of Python object names the site documents (from
        ``objects.inv`` or the Python domain).
    """
    mods = public_modules()
    where = canonical_paths(mods)
    problems = []
    for modname, name, obj in public_names(mods):
        path = where[id(obj)]
        if path not in documented_names:
            problems.append(f"{modname}.{name}: no page in the API reference (expected {path})")
        if not _is_documented(obj):
            problems.append(f"{modname}.{name}: no docstring")
    for modname in _page_modules(mods, where):
        if modname not in documented_names:
            problems.append(f"module {modname}: no page in the API reference")
    return problems


# ---------------------------------------------------------------------------------- sphinx


def _on_config_inited(app, config):
    # before Sphinx lists the source files, so that autosummary sees every generated page
    generate(Path(app.srcdir) / "api")


def _plain_attribute_docstring(self):
    """Napoleon reads "Size: each output..." in a property's docstring as a type named "Size";
    jaxrnn's properties are written as sentences, so the whole docstring is the description."""
    return self.__class__(self._dedent(self._consume_to_end()), self._config).lines()


def _documented_object(refdoc):
    """The object an autosummary page (``api/_autosummary/<path>``) documents, or None."""
    if "_autosummary/" not in refdoc:
        return None
    return _resolve(refdoc.rpartition("/")[2])


def _on_missing_reference(app, env, node, contnode):
    """Resolve a reference to any public path of an object (``jaxrnn.linear.linear_scan``, or
    ``TrainState`` inside :mod:`jaxrnn.train`) to the page of its canonical path."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    candidates = [target]
    module, cls = node.get("py:module"), node.get("py:class")
    if module and cls:
        candidates.append(f"{module}.{cls}.{target}")
    for ctx in (cls, module):
        if ctx:
            candidates.append(f"{ctx}.{target}")
    documented = _documented_object(node.get("refdoc", ""))
    home = getattr(documented, "__module__", None) or getattr(documented, "__name__", None)
    if isinstance(home, str):
        candidates.append(f"{home}.{target}")
        if cls:
            candidates.append(f"{home}.{cls}.{target}")
    if not target.startswith("jaxrnn"):
        candidates.append(f"jaxrnn.{target}")
    where = app.env.jaxrnn_where if hasattr(app.env, "jaxrnn_where") else None
    if where is None:
        where = app.env.jaxrnn_where = canonical_paths()
    domain = env.get_domain("py")
    for cand in candidates:
        obj = _resolve(cand)
        if obj is None:
            continue
        path = where.get(id(obj))
        if path is None and hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
            # a method or attribute of a documented class
            owner = _resolve(f"{obj.__module__}.{obj.__qualname__.rpartition('.')[0]}")
            if owner is not None and id(owner) in where:
                path = f"{where[id(owner)]}.{obj.__qualname__.rpartition('.')[2]}"
        if path is None or path == target:
            continue
        newnode = node.deepcopy()
        newnode["reftarget"] = path
        res = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], path, newnode, contnode)
        if res is None:
            res = domain.resolve_any_xref(env, node["refdoc"], app.builder, path, newnode, contnode)
            res = res[0][1] if res else None
        if res is not None:
            return res
    # A real jaxrnn object without a page of its own (a helper in jaxrnn.tuning, a method
    # without a docstring) is shown as code, unlinked; a name that does not exist still warns.
    if any(_lookup(c) is not _MISSING for c in candidates):
        return contnode
    return None


def _on_build_finished(app, exception):
    if exception is not None or app.builder.name not in ("html", "dirhtml"):
        return
    documented = set(app.env.get_domain("py").objects) | set(app.env.get_domain("py").modules)
    problems = check_coverage(documented)
    if problems:
        from sphinx.errors import ExtensionError

        raise ExtensionError("API coverage check failed:\n  " + "\n  ".join(problems))


def setup(app):
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    GoogleDocstring._parse_attribute_docstring = _plain_attribute_docstring
    app.connect("config-inited", _on_config_inited)
    app.connect("missing-reference", _on_missing_reference)
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
