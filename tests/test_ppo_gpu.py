"""A short PPO update on a GPU goes through the Triton kernels (gpu-marked; skipped without CUDA
by the collection hook in conftest.py)."""
from __future__ import annotations

import math

import pytest
import torch


@pytest.mark.gpu
def test_ppo_iteration_on_gpu_uses_triton_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    from xlstm_rl.agents.ppo import PPOConfig, PPOTrainer
    from xlstm_rl.kernels import triton_ops
    from xlstm_rl.schema import EnvConfig, ModelConfig

    calls = {"mlstm_chunkwise": 0, "mlstm_step": 0}
    for name in calls:
        original = getattr(triton_ops, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(triton_ops, name, counted)

    trainer = PPOTrainer(EnvConfig(id="xlstm_rl/TMaze-v0", num_envs=4),
                         ModelConfig(core="mlstm", hidden_size=64, num_heads=2, chunk_size=16),
                         PPOConfig(rollout_len=32, seq_len=16, epochs=1, minibatches=2),
                         seed=0, device="cuda")
    try:
        metrics = trainer.train_iteration()
    finally:
        trainer.close()
    assert calls["mlstm_step"] > 0, "acting did not use the fused Triton step"
    assert calls["mlstm_chunkwise"] > 0, "training did not use the Triton chunkwise kernel"
    losses = [v for k, v in metrics.items() if k.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert next(trainer.policy.parameters()).device.type == "cuda"
    assert torch.cuda.is_available()
