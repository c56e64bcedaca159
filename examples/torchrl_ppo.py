"""PPO with an mLSTM memory core in a plain TorchRL pipeline, on the T-maze.

The pipeline is TorchRL's own: a ``GymWrapper`` env with ``InitTracker`` and the memory's
``TensorDictPrimer``, a ``Collector``, ``GAE`` and ``ClipPPOLoss``. The only xlstm-rl piece is
the memory module, :class:`xlstm_rl.torchrl.XLSTMModule`, in the one line of ``make_memory``
where TorchRL's ``LSTMModule`` would be (``--core lstm-torchrl`` runs that line instead).

The T-maze (corridor 10) shows a cue at the first step only; at the junction, eleven steps
later, the agent must turn the way the cue pointed. Without memory the success rate is 0.5.

Run::

    python examples/torchrl_ppo.py --total-steps 40000            # mLSTM
    python examples/torchrl_ppo.py --total-steps 40000 --core lstm-torchrl
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import gymnasium as gym
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import (
    ExplorationType,
    GymWrapper,
    InitTracker,
    TransformedEnv,
    set_exploration_type,
)
from torchrl.modules import LSTMModule, ProbabilisticActor, set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

import xlstm_rl.envs  # noqa: F401  (registers xlstm_rl/TMaze-v0)
from xlstm_rl.torchrl import XLSTMModule

CORES = ("mlstm", "slstm", "xlstm", "lstm", "gru", "mlp", "lstm-torchrl")


@dataclass(frozen=True)
class Settings:
    """PPO settings (those of ``xlstm-rl train``'s default config, ppo-mlstm-tmaze)."""

    corridor_length: int = 10
    num_envs: int = 16
    rollout_len: int = 64      # steps per env per iteration: batches are [num_envs, 64]
    seq_len: int = 32          # training sequences: each rollout row cut into chunks of 32
    epochs: int = 4
    minibatches: int = 4
    hidden_size: int = 64
    lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_epsilon: float = 0.2
    entropy_coeff: float = 0.01
    critic_coeff: float = 0.5
    max_grad_norm: float = 0.5


def make_env(settings: Settings) -> TransformedEnv:
    """``num_envs`` T-mazes in one Gymnasium vector env, wrapped by TorchRL (batch [N])."""
    vector_env = gym.vector.SyncVectorEnv(
        [lambda: gym.make("xlstm_rl/TMaze-v0", corridor_length=settings.corridor_length)]
        * settings.num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    base = GymWrapper(vector_env, categorical_action_encoding=True)  # actions: ints, not one-hot
    return TransformedEnv(base, InitTracker())  # InitTracker writes is_init at episode starts


def make_memory(core: str, width: int) -> TensorDictModuleBase:
    """The memory: "embed" [*, width] -> "features" [*, width], state under "recurrent_state"."""
    if core == "lstm-torchrl":
        return LSTMModule(input_size=width, hidden_size=width, in_key="embed",
                          out_key="features")
    return XLSTMModule(core, input_size=width, hidden_size=width, num_heads=4,
                       in_key="embed", out_key="features")


def make_agent(env: TransformedEnv, core: str, settings: Settings
               ) -> tuple[ProbabilisticActor, TensorDictSequential]:
    """Encoder -> memory -> policy head / value head; the memory is shared by both heads.

    Appends the memory's primer to ``env`` so that the env carries the recurrent state.
    """
    width = settings.hidden_size
    obs_size = env.observation_spec["observation"].shape[-1]
    encoder = TensorDictModule(nn.Sequential(nn.Linear(obs_size, width), nn.Tanh()),
                               in_keys=["observation"], out_keys=["embed"])
    memory = make_memory(core, width)
    env.append_transform(memory.make_tensordict_primer())
    policy_head = TensorDictModule(nn.Linear(width, env.action_spec.space.n),
                                   in_keys=["features"], out_keys=["logits"])
    value_head = TensorDictModule(nn.Linear(width, 1), in_keys=["features"],
                                  out_keys=["state_value"])
    policy = ProbabilisticActor(TensorDictSequential(encoder, memory, policy_head),
                                in_keys=["logits"], spec=env.action_spec,
                                distribution_class=torch.distributions.Categorical,
                                return_log_prob=True)
    value = TensorDictSequential(encoder, memory, value_head)
    return policy, value


@torch.no_grad()
def success_rate(policy: ProbabilisticActor, settings: Settings, seed: int,
                 rounds: int = 4) -> float:
    """Greedy success rate over ``rounds * num_envs`` episodes of a fresh env (reward 1 =
    right turn). The env's primer comes from the policy's recurrent modules."""
    env = make_env(settings)
    env.append_transform(get_primers_from_module(policy))
    env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(rounds * (settings.corridor_length + 1), policy,
                              break_when_any_done=False)
    env.close()
    return float(rollout["next", "reward"][rollout["next", "done"]].mean())


class PPO:
    """One PPO iteration on a collected batch ``[num_envs, rollout_len]``."""

    def __init__(self, policy: ProbabilisticActor, value: TensorDictSequential,
                 settings: Settings) -> None:
        self.settings = settings
        self.advantage = GAE(gamma=settings.gamma, lmbda=settings.gae_lambda,
                             value_network=value, average_gae=True, shifted=True)
        self.loss = ClipPPOLoss(policy, value, clip_epsilon=settings.clip_epsilon,
                                entropy_coeff=settings.entropy_coeff,
                                critic_coeff=settings.critic_coeff, loss_critic_type="l2")
        self.optimizer = torch.optim.Adam(self.loss.parameters(), lr=settings.lr, eps=1e-5)

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """GAE over the batch, then ``epochs`` passes over minibatches of sequences.

        Args:
            batch: The collector's ``[num_envs, rollout_len]`` tensordict (time last).
        """
        with torch.no_grad(), set_recurrent_mode(True):  # sequence mode: time is the last dim
            self.advantage(batch)
        # Rows cut into sequences [num_envs * rollout_len / seq_len, seq_len]; each starts
        # from the recurrent state the collector stored at its first step.
        sequences = batch.reshape(-1, self.settings.seq_len)
        totals = {"loss": 0.0, "updates": 0}
        for _ in range(self.settings.epochs):
            order = torch.randperm(sequences.shape[0])
            for index in order.chunk(self.settings.minibatches):
                losses = self.loss(sequences[index])  # ClipPPOLoss runs in recurrent mode
                loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.loss.parameters(), self.settings.max_grad_norm)
                self.optimizer.step()
                totals["loss"] += loss.item()
                totals["updates"] += 1
        return {"loss": totals["loss"] / totals["updates"]}


def train(core: str = "mlstm", total_steps: int = 40_000, seed: int = 0,
          settings: Settings | None = None, target_success: float | None = None,
          eval_every: int = 4, verbose: bool = True) -> dict[str, float]:
    """Trains PPO on the T-maze and returns the final greedy success rate and the speed.

    Args:
        core: A core name of :data:`CORES` (``lstm-torchrl``: TorchRL's ``LSTMModule``).
        total_steps: Env steps to collect (rounded up to whole iterations).
        seed: Seeds torch and the envs.
        settings: PPO settings (default :class:`Settings`).
        target_success: Stop once a greedy evaluation reaches it (None: never).
        eval_every: Iterations between greedy evaluations when ``target_success`` is set.
        verbose: Print a line per evaluation.

    Returns:
        ``{"success": final success rate, "steps": env steps, "sps": env steps per second
        of training (collection and updates, evaluations excluded)}``.
    """
    settings = settings or Settings()
    torch.manual_seed(seed)
    env = make_env(settings)
    env.set_seed(seed)
    policy, value = make_agent(env, core, settings)
    ppo = PPO(policy, value, settings)
    frames = settings.num_envs * settings.rollout_len
    collector = Collector(env, policy, frames_per_batch=frames, total_frames=-1)
    steps, train_seconds, started = 0, 0.0, time.perf_counter()
    for iteration, batch in enumerate(collector, start=1):
        for group in ppo.optimizer.param_groups:  # linear learning-rate decay to 0
            group["lr"] = settings.lr * (1.0 - steps / max(total_steps, 1))
        ppo.update(batch)
        steps += batch.numel()
        train_seconds = time.perf_counter() - started
        done = steps >= total_steps
        if target_success is not None and (iteration % eval_every == 0 or done):
            success = success_rate(policy, settings, seed + 1)
            started = time.perf_counter() - train_seconds  # evaluation time is not counted
            if verbose:
                print(f"{core}: {steps} steps, greedy success {success:.3f}", flush=True)
            done = done or success >= target_success
        if done:
            break
    collector.shutdown()
    env.close()
    return {"success": success_rate(policy, settings, seed + 1), "steps": float(steps),
            "sps": steps / max(train_seconds, 1e-9)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total-steps", type=int, default=40_000)
    parser.add_argument("--core", choices=CORES, default="mlstm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-success", type=float, default=None,
                        help="stop early once a greedy evaluation reaches this success rate")
    for name in ("num_envs", "rollout_len", "seq_len"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            default=getattr(Settings(), name))
    args = parser.parse_args(argv)
    settings = Settings(num_envs=args.num_envs, rollout_len=args.rollout_len,
                        seq_len=args.seq_len)
    torch.set_num_threads(1)  # small networks: one thread is fastest on CPU
    result = train(args.core, args.total_steps, args.seed, settings,
                   target_success=args.target_success)
    print(f"{args.core}: {result['steps']:.0f} env steps at {result['sps']:.0f} steps/s; "
          f"final success rate {result['success']:.3f}")


if __name__ == "__main__":
    main()
