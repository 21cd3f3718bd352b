"""Every name in every ``__all__`` imports, through its module and through the old paths.

Old paths: ``jaxrnn.train`` was one module and is a package now (every name still imports
from ``jaxrnn.train``); ``jaxrnn.parallel`` is the deprecated name of ``jaxrnn.distributed``
(it imports, warns, and gives the same objects).
"""

import importlib
import pkgutil
import warnings

import pytest

import jaxrnn

# Every public name of `jaxrnn.train` when it was one module (jaxrnn 0.1.0).
TRAIN_NAMES_0_1 = ["TrainState", "make_train_step", "make_eval_step", "fit", "sequence_mask",
                   "softmax_cross_entropy", "sequence_cross_entropy", "mean_squared_error", "accuracy",
                   "stop_gradient_state", "make_tbptt_step", "generate", "save_checkpoint", "restore_checkpoint"]
PARALLEL_NAMES_0_1 = ["data_mesh", "shard_batch", "replicate", "pad_batch", "batch_sharding", "replicated_sharding"]


def _public_modules():
    names = ["jaxrnn"]
    for info in pkgutil.walk_packages(jaxrnn.__path__, "jaxrnn."):
        if not any(part.startswith("_") for part in info.name.split(".")) and info.name != "jaxrnn.parallel":
            names.append(info.name)
    return names


@pytest.mark.parametrize("modname", _public_modules())
def test_every_name_in_all_imports(modname):
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", [])
    assert len(names) == len(set(names)), f"{modname}.__all__ repeats a name"
    for name in names:
        assert hasattr(mod, name), f"{modname}.__all__ names {name!r}, which the module does not define"
        namespace = {}
        exec(f"from {modname} import {name}", namespace)  # the `from M import X` spelling
        assert namespace[name] is getattr(mod, name)


def test_star_import_gives_exactly_all():
    namespace = {}
    exec("from jaxrnn import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(jaxrnn.__all__)


@pytest.mark.parametrize("name", TRAIN_NAMES_0_1)
def test_train_names_keep_their_path(name):
    import jaxrnn.train

    assert name in jaxrnn.train.__all__
    namespace = {}
    exec(f"from jaxrnn.train import {name}", namespace)
    # the same object as in the submodule that defines it now
    obj = namespace[name]
    submodule = importlib.import_module(obj.__module__)
    assert submodule.__name__.startswith("jaxrnn.train.") and getattr(submodule, name) is obj


def test_parallel_is_a_deprecated_alias_of_distributed():
    import sys

    sys.modules.pop("jaxrnn.parallel", None)
    with pytest.warns(DeprecationWarning, match="jaxrnn.distributed"):
        parallel = importlib.import_module("jaxrnn.parallel")
    import jaxrnn.distributed

    assert parallel.__all__ == jaxrnn.distributed.__all__ == PARALLEL_NAMES_0_1
    for name in PARALLEL_NAMES_0_1:
        assert getattr(parallel, name) is getattr(jaxrnn.distributed, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert jaxrnn.parallel is parallel  # the attribute path of 0.1.0
        namespace = {}
        exec("from jaxrnn.parallel import shard_batch", namespace)
        assert namespace["shard_batch"] is jaxrnn.distributed.shard_batch


@pytest.mark.slow
def test_importing_jaxrnn_does_not_warn():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", "import jaxrnn, jaxrnn.train"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
