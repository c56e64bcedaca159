"""Hyper-parameters of recurrent PPO."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from xlstm_rl.schema import freeze_tuple_fields
from xlstm_rl.typed import check_range

if TYPE_CHECKING:
    from xlstm_rl.schema import EnvConfig

MAX_STEPS = 1_000_000
"""Upper bound of per-iteration counts (rollout length, epochs, minibatches)."""


@dataclass(frozen=True)
class PPOConfig:
    """Recurrent PPO (Schulman et al. 2017) with stored chunk-start states.

    One iteration collects ``rollout_len`` steps from every env, then runs ``epochs`` passes
    over the rollout cut into ``seq_len``-step chunks, ``minibatches`` minibatches per pass.
    """

    rollout_len: int = 128
    """Steps collected per env per iteration (``T``)."""
    seq_len: int = 16
    """Length of the training sequence chunks; must divide ``rollout_len``."""
    epochs: int = 4
    """Optimization passes over each rollout."""
    minibatches: int = 4
    """Minibatches per epoch (each holds ``num_envs * rollout_len / seq_len / minibatches``
    chunks; must not exceed the number of chunks)."""
    lr: float = 3e-4
    """Adam learning rate (the start value when annealed)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to 0 over ``train(total_steps)``."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """Clipping range of the probability ratio (and of the value change when clipped)."""
    clip_value_loss: bool = True
    """Clip the value loss around the values recorded while acting (PPO2 style)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clipping threshold."""
    norm_adv: bool = True
    """Normalize advantages per minibatch (zero mean, unit std)."""
    target_kl: float | None = None
    """Stop the epochs of an iteration early once the approximate KL exceeds this (None: never)."""
    refresh_states: bool = False
    """Before every epoch after the first, recompute the stored chunk-start states by running
    the current network over the whole rollout (less stale states, one extra forward pass)."""
    normalize_obs: bool = False
    """Normalize Box observations with running mean / std (updated while collecting)."""
    obs_clip: float = 10.0
    """Clip normalized observations to ``[-obs_clip, obs_clip]``."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before computing advantages (logged returns are raw)."""

    def __post_init__(self) -> None:
        freeze_tuple_fields(self)
        for name in ("rollout_len", "seq_len", "epochs", "minibatches"):
            check_range(name, getattr(self, name), 1, MAX_STEPS, integer=True)
        if self.rollout_len % self.seq_len:
            raise ValueError(f"seq_len ({self.seq_len}) must divide rollout_len "
                             f"({self.rollout_len})")
        for name in ("lr", "adam_eps", "clip_coef", "max_grad_norm", "obs_clip", "reward_scale"):
            check_range(name, getattr(self, name), 0, low_open=True)
        for name in ("gamma", "gae_lambda"):
            check_range(name, getattr(self, name), 0, 1)
        for name in ("vf_coef", "ent_coef"):
            check_range(name, getattr(self, name), 0)
        if self.target_kl is not None:
            check_range("target_kl", self.target_kl, 0)

    def check_env(self, env: EnvConfig) -> None:
        """Checks the settings that depend on the env section (the number of chunks).

        Args:
            env: The run's env config.

        Raises:
            ValueError: If ``minibatches`` exceeds the chunks of one rollout
                (``num_envs * rollout_len / seq_len``).
        """
        chunks = env.num_envs * self.chunks_per_env
        if self.minibatches > chunks:
            raise ValueError(f"ppo.minibatches ({self.minibatches}) must not exceed the chunks "
                             f"of one rollout, env.num_envs * ppo.rollout_len / ppo.seq_len = "
                             f"{env.num_envs} * {self.rollout_len} / {self.seq_len} = {chunks}")

    @property
    def chunks_per_env(self) -> int:
        """Number of ``seq_len`` chunks per env in one rollout."""
        return self.rollout_len // self.seq_len
