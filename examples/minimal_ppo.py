"""Recurrent PPO with an mLSTM in one file (CleanRL style), on the T-maze.

Everything is here: the vector env, the rollout, GAE, the clipped PPO loss. The only import
from xlstm-rl is ``make_core``; the env is found through Gymnasium's ``"module:id"`` syntax.

The T-maze (corridor 10) shows a cue ("up" or "down") at the first step only. Eleven steps
later, at the junction, the agent must turn the way the cue pointed: reward 1, else 0. A
policy without memory succeeds half the time.

How the memory is used (the core's contract): ``y, state = core.step(x[B, D], state,
reset[B])`` while acting and ``y, state = core(x[B, T, D], state, reset[B, T])`` on whole
rollout rows while learning, from the state stored at the rollout's start. ``reset`` True
zeros the state before that step: it marks the first step of an episode.

Run::

    python examples/minimal_ppo.py --total-steps 40000
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from xlstm_rl.cores import make_core

ENV_ID = "xlstm_rl.envs:xlstm_rl/TMaze-v0"  # imports xlstm_rl.envs, which registers the id


@dataclass
class Args:
    total_steps: int = 40_000
    seed: int = 0
    core: str = "mlstm"
    num_envs: int = 16
    num_steps: int = 64          # rollout length per env
    num_minibatches: int = 4     # minibatches of whole env rows [num_envs / 4, num_steps]
    update_epochs: int = 4
    hidden_size: int = 64
    learning_rate: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    corridor_length: int = 10


def make_envs(args: Args, num_envs: int) -> gym.vector.SyncVectorEnv:
    """Sub-envs reset themselves in the step that ends an episode (CleanRL's convention)."""
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(ENV_ID, corridor_length=args.corridor_length)] * num_envs,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class Agent(nn.Module):
    """obs -> MLP encoder -> memory core -> policy logits and value."""

    def __init__(self, obs_size: int, num_actions: int, args: Args) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(obs_size, args.hidden_size), nn.Tanh())
        self.core = make_core(args.core, args.hidden_size, hidden_size=args.hidden_size,
                              num_heads=4)
        self.actor = nn.Linear(self.core.output_size, num_actions)
        self.critic = nn.Linear(self.core.output_size, 1)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)

    def step(self, obs: Tensor, state, reset: Tensor):
        """One step: obs [B, obs_size], reset [B] -> logits [B, A], value [B], state."""
        y, state = self.core.step(self.encoder(obs), state, reset)
        return self.actor(y), self.critic(y).squeeze(-1), state

    def sequence(self, obs: Tensor, state, reset: Tensor) -> tuple[Tensor, Tensor]:
        """Whole rows: obs [B, T, obs_size], reset [B, T] -> logits [B, T, A], value [B, T]."""
        y, _ = self.core(self.encoder(obs), state, reset)
        return self.actor(y), self.critic(y).squeeze(-1)


def collect(envs, agent: Agent, obs: Tensor, starts: Tensor, state, args: Args, stats: list):
    """Runs ``num_steps`` steps in every env.

    Returns:
        The rollout (time-major ``[num_steps, num_envs]`` tensors), and the last obs,
        episode-start flags and state to continue from.
    """
    T, N = args.num_steps, args.num_envs
    rollout = {"obs": torch.zeros(T, N, obs.shape[-1]),
               "starts": torch.zeros(T, N, dtype=torch.bool),
               "actions": torch.zeros(T, N, dtype=torch.long), "logprobs": torch.zeros(T, N),
               "rewards": torch.zeros(T, N), "values": torch.zeros(T, N),
               "start_state": state}
    for t in range(T):
        with torch.no_grad():
            logits, value, state = agent.step(obs, state, starts)
        dist = Categorical(logits=logits)
        action = dist.sample()
        rollout["obs"][t], rollout["starts"][t], rollout["actions"][t] = obs, starts, action
        rollout["logprobs"][t], rollout["values"][t] = dist.log_prob(action), value
        next_obs, reward, terminated, truncated, _ = envs.step(action.numpy())
        rollout["rewards"][t] = torch.as_tensor(reward, dtype=torch.float32)
        done = np.logical_or(terminated, truncated)
        stats.extend(float(r) for r in reward[done])  # T-maze: final reward 1 = success
        obs = torch.as_tensor(next_obs)
        starts = torch.as_tensor(done)
    with torch.no_grad():
        _, next_value, _ = agent.step(obs, state, starts)
    rollout["next_value"], rollout["next_start"] = next_value, starts
    return rollout, obs, starts, state


def advantages(rollout: dict, args: Args) -> tuple[Tensor, Tensor]:
    """GAE over the rollout. An episode ends before step t+1 where ``starts[t+1]`` is set.

    (The T-maze only terminates, so nothing is bootstrapped across an episode's end.)
    """
    T = args.num_steps
    adv = torch.zeros_like(rollout["rewards"])
    last = torch.zeros(args.num_envs)
    for t in reversed(range(T)):
        next_start = rollout["next_start"] if t == T - 1 else rollout["starts"][t + 1]
        next_value = rollout["next_value"] if t == T - 1 else rollout["values"][t + 1]
        alive = 1.0 - next_start.float()
        delta = rollout["rewards"][t] + args.gamma * next_value * alive - rollout["values"][t]
        last = delta + args.gamma * args.gae_lambda * alive * last
        adv[t] = last
    return adv, adv + rollout["values"]


def update(agent: Agent, optimizer, rollout: dict, adv: Tensor, returns: Tensor, args: Args):
    """PPO epochs over minibatches of env rows; each row is one sequence [num_steps]."""
    batch_first = {k: v.transpose(0, 1) for k, v in rollout.items()
                   if k in ("obs", "starts", "actions", "logprobs")}
    adv, returns = adv.transpose(0, 1), returns.transpose(0, 1)
    for _ in range(args.update_epochs):
        for rows in torch.randperm(args.num_envs).chunk(args.num_minibatches):
            logits, value = agent.sequence(batch_first["obs"][rows],
                                           rollout["start_state"][rows],
                                           batch_first["starts"][rows])
            dist = Categorical(logits=logits)
            ratio = (dist.log_prob(batch_first["actions"][rows])
                     - batch_first["logprobs"][rows]).exp()
            mb_adv = adv[rows]
            mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            clipped = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = -torch.min(ratio * mb_adv, clipped * mb_adv).mean()
            v_loss = 0.5 * (value - returns[rows]).pow(2).mean()
            loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * dist.entropy().mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()


@torch.no_grad()
def greedy_success(agent: Agent, args: Args, episodes: int = 64) -> float:
    """Success rate of the greedy policy over ``episodes`` fresh episodes."""
    envs = make_envs(args, episodes)
    obs, _ = envs.reset(seed=args.seed + 10_000)
    obs = torch.as_tensor(obs)
    state = agent.core.initial_state(episodes)
    starts = torch.ones(episodes, dtype=torch.bool)
    finished = np.zeros(episodes, dtype=bool)
    success = np.zeros(episodes)
    while not finished.all():
        logits, _, state = agent.step(obs, state, starts)
        next_obs, reward, terminated, truncated, _ = envs.step(logits.argmax(-1).numpy())
        done = np.logical_or(terminated, truncated)
        success[done & ~finished] = reward[done & ~finished]
        finished |= done
        obs, starts = torch.as_tensor(next_obs), torch.as_tensor(done)
    envs.close()
    return float(success.mean())


def train(args: Args) -> dict[str, float]:
    torch.manual_seed(args.seed)
    envs = make_envs(args, args.num_envs)
    obs_size = int(np.prod(envs.single_observation_space.shape or (1,)))
    agent = Agent(obs_size, int(envs.single_action_space.n), args)  # type: ignore[attr-defined]
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs, _ = envs.reset(seed=args.seed)
    obs, starts = torch.as_tensor(obs), torch.ones(args.num_envs, dtype=torch.bool)
    state = agent.core.initial_state(args.num_envs)
    steps, started = 0, time.perf_counter()
    stats: list[float] = []  # final rewards of finished episodes
    while steps < args.total_steps:
        for group in optimizer.param_groups:  # linear learning-rate decay to 0
            group["lr"] = args.learning_rate * (1.0 - steps / args.total_steps)
        rollout, obs, starts, state = collect(envs, agent, obs, starts, state, args, stats)
        adv, returns = advantages(rollout, args)
        update(agent, optimizer, rollout, adv, returns, args)
        steps += args.num_steps * args.num_envs
        recent = stats[-64:]
        print(f"{steps} steps, training success (last {len(recent)} episodes) "
              f"{np.mean(recent) if recent else float('nan'):.3f}", flush=True)
    sps = steps / (time.perf_counter() - started)
    envs.close()
    return {"steps": steps, "sps": sps, "success": greedy_success(agent, args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(1)  # small networks: one thread is fastest on CPU
    result = train(args)
    print(f"{args.core}: {result['steps']} env steps at {result['sps']:.0f} steps/s; "
          f"final success rate {result['success']:.3f}")


if __name__ == "__main__":
    main()
