"""Recurrent PPO with stored chunk-start states.

Example::

    from xlstm_rl.agents.ppo import PPOConfig, PPOTrainer
    from xlstm_rl.schema import EnvConfig, ModelConfig

    trainer = PPOTrainer(EnvConfig(id="xlstm_rl/TMaze-v0", num_envs=16,
                                   kwargs={"corridor_length": 10}),
                         ModelConfig(core="mlstm", hidden_size=32, encoder_hidden=32),
                         PPOConfig(rollout_len=32, seq_len=32, lr=1e-3), seed=0)
    trainer.train(40_000)
    print(trainer.evaluate(100))          # {"mean_return": ..., "success_rate": ...}
    state = trainer.state_dict()          # tensors / scalars / strings only: resume exactly

Modules: ``config`` (PPOConfig, no torch), ``collect`` (rollouts through the shared acting
loop), ``buffer`` (time-major rollout + chunk-start states), ``loss`` (GAE and PPO terms),
``trainer``, ``policy`` (the acting policy of a checkpoint), ``bench``.

Importing this package imports only the config; the trainer (and torch) load on first use.
"""
from __future__ import annotations

from typing import Any

from .config import PPOConfig

__all__ = ["PPOConfig", "PPOTrainer", "build_envs"]


def __getattr__(name: str) -> Any:
    if name in ("PPOTrainer", "build_envs"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
