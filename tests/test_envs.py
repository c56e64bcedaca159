"""Tests of xlstm_rl.envs: memory tasks, CartPole views, make_env / make_vec_env."""
from __future__ import annotations

import importlib
import textwrap
import warnings
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control import CartPoleEnv
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import ClipReward, TransformReward

import xlstm_rl.envs as xenvs
from xlstm_rl.envs import (
    DelayedRecallEnv,
    TMazeEnv,
    episode_success,
    make_env,
    make_vec_env,
    register_envs,
)

TASK_IDS = ("xlstm_rl/TMaze-v0", "xlstm_rl/DelayedRecall-v0",
            "xlstm_rl/PositionOnlyCartPole-v0", "xlstm_rl/VelocityOnlyCartPole-v0")


def _run_tmaze(env: TMazeEnv, seed: int, turn) -> tuple[list[np.ndarray], float, dict, int]:
    """Plays one episode; ``turn(first_obs)`` gives the junction action."""
    obs, _ = env.reset(seed=seed)
    first, observations, steps = obs, [obs], 0
    while True:
        at_junction = obs[3] == 1.0
        obs, reward, terminated, truncated, info = env.step(turn(first) if at_junction else 0)
        steps += 1
        assert not truncated
        if terminated:
            return observations, reward, info, steps
        observations.append(obs)


def _oracle(first_obs: np.ndarray) -> int:
    return 0 if first_obs[0] == 1.0 else 1


# ----------------------------------------------------------------------------- registration


@pytest.mark.parametrize("env_id", TASK_IDS)
def test_registered_task_passes_check_env(env_id: str) -> None:
    env = make_env(env_id)
    cartpole = "CartPole" in env_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded CartPole velocities, "wrapped env" notes
        check_env(env.unwrapped, skip_render_check=cartpole)  # pygame is optional
        if cartpole:  # also the partial-observation wrapper itself
            check_env(cast(Any, env).env.env.env, skip_render_check=True)  # make_env's chain
    env.close()


def test_import_and_register_twice_is_harmless() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Overriding environment ... already in registry"
        importlib.reload(xenvs)
        assert register_envs() == TASK_IDS
    assert all(env_id in gym.registry for env_id in TASK_IDS)


# ----------------------------------------------------------------------------- T-maze


def test_tmaze_cue_only_at_first_step_and_episode_length() -> None:
    env = TMazeEnv(corridor_length=10)
    for seed in range(20):
        observations, _, info, steps = _run_tmaze(env, seed, _oracle)
        assert steps == env.episode_length == 11
        assert len(observations) == 11
        assert observations[0][:2].sum() == 1.0
        cue = 0 if observations[0][0] == 1.0 else 1
        assert info["cue"] == cue
        assert all(o[:2].sum() == 0.0 for o in observations[1:])
        assert all(o[3] == 0.0 and o[2] == 1.0 for o in observations[:-1])
        assert observations[-1].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_tmaze_rewards_and_termination() -> None:
    env = TMazeEnv(corridor_length=3, correct_reward=1.0, wrong_reward=-1.0)
    for cue in (0, 1):
        for action, expected in ((cue, 1.0), (1 - cue, -1.0)):
            env.reset(seed=0, options={"cue": cue})
            for _ in range(3):
                _, reward, terminated, truncated, info = env.step(action)
                assert (reward, terminated, truncated, info) == (0.0, False, False, {})
            _, reward, terminated, truncated, info = env.step(action)
            assert reward == expected and terminated and not truncated
            assert info["success"] is (expected > 0)
            with pytest.raises(RuntimeError):
                env.step(0)


def test_tmaze_corridor_actions_have_no_effect() -> None:
    a, b = TMazeEnv(corridor_length=6), TMazeEnv(corridor_length=6)
    obs_a, _ = a.reset(seed=5)
    obs_b, _ = b.reset(seed=5)
    np.testing.assert_array_equal(obs_a, obs_b)
    for _ in range(6):
        obs_a, r_a, *_ = a.step(0)
        obs_b, r_b, *_ = b.step(1)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert r_a == r_b


def test_tmaze_oracle_solves_and_constant_turn_is_at_chance() -> None:
    env = TMazeEnv(corridor_length=10)
    oracle = [_run_tmaze(env, seed, _oracle)[2]["success"] for seed in range(200)]
    assert np.mean(oracle) == 1.0
    always_up = [_run_tmaze(env, seed, lambda _: 0)[2]["success"] for seed in range(1000)]
    assert 0.45 <= np.mean(always_up) <= 0.55


def test_tmaze_is_deterministic_given_seed() -> None:
    cues = [[TMazeEnv().reset(seed=s)[0].tolist() for s in range(30)] for _ in range(2)]
    assert cues[0] == cues[1]
    assert len({tuple(c) for c in cues[0]}) == 2  # both cues occur


def test_tmaze_rejects_bad_arguments_and_renders() -> None:
    with pytest.raises(ValueError):
        TMazeEnv(corridor_length=0)
    env = TMazeEnv(corridor_length=2, render_mode="ansi")
    env.reset(seed=0)
    assert isinstance(env.render(), str)
    with pytest.raises(ValueError):
        env.step(2)


# ----------------------------------------------------------------------------- delayed recall


def _run_recall(env: DelayedRecallEnv, seed: int) -> tuple[list[np.ndarray], float, dict]:
    """Plays one episode with an oracle that remembers the first token."""
    obs, _ = env.reset(seed=seed)
    token, observations = int(np.argmax(obs[:env.vocab_size])), [obs]
    while True:
        action = token if obs[env.query_index] == 1.0 else 0
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        if terminated:
            return observations, reward, info
        observations.append(obs)


@pytest.mark.parametrize("delay", [0, 10, 1000])
def test_recall_oracle_and_delay(delay: int) -> None:
    env = DelayedRecallEnv(delay=delay, vocab_size=5, num_distractors=3)
    v = env.vocab_size
    for seed in range(3 if delay == 1000 else 30):
        observations, reward, info = _run_recall(env, seed)
        assert reward == 1.0 and info["success"]
        assert len(observations) == delay + 2 == env.episode_length
        assert observations[0][:v].sum() == 1.0 and observations[0][v:].sum() == 0.0
        assert info["target"] == int(np.argmax(observations[0][:v]))
        query = observations[-1]
        assert query[env.query_index] == 1.0 and query[:env.query_index].sum() == 0.0
        for obs in observations[1:-1]:  # distractors: one distractor channel, never the query
            assert obs[:v].sum() == 0.0 and obs[env.query_index] == 0.0
            assert obs[v:env.query_index].sum() == 1.0
            assert not np.array_equal(obs, query)


def test_recall_wrong_answer_scores_zero_and_distractors_vary() -> None:
    env = DelayedRecallEnv(delay=50, vocab_size=4, num_distractors=4)
    obs, _ = env.reset(seed=1, options={"target": 2})
    shown = set()
    for _ in range(50):
        obs, reward, terminated, _, _ = env.step(2)
        assert reward == 0.0 and not terminated
        shown.add(int(np.argmax(obs[4:8])))
    assert len(shown) > 1
    obs, _, _, _, _ = env.step(0)  # the query observation arrives
    assert obs[env.query_index] == 1.0
    _, reward, terminated, _, info = env.step(3)
    assert reward == 0.0 and terminated and info["success"] is False


def test_recall_without_distractors_shows_blanks() -> None:
    env = DelayedRecallEnv(delay=4, num_distractors=0)
    observations, reward, _ = _run_recall(env, 0)
    assert reward == 1.0
    assert all(o.sum() == 0.0 for o in observations[1:-1])


# ----------------------------------------------------------------------------- CartPole views


@pytest.mark.parametrize("env_id,indices", [("xlstm_rl/PositionOnlyCartPole-v0", [0, 2]),
                                            ("xlstm_rl/VelocityOnlyCartPole-v0", [1, 3])])
def test_cartpole_views_slice_the_full_state(env_id: str, indices: list[int]) -> None:
    env = make_env(env_id)
    assert env.observation_space.shape == (2,)
    assert env.spec is not None
    assert env.spec.max_episode_steps == 500
    obs, _ = env.reset(seed=0)
    for t in range(30):
        state = np.asarray(cast(CartPoleEnv, env.unwrapped).state, dtype=np.float32)
        np.testing.assert_array_equal(obs, state[indices])
        assert obs.shape == (2,) and obs.dtype == np.float32
        obs, _, terminated, truncated, _ = env.step(t % 2)
        if terminated or truncated:
            break


# ----------------------------------------------------------------------------- make_env


def test_make_env_module_prefix_imports_the_module(tmp_path, monkeypatch) -> None:
    env = make_env("xlstm_rl.envs:xlstm_rl/TMaze-v0", corridor_length=4)
    assert isinstance(env.unwrapped, TMazeEnv) and env.unwrapped.corridor_length == 4
    (tmp_path / "xlstm_rl_test_envmod.py").write_text(textwrap.dedent("""
        import gymnasium as gym
        if "xlstm_rl_test/Recall5-v0" not in gym.registry:
            gym.register("xlstm_rl_test/Recall5-v0",
                         entry_point="xlstm_rl.envs.recall:DelayedRecallEnv",
                         kwargs={"delay": 5})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "xlstm_rl_test/Recall5-v0" not in gym.registry
    env = make_env("xlstm_rl_test_envmod:xlstm_rl_test/Recall5-v0")
    assert cast(DelayedRecallEnv, env.unwrapped).delay == 5


def test_unknown_id_error_is_one_line_with_suggestion() -> None:
    with pytest.raises(ValueError) as info:
        make_env("xlstm_rl/TMaze-v1")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown environment id 'xlstm_rl/TMaze-v1'" in message
    assert "'xlstm_rl/TMaze-v0'" in message
    with pytest.raises(ValueError, match="no_such_module_xyz") as info:
        make_env("no_such_module_xyz:Foo-v0")
    assert "\n" not in str(info.value)


def test_bad_wrapper_path_is_named() -> None:
    for path in ("gymnasium.wrappers.NoSuchWrapper", "no_such_pkg_xyz.Wrapper", "NoDots"):
        with pytest.raises(ValueError) as info:
            make_env("xlstm_rl/TMaze-v0", wrappers=[path])
        assert path in str(info.value) and "\n" not in str(info.value)


def test_wrappers_apply_in_order() -> None:
    order: list[str] = []

    def tag(name: str):
        def wrap(env: gym.Env) -> gym.Env:
            order.append(name)
            return env
        return wrap

    env = make_env("xlstm_rl/TMaze-v0", corridor_length=1, correct_reward=5.0, wrappers=[
        tag("first"),
        {"name": "gymnasium.wrappers.TransformReward", "kwargs": {"func": lambda r: r + 1}},
        {"name": TransformReward, "kwargs": {"func": lambda r: r * 2}},
        {"name": "gymnasium.wrappers:ClipReward", "kwargs": {"max_reward": 10.0}},
        tag("last"),
    ])
    assert order == ["first", "last"]
    assert isinstance(env, ClipReward)
    env.reset(seed=0, options={"cue": 0})
    assert env.step(0)[1] == 2.0  # corridor step: (0 + 1) * 2
    assert env.step(0)[1] == 10.0  # correct turn: (5 + 1) * 2 = 12, clipped to 10


def test_make_env_seed_makes_resets_reproducible() -> None:
    first = [make_env("xlstm_rl/DelayedRecall-v0", seed=7).reset()[0] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])


# ----------------------------------------------------------------------------- make_vec_env


def _check_same_step_autoreset(envs: gym.vector.VectorEnv, corridor_length: int) -> None:
    n = envs.num_envs
    obs, _ = envs.reset(seed=3)
    expected = [TMazeEnv(corridor_length).reset(seed=3 + j)[0] for j in range(n)]
    np.testing.assert_array_equal(obs, np.stack(expected))  # env j seeded with seed + j
    cues = obs[:, 1].astype(np.int64)  # 0 = up, 1 = down
    for _ in range(corridor_length):
        obs, _, terminated, _, infos = envs.step(np.zeros(n, dtype=np.int64))
        assert not terminated.any() and "final_obs" not in infos
    actions = cues.copy()
    actions[0] = 1 - cues[0]  # env 0 turns the wrong way
    obs, rewards, terminated, truncated, infos = envs.step(actions)
    assert terminated.all() and not truncated.any()
    assert infos["_final_obs"].all()
    for j in range(n):
        assert infos["final_obs"][j].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert (obs[:, :2].sum(axis=1) == 1.0).all()  # already the next episodes' first obs
    assert infos["final_info"]["_success"].all()
    success = episode_success(infos, n)
    assert success.tolist() == [0.0] + [1.0] * (n - 1)
    assert rewards.tolist() == success.tolist()


def test_make_vec_env_sync_same_step_autoreset() -> None:
    envs = make_vec_env("xlstm_rl/TMaze-v0", 3, corridor_length=2)
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    _check_same_step_autoreset(envs, 2)
    envs.close()


def test_make_vec_env_async_same_step_autoreset() -> None:
    envs = make_vec_env("xlstm_rl/TMaze-v0", 2, vectorization="async", corridor_length=2,
                        wrappers=["gymnasium.wrappers.RecordEpisodeStatistics"])
    try:
        assert isinstance(envs, gym.vector.AsyncVectorEnv)
        _check_same_step_autoreset(envs, 2)
    finally:
        envs.close()


def test_make_vec_env_seed_and_options() -> None:
    a = make_vec_env("xlstm_rl/DelayedRecall-v0", 2, seed=11)
    b = make_vec_env("xlstm_rl/DelayedRecall-v0", 2, seed=11)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    unseeded = make_vec_env("xlstm_rl/DelayedRecall-v0", 2)
    np.testing.assert_array_equal(a.reset(seed=11)[0], unseeded.reset(seed=11)[0])
    next_step = make_vec_env("xlstm_rl/TMaze-v0", 2, autoreset_mode="next_step")
    assert next_step.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    for envs in (a, b, unseeded, next_step):
        envs.close()
    with pytest.raises(ValueError):
        make_vec_env("xlstm_rl/TMaze-v0", 2, vectorization="threads")
    with pytest.raises(ValueError, match="unknown environment id"):
        make_vec_env("xlstm_rl/NoSuch-v0", 2)
