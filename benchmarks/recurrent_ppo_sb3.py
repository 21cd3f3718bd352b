"""The peer: sb3-contrib's RecurrentPPO on CartPoleNoVel-v1, RL Zoo ``ppo_lstm`` settings.

This is the run that ``examples/recurrent_ppo.py`` (jaxrnn) is compared against. It needs
``pip install sb3-contrib gymnasium`` (not a jaxrnn dependency) and torch's CPU wheel.

Settings (RL Zoo ``hyperparams/ppo_lstm.yml``, CartPoleNoVel-v1): 8 envs, 32 steps per
rollout, batch 256, 20 epochs, gamma 0.98, GAE lambda 0.8, learning rate linear from 1e-3,
clip range linear from 0.2, entropy 0, value coefficient 0.5, max grad norm 0.5,
``VecNormalize`` (observations and rewards, ``gamma=0.98`` as the Zoo passes it),
``MlpLstmPolicy`` with ``lstm_hidden_size=64``, ``enable_critic_lstm=True``,
``net_arch=dict(pi=[64], vf=[64])``, ReLU, ``ortho_init=False``. The environment is gymnasium's
CartPole-v1 (500-step limit) with observation entries 1 and 3 (the velocities) set to 0, as
the Zoo's ``MaskVelocityWrapper`` does.

Each seed: wall time of ``model.learn(100_000)`` (one torch thread), then the deterministic
return over 20 episodes with the normalisation statistics frozen. Results are appended to the
JSON as each seed finishes, so a long run can be stopped and still leave its finished seeds.

Run::

        python benchmarks/recurrent_ppo_sb3.py --seeds 0 1 2
        # or one process per core, sharing the results file:
        python benchmarks/recurrent_ppo_sb3.py --seeds 9 11 & python benchmarks/recurrent_ppo_sb3.py --seeds 10 12
        python benchmarks/recurrent_ppo_sb3.py --table    # the markdown table beside the JSON
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results", "recurrent_ppo_sb3.json")
JAXRNN = os.path.join(os.path.dirname(__file__), "..", "examples", "results", "recurrent_ppo.json")
# more jaxrnn seeds, each file from `python examples/recurrent_ppo.py --seeds ... --no-control --no-alone --out ...`
JAXRNN_MORE = os.path.join(os.path.dirname(JAXRNN), "recurrent_ppo_more_seeds*.json")


def _machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def make_env():
    """CartPole-v1 with the velocities (observation entries 1 and 3) set to 0."""
    import gymnasium as gym

    class MaskVelocity(gym.ObservationWrapper):
        def observation(self, obs):
            obs = np.array(obs, dtype=np.float32)
            obs[1] = 0.0
            obs[3] = 0.0
            return obs

    return MaskVelocity(gym.make("CartPole-v1"))


def run_seed(seed, total_timesteps, n_eval_episodes):
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    env = VecNormalize(make_vec_env(make_env, n_envs=8, seed=seed), gamma=0.98)

    def linear(start):
        return lambda progress_remaining: progress_remaining * start

    model = RecurrentPPO(
            "MlpLstmPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98,
            gae_lambda=0.8, learning_rate=linear(1e-3), clip_range=linear(0.2), ent_coef=0.0,
            vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
            policy_kwargs=dict(ortho_init=False, activation_fn=torch.nn.ReLU,
                                                  lstm_hidden_size=64, enable_critic_lstm=True,
                                                  net_arch=dict(pi=[64], vf=[64])))

    curve = []

    class Curve(BaseCallback):
        def _on_rollout_end(self):
            buf = self.model.ep_info_buffer
            if buf:
                curve.append([int(self.model.num_timesteps),
                                            float(np.mean([e["r"] for e in buf]))])

        def _on_step(self):
            return True

    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=total_timesteps, callback=Curve())
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    eval_env = VecNormalize(make_vec_env(make_env, n_envs=1, seed=seed + 1000),
                                                    training=False, norm_reward=False, gamma=0.98)
    eval_env.obs_rms = env.obs_rms
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_eval_episodes,
                                                              deterministic=True, return_episode_rewards=True)
    return dict(seed=seed, env_steps=int(model.num_timesteps), train_wall_s=train_s, train_cpu_s=train_cpu_s,
                            eval_return_mean=float(np.mean(returns)),
                            eval_return_std=float(np.std(returns)),
                            eval_returns=[float(r) for r in returns], train_curve=curve)


def header(note=""):
    """The JSON's header: task, settings, machine, versions."""
    import gymnasium
    import sb3_contrib
    import stable_baselines3
    import torch

    return dict(
        task="CartPoleNoVel-v1 (gymnasium CartPole-v1, obs[1]=obs[3]=0)",
        settings="RL Zoo ppo_lstm: 8 envs x 32 steps, batch 256, 20 epochs, gamma 0.98, "
                 "lambda 0.8, lr lin 1e-3, clip lin 0.2, ent 0, vf 0.5, max_grad_norm 0.5, "
                 "VecNormalize(obs, reward, gamma 0.98), LSTM 64 actor + LSTM 64 critic, "
                 "pi=[64], vf=[64], ReLU, ortho_init=False",
        machine=_machine(), torch_threads=1,
        versions=dict(sb3_contrib=sb3_contrib.__version__, stable_baselines3=stable_baselines3.__version__,
                      gymnasium=gymnasium.__version__, torch=torch.__version__,
                      python=platform.python_version()),
        note=note, runs=[])


def _append(out, run, note):
    """Adds one seed's run to the JSON at ``out`` under a file lock, rereading the file first,
    so that several processes (one per core) can share one results file."""
    with open(out + ".lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): run one process per results file
            pass
        if os.path.exists(out):
            with open(out) as f:
                record = json.load(f)
        else:
            record = header(note)
        record["runs"].append(run)
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
    return record


def main(seeds=(0, 1, 2), total_timesteps=100_000, n_eval_episodes=20, out=RESULTS,
         note="", condition=""):
    record = None
    for seed in seeds:
        print(f"sb3-contrib RecurrentPPO seed {seed}: training {total_timesteps} steps", flush=True)
        r = run_seed(seed, total_timesteps, n_eval_episodes)
        r["load_at_end"] = os.getloadavg()
        r["condition"] = condition
        print(f"  seed {seed}: {r['train_wall_s']:.1f} s to {r['env_steps']} steps, "
                    f"deterministic return {r['eval_return_mean']:.1f} +- {r['eval_return_std']:.1f} "
                    f"({n_eval_episodes} episodes), load {r['load_at_end']}", flush=True)
        record = _append(out, r, note)
    return record


def iqm(x):
    """Interquartile mean: the mean of the middle half (25% trimmed from each end, as
    ``scipy.stats.trim_mean(x, 0.25)``; the aggregate rliable recommends over few seeds)."""
    x = np.sort(np.asarray(x, float))
    k = int(0.25 * len(x))
    return float(x[k:len(x) - k].mean())


def compare(jx, sb3, n_boot=20_000, seed=0):
    """Final returns of jaxrnn's seeds against sb3's: point estimates and 95% percentile
    bootstrap intervals (seeds resampled with replacement within each library) of the mean,
    the IQM, their differences (jaxrnn - sb3) and the probability of improvement
    P(jaxrnn seed > sb3 seed) + P(tie) / 2."""
    a, b = np.asarray(jx, float), np.asarray(sb3, float)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    A, B = np.sort(a[ia], 1), np.sort(b[ib], 1)

    def iqm_rows(X):
        k = int(0.25 * X.shape[1])
        return X[:, k:X.shape[1] - k].mean(1)

    def poi(x, y):
        gt = (x[..., :, None] > y[..., None, :]).mean((-1, -2))
        eq = (x[..., :, None] == y[..., None, :]).mean((-1, -2))
        return gt + eq / 2

    ci = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
    return dict(
        n=[len(a), len(b)],
        mean=[float(a.mean()), float(b.mean())], mean_ci=[ci(A.mean(1)), ci(B.mean(1))],
        mean_diff=float(a.mean() - b.mean()), mean_diff_ci=ci(A.mean(1) - B.mean(1)),
        iqm=[iqm(a), iqm(b)], iqm_ci=[ci(iqm_rows(A)), ci(iqm_rows(B))],
        iqm_diff=iqm(a) - iqm(b), iqm_diff_ci=ci(iqm_rows(A) - iqm_rows(B)),
        median=[float(np.median(a)), float(np.median(b))],
        at_500=[int((a >= 500).sum()), int((b >= 500).sum())],
        at_450=[int((a >= 450).sum()), int((b >= 450).sum())],
        prob_improvement=float(poi(a, b)), prob_improvement_ci=ci(np.concatenate(
            [poi(A[i:i + 1000], B[i:i + 1000]) for i in range(0, n_boot, 1000)])))


def table(sb3_path=RESULTS, jaxrnn_path=JAXRNN, out=None, more_path=JAXRNN_MORE):
    """The side-by-side markdown table from this script's JSON and the example's. Wall-time
    ratios use the sb3 runs made on a quiet machine (``condition`` starting with "quiet"),
    as the example's run is; CPU-time ratios use every run."""
    with open(sb3_path) as f:
        sb3 = json.load(f)
    with open(jaxrnn_path) as f:
        jx = json.load(f)
    mem = next(r for r in jx["runs"] if r["label"] == "memory")
    ctl = next((r for r in jx["runs"] if r["label"] == "control"), None)
    one = next((r for r in jx["runs"] if r["label"] == "one seed"), None)
    n = len(mem["seeds"])
    more = []  # further jaxrnn seeds, one vmap run per file
    for path in sorted(glob.glob(more_path)) if more_path else []:
        with open(path) as f:
            more.append(next(r for r in json.load(f)["runs"] if r["label"] == "memory"))
    lines = [
            "# Recurrent PPO on CartPoleNoVel-v1: jaxrnn vs sb3-contrib RecurrentPPO",
            "",
            f"Machine: {sb3['machine']} (2 cores). sb3: " + ", ".join(f"{k} {v}" for k, v in sb3["versions"].items())
            + "; jaxrnn side: " + ", ".join(f"{k} {v}" for k, v in jx["versions"].items() if v) + ".",
            "",
            "Same settings (RL Zoo ppo_lstm): " + sb3["settings"] + ".",
            f"Final return: deterministic, {len(sb3['runs'][0]['eval_returns']) if sb3['runs'] else 20} episodes, "
            f"normalisation statistics frozen. jaxrnn trains its {n} seeds at once under `vmap` (one time for all "
            "of them), then seed 0 again by itself (one training run's time); compile included, periodic "
            "evaluations excluded. sb3-contrib trains one seed per process (one torch thread).",
            "",
            "| library | seed | env steps | time to 100k steps (wall, s) | CPU time (s) | final deterministic return | machine |",
            "|---|---|---|---|---|---|---|",
    ]
    for r in sb3["runs"]:
        lines.append(f"| sb3-contrib | {r['seed']} | {r['env_steps']} | {r['train_wall_s']:.0f} | "
                     f"{r.get('train_cpu_s', float('nan')):.0f} | {r['eval_return_mean']:.1f} +- {r['eval_return_std']:.1f} | "
                     f"{r.get('condition', '')} |")
    cond = jx.get("note", "").split(":")[0]  # the example's --note, "quiet: ..." or "shared: ..."
    cpu = mem.get("train_cpu_s")
    for i, s in enumerate(mem["seeds"]):
        lines.append(f"| jaxrnn ({n} seeds in one vmap) | {s} | {mem['env_steps']} | {mem['train_wall_s']:.0f} (all {n}) | "
                     f"{'%.0f' % cpu if cpu else 'n/a'} (all {n}) | "
                     f"{mem['final_eval_mean'][i]:.1f} +- {mem['final_eval_std'][i]:.1f} | {cond} |")
    if one:
        lines.append(f"| jaxrnn (one seed alone) | {one['seeds'][0]} | {one['env_steps']} | {one['train_wall_s']:.0f} | "
                     f"{one['train_cpu_s']:.0f} | {one['final_eval_mean'][0]:.1f} +- {one['final_eval_std'][0]:.1f} | {cond} |")
    for more_run in more:
        m = len(more_run["seeds"])
        for i, s in enumerate(more_run["seeds"]):
            lines.append(f"| jaxrnn ({m} more seeds in one vmap) | {s} | {more_run['env_steps']} | "
                         f"{more_run['train_wall_s']:.0f} (all {m}) | {more_run['train_cpu_s']:.0f} (all {m}) | "
                         f"{more_run['final_eval_mean'][i]:.1f} +- {more_run['final_eval_std'][i]:.1f} | "
                         f"{cond} |")
    if ctl:
        lines.append("")
        lines.append(f"Negative control (jaxrnn, memory cut: a reset at every step): final deterministic return per seed "
                     f"{[round(x, 1) for x in ctl['final_eval_mean']]} (mean {np.mean(ctl['final_eval_mean']):.1f}).")
    sb3_ret = [r["eval_return_mean"] for r in sb3["runs"]]
    jx_ret = mem["final_eval_mean"] + [x for m in more for x in m["final_eval_mean"]]
    st = compare(jx_ret, sb3_ret)
    f1 = lambda v: f"{v:.1f}"
    ci = lambda v: f"[{v[0]:.1f}, {v[1]:.1f}]"
    lines += ["", f"Final deterministic return over every seed ({st['n'][0]} jaxrnn, {st['n'][1]} sb3-contrib; "
              "95% intervals: percentile bootstrap over seeds, 20000 resamples):", "",
              "| | jaxrnn | sb3-contrib | jaxrnn - sb3-contrib |", "|---|---|---|---|",
              f"| mean | {f1(st['mean'][0])} {ci(st['mean_ci'][0])} | {f1(st['mean'][1])} {ci(st['mean_ci'][1])} | "
              f"{st['mean_diff']:+.1f} {ci(st['mean_diff_ci'])} |",
              f"| interquartile mean | {f1(st['iqm'][0])} {ci(st['iqm_ci'][0])} | {f1(st['iqm'][1])} {ci(st['iqm_ci'][1])} | "
              f"{st['iqm_diff']:+.1f} {ci(st['iqm_diff_ci'])} |",
              f"| median | {f1(st['median'][0])} | {f1(st['median'][1])} | |",
              f"| seeds at 500 | {st['at_500'][0]} of {st['n'][0]} | {st['at_500'][1]} of {st['n'][1]} | |",
              f"| seeds at 450 or more | {st['at_450'][0]} of {st['n'][0]} | {st['at_450'][1]} of {st['n'][1]} | |",
              "", f"Probability that a jaxrnn seed ends above an sb3-contrib seed (ties count half): "
              f"{st['prob_improvement']:.3f} [{st['prob_improvement_ci'][0]:.3f}, {st['prob_improvement_ci'][1]:.3f}]."]
    quiet = [r for r in sb3["runs"] if r.get("condition", "").startswith("quiet")]
    if quiet:
        w = np.median([r["train_wall_s"] for r in quiet])
        lines += ["", f"Wall time to 100k steps over sb3-contrib's (median of its {len(quiet)} quiet-machine run(s), "
                  f"{w:.0f} s, one seed each):"]
        if one:
            lines.append(f"- one jaxrnn training run (seed {one['seeds'][0]} alone): {one['train_wall_s'] / w:.3f};")
        lines.append(f"- jaxrnn's {n} seeds in one vmap, all of them: {mem['train_wall_s'] / w:.3f} "
                     f"({mem['train_wall_s'] / n / w:.3f} per seed);")
        lines.append(f"- the same {n} seeds as sb3-contrib trains them on these 2 cores, one process per core "
                     f"(as its quiet runs ran): at least {n / 2:g} x {w:.0f} s = {n / 2 * w:.0f} s (derived from the "
                     f"median, not timed as one batch), against jaxrnn's {mem['train_wall_s']:.0f} s: "
                     f"{mem['train_wall_s'] / (n / 2 * w):.3f}.")
    c = [r["train_cpu_s"] for r in sb3["runs"] if "train_cpu_s" in r]
    if c and cpu:
        lines.append(f"CPU time over sb3-contrib's (median of {len(c)} runs, {np.median(c):.0f} s): "
                     + (f"one jaxrnn run {one['train_cpu_s'] / np.median(c):.3f}, " if one else "")
                     + f"{n} seeds in one vmap {cpu / np.median(c):.3f}.")
    lines += ["", "Notes: " + sb3.get("note", ""), "", jx.get("note", "")]
    text = "\n".join(lines) + "\n"
    out = out or os.path.splitext(sb3_path)[0] + ".md"
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--note", default="")
    p.add_argument("--condition", default="", help="the machine's state during the run, kept per run; "
                   "runs whose condition starts with 'quiet' are the ones the wall-time ratios use")
    p.add_argument("--table", action="store_true", help="only write the markdown table from the JSONs")
    a = p.parse_args()
    if a.table:
        table(a.out)
    else:
        main(a.seeds, a.steps, a.episodes, a.out, a.note, a.condition)
