"""How far jaxrnn and torch, both in float32, are from torch in float64, on the parity grid.

``test_torch_parity.py`` asserts jaxrnn within 1e-5 of torch in float32. Where a value is
large (parameter gradients of relu RNNs reach ~100, where one float32 ulp is 7.6e-6),
1e-5 is about one ulp and the two libraries' different summation orders alone can
exceed it. This script says which side is off: for every key of every configuration it
prints, where jaxrnn and torch differ by more than 1e-5, the error of each float32 result
against torch's float64 result, in ulps of the value, and the largest errors overall.
It also runs torch against itself, the batch of each configuration permuted (same
sequences, same weights, another order of summation), under the same 1e-5 bound, for
five permutations. Not a test (run it by hand; it needs torch)::

    python tests/grid_vs_float64.py            # the 48-config grid
    python tests/grid_vs_float64.py 33 40      # some configurations
    python tests/grid_vs_float64.py :150       # the first 150
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main(argv=None):
    import test_torch_parity as parity  # run from tests/, or with tests/ on sys.path

    import jaxrnn

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].startswith(":"):  # ":150", the first 150 configurations
        indices = list(range(int(argv[0][1:])))
    else:
        indices = [int(a) for a in argv] or list(range(48))
    print(f"{'config':>6} {'key':<28} {'|value|':>9} {'jax-torch32':>11} {'jax32 err':>10} {'torch32 err':>11}"
          f" {'jax32 ulps':>10} {'torch32 ulps':>12}")
    # Each array's largest error against float64: absolute, and in ulps of its largest element.
    per_array = {"jax": [], "torch": [], "abs_jax": [], "abs_torch": []}
    for i in indices:
        config = parity.grid_config(i)
        module = parity.maker.build_module(config, seed=i)
        inputs = parity.maker.random_inputs(config, seed=i)
        expected32 = parity.maker.torch_run(module, inputs)
        module64 = parity.maker.build_module(config, seed=i).double()
        expected64 = parity.maker.torch_run(module64, parity.maker.as_float64(inputs), dtype=np.float64)
        tnet, params = jaxrnn.from_torch(module)
        result, g_params = parity.jax_run(tnet, params, inputs)
        result.update({f"grad/{k}": v.numpy() for k, v in jaxrnn.to_torch_state_dict(tnet, g_params).items()})
        for key, truth in expected64.items():
            if truth.size == 0:
                continue
            j = np.asarray(result[key], np.float64)
            t = expected32[key].astype(np.float64)
            diff = np.abs(j - t)
            at = int(np.argmax(diff))
            value = abs(truth.flat[at])
            ulp = float(np.spacing(np.float32(value)))
            je, te = abs(j.flat[at] - truth.flat[at]), abs(t.flat[at] - truth.flat[at])
            scale = float(np.spacing(np.float32(np.max(np.abs(truth)))))  # one ulp of the largest element
            for side, got in (("jax", j), ("torch", t)):
                err = float(np.max(np.abs(got - truth)))
                per_array[side].append(err / scale)
                per_array["abs_" + side].append(err)
            if diff.flat[at] > 1e-5:
                print(f"{i:>6} {key:<28} {value:9.3g} {diff.flat[at]:11.3g} {je:10.3g} {te:11.3g} {je / ulp:10.2f}"
                      f" {te / ulp:12.2f}")
    worst = {k: max(v) for k, v in per_array.items()}
    print(f"largest error against float64 over every array, in float32 ulps of the array's largest element: "
          f"jaxrnn {worst['jax']:.2f}, torch {worst['torch']:.2f}; absolute: jaxrnn {worst['abs_jax']:.3g}, "
          f"torch {worst['abs_torch']:.3g}")
    print(f"per array ({len(per_array['jax'])} arrays), median and 90th percentile of that error in ulps: "
          f"jaxrnn {np.median(per_array['jax']):.2f} / {np.quantile(per_array['jax'], 0.9):.2f}, "
          f"torch {np.median(per_array['torch']):.2f} / {np.quantile(per_array['torch'], 0.9):.2f}")
    for seed in range(5):
        failed, largest = torch_against_itself(parity, indices, seed)
        print(f"torch against itself, batch permuted (seed {seed}): {len(failed)} of {len(indices)} configurations "
              f"beyond 1e-5 {failed}; largest difference {largest:.3g}")
    t = tanh_ulps()
    print(f"float32 tanh, ulps of the value (max, mean): jax {t['jax'][0]:.2f}, {t['jax'][1]:.3f}; "
          f"torch {t['torch'][0]:.2f}, {t['torch'][1]:.3f}")


def torch_against_itself(parity, indices, seed):
    """torch float32 on each configuration's inputs against torch float32 on the same inputs
    with the batch permuted (results permuted back): the configurations where some output,
    state or gradient differs by more than 1e-5, and the largest difference."""
    B = parity.maker.SIZES["batch"]
    failed, largest = [], 0.0
    for i in indices:
        config = parity.grid_config(i)
        module = parity.maker.build_module(config, seed=i)
        inputs = parity.maker.random_inputs(config, seed=i)
        expected = parity.maker.torch_run(module, inputs)
        rng = np.random.default_rng([seed, i])
        perm = rng.permutation(B)
        while (perm == np.arange(B)).all():
            perm = rng.permutation(B)
        inv = np.argsort(perm)
        axis = 0 if config["batch_first"] else 1
        permuted = dict(inputs, xs=np.take(inputs["xs"], perm, axis=axis), lengths=inputs["lengths"][perm],
                        h0=inputs["h0"][:, perm], c0=inputs["c0"][:, perm])
        got = parity.maker.torch_run(module, permuted)
        for key in ("ys", "grad/xs"):
            got[key] = np.take(got[key], inv, axis=axis)
        for key in ("h_n", "c_n", "grad/h0", "grad/c0"):
            if key in got:
                got[key] = got[key][:, inv]
        diffs = [float(np.max(np.abs(got[k] - v))) for k, v in expected.items() if v.size]
        largest = max([largest] + diffs)
        if max(diffs) > 1e-5:
            failed.append(i)
    return failed, largest


def tanh_ulps():
    """Largest and mean error, in ulps of the value, of float32 tanh in XLA (jax.numpy) and
    in torch, against float64, on 10^6 normal samples times 3."""
    import jax
    import jax.numpy as jnp
    import torch

    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32) * 3
    truth = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    out = {}
    for name, y in (("jax", np.asarray(jax.jit(jnp.tanh)(x))), ("torch", torch.tanh(torch.from_numpy(x)).numpy())):
        err = np.abs(y.astype(np.float64) - truth) / ulp
        out[name] = (float(err.max()), float(err.mean()))
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
