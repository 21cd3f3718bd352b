"""Smoke tests of benchmarks/scan_vs_loop.py, unroll_sweep.py and memory.py: tiny runs end to end."""

import importlib.util
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the benchmark scripts' smoke runs: outside the fast lane (`pytest -m "not slow"`)

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(spec.name, None)
        raise
    return module


@pytest.fixture(scope="module")
def svl():
    yield _load("scan_vs_loop")
    sys.modules.pop("benchmarks_scan_vs_loop", None)


@pytest.fixture(scope="module")
def mem():
    yield _load("memory")
    sys.modules.pop("benchmarks_memory", None)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


# --------------------------------------------------------------------------- scan_vs_loop


@pytest.mark.parametrize("cell_name", ["gru", "lstm"])
def test_methods_compute_the_same_function(svl, cell_name, key):
    """The methods time the same computation: equal outputs and equal gradients.

    (``jit_unrolled`` is ``jax.jit`` of the ``python_loop`` function itself.)
    """
    cell = svl.CELLS[cell_name](5)
    params = cell.init(key, input_size=3)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (2, 5, 3))
    methods = ("python_loop", "scan", "scan_unroll2")
    assert set(methods) | {"jit_unrolled"} == set(svl.method_names(2))
    outs = {m: svl.build(m, cell, 5)(params, xs) for m in methods}
    grads = {m: svl.loss_grad(svl.build(m, cell, 5))(params, xs) for m in methods}
    assert outs["scan"][1].shape == (2, 5, 5)
    assert float(jnp.abs(grads["scan"].w_hh).max()) > 0
    for m in methods[1:]:
        for a, b in zip(jax.tree.leaves((outs[m], grads[m])), jax.tree.leaves((outs["python_loop"],
                                                                                grads["python_loop"]))):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5, err_msg=m)


def test_scan_vs_loop_smoke(svl, tmp_path, capsys):
    out = svl.main(["--T", "4", "8", "--cells", "rnn", "--B", "2", "--I", "3", "--H", "4",
                    "--repeats", "1", "--warmup", "0", "--eager-budget", "0", "--unroll-k", "2",
                    "--max-unrolled-T", "8", "--max-unrolled-grad-T", "4", "--max-eager-grad-T", "4",
                    "--compile-repeats", "2",
                    "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"), "--no-save"])
    printed = capsys.readouterr().out
    assert "Story checks:" in printed and "jax " in printed
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["benchmark"] == "scan_vs_loop"
    assert data["env"]["backend"] == jax.default_backend() and data["env"]["jax"] == jax.__version__
    records = data["records"]
    methods = ("python_loop", "jit_unrolled", "scan", "scan_unroll2")
    assert {(r["cell"], r["method"], r["T"]) for r in records} == {
        ("rnn", m, T) for m in methods for T in (4, 8)}
    for r in records:
        assert _positive(r["compile_s"]) and _positive(r["run_ms"]) and r["run_ms"] > 0, r
        assert (r["B"], r["I"], r["H"]) == (2, 3, 4)
        assert r["unroll"] == {"scan": 1, "scan_unroll2": 2}.get(r["method"])
        capped = r["T"] == 8 and r["method"] in ("jit_unrolled", "python_loop")
        if capped:
            assert r["grad_compile_s"] is None and r["grad_run_ms"] is None, r
        else:
            assert _positive(r["grad_compile_s"]) and r["grad_run_ms"] > 0, r
        if r["method"] == "scan":
            assert r["run_vs_scan"] == 1.0 and r["compile_vs_scan"] == 1.0
        if r["method"] != "python_loop":  # scans: the median of 2 fresh compiles; the unrolled loop: one
            n = 1 if r["method"] == "jit_unrolled" else 2
            assert len(r["compile_samples_s"]) == n and all(_positive(t) for t in r["compile_samples_s"])
            assert r["compile_s"] == pytest.approx(float(np.median(r["compile_samples_s"])))
        if r["method"] == "python_loop":
            assert r["first_call_s"] >= r["compile_s"]
    claims = [(c["cell"], c["claim"]) for c in data["checks"]]
    assert len(claims) == 3 and {c for c, _ in claims} == {"rnn"}
    assert all(isinstance(c["passed"], bool) for c in data["checks"])
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    assert len(out["records"]) == len(records)


def test_story_checks_logic(svl):
    def rec(method, T, compile_s, run_ms):
        return dict(cell="gru", method=method, T=T, compile_s=compile_s, run_ms=run_ms, grad_run_ms=None)

    records = [rec("scan", 16, 0.10, 1.0), rec("scan", 256, 0.12, 10.0),
               rec("jit_unrolled", 16, 0.2, 0.5), rec("jit_unrolled", 256, 2.0, 5.0),
               rec("python_loop", 16, 0.0, 5.0), rec("python_loop", 256, 0.0, 20.0)]
    checks = {c["claim"].split()[0]: c["passed"] for c in svl.story_checks(records)}
    assert checks == {"scan": True, "jit": True, "the": False}  # eager only 2x slower: fails
    records[1]["compile_s"] = 0.5  # scan compile x5 over T: not flat
    records[5]["run_ms"] = 100.0
    checks = {c["claim"].split()[0]: c["passed"] for c in svl.story_checks(records)}
    assert checks == {"scan": False, "jit": True, "the": True}


def test_scan_vs_loop_rejects_bad_args(svl):
    with pytest.raises(SystemExit):
        svl.parse_args(["--T", "0"])
    with pytest.raises(SystemExit):
        svl.parse_args(["--compile-repeats", "0"])
    with pytest.raises(SystemExit):
        svl.parse_args(["--cells", "transformer"])


# --------------------------------------------------------------------------- unroll_sweep


@pytest.fixture(scope="module")
def sweep():
    yield _load("unroll_sweep")
    sys.modules.pop("benchmarks_unroll_sweep", None)


def test_unroll_sweep_choice_logic(sweep):
    key = "fwd+bwd geomean vs unroll=1"
    summary = [{"unroll": 1, key: 1.0}, {"unroll": 4, key: 0.70}, {"unroll": 8, key: 0.69},
               {"unroll": 16, key: 0.68}, {"unroll": 32, key: 0.75}]
    assert sweep.choose(summary, 1) == (16, 4)  # 0.70 is within 3% of 0.68: the smaller program wins
    summary[1][key] = 0.71
    assert sweep.choose(summary, 1) == (16, 8)
    summary[0][key] = 0.5  # unroll 1 fastest
    assert sweep.choose(summary, 1) == (1, 1)


def test_unroll_sweep_smoke(sweep, tmp_path):
    best = sweep.main(["--shapes", "2x6x3x4", "--cells", "lstm,gru", "--unrolls", "1,3", "--rounds", "2",
                       "--min-time", "0", "--no-torch", "--json", str(tmp_path / "u.json")])
    data = json.loads((tmp_path / "u.json").read_text())
    assert data["benchmark"] == "unroll_sweep" and data["env"]["jax"] == jax.__version__
    assert best == data["choice"] and best in (1, 3) and data["best_unroll"] in (1, 3)
    recs = data["records"]
    assert {(r["cell"], r["unroll"], r["mode"]) for r in recs} == {
        (c, u, m) for c in ("lstm", "gru") for u in (1, 3) for m in ("fwd", "fwd+bwd")}
    assert all(len(r["samples_ms"]) == 2 and r["median_ms"] > 0 for r in recs)
    assert [r["unroll"] for r in data["summary"]] == [1, 3]
    assert data["summary"][0]["fwd+bwd geomean vs unroll=1"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        sweep.main(["--unrolls", "0", "--no-save"])


# --------------------------------------------------------------------------- memory


def test_memory_smoke(mem, tmp_path):
    out = mem.main(["--T", "16", "64", "--B", "2", "--I", "3", "--H", "8", "--losses", "many2one",
                    "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png"), "--no-save"])
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["benchmark"] == "memory" and data["env"]["jax"] == jax.__version__
    records = data["records"]
    assert {(r["T"], r["loss"], r["remat"]) for r in records} == {
        (T, "many2one", remat) for T in (16, 64) for remat in (False, True)}
    for r in records:
        assert r["temp_bytes"] > 0 and r["output_bytes"] > 0
        # params + xs are the arguments
        assert r["argument_bytes"] >= r["xs_bytes"] == 4 * 2 * r["T"] * 3
        assert (r["chunk"] == 8 if r["T"] == 64 else r["chunk"] == 4) if r["remat"] else r["chunk"] is None
    by = {(r["T"], r["loss"], r["remat"]): r["temp_bytes"] for r in records}
    # Without remat the backward pass keeps per-step residuals, so memory grows with T.
    assert by[(64, "many2one", False)] > by[(16, "many2one", False)]
    assert by[(64, "many2one", True)] < by[(64, "many2one", False)]
    assert len(data["growth"]) == 2 and all(math.isfinite(g["exponent"]) for g in data["growth"])
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
    assert out["train_long"] is None


def test_memory_losses(mem, key):
    cell = mem.jaxrnn.lstm(4)
    params = cell.init(key, input_size=3)
    xs = jax.random.normal(key, (2, 5, 3))
    h, ys = mem.jaxrnn.unroll(cell, params, None, xs)
    np.testing.assert_allclose(mem.make_loss(cell, "many2many", True)(params, xs), jnp.mean(ys**2), rtol=1e-6)
    np.testing.assert_allclose(mem.make_loss(cell, "many2one", 2)(params, xs), jnp.mean(h.h**2), rtol=1e-6)


def test_memory_train_long_smoke(mem, tmp_path):
    out = mem.main(["--skip-sweep", "--train-long", "50", "--train-steps", "2", "--H", "8",
                    "--json", str(tmp_path / "t.json"), "--no-save"])
    run = json.loads((tmp_path / "t.json").read_text())["train_long"]
    assert run == json.loads(json.dumps(out["train_long"]))
    assert run["T"] == 50 and run["remat"] is True and run["chunk"] == 8
    assert len(run["step_s"]) == 2 and len(run["losses"]) == 2
    assert all(math.isfinite(v) for v in run["losses"])
    assert run["peak_rss_MB"] > 0 and run["temp_bytes"] > 0


def test_flax_modules_smoke(tmp_path):
    """benchmarks/flax_modules.py end to end on a tiny shape: every program computes the same
    gradient (the benchmark's own check), and the report has each bound and the nnx.jit costs."""
    fm = _load("flax_modules")
    try:
        out = tmp_path / "fm.json"
        report = fm.main(["--shapes", "2x5x3x4", "--cells", "gru", "--rounds", "1", "--min-time", "0",
                          "--max-calls", "1", "--json", str(out)])
    finally:
        sys.modules.pop("benchmarks_flax_modules", None)
    (case,) = report["cases"]
    assert case["check_ok"], case["check_dxs_max_rel_diff"]
    assert set(case["median_ms"]) == set(fm.IMPLS)
    assert {f"{a} / {b}" for a, b, _ in fm.BOUNDS} == set(case["bounds"])
    assert set(case["nnx_jit_overhead_ms"]) == {"jaxrnn.nnx", "flax.nnx", "bare module"}
    saved = json.loads(out.read_text())
    assert [r["cell"] for r in saved["records"]] == ["gru"]
    assert (tmp_path / "fm.md").read_text().count("| GRU | 2×5×3×4 |") == 1


def test_ab_revision_times_the_same_programs():
    """benchmarks/ab_revision.py: the baseline package (here HEAD, imported under another name)
    runs the same programs as the checkout, so the two columns of its table time one function."""
    ab = _load("ab_revision")
    try:
        base = ab.import_baseline("HEAD")
        assert base.__name__ == "jaxrnn_baseline" and base.unroll is not ab.jaxrnn.unroll
        new, old = ab.programs(ab.jaxrnn, 3, 7, 5, 4), ab.programs(base, 3, 7, 5, 4)
        assert set(new) == set(old) == {"lstm", "gru", "user-fn lstm"}
        for name in new:
            for mode in ("fwd", "fwd+bwd"):
                fn_new, args_new = new[name]
                fn_old, args_old = old[name]
                if mode == "fwd+bwd":
                    fn_new, fn_old = (jax.grad(lambda p, xs, f=f: jnp.mean(f(p, xs) ** 2), argnums=(0, 1))
                                      for f in (fn_new, fn_old))
                a, b = fn_new(*args_new), fn_old(*args_old)
                assert all(x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
                np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)]),
                                           np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)]),
                                           rtol=1e-5, atol=1e-7, err_msg=f"{name} {mode}")
    finally:
        sys.modules.pop("benchmarks_ab_revision", None)


def test_recurrent_ppo_comparison_statistics(tmp_path):
    """The PPO comparison's aggregates over seeds: the interquartile mean is the mean of the
    middle half, the probability of improvement counts ties half, each bootstrap interval
    holds its point estimate, and the table reports the committed runs' means."""
    ppo = _load("recurrent_ppo_sb3")
    try:
        x = [500.0, 500.0, 224.9, 500.0, 466.1, 100.0, 500.0, 480.0]
        assert ppo.iqm(x) == pytest.approx(np.sort(x)[2:6].mean())
        assert ppo.iqm([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(3.0)   # 5 // 4 = 1 cut from each end
        y = [500.0] * 5 + [300.0]
        st = ppo.compare(x, y, n_boot=2000)
        assert st["mean"] == pytest.approx([np.mean(x), np.mean(y)])
        assert st["mean_diff"] == pytest.approx(np.mean(x) - np.mean(y))
        for key in ("mean_diff", "iqm_diff", "prob_improvement"):
            lo, hi = st[key + "_ci"]
            assert lo <= st[key] <= hi, key
        # P(x > y) + P(x = y) / 2 over all pairs, by a plain loop
        want = np.mean([(a > b) + 0.5 * (a == b) for a in x for b in y])
        assert st["prob_improvement"] == pytest.approx(want)
        assert ppo.compare(x, x, n_boot=1000)["prob_improvement"] == pytest.approx(0.5)
        assert st["at_500"] == [4, 5] and st["n"] == [8, 6]

        text = ppo.table(out=str(tmp_path / "table.md"))
        sb3 = json.loads((BENCH / "results" / "recurrent_ppo_sb3.json").read_text())
        sb3_mean = np.mean([r["eval_return_mean"] for r in sb3["runs"]])
        assert "| mean | " in text and f"| {sb3_mean:.1f} [" in text
    finally:
        sys.modules.pop("benchmarks_recurrent_ppo_sb3", None)


def _append_runs(path, start):
    ppo = _load("recurrent_ppo_sb3")
    for i in range(start, start + 200):
        ppo._append(path, {"seed": i}, "")


def test_recurrent_ppo_sb3_processes_share_one_results_file(tmp_path):
    """Two processes appending seeds to one JSON keep every run (each append rereads the
    file under a lock)."""
    import multiprocessing

    path = str(tmp_path / "runs.json")
    (tmp_path / "runs.json").write_text(json.dumps({"runs": []}))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_runs, args=(path, s)) for s in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seeds = sorted(r["seed"] for r in json.loads((tmp_path / "runs.json").read_text())["runs"])
    assert seeds == list(range(200)) + list(range(1000, 1200))
