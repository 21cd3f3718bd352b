"""Recurrent PPO on CartPole without velocities (CartPoleNoVel), with jaxrnn LSTMs.

CartPole-v1 (gym's physics, written here in JAX; 500-step limit handled as a time limit)
with observation entries 1 and 3, the cart's and the pole's velocities, set to 0: a policy
sees positions only, so it must remember earlier observations to know where things move.

The agent is the RL Zoo's ``ppo_lstm`` for CartPoleNoVel-v1 (sb3-contrib ``RecurrentPPO``):
an LSTM(64) actor and a separate LSTM(64) critic, each followed by a 64-unit ReLU layer and
a linear output; 8 envs x 32 steps per rollout, batch 256, 20 epochs, gamma 0.98, GAE
lambda 0.8, learning rate linear from 1e-3, clip range linear from 0.2, entropy 0, value
coefficient 0.5, max grad norm 0.5, Adam eps 1e-5; observations and rewards normalised as
SB3's ``VecNormalize`` does (running mean/var of observations, and of the discounted return
for rewards, clipped at 10). Truncated episodes bootstrap from the critic's value of the
terminal observation, as SB3 does.

Where the memory enters (:mod:`jaxrnn.rl`)::

    # rollout, one step at a time; starts[t]: "observation t starts an episode"
    h, y = jaxrnn.rl.step(cell, params, h, obs[t], reset=starts[t])
    # update: each stored sequence replayed from the state stored at its start
    _, ys = jaxrnn.unroll(cell, params, h0[idx], obs[idx], resets=starts[idx])

Each epoch's minibatches are sb3-contrib's: the rollout's steps in env-major order, rotated
at a random split and cut into consecutive pieces; the sequence piece that begins at the split
is replayed from the state the rollout stored there (``minibatch_rows``).

``starts`` is the *pre-step* done (the env's done of the previous step); feeding the
post-step done resets one step early and the replay no longer reproduces the rollout
(``tests/test_recurrent_ppo.py`` checks both). Rollout and update run under one ``jit``,
for several seeds at once under ``vmap``.

The negative control is the same agent with its memory cut: a reset at every step.

Run::

    python examples/recurrent_ppo.py                 # 5 seeds + control, 100k steps each,
                                                     # then seed 0 alone (one agent's time)
    python examples/recurrent_ppo.py --smoke         # a few updates, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

import jaxrnn
from jaxrnn import rl

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Config:
    total_steps: int = 100_000
    num_envs: int = 8
    num_steps: int = 32
    batch_size: int = 256
    epochs: int = 20
    gamma: float = 0.98
    gae_lambda: float = 0.8
    lr: float = 1e-3
    clip: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    head: int = 64
    cell: str = "lstm"            # or "min_gru" (jaxrnn.zoo), replayed with `mode`
    mode: str = "sequential"
    chunk_size: int = 8
    memory: bool = True           # False: the negative control, a reset at every step
    eval_envs: int = 20

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:  # as SB3: rollouts until at least total_steps
        return -(-self.total_steps // self.steps_per_update)

    @property
    def num_minibatches(self) -> int:
        return max(1, self.steps_per_update // self.batch_size)

    def __post_init__(self):
        if self.batch_size % self.num_steps or self.steps_per_update % self.batch_size:
            raise ValueError(f"`batch_size` must be a multiple of `num_steps` ({self.num_steps}) that divides "
                             f"num_envs * num_steps ({self.steps_per_update}); got {self.batch_size}.")

    def make_cell(self):
        if self.cell == "lstm":
            return jaxrnn.lstm(self.hidden)
        if self.cell == "min_gru":
            return jaxrnn.zoo.min_gru(self.hidden)
        raise ValueError(f"`cell` must be 'lstm' or 'min_gru'; got {self.cell!r}.")


# ----------------------------------------------------------------------------- CartPole in JAX
# gym's CartPole-v1: Euler integration, tau 0.02 s, force +-10 N, failure at |x| > 2.4 or
# |theta| > 12 degrees, reward 1 per step (the failing one included), 500-step time limit.
GRAVITY, M_CART, M_POLE, LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
M_TOTAL, POLE_ML = M_CART + M_POLE, M_POLE * LENGTH
X_LIMIT, THETA_LIMIT, MAX_STEPS = 2.4, 12 * 2 * math.pi / 360, 500
VELOCITY_MASK = jnp.array([1.0, 0.0, 1.0, 0.0])


class EnvState(NamedTuple):
    s: jax.Array      # [4] x, x_dot, theta, theta_dot
    t: jax.Array      # steps taken in this episode


def env_reset(key):
    s = jax.random.uniform(key, (4,), jnp.float32, -0.05, 0.05)
    return EnvState(s, jnp.zeros((), jnp.int32)), s * VELOCITY_MASK


def env_step(key, state: EnvState, action):
    """One step with auto-reset: ``(state, obs, reward, terminated, truncated, terminal_obs)``;
    after a done, ``obs`` is the next episode's first observation."""
    x, x_dot, th, th_dot = state.s
    force = jnp.where(action == 1, FORCE, -FORCE)
    cos, sin = jnp.cos(th), jnp.sin(th)
    temp = (force + POLE_ML * th_dot ** 2 * sin) / M_TOTAL
    th_acc = (GRAVITY * sin - cos * temp) / (LENGTH * (4.0 / 3.0 - M_POLE * cos ** 2 / M_TOTAL))
    x_acc = temp - POLE_ML * th_acc * cos / M_TOTAL
    s = jnp.stack([x + TAU * x_dot, x_dot + TAU * x_acc, th + TAU * th_dot, th_dot + TAU * th_acc])
    t = state.t + 1
    terminated = (jnp.abs(s[0]) > X_LIMIT) | (jnp.abs(s[2]) > THETA_LIMIT)
    truncated = (t >= MAX_STEPS) & ~terminated
    done = terminated | truncated
    fresh, fresh_obs = env_reset(key)
    terminal_obs = s * VELOCITY_MASK
    new = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, EnvState(s, t))
    obs = jnp.where(done, fresh_obs, terminal_obs)
    return new, obs, jnp.float32(1.0), terminated, truncated, terminal_obs


# ----------------------------------------------------------------------------- normalisation
class RunningMeanStd(NamedTuple):
    """SB3's ``RunningMeanStd``: parallel-algorithm mean/var, count starting at 1e-4."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape=()):
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.float32(1e-4))

    def update(self, batch):
        b_mean, b_var, n = batch.mean(0), batch.var(0), batch.shape[0]
        delta, tot = b_mean - self.mean, self.count + n
        m2 = self.var * self.count + b_var * n + delta ** 2 * self.count * n / tot
        return RunningMeanStd(self.mean + delta * n / tot, m2 / tot, tot)


def normalize_obs(rms, obs):
    return jnp.clip((obs - rms.mean) / jnp.sqrt(rms.var + 1e-8), -10.0, 10.0)


# ----------------------------------------------------------------------------- the agent
class Params(NamedTuple):
    actor: Any              # recurrent cell params
    actor_hidden: Any       # DenseParams [head, hidden]
    actor_out: Any          # DenseParams [2, head]
    critic: Any
    critic_hidden: Any
    critic_out: Any         # DenseParams [1, head]


def _dense_init(key, n_in, n_out):  # torch.nn.Linear's default (SB3 with ortho_init=False)
    bound = 1.0 / math.sqrt(n_in)
    kw, kb = jax.random.split(key)
    return jaxrnn.DenseParams(jax.random.uniform(kw, (n_out, n_in), jnp.float32, -bound, bound),
                              jax.random.uniform(kb, (n_out,), jnp.float32, -bound, bound))


def _dense(p, x):
    return x @ p.w.T + p.b


def init_params(cfg: Config, key) -> Params:
    cell = cfg.make_cell()
    k = jax.random.split(key, 6)
    return Params(cell.init(k[0], 4), _dense_init(k[1], cfg.hidden, cfg.head), _dense_init(k[2], cfg.head, 2),
                  cell.init(k[3], 4), _dense_init(k[4], cfg.hidden, cfg.head), _dense_init(k[5], cfg.head, 1))


def heads(params: Params, y_actor, y_critic):
    logits = _dense(params.actor_out, jax.nn.relu(_dense(params.actor_hidden, y_actor)))
    value = _dense(params.critic_out, jax.nn.relu(_dense(params.critic_hidden, y_critic)))[..., 0]
    return logits, value


def act(cfg: Config, params: Params, h, obs, start):
    """One rollout step of actor and critic: ``(h, logits, value)``; ``h = (h_actor, h_critic)``."""
    cell = cfg.make_cell()
    ha, ya = rl.step(cell, params.actor, h[0], obs, reset=start)
    hc, yc = rl.step(cell, params.critic, h[1], obs, reset=start)
    logits, value = heads(params, ya, yc)
    return (ha, hc), logits, value


def replay(cfg: Config, params: Params, h0, obs, resets):
    """The update's forward pass: ``(logits, values)`` of sequences ``obs`` ``[B, T, 4]`` from
    stored initial states ``h0``, with ``resets`` ``[B, T]`` (pre-step episode starts)."""
    cell = cfg.make_cell()
    opts = dict(resets=resets, mode=cfg.mode, chunk_size=cfg.chunk_size if cfg.mode == "chunked" else None)
    _, ya = jaxrnn.unroll(cell, params.actor, h0[0], obs, **opts)
    _, yc = jaxrnn.unroll(cell, params.critic, h0[1], obs, **opts)
    return heads(params, ya, yc)


class Transition(NamedTuple):
    obs: jax.Array          # normalised observation the agent acted on
    start: jax.Array        # pre-step done: obs starts an episode
    action: jax.Array
    logp: jax.Array
    value: jax.Array
    reward: jax.Array       # normalised, plus gamma * V(terminal obs) on truncation
    done: jax.Array         # post-step done (terminated or truncated)
    raw_reward: jax.Array
    h: Any                  # (actor, critic) state entering this step, before its reset


class Runner(NamedTuple):
    params: Params
    opt_state: Any
    env: EnvState           # [E]
    obs: jax.Array          # [E, 4] normalised
    start: jax.Array        # [E]
    h: Any                  # (actor state, critic state), leaves [E, H]
    obs_rms: RunningMeanStd
    ret_rms: RunningMeanStd
    ret: jax.Array          # [E] discounted return for reward normalisation
    ep_return: jax.Array    # [E] undiscounted, for the learning curve
    update: jax.Array       # updates done
    key: jax.Array


def make_optimizer(cfg: Config):
    per_update = cfg.epochs * cfg.num_minibatches

    def lr(count):  # SB3: progress_remaining after the rollout that precedes this update
        k = count // per_update
        return -cfg.lr * jnp.maximum(0.0, 1.0 - (k + 1) * cfg.steps_per_update / cfg.total_steps)

    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam(eps=1e-5),
                       optax.scale_by_schedule(lr))


def init_runner(cfg: Config, key) -> Runner:
    kp, ke, kr = jax.random.split(key, 3)
    params = init_params(cfg, kp)
    env, raw = jax.vmap(env_reset)(jax.random.split(ke, cfg.num_envs))
    obs_rms = RunningMeanStd.create((4,)).update(raw)
    cell = cfg.make_cell()
    h = (cell.initial_state((cfg.num_envs,)), cell.initial_state((cfg.num_envs,)))
    E = cfg.num_envs
    return Runner(params, make_optimizer(cfg).init(params), env, normalize_obs(obs_rms, raw),
                  jnp.ones((E,), bool), h, obs_rms, RunningMeanStd.create(), jnp.zeros((E,)), jnp.zeros((E,)),
                  jnp.zeros((), jnp.int32), kr)


def rollout(cfg: Config, r: Runner):
    """``num_steps`` steps of every env, one at a time: ``(runner, traj, h0, last_value,
    finished)``; ``traj`` leaves ``[E, T, ...]``, ``h0`` the state before the first step."""
    cell = cfg.make_cell()
    h0 = r.h

    def one(r: Runner, _):
        key, k_act, k_env = jax.random.split(r.key, 3)
        resets = r.start if cfg.memory else jnp.ones_like(r.start)
        h, logits, value = act(cfg, r.params, r.h, r.obs, resets)
        action = jax.random.categorical(k_act, logits)
        logp = jax.nn.log_softmax(logits)[jnp.arange(cfg.num_envs), action]
        env, raw, reward, term, trunc, term_raw = jax.vmap(env_step)(
            jax.random.split(k_env, cfg.num_envs), r.env, action)
        done = term | trunc
        obs_rms = r.obs_rms.update(raw)
        ret = r.ret * cfg.gamma + reward
        ret_rms = r.ret_rms.update(ret)
        reward_n = jnp.clip(reward / jnp.sqrt(ret_rms.var + 1e-8), -10.0, 10.0)
        # a time limit is not a failure: bootstrap from the terminal observation, with the
        # critic's state after this step (as sb3-contrib's RecurrentPPO)
        _, y_term = cell.step(r.params.critic, h[1], normalize_obs(obs_rms, term_raw))
        v_term = heads(r.params, y_term, y_term)[1]
        reward_n = reward_n + cfg.gamma * jnp.where(trunc, v_term, 0.0)
        ep_return = r.ep_return + reward
        tr = Transition(r.obs, r.start, action, logp, value, reward_n, done, reward, r.h)
        finished = (jnp.where(done, ep_return, 0.0), done)
        r = r._replace(env=env, obs=normalize_obs(obs_rms, raw), start=done, h=h, obs_rms=obs_rms,
                       ret_rms=ret_rms, ret=jnp.where(done, 0.0, ret), ep_return=jnp.where(done, 0.0, ep_return),
                       key=key)
        return r, (tr, finished)

    r, (traj, finished) = jax.lax.scan(one, r, None, length=cfg.num_steps)
    resets = r.start if cfg.memory else jnp.ones_like(r.start)
    _, _, last_value = act(cfg, r.params, r.h, r.obs, resets)
    traj = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), traj)   # [T, E] -> [E, T]
    return r, traj, h0, last_value, finished


def gae(cfg: Config, traj: Transition, last_value, next_start):
    """Advantages and returns as SB3: ``next_non_terminal = 1 - starts[t + 1]``."""
    next_values = jnp.concatenate([traj.value[:, 1:], last_value[:, None]], 1)
    nonterminal = 1.0 - jnp.concatenate([traj.start[:, 1:], next_start[:, None]], 1).astype(jnp.float32)
    delta = traj.reward + cfg.gamma * next_values * nonterminal - traj.value

    def back(adv, inp):
        d, nt = inp
        adv = d + cfg.gamma * cfg.gae_lambda * nt * adv
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(last_value), (delta.T, nonterminal.T), reverse=True)
    return adv.T, adv.T + traj.value


def ppo_loss(cfg: Config, params, h0, traj: Transition, adv, returns, clip, mask=None):
    """PPO's clipped loss over the steps where ``mask`` ``[B, T]`` is True (all if None),
    with the advantages normalised over them (SB3's ``[mask]`` means); also the ratios."""
    resets = traj.start if cfg.memory else jnp.ones_like(traj.start)
    logits, values = replay(cfg, params, h0, traj.obs, resets)
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, traj.action[..., None], -1)[..., 0]
    m = jnp.ones(adv.shape) if mask is None else mask.astype(adv.dtype)
    n = m.sum()
    mean = lambda x: (x * m).sum() / n
    adv_mean = mean(adv)
    adv_std = jnp.sqrt(((adv - adv_mean) ** 2 * m).sum() / (n - 1))   # torch's std: ddof 1
    adv = (adv - adv_mean) / (adv_std + 1e-8)
    ratio = jnp.exp(logp - traj.logp)
    pg = -mean(jnp.minimum(adv * ratio, adv * jnp.clip(ratio, 1 - clip, 1 + clip)))
    v_loss = mean((returns - values) ** 2)
    entropy = -mean((jnp.exp(logp_all) * logp_all).sum(-1))
    return pg - cfg.ent_coef * entropy + cfg.vf_coef * v_loss, ratio


def minibatch_rows(cfg: Config, traj: Transition, adv, returns, split, m):
    """Minibatch ``m`` of an epoch as sb3-contrib's ``RecurrentRolloutBuffer.get`` makes it.

    SB3 rotates the env-major order of the rollout's steps by a random ``split`` in
    ``[0, E·T)`` and cuts it into consecutive minibatches of ``batch_size`` steps. With
    ``batch_size = k·T``, minibatch ``m`` is ``k + 1`` rows: env ``e`` (``(split // T + m·k) mod E``)
    from step ``t0 = split % T`` on, moved to the front of its row; ``k - 1`` whole env
    sequences; env ``e + k``'s steps before ``t0``. Each row is replayed from the state the
    rollout stored where the row starts (``traj.h``). Returns ``(h, traj, adv, returns, mask)`` with
    rows ``[k + 1, T]``; ``mask`` marks the steps the minibatch holds (``k·T`` of them)."""
    E, T = cfg.num_envs, cfg.num_steps
    k = cfg.batch_size // T
    e0, t0 = split // T, split % T
    envs = (e0 + m * k + jnp.arange(k + 1)) % E
    rows = jax.tree.map(lambda a: a[envs], (traj._replace(h=()), adv, returns))
    traj_m, adv_m, ret_m = jax.tree.map(lambda a: a.at[0].set(jnp.roll(a[0], -t0, axis=0)), rows)
    first = jnp.zeros((k + 1,), jnp.int32).at[0].set(t0)                   # the step each row starts at
    h = jax.tree.map(lambda hs: hs[envs, first], traj.h)
    t = jnp.arange(T)
    mask = jnp.ones((k + 1, T), bool).at[0].set(t < T - t0).at[k].set(t < t0)
    return h, traj_m, adv_m, ret_m, mask


def update(cfg: Config, r: Runner, traj, last_value):
    """``epochs`` passes over the rollout; each epoch's minibatches as SB3's (see
    :func:`minibatch_rows`), each sequence replayed from the state stored where it starts."""
    adv, returns = gae(cfg, traj, last_value, r.start)
    progress = jnp.maximum(0.0, 1.0 - (r.update + 1) * cfg.steps_per_update / cfg.total_steps)
    clip = cfg.clip * progress
    opt = make_optimizer(cfg)
    grad = jax.grad(lambda p, *a: ppo_loss(cfg, p, *a)[0])

    def epoch(carry, key):
        params, opt_state = carry
        split = jax.random.randint(key, (), 0, cfg.steps_per_update)

        def minibatch(carry, m):
            params, opt_state = carry
            h, traj_m, adv_m, ret_m, mask = minibatch_rows(cfg, traj, adv, returns, split, m)
            g = grad(params, h, traj_m, adv_m, ret_m, clip, mask)
            upd, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), None

        return jax.lax.scan(minibatch, (params, opt_state), jnp.arange(cfg.num_minibatches))[0], None

    key, k = jax.random.split(r.key)
    (params, opt_state), _ = jax.lax.scan(epoch, (r.params, r.opt_state), jax.random.split(k, cfg.epochs))
    return r._replace(params=params, opt_state=opt_state, update=r.update + 1, key=key)


def train_step(cfg: Config, r: Runner, _):
    r, traj, _, last_value, (ep_returns, ep_done) = rollout(cfg, r)
    r = update(cfg, r, traj, last_value)
    n = ep_done.sum()
    return r, (ep_returns.sum() / jnp.maximum(n, 1), n)


def evaluate(cfg: Config, r: Runner, key):
    """Deterministic (argmax) return of ``eval_envs`` episodes, observations normalised with the
    frozen training statistics, as SB3's ``evaluate_policy`` on a ``VecNormalize(training=False)``."""
    cell = cfg.make_cell()
    E = cfg.eval_envs
    env, raw = jax.vmap(env_reset)(jax.random.split(key, E))
    h = (cell.initial_state((E,)), cell.initial_state((E,)))

    def one(carry, _):
        env, raw, h, alive, total, first = carry
        resets = jnp.full((E,), first) if cfg.memory else jnp.ones((E,), bool)
        h, logits, _ = act(cfg, r.params, h, normalize_obs(r.obs_rms, raw), resets)
        action = jnp.argmax(logits, -1)
        env, raw, reward, term, trunc, _ = jax.vmap(env_step)(jax.random.split(key, E), env, action)
        total = total + jnp.where(alive, reward, 0.0)
        return (env, raw, h, alive & ~(term | trunc), total, jnp.bool_(False)), None

    init = (env, raw, h, jnp.ones((E,), bool), jnp.zeros((E,)), jnp.bool_(True))
    (_, _, _, _, total, _), _ = jax.lax.scan(one, init, None, length=MAX_STEPS)
    return total


# ----------------------------------------------------------------------------- the driver
def _machine():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(cfg: Config, seeds, eval_every: int, label: str):
    """Trains ``len(seeds)`` agents at once under ``vmap``; returns a record with timings and
    curves. Training time (compile included) excludes the periodic evaluations."""
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    eval_keys = jnp.stack([jax.random.key(10_000 + s) for s in seeds])
    sizes = [eval_every] * (cfg.num_updates // eval_every) + (
        [cfg.num_updates % eval_every] if cfg.num_updates % eval_every else [])
    chunk_fns = {}
    t0, c0 = time.perf_counter(), time.process_time()
    runners = jax.jit(jax.vmap(lambda k: init_runner(cfg, k)))(keys)
    jax.block_until_ready(runners)
    ev = jax.jit(jax.vmap(lambda r, k: evaluate(cfg, r, k)))
    train_s, compile_s, eval_s = time.perf_counter() - t0, 0.0, 0.0
    train_cpu_s = time.process_time() - c0
    curve, evals, done_updates = [], [], 0
    for i, n in enumerate(sizes):
        if n not in chunk_fns:
            tc, cc = time.perf_counter(), time.process_time()
            fn = jax.jit(jax.vmap(lambda r: jax.lax.scan(lambda r, x: train_step(cfg, r, x), r, None, length=n)))
            chunk_fns[n] = fn.lower(runners).compile()
            dt = time.perf_counter() - tc
            compile_s += dt
            train_s += dt
            train_cpu_s += time.process_time() - cc
        tc, cc = time.perf_counter(), time.process_time()
        runners, (ep_ret, ep_n) = chunk_fns[n](runners)
        jax.block_until_ready(runners)
        train_s += time.perf_counter() - tc
        train_cpu_s += time.process_time() - cc
        done_updates += n
        steps = done_updates * cfg.steps_per_update
        ep_ret, ep_n = np.asarray(ep_ret), np.asarray(ep_n)
        for j in range(n):
            curve.append([(done_updates - n + j + 1) * cfg.steps_per_update,
                          [float(x) if c else None for x, c in zip(ep_ret[:, j], ep_n[:, j])]])
        te = time.perf_counter()
        returns = np.asarray(ev(runners, jax.vmap(lambda k: jax.random.fold_in(k, i))(eval_keys)))
        eval_s += time.perf_counter() - te
        evals.append([steps, returns.mean(1).tolist()])
        print(f"  [{label}] {steps:>6} steps  train {train_s:6.1f} s  deterministic return per seed "
              f"{np.array2string(returns.mean(1), precision=1, max_line_width=200)}", flush=True)
    final = returns
    return dict(label=label, seeds=list(seeds), env_steps=done_updates * cfg.steps_per_update,
                train_wall_s=train_s, train_cpu_s=train_cpu_s, load_at_end=os.getloadavg(), compile_s=compile_s, eval_wall_s=eval_s,
                final_eval_mean=final.mean(1).tolist(), final_eval_std=final.std(1).tolist(),
                final_eval_returns=final.tolist(), eval_curve=evals, train_curve=curve,
                config=dataclasses.asdict(cfg))


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"memory": "tab:blue", "control": "tab:red"}
    for rec in records:
        c = colors.get(rec["label"], "k")
        steps = [e[0] for e in rec["eval_curve"]]
        vals = np.array([e[1] for e in rec["eval_curve"]])
        for s in range(vals.shape[1]):
            axes[0].plot(steps, vals[:, s], color=c, alpha=0.6,
                         label=f"{rec['label']} ({len(rec['seeds'])} seeds)" if s == 0 else None)
        tsteps = [e[0] for e in rec["train_curve"]]
        tvals = np.array([[np.nan if v is None else v for v in e[1]] for e in rec["train_curve"]])
        for s in range(tvals.shape[1]):
            ok = ~np.isnan(tvals[:, s])
            axes[1].plot(np.array(tsteps)[ok], tvals[ok, s], color=c, alpha=0.5, lw=0.8)
    axes[0].set(title="deterministic evaluation (20 episodes)", xlabel="env steps", ylabel="return")
    axes[1].set(title="training episodes (stochastic policy)", xlabel="env steps", ylabel="return")
    axes[0].axhline(500, color="gray", ls=":")
    axes[0].legend()
    control = any(rec["label"] == "control" for rec in records)
    fig.suptitle("Recurrent PPO (jaxrnn LSTM 64 actor + critic) on CartPoleNoVel"
                 + ("; control: reset every step" if control else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(seeds=(0, 1, 2, 3, 4), total_steps=100_000, eval_every=17, control=True, smoke=False, save=True,
         alone=True, note="", out_path=None):
    cfg = Config(total_steps=total_steps)
    if smoke:
        cfg, eval_every, seeds = Config(total_steps=4 * 256), 2, seeds[:2]
    print(f"jaxrnn recurrent PPO on CartPoleNoVel: {len(seeds)} seeds under vmap, {cfg.num_updates} updates "
          f"of {cfg.steps_per_update} steps ({jax.devices()[0].platform})", flush=True)
    t0, load_at_start = time.perf_counter(), os.getloadavg()
    records = [run(cfg, seeds, eval_every, "memory")]
    if control:
        records.append(run(dataclasses.replace(cfg, memory=False), seeds, eval_every, "control"))
    if alone and len(seeds) > 1:  # one agent trained by itself: the time one training run takes
        records.append(run(cfg, seeds[:1], eval_every, "one seed"))
    total = time.perf_counter() - t0
    for rec in records:
        m = np.array(rec["final_eval_mean"])
        print(f"{rec['label']:>8}: {rec['env_steps']} env steps per seed, training {rec['train_wall_s']:.1f} s "
              f"(CPU time {rec['train_cpu_s']:.1f} s) for {len(rec['seeds'])} seed(s) at once (compile {rec['compile_s']:.1f} s; evaluations {rec['eval_wall_s']:.1f} s "
              f"more); final deterministic return (20 episodes) per seed {np.round(m, 1).tolist()}, "
              f"mean {m.mean():.1f}", flush=True)
    print(f"total wall time {total:.1f} s", flush=True)
    out = dict(task="CartPoleNoVel (JAX CartPole-v1, obs[1]=obs[3]=0, 500-step limit)", machine=_machine(),
               versions=dict(jax=jax.__version__, jaxlib=jaxlib.__version__, optax=optax.__version__, jaxrnn=jaxrnn.__version__,
                             python=platform.python_version()),
               backend=jax.devices()[0].platform, total_wall_s=total, runs=records,
               load_at_start=load_at_start, load_at_end=os.getloadavg(), note=note)
    if save and not smoke:
        path = out_path or os.path.join(RESULTS, "recurrent_ppo.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        plot([r for r in records if r["label"] in ("memory", "control")], os.path.splitext(path)[0] + ".png")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval-every", type=int, default=17, help="updates between deterministic evaluations")
    p.add_argument("--no-control", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--no-alone", action="store_true", help="skip the run of the first seed by itself")
    p.add_argument("--note", default="", help="conditions of the run, kept in the JSON")
    p.add_argument("--out", default=None, help="JSON path (default examples/results/recurrent_ppo.json; "
                   "the PNG goes beside it)")
    a = p.parse_args()
    main(tuple(a.seeds), a.steps, a.eval_every, not a.no_control, a.smoke, alone=not a.no_alone, note=a.note,
         out_path=a.out)
