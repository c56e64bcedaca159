"""R2D2 learning checks (fixed seeds): memory cores solve the memory tasks, the MLP cannot.

Each run trains with a packaged config and evaluates the greedy policy on 100 held-out
episodes (seeds the training never used) every few iterations, stopping once solved.
"""
import pytest
import torch

from xlstm_rl.config import load_config


def _train(name, overrides, max_steps, eval_every=5, target=0.95):
    """Trains until the held-out success rate reaches ``target``; returns the best rate."""
    from xlstm_rl.agents.r2d2.trainer import build_trainer

    config, _ = load_config(name, overrides)
    torch.set_num_threads(1)
    trainer = build_trainer(config)
    best = 0.0
    try:
        while trainer.global_step < max_steps:
            trainer.train_iteration()
            if trainer.iteration % eval_every == 0:
                result = trainer.evaluate(100)
                best = max(best, result.get("success_rate", 0.0))
                if best >= target:
                    break
    finally:
        trainer.close()
    return best, trainer.global_step


@pytest.mark.learning
def test_mlstm_solves_the_tmaze():
    success, steps = _train("r2d2-mlstm-tmaze", ["train.seed=0"], max_steps=30_000)
    assert success >= 0.95, (success, steps)


@pytest.mark.learning
def test_mlstm_solves_short_delayed_recall():
    overrides = ["train.seed=0", "env.kwargs={delay: 5, vocab_size: 4, num_distractors: 4}",
                 "r2d2.trace_len=8", "r2d2.period=8"]
    success, steps = _train("r2d2-mlstm-recall", overrides, max_steps=40_000)
    assert success >= 0.95, (success, steps)


@pytest.mark.learning
def test_mlp_stays_at_chance_on_the_tmaze():
    # twice the budget the mLSTM needs: without memory the junction is a coin flip
    success, steps = _train("r2d2-mlp-tmaze", ["train.seed=0"], max_steps=10_240,
                            target=2.0)
    assert steps >= 10_240 and success <= 0.6, (success, steps)


@pytest.mark.slow
def test_mlstm_balances_cartpole():
    # seed 0 reaches 500 on 100 held-out episodes at 51,200 env steps (~2.5 min on a busy
    # 2-core CPU); evaluations every 10,240 steps screen on 16 episodes and confirm on 100
    from xlstm_rl.agents.r2d2.trainer import build_trainer

    config, _ = load_config("r2d2-mlstm-cartpole", ["train.seed=0"])
    torch.set_num_threads(1)
    trainer = build_trainer(config)
    best = 0.0
    try:
        while trainer.global_step < 160_000 and best < 475:
            trainer.train_iteration()
            if trainer.global_step % 10_240 == 0 and trainer.evaluate(16)["mean_return"] >= 475:
                best = max(best, trainer.evaluate(100)["mean_return"])
    finally:
        trainer.close()
    assert best >= 475, (best, trainer.global_step)
