"""Writes ``tests/data/torch_reference.npz``: PyTorch results that jaxrnn must reproduce.

Run it (with torch installed) from the repository root::

    python tests/make_reference.py

For each configuration in :data:`CONFIGS` it builds a seeded ``torch.nn.RNN/GRU/LSTM``,
draws inputs, ragged lengths and random ``h0`` (``c0``), runs torch on
``pack_padded_sequence(..., enforce_sorted=False)`` and ``pad_packed_sequence(...,
total_length=T)``, and stores the weights, the inputs, the outputs ``ys``, ``h_n``
(``c_n``) and the gradients of :func:`torch_loss` with respect to ``xs``, ``h0``
(``c0``) and every parameter. ``tests/test_torch_parity.py`` checks jaxrnn against the
file without torch, and against live torch when it is importable.

The file stores only numbers and strings (``np.load(..., allow_pickle=False)`` reads it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("data") / "torch_reference.npz"

# Shapes are small on purpose: the file stays a few tens of KB.
CONFIGS = [
    dict(mode="LSTM", num_layers=2, bidirectional=True, batch_first=True, bias=True, proj_size=2),
    dict(mode="GRU", num_layers=2, bidirectional=True, batch_first=False, bias=True),
    dict(mode="RNN", num_layers=1, bidirectional=False, batch_first=True, bias=False, nonlinearity="tanh"),
    dict(mode="RNN", num_layers=2, bidirectional=True, batch_first=False, bias=True, nonlinearity="relu"),
    dict(mode="LSTM", num_layers=1, bidirectional=False, batch_first=False, bias=False, proj_size=0),
    dict(mode="GRU", num_layers=3, bidirectional=False, batch_first=True, bias=True),
    dict(mode="LSTM", num_layers=3, bidirectional=True, batch_first=False, bias=True, proj_size=3),
]
SIZES = dict(input_size=3, hidden_size=5, batch=4, time=6)


def build_module(config: dict, seed: int):
    """A seeded torch module for ``config`` (``mode`` plus torch's keyword arguments)."""
    import torch

    torch.manual_seed(seed)
    kw = {k: v for k, v in config.items() if k != "mode"}
    if config["mode"] != "LSTM":
        kw.pop("proj_size", None)
    if config["mode"] != "RNN":
        kw.pop("nonlinearity", None)
    return getattr(torch.nn, config["mode"])(input_size=SIZES["input_size"], hidden_size=SIZES["hidden_size"], **kw)


def random_inputs(config: dict, seed: int, unbatched: bool = False) -> dict:
    """xs (in the module's layout), lengths in [1, T] (one of them T), h0, c0 (numpy float32)."""
    rng = np.random.default_rng(seed)
    B, T, I, H = SIZES["batch"], SIZES["time"], SIZES["input_size"], SIZES["hidden_size"]
    D = 2 if config["bidirectional"] else 1
    H_out = config.get("proj_size") or H
    batch = () if unbatched else (B,)
    xs_shape = (T, I) if unbatched else ((B, T, I) if config["batch_first"] else (T, B, I))
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return dict(xs=f32(*xs_shape), lengths=lengths.astype(np.int64),
                h0=f32(D * config["num_layers"], *batch, H_out),
                c0=f32(D * config["num_layers"], *batch, H))


def as_float64(inputs: dict) -> dict:
    """``inputs`` (from :func:`random_inputs`) with its float32 arrays cast to float64: the
    same values, for a run in double precision."""
    return {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in inputs.items()}


def torch_loss(ys, states):
    """``sum(ys**2) + sum(h * sin(h))`` over the final states: touches every output."""
    return (ys**2).sum() + sum((s * s.sin()).sum() for s in states)


def torch_run(module, inputs: dict, *, packed: bool = True, with_h0: bool = True, dtype=np.float32) -> dict:
    """Outputs and gradients of :func:`torch_loss`, as numpy arrays of ``dtype`` (float32;
    float64 for a module in double precision with float64 inputs).

    Keys: ``ys``, ``h_n`` (``c_n``), ``grad/xs``, ``grad/h0`` (``grad/c0``) and
    ``grad/<parameter name>`` for every parameter.
    """
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm = isinstance(module, torch.nn.LSTM)
    module.zero_grad()
    xs = torch.tensor(inputs["xs"], requires_grad=True)
    h0 = torch.tensor(inputs["h0"], requires_grad=True)
    c0 = torch.tensor(inputs["c0"], requires_grad=True)
    hx = ((h0, c0) if lstm else h0) if with_h0 else None
    if packed:
        T = xs.shape[1] if module.batch_first else xs.shape[0]
        seq = pack_padded_sequence(xs, torch.tensor(inputs["lengths"]), batch_first=module.batch_first,
                                   enforce_sorted=False)
        out, h_n = module(seq, hx)
        ys, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    else:
        ys, h_n = module(xs, hx)
    states = list(h_n) if lstm else [h_n]
    torch_loss(ys, states).backward()
    np_ = lambda t: t.detach().numpy().astype(dtype)
    result = {"ys": np_(ys), "h_n": np_(states[0]), "grad/xs": np_(xs.grad)}
    if lstm:
        result["c_n"] = np_(states[1])
    if with_h0:
        result["grad/h0"] = np_(h0.grad)
        if lstm:
            result["grad/c0"] = np_(c0.grad)
    for name, p in module.named_parameters():
        result[f"grad/{name}"] = np_(p.grad)
    return result


def make_case(config: dict, seed: int) -> dict:
    """One stored case: config, weights, inputs and torch's results."""
    module = build_module(config, seed)
    inputs = random_inputs(config, seed + 1000)
    case = {"config": np.array(json.dumps(config))}
    case.update({f"weight/{k}": v.numpy().astype(np.float32) for k, v in module.state_dict().items()})
    case.update({f"input/{k}": v for k, v in inputs.items()})
    case.update({f"expect/{k}": v for k, v in torch_run(module, inputs).items()})
    return case


def main():
    import torch

    torch.set_num_threads(1)
    arrays = {}
    for i, config in enumerate(CONFIGS):
        for key, value in make_case(config, seed=i).items():
            arrays[f"case{i}/{key}"] = value
    arrays["meta"] = np.array(json.dumps(dict(torch=torch.__version__, sizes=SIZES, cases=len(CONFIGS))))
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KB, {len(CONFIGS)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
