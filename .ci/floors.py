"""Print the floors pyproject.toml declares, one exact pin per line: `name==version`.

Every `>=` requirement of `[project] dependencies` and of the extras named on the command line
(default: `test`) becomes `name==version`, after evaluating its environment marker for the
Python running this script. A requirement without a `>=` floor is an error, so that no
dependency escapes the floor run.

    python .ci/floors.py            # dependencies + the test extra
    python .ci/floors.py test torch # + other extras
"""
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
extras = sys.argv[1:] or ["test"]
lines = list(project["dependencies"])
for extra in extras:
    lines += project["optional-dependencies"][extra]

pins = {}
for line in lines:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    floors = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(floors) != 1:
        raise SystemExit(f"pyproject.toml: {line!r} has no single '>=' floor")
    name = req.name.lower()
    if name in pins and pins[name] != floors[0]:
        raise SystemExit(f"pyproject.toml: two floors for {name}: {pins[name]} and {floors[0]}")
    pins[name] = floors[0]
print("\n".join(f"{name}=={version}" for name, version in pins.items()))
