"""Sphinx configuration of the jaxrnn documentation.

Build (no network needed): ``pip install -e ".[docs]" && sphinx-build -W -n -b html docs docs/_build/html``
"""

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("KERAS_BACKEND", "jax")

import jaxrnn  # noqa: E402

project = "jaxrnn"
author = "the jaxrnn authors"
copyright = "the jaxrnn authors"
release = version = jaxrnn.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "jaxrnn_api",
]

# Warnings are errors (-W) and every cross-reference must resolve (-n).
nitpicky = True
# No intersphinx (the build has no network): names from other libraries are written as
# code, and references to them that docstrings make are accepted here, by package.
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|jnp|optax|flax|nnx|nn|torch|keras|orbax|ocp|chex|msgpack|typing|collections"
               r"|dataclasses|os|pathlib|abc)(\..*)?"),
    (r"py:.*", r"(Any|Array|PyTree|Callable|Optional|Union|Sequence|Iterable|Iterator|Mapping|Tuple|NamedTuple"
               r"|Protocol|int|float|bool|str|bytes|tuple|list|dict|None|type|object|callable|optional)"),
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "notebooks/_build.py"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# API pages: generated from every __all__ by _ext/jaxrnn_api.py, one page per name.
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "_asdict, _make, _replace, _fields, _field_defaults, count, index"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = False
add_module_names = False

# Guides (.md) run their code cells at every build; notebooks (.ipynb) show their committed outputs.
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
# "cache": a rebuild re-runs only the guides whose code changed (jupyter-cache in _build/); CI starts empty.
nb_execution_mode = "cache"
nb_execution_excludepatterns = ["notebooks/*"]
# A failing cell is a warning (so -W fails the build) and the rest of the site still builds.
nb_execution_raise_on_error = False
nb_execution_in_temp = True  # files a guide writes (checkpoints) land in a temporary directory
nb_execution_show_tb = True
nb_execution_timeout = 300
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "jaxrnn"
html_static_path = []
html_theme_options = {
    "repository_url": "https://github.com/jaxrnn/jaxrnn",
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
suppress_warnings = ["mystnb.unknown_mime_type"]

# The committed notebooks are copied in beside the guides (the build reads only docs/).
_NB_SRC, _NB_DST = ROOT / "examples" / "notebooks", DOCS / "notebooks"
_NB_DST.mkdir(exist_ok=True)
for _nb in sorted(_NB_SRC.glob("*.ipynb")):
    shutil.copyfile(_nb, _NB_DST / _nb.name)
