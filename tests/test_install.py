"""One import, and what it costs: after ``import jaxrnn`` the README's ``jaxrnn.nnx``,
``jaxrnn.linen`` and ``jaxrnn.zoo`` are there, while flax, torch and keras are imported only
when used. Each check runs in a fresh interpreter (this process has imported them already).
"""

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("flax", "torch", "keras")


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.slow
def test_import_jaxrnn_imports_no_flax_torch_or_keras():
    """``python -X importtime -c "import jaxrnn"`` lists every module imported: none of flax,
    torch or keras (nor their submodules)."""
    run = _python("import jaxrnn", "-X", "importtime")
    assert run.returncode == 0, run.stderr
    imported = [line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")]
    assert "jaxrnn" in imported and "jax" in imported  # the listing is the one expected
    heavy = sorted({m for m in imported if m.split(".")[0] in HEAVY})
    assert heavy == [], f"import jaxrnn imported {heavy}"


@pytest.mark.slow
def test_one_import_gives_nnx_linen_and_zoo():
    """The README's flax section after a bare ``import jaxrnn``: ``jaxrnn.nnx.RNN`` runs and
    agrees with the functional call; ``jaxrnn.linen`` and ``jaxrnn.zoo`` are there too. flax
    arrives with the first use of ``jaxrnn.nnx``, not before."""
    pytest.importorskip("flax")
    run = _python("""
        import sys
        import jaxrnn
        assert "flax" not in sys.modules
        assert {"nnx", "linen", "zoo"} <= set(dir(jaxrnn))
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        net = jaxrnn.stack([jaxrnn.gru(4)], head=2)
        rnn = jaxrnn.nnx.RNN(net, 3, rngs=nnx.Rngs(0))
        xs = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 3)), jnp.float32)
        h, ys = rnn(xs)
        _, ref = net(rnn.params, None, xs)
        assert ys.shape == (2, 5, 2) and bool(jnp.allclose(ys, ref, atol=1e-6)), (ys, ref)
        assert jaxrnn.linen.__name__ == "jaxrnn.linen" and hasattr(jaxrnn.linen, "RNN")
        assert callable(jaxrnn.zoo.peephole_lstm)
        for name in ("torch", "keras"):
            assert name not in sys.modules, name
        print("ok")
    """)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


@pytest.mark.slow
def test_unknown_attribute_is_an_attribute_error():
    run = _python("""
        import jaxrnn
        try:
            jaxrnn.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
            print("ok")
    """)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [True, False])
def test_notebook_setup_cell_says_when_jax_fell_back_to_the_cpu(gpu):
    """The notebooks' first cell, run as it is with JAX on the CPU: on a machine with a GPU
    (faked: /dev/nvidia0 exists) it says plainly that JAX fell back to the CPU; on one with
    none it says it runs on the CPU. jaxrnn is importable here, so it installs nothing."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "notebooks" / "_build.py"
    spec = importlib.util.spec_from_file_location("_notebook_build", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    cell = builder.setup_cell()
    run = _python(f"""
        import glob, os, shutil
        os.environ["JAX_PLATFORMS"] = "cpu"
        for var in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
            os.environ.pop(var, None)
        gpu = {gpu!r}
        os.path.exists = lambda p, exists=os.path.exists: gpu if p == "/dev/nvidia0" else exists(p)
        shutil.which = lambda name, which=shutil.which: None if name == "nvidia-smi" else which(name)
        glob.glob = lambda pattern, g=glob.glob: [] if pattern.startswith("/dev/") else g(pattern)
        exec(compile({cell!r}, "setup_cell", "exec"))
    """)
    assert run.returncode == 0, run.stderr
    assert "backend: cpu" in run.stdout
    if gpu:
        assert "WARNING: this machine has a GPU, but JAX fell back to the CPU" in run.stdout
    else:
        assert "Running on the CPU (no GPU or TPU on this runtime)." in run.stdout
        assert "WARNING" not in run.stdout
