"""``xlstm-rl eval``: run a trained policy for N episodes and report return statistics.

A checkpoint is data, not code: unless ``--trust-checkpoint`` is given, eval never imports
or calls anything the file names. The env is built from ids registered in gymnasium (after
``import xlstm_rl.envs``) or given with ``--env``; the ``module:`` part of a
``module:EnvId`` id and the wrappers in the file's config are not imported or applied, and a
file that needs them is refused with a one-line error.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from xlstm_rl.cli.errors import UserError, as_user_error, check_device
from xlstm_rl.fileio import atomic_write_text


def _video_wrapper(folder: str, env_id: str, episodes: int) -> dict[str, Any]:
    from xlstm_rl.envs import make_env

    if importlib.util.find_spec("moviepy") is None:
        raise UserError("--video needs moviepy: pip install 'xlstm-rl[video]'")
    with as_user_error():
        probe = make_env(env_id)
    modes = list(probe.metadata.get("render_modes", []))
    probe.close()
    if "rgb_array" not in modes:
        raise UserError(f"--video needs an env that renders rgb_array frames; {env_id} renders "
                        f"{', '.join(modes) or 'nothing'}")
    from gymnasium.wrappers import RecordVideo  # a callable, so nothing is imported by name

    return {"name": RecordVideo,
            "kwargs": {"video_folder": str(folder), "episode_trigger": lambda e: e < episodes,
                       "name_prefix": "eval", "disable_logger": True}}


def _named_code(env_id: str, wrappers: list[Any]) -> list[str]:
    """What a config would make eval import or call: an unregistered ``module:`` prefix and
    wrappers (as short names)."""
    import gymnasium as gym

    module, sep, name = env_id.partition(":")
    named = [f"env module {module[:40]!r}"] if sep and name not in gym.registry else []
    for spec in wrappers:
        target = spec.get("name") if isinstance(spec, dict) else spec
        named.append(f"wrapper {str(target)[:40]!r}")
    return named


def _env_source(policy: Any, args: argparse.Namespace, path: Any
                ) -> tuple[str, list[Any], dict[str, Any], bool]:
    """``(env_id, wrappers, kwargs, allow_imports)`` for the evaluation env.

    Untrusted (the default), the file's config may name only registered ids and no wrappers;
    ``--env`` replaces its id (the user's own id may be ``module:EnvId``) and drops its
    wrappers, keeping its kwargs only for the same id.
    """
    env = policy.config.env
    trusted = bool(getattr(args, "trust_checkpoint", False))
    wrappers, kwargs = list(env.wrappers), dict(env.kwargs)
    if args.env is not None:
        same = args.env == env.id
        return args.env, wrappers if same and trusted else [], kwargs if same else {}, True
    if not trusted:
        named = _named_code(env.id, wrappers)
        if named:
            more = ", ..." if len(named) > 2 else ""
            raise UserError(f"the checkpoint names code to run ({', '.join(named[:2])}{more}); "
                            "eval imports and calls nothing a file names: pass --env ID for a "
                            "registered env, or --trust-checkpoint if you trust "
                            f"{Path(str(path)).name}")
    return env.id, wrappers, kwargs, trusted


def _make_envs(policy: Any, args: argparse.Namespace, path: Any = None) -> tuple[Any, str]:
    from gymnasium.error import Error as GymError

    from xlstm_rl.envs import make_vec_env

    env_id, wrappers, kwargs, allow_imports = _env_source(policy, args, path)
    num_envs = args.num_envs or min(args.episodes, policy.config.env.num_envs)
    if args.video:
        wrappers.append(_video_wrapper(args.video, env_id, args.episodes))
        kwargs["render_mode"] = "rgb_array"
        num_envs = 1
    if num_envs < 1:
        raise UserError(f"--num-envs must be >= 1, got {num_envs}")
    with as_user_error(types=(ValueError, TypeError, GymError)):
        envs = make_vec_env(env_id, num_envs, wrappers=wrappers, autoreset_mode="same_step",
                            allow_imports=allow_imports, **kwargs)
    for what, have, want in (("observation", envs.single_observation_space,
                              policy.observation_space),
                             ("action", envs.single_action_space, policy.action_space)):
        if have != want:
            envs.close()
            raise UserError(f"{env_id} has {what} space {have}, but the policy was trained on "
                            f"{want}")
    return envs, env_id


def check_writable_file(path: str | Path, what: str) -> Path:
    """Checks, before any work, that file ``path`` can be written (by a probe file that is
    removed again). Creates missing parent folders; writes nothing else.

    Raises:
        UserError: If ``path`` is a folder or its folder cannot be created or written.
    """
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".xlstm-rl-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be written "
                        f"({exc.strerror or type(exc).__name__})") from exc
    return path


def _print(result: dict[str, float], header: str) -> None:
    print(header)
    print(f"return  mean {result['mean_return']:.4g}  std {result['std_return']:.4g}  "
          f"min {result['min_return']:.4g}  max {result['max_return']:.4g}")
    print(f"length  mean {result['mean_length']:.4g}  std {result['std_length']:.4g}  "
          f"min {result['min_length']:.0f}  max {result['max_length']:.0f}")
    if "success_rate" in result:
        print(f"success rate {result['success_rate']:.3f}")
    if result.get("capped_episodes"):
        print(f"{int(result['capped_episodes'])} episodes were cut at --max-episode-steps")


def run_eval(args: argparse.Namespace) -> int:
    """Runs ``xlstm-rl eval``; see :func:`xlstm_rl.cli.build_parser`.

    Returns:
        0 on success.
    """
    from xlstm_rl.checkpoint import load_checkpoint
    from xlstm_rl.evaluation import evaluate_policy
    from xlstm_rl.policy import policy_from_checkpoint
    from xlstm_rl.rundir import find_checkpoint

    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be >= 1, got {args.max_episode_steps}")
    if args.json:
        check_writable_file(args.json, "--json file")
    ckpt = load_checkpoint(find_checkpoint(args.source))
    policy = policy_from_checkpoint(ckpt, device=check_device(args.device))
    envs, env_id = _make_envs(policy, args, ckpt.path)
    try:
        result = evaluate_policy(policy, envs, args.episodes, deterministic=not args.stochastic,
                                 seed=args.seed, max_episode_steps=args.max_episode_steps,
                                 env_id=env_id)
    finally:
        envs.close()
    mode = "stochastic" if args.stochastic else "deterministic"
    step = ckpt.extra.get("global_step")
    at = f" (step {step})" if step is not None else ""
    _print(result, f"{ckpt.path}{at} on {env_id}: {int(result['episodes'])} episodes, {mode}")
    if args.json:
        summary = {"checkpoint": str(ckpt.path), "global_step": step, "env_id": env_id,
                   "deterministic": not args.stochastic, "seed": args.seed, **result}
        try:
            atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write --json file {args.json}: "
                            f"{exc.strerror or exc}") from exc
    if args.video:
        print(f"videos: {args.video}")
    return 0
