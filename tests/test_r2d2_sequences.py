"""R2D2 sequences and burn-in: cutting at episode boundaries (padding, masks, bootstrap slot),
stored state == the actor's state at that step, burn-in without gradient from the stored state."""
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from xlstm_rl.agents.r2d2.actor import Actor
from xlstm_rl.agents.r2d2.config import R2D2Config
from xlstm_rl.agents.r2d2.learning import R2D2Learner
from xlstm_rl.agents.r2d2.networks import R2D2Network
from xlstm_rl.agents.r2d2.sequences import SequenceCutter
from xlstm_rl.agents.r2d2.trainer import build_envs
from xlstm_rl.cores.base import clear_rows
from xlstm_rl.schema import EnvConfig, ModelConfig


def _run_episode(cutter, length, end, episode=0, final=None):
    """Feeds one env an episode of ``length`` steps (obs = 100 * episode + t + 1)."""
    out = []
    for t in range(length):
        obs = torch.tensor([[100.0 * episode + t + 1]])
        state = TensorDict({"h": torch.full((1, 2), float(t))}, batch_size=[1])
        cutter.observe(obs, state, torch.tensor([t == 0]))
        last = t == length - 1
        term = torch.tensor([last and end == "term"])
        trunc = torch.tensor([last and end == "trunc"])
        nxt = torch.tensor([[100.0 * (episode + 1) + 1]]) if last else obs + 1
        out += cutter.step(obs, torch.tensor([t % 2]), torch.tensor([float(t)]), term, trunc,
                           nxt, {0: torch.tensor([-7.0])} if last and end == "trunc" else {})
    return out


def test_sequences_stop_at_termination_padded_and_masked():
    cutter = SequenceCutter(1, burn_in=2, trace_len=4, period=3)
    seqs = _run_episode(cutter, 8, "term")
    assert [int(s["start"]) for s in seqs] == [0, 3, 6]
    head, full, tail = seqs
    # the first trace starts the episode: its burn-in is front padding, reset at the real start
    assert head["obs"][:, 0].tolist() == [0, 0, 1, 2, 3, 4, 5]  # slot 6: next obs, bootstrap
    assert head["reset"].tolist() == [False, False, True] + [False] * 4
    assert head["valid"].tolist() == [False, False, True, True, True, True]
    assert head["state"]["h"].tolist() == [0.0, 0.0]
    assert full["obs"][:, 0].tolist() == [2, 3, 4, 5, 6, 7, 8]  # burn-in = episode steps 1, 2
    assert full["valid"].all() and not full["terminated"].any() and not full["reset"].any()
    assert full["state"]["h"].tolist() == [1.0, 1.0]  # the state fed in at step 1
    assert tail["obs"][:, 0].tolist() == [5, 6, 7, 8, 0, 0, 0]  # terminal: zeros, never used
    assert tail["valid"].tolist() == [True] * 4 + [False] * 2
    assert tail["terminated"].tolist() == [False] * 3 + [True, False, False]
    assert tail["reward"].tolist() == [4.0, 5.0, 6.0, 7.0, 0.0, 0.0]
    assert tail["action"].tolist() == [0, 1, 0, 1, 0, 0]
    assert tail["state"]["h"].tolist() == [4.0, 4.0]


def test_truncated_episode_bootstraps_from_its_final_observation_and_never_crosses():
    cutter = SequenceCutter(1, burn_in=1, trace_len=4, period=3)
    seqs = _run_episode(cutter, 7, "trunc")
    assert [int(s["start"]) for s in seqs] == [0, 3, 6]
    assert seqs[1]["obs"][:, 0].tolist() == [3, 4, 5, 6, 7, -7]
    assert seqs[1]["valid"].all() and not seqs[1]["terminated"].any()
    tail = seqs[2]
    assert tail["obs"][:, 0].tolist() == [6, 7, -7, 0, 0, 0]
    assert tail["valid"].tolist() == [True] * 2 + [False] * 3 and not tail["terminated"].any()
    nxt = _run_episode(cutter, 5, "term", episode=1)  # the next episode starts afresh
    assert int(nxt[0]["start"]) == 0 and nxt[0]["obs"][1, 0] == 101.0
    assert bool(nxt[0]["reset"][1]) and (nxt[0]["obs"][1:6, 0] > 100).all()


def test_windows_are_trimmed_to_the_open_sequences():
    cutter = SequenceCutter(1, burn_in=0, trace_len=4, period=4)
    _run_episode(cutter, 1000, "term")
    assert len(cutter.windows[0].obs) == 0  # the episode ended: nothing kept
    cutter = SequenceCutter(1, burn_in=0, trace_len=4, period=4)
    for t in range(10):  # an open episode keeps at most one sequence's steps
        cutter.observe(torch.ones(1, 1), TensorDict({}, batch_size=[1]), torch.tensor([t == 0]))
        cutter.step(torch.ones(1, 1), torch.zeros(1), torch.zeros(1), torch.tensor([False]),
                    torch.tensor([False]), torch.ones(1, 1), {})
    assert len(cutter.windows[0].obs) <= 4 and len(cutter.windows[0].states) <= 1


@pytest.mark.parametrize("core", ["mlstm", "lstm"])
def test_stored_state_is_the_state_the_actor_had(core):
    cfg = R2D2Config(burn_in=2, trace_len=4, period=4, collect_steps=1, min_replay=1)
    env = EnvConfig(id="xlstm_rl/TMaze-v0", num_envs=3, kwargs={"corridor_length": 9})
    envs = build_envs(env, seed=0)
    torch.manual_seed(0)
    net = R2D2Network(envs.single_observation_space, envs.single_action_space,
                      ModelConfig(core=core, hidden_size=16, num_heads=2, encoder_hidden=16), 16)
    actor = Actor(envs, net, cfg, env.id, torch.device("cpu"), torch.Generator().manual_seed(0))
    actor.reset(seed=0)
    seen, checked = {}, 0
    for _ in range(40):
        reset = torch.as_tensor(actor.stepper.reset_flags)
        state_in = clear_rows(actor.stepper.state, reset)
        for i in range(3):
            seen[(i, actor.cutter.windows[i].t)] = state_in[i].clone()
        for seq in actor.step():
            want = seen[(int(seq["env"]), max(0, int(seq["start"]) - cfg.burn_in))]
            for key, value in want.items(True, True):
                assert torch.equal(seq["state"][key], value)
            nonzero = any(bool(v.abs().sum() > 0) for v in seq["state"].values(True, True))
            assert nonzero == (int(seq["start"]) > cfg.burn_in)
            checked += 1
    assert checked >= 20
    envs.close()


def _learner_and_batch(burn_in=3):
    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    net = R2D2Network(obs_space, gym.spaces.Discrete(2),
                      ModelConfig(core="lstm", hidden_size=8, encoder_hidden=8), 8)
    cfg = R2D2Config(burn_in=burn_in, trace_len=5, period=4, n_step=2, min_replay=1,
                     batch_size=4, replay_capacity=8)
    learner = R2D2Learner(net, cfg)
    B, L = 4, cfg.sequence_len
    state = net.initial_state(B).apply(lambda t: torch.randn_like(t))
    batch = TensorDict({"obs": torch.randn(B, L + 1, 3), "action": torch.randint(2, (B, L)),
                        "reward": torch.randn(B, L),
                        "terminated": torch.zeros(B, L, dtype=torch.bool),
                        "valid": torch.ones(B, L, dtype=torch.bool),
                        "reset": torch.zeros(B, L + 1, dtype=torch.bool), "state": state},
                       batch_size=[B])
    return learner, batch


def test_burn_in_starts_from_the_stored_state():
    learner, batch = _learner_and_batch()
    q_online, q_target = learner.unroll(batch)
    full, _ = learner.online(batch["obs"], batch["state"], None)
    assert torch.allclose(q_online, full[:, 3:], atol=1e-6)
    assert torch.allclose(q_target, full[:, 3:], atol=1e-6)  # target == online at the start
    other = batch.clone()
    other["state"] = batch["state"].apply(torch.zeros_like)
    assert not torch.allclose(learner.unroll(other)[0], q_online, atol=1e-3)


def test_burn_in_carries_no_gradient():
    learner, batch = _learner_and_batch()
    batch["obs"].requires_grad_(True)
    batch["state"] = batch["state"].apply(lambda t: t.clone().requires_grad_(True))
    loss, _, _ = learner.loss(batch, torch.ones(4))
    loss.backward()
    grad = batch["obs"].grad
    assert grad is not None and float(grad[:, :3].abs().max()) == 0.0
    assert float(grad[:, 3:-1].abs().sum()) > 0.0
    assert all(t.grad is None for t in batch["state"].values(True, True))


def test_learner_update_syncs_the_target_on_schedule_and_faults_on_nan():
    from xlstm_rl.errors import TrainingFault

    learner, batch = _learner_and_batch()
    learner.cfg = dataclasses.replace(learner.cfg, target_update_period=2)
    learner.update(batch, torch.ones(4))
    differs = any(not torch.equal(a, b) for a, b in zip(learner.online.parameters(),
                                                        learner.target.parameters()))
    learner.update(batch, torch.ones(4))
    same = all(torch.equal(a, b) for a, b in zip(learner.online.parameters(),
                                                 learner.target.parameters()))
    assert differs and same
    batch["reward"][0, 4] = float("nan")
    before = [p.detach().clone() for p in learner.online.parameters()]
    with pytest.raises(TrainingFault, match="non-finite loss") as info:
        learner.update(batch, torch.ones(4))
    assert "\n" not in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.online.parameters()))
