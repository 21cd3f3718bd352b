"""examples/recurrent_ppo.py: the update's replay reproduces the rollout exactly (ratio 1 on
the first minibatch) across episode boundaries, for an LSTM and for minGRU in chunked mode;
the post-step done breaks it; the environment is gym's CartPole; a few updates run."""

import dataclasses
import importlib.util
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import rl

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "recurrent_ppo.py"
_spec = importlib.util.spec_from_file_location("recurrent_ppo_example", _PATH)
ppo = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ppo  # dataclasses look their module up there
_spec.loader.exec_module(ppo)

# 4 envs x 40 steps, 2 minibatches of 2 sequences: a random policy's CartPole episodes last
# ~10-40 steps, so sequences cross episode boundaries
CFG = ppo.Config(total_steps=10_000, num_envs=4, num_steps=40, batch_size=80, epochs=2, hidden=16, head=16)


def _first_minibatch_ratio(cfg, post_step=False):
    """Two rollouts (so the second starts from a carried, non-zero state), then the ratio of
    the first minibatch of the first epoch as the update computes it."""
    rollout = jax.jit(lambda r: ppo.rollout(cfg, r))
    r = ppo.init_runner(cfg, jax.random.key(3))
    r, *_ = rollout(r)
    r, traj, h0, last_value, _ = rollout(r)
    adv, returns = ppo.gae(cfg, traj, last_value, r.start)
    if post_step:
        traj = traj._replace(start=traj.done)
    idx = jax.random.permutation(jax.random.key(0), cfg.num_envs)[: cfg.num_envs // cfg.num_minibatches]
    take = lambda a: a[idx]
    _, ratio = jax.jit(lambda p, h, t, a, g: ppo.ppo_loss(cfg, p, h, t, a, g, cfg.clip))(
        r.params, rl.take_states(h0, idx), jax.tree.map(take, traj), adv[idx], returns[idx])
    logits, values = jax.jit(lambda p, h, o, s: ppo.replay(cfg, p, h, o, s))(
        r.params, h0, traj.obs, traj.start)
    return np.asarray(ratio), traj, h0, np.asarray(values), idx


@pytest.mark.slow
@pytest.mark.parametrize("cell,mode", [("lstm", "sequential"), ("min_gru", "chunked")])
def test_replay_reproduces_rollout(cell, mode):
    cfg = dataclasses.replace(CFG, cell=cell, mode=mode)
    assert cfg.num_minibatches == 2
    ratio, traj, h0, values, idx = _first_minibatch_ratio(cfg)
    starts = np.asarray(traj.start)[np.asarray(idx)]
    assert starts[:, 1:].any(), "the minibatch must cross an episode boundary"
    assert all(float(jnp.abs(a).max()) > 1e-2 for a in jax.tree.leaves(h0)), "stored states must be non-zero"
    np.testing.assert_allclose(ratio, 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(values, np.asarray(traj.value), rtol=1e-5, atol=1e-5)
    # the post-step done resets one step early: the replay no longer matches the rollout
    bad, *_ = _first_minibatch_ratio(cfg, post_step=True)
    assert np.abs(bad - 1.0).max() > 1e-3


@pytest.mark.slow
def test_sb3_minibatches_replay_rollout_from_stored_states():
    """SB3's minibatches (the env-major order rotated at a random split, the piece after the
    split replayed from the state the rollout stored there) cover every step once, and on the
    first epoch reproduce the rollout's log-probabilities exactly, the piece that starts
    mid-sequence included; replaying that piece from zeros instead does not."""
    cfg = CFG
    E, T = cfg.num_envs, cfg.num_steps
    rollout = jax.jit(lambda r: ppo.rollout(cfg, r))
    r = ppo.init_runner(cfg, jax.random.key(3))
    r, *_ = rollout(r)
    r, traj, _, last_value, _ = rollout(r)
    adv, returns = ppo.gae(cfg, traj, last_value, r.start)
    flat = jnp.arange(E * T, dtype=jnp.float32).reshape(E, T)  # which step each entry is
    loss = jax.jit(lambda p, h, t, a, g, mk: ppo.ppo_loss(cfg, p, h, t, a, g, cfg.clip, mk))
    rows = jax.jit(lambda split, m, a: ppo.minibatch_rows(cfg, traj, a, returns, split, m))
    mid_sequence = 0
    for split in (0, 57, E * T - 1):
        seen = []
        for m in range(cfg.num_minibatches):
            h, traj_m, idx_m, _, mask = rows(split, m, flat)
            mask = np.asarray(mask)
            assert mask.sum() == cfg.batch_size
            seen.append(np.asarray(idx_m)[mask])
            _, _, adv_m, ret_m, _ = rows(split, m, adv)
            _, ratio = loss(r.params, h, traj_m, adv_m, ret_m, mask)
            np.testing.assert_allclose(np.asarray(ratio)[mask], 1.0, rtol=0, atol=1e-6)
            if split % T and not bool(traj_m.start[0, 0]):  # the first row starts mid-sequence
                assert float(jnp.abs(jax.tree.leaves(h)[0][0]).max()) > 1e-2
                h_zero = jax.tree.map(lambda a: a.at[0].set(0.0), h)
                _, bad = loss(r.params, h_zero, traj_m, adv_m, ret_m, mask)
                assert np.abs(np.asarray(bad)[0][mask[0]] - 1.0).max() > 1e-3
                mid_sequence += 1
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(E * T))
    assert mid_sequence >= 2


def test_cartpole_physics_against_gym_equations():
    """One step of the JAX CartPole against gym's CartPole-v1 equations in float64 numpy."""
    s = np.array([0.1, -0.3, 0.05, 0.4])

    def gym_step(s, a):
        x, x_dot, th, th_dot = s
        force = 10.0 if a == 1 else -10.0
        c, si = math.cos(th), math.sin(th)
        temp = (force + 0.05 * th_dot ** 2 * si) / 1.1
        thacc = (9.8 * si - c * temp) / (0.5 * (4.0 / 3.0 - 0.1 * c ** 2 / 1.1))
        xacc = temp - 0.05 * thacc * c / 1.1
        return np.array([x + 0.02 * x_dot, x_dot + 0.02 * xacc, th + 0.02 * th_dot, th_dot + 0.02 * thacc])

    for a in (0, 1):
        state = ppo.EnvState(jnp.asarray(s, jnp.float32), jnp.int32(3))
        new, obs, reward, term, trunc, term_obs = ppo.env_step(jax.random.key(0), state, a)
        want = gym_step(s, a)
        np.testing.assert_allclose(new.s, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(obs, want * [1, 0, 1, 0], rtol=1e-5, atol=1e-6)
        assert float(reward) == 1.0 and not bool(term) and not bool(trunc) and int(new.t) == 4
    # failure: the pole past 12 degrees terminates; the 500th step truncates
    state = ppo.EnvState(jnp.array([0.0, 0.0, 0.2094, 1.0]), jnp.int32(3))
    new, obs, _, term, trunc, term_obs = ppo.env_step(jax.random.key(0), state, 1)
    assert bool(term) and not bool(trunc) and int(new.t) == 0
    assert float(jnp.abs(obs).max()) <= 0.05 and float(term_obs[2]) > 0.2094
    state = ppo.EnvState(jnp.zeros(4), jnp.int32(499))
    new, _, _, term, trunc, _ = ppo.env_step(jax.random.key(0), state, 1)
    assert bool(trunc) and not bool(term) and int(new.t) == 0


def test_running_mean_std_matches_numpy():
    x = np.random.default_rng(0).normal(2.0, 3.0, (50, 4)).astype(np.float32)
    rms = ppo.RunningMeanStd.create((4,))
    for chunk in np.split(x, 5):
        rms = rms.update(jnp.asarray(chunk))
    # SB3's count starts at 1e-4 (mean 0, var 1): negligible against 50 samples
    np.testing.assert_allclose(rms.mean, x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, x.var(0), rtol=1e-4)


@pytest.mark.slow
def test_a_few_updates_under_vmap():
    cfg = dataclasses.replace(CFG, epochs=2)
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    step = jax.jit(jax.vmap(lambda r: jax.lax.scan(lambda r, x: ppo.train_step(cfg, r, x), r, None, length=2)))
    r0 = jax.vmap(lambda k: ppo.init_runner(cfg, k))(keys)
    r, (ep_ret, ep_n) = step(r0)
    assert int(r.update[0]) == 2 and ep_ret.shape == (2, 2)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), r.params, r0.params)
    assert all(np.isfinite(v) and v > 0 for v in jax.tree.leaves(moved))
    # the two seeds differ
    assert float(jnp.abs(r.params.actor_out.w[0] - r.params.actor_out.w[1]).max()) > 0
