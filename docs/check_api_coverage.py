"""Fails (exit 1) when a public name of jaxrnn has no page in the built site or no docstring.

Every name in every ``__all__`` of every public module must be in the site's inventory
(``objects.inv``), at the path where it is documented (``jaxrnn.unroll`` for
``jaxrnn.scan.unroll``), in the style of optax's and chex's API coverage tests.

    python docs/check_api_coverage.py [docs/_build/html]
"""

import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jaxrnn_api  # noqa: E402


def main(build_dir):
    with open(Path(build_dir) / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    documented = {name for kind, entries in inventory.items() if kind.startswith("py:") for name in entries}
    problems = jaxrnn_api.check_coverage(documented)
    names = jaxrnn_api.public_names()
    for p in problems:
        print("MISSING", p)
    print(f"{len(names)} public names in {len({m for m, _, _ in names})} modules' __all__; "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "_build" / "html"))
