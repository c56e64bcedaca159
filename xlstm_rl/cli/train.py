"""``xlstm-rl train``: train from a config, log, checkpoint, evaluate; resume after interrupts.

SIGINT (Ctrl-C) or SIGTERM stops the run within one env step, wherever it is (collecting,
evaluating, or after the current update): the last complete state is written to
``checkpoints/latest.safetensors`` and the command exits with 130 (SIGINT) or 143 (SIGTERM).
A second Ctrl-C aborts at once, without a checkpoint. ``--resume RUN_DIR`` continues from the
latest checkpoint: network, optimizer, RNG states, step counters, observation normalization
and the environments (each rebuilt by reseeding its episode and replaying its actions), so
on CPU with the same seed the resumed run matches an uninterrupted one exactly.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

from xlstm_rl.cli.errors import UserError, as_user_error, check_device
from xlstm_rl.config import RunConfig, load_config, save_config
from xlstm_rl.run_loop import INTERRUPT_EXIT, RunLoop, restore_trainer, training_spaces
from xlstm_rl.rundir import (CONFIG_FILE, EVAL_FILE, METRICS_FILE, TB_DIR,
                             check_creatable_dir, check_new_run_dir, checkpoint_path,
                             default_run_dir, prepare_new_run_dir)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag the run loop polls every env step (main thread only).

    Installed whatever disposition SIGINT was inherited with, an ignored one included: a run
    started in the background still stops with a checkpoint on an explicit SIGINT (which is
    how ``compare`` stops its cells). On exit the handlers found are put back.

    Attributes:
        signum: The signal received (None: none yet).
        received_at: ``time.monotonic()`` when it arrived.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        self.signum, self.received_at = signum, time.monotonic()
        from tqdm import tqdm

        tqdm.write(f"{signal.Signals(signum).name}: stopping and writing a checkpoint (Ctrl-C "
                   "again aborts without one)")

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                previous = signal.signal(sig, self._handle)
                # None: a handler installed outside Python, which cannot be put back
                self._previous[sig] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _overrides(args: argparse.Namespace, base: RunConfig | None = None) -> list[str]:
    """``--set`` items plus the shortcut flags; ``--env`` to another id also clears
    ``env.kwargs`` (the config's env kwargs belong to its env)."""
    items = list(args.overrides)
    if args.env is not None and (base is None or args.env != base.env.id):
        items.insert(0, "env.kwargs={}")
    for flag, key in (("env", "env.id"), ("total_steps", "train.total_steps"),
                      ("seed", "train.seed"), ("device", "train.device")):
        value = getattr(args, flag)
        if value is not None:
            items.append(f"{key}={json.dumps(value)}")
    return items


def _config_of(args: argparse.Namespace) -> tuple[RunConfig, str]:
    """The run's config (CONFIG, else the resumed run's ``config.yaml``, else the default)
    with the overrides, and its name; touches no run directory."""
    source = args.config or (Path(args.resume) / CONFIG_FILE if args.resume else None)
    return load_config(source, _overrides(args, load_config(source)[0]))


def _resolve(args: argparse.Namespace) -> tuple[RunConfig, Path, Path | None]:
    """The config, the run directory and (on resume) the checkpoint to continue from."""
    if args.resume is not None:
        for flag, value in (("--run-dir", args.run_dir), ("--overwrite", args.overwrite)):
            if value:
                raise UserError(f"{flag} cannot be combined with --resume")
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"cannot resume {run_dir}: not a run directory (no {CONFIG_FILE})")
        check_creatable_dir(run_dir)  # a resume writes there too: fail before any work
        latest = checkpoint_path(run_dir, "latest")
        if not latest.is_file():
            raise UserError(f"cannot resume {run_dir}: it has no checkpoints/latest.safetensors")
        return _config_of(args)[0], run_dir, latest
    config, name = _config_of(args)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(name)
    check_new_run_dir(run_dir, overwrite=args.overwrite)  # before any work: fail fast
    return config, run_dir, None


def _check_resumable(config: RunConfig, saved: dict[str, Any], path: Path) -> None:
    """The env and model sections must equal those the checkpoint was trained with."""
    from xlstm_rl.typed import to_data

    now = to_data(config)
    for section in ("env", "model"):
        for key, value in now[section].items():
            old = saved.get(section, {}).get(key)
            if old != value:
                raise UserError(f"cannot resume from {path}: config key '{section}.{key}' is "
                                f"{value!r} but the checkpoint was trained with {old!r} "
                                "(the architecture or environment would not match)")


def _build_trainer(config: RunConfig) -> Any:
    """The trainer of ``config``'s algorithm (through the registry); bad env ids, kwargs or
    spaces become user errors."""
    import torch
    from gymnasium.error import Error as GymError

    from xlstm_rl.algorithms import get_algorithm

    check_device(config.train.resolved_device())
    if config.train.torch_threads is not None:
        torch.set_num_threads(config.train.torch_threads)
    with as_user_error(types=(ValueError, TypeError, GymError)):
        return get_algorithm(config.algo).build_trainer(config)


def run_train(args: argparse.Namespace) -> int:
    """Runs ``xlstm-rl train``; see :func:`xlstm_rl.cli.build_parser`.

    Nothing in the run directory changes until the config, the environment, the network and
    (on resume) the checkpoint have all been checked. A fresh run directory gets a step-0
    checkpoint before training starts, so a run stopped at any point can be resumed.

    Returns:
        0 when training completed, 130 / 143 when interrupted by SIGINT / SIGTERM.

    Raises:
        TrainingFault: Non-finite values or a misbehaving env (a one-line user error for the
            CLI); the checkpoints are left as they were.
    """
    from xlstm_rl.checkpoint import load_checkpoint

    scaled = _scale_out(args)
    if scaled is not None:
        return scaled
    config, run_dir, resume_from = _resolve(args)
    ckpt = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        _check_resumable(config, ckpt.config, resume_from)
    with StopFlag() as stop:
        dist = _join_process_group(config)
        together = False  # until this rank leaves where every rank leaves (not on an error)
        try:
            trainer = _build_trainer(config)
            try:
                dist.barrier()  # every rank has checked the run directory before rank 0 writes
                if dist.any(stop.signum is not None):  # stopped while starting: nothing written
                    _say(dist, "interrupted before training started; nothing was written")
                    code = INTERRUPT_EXIT.get(stop.signum or 2, 130)
                else:
                    code = _run(trainer, config, run_dir, ckpt, args, stop)
                together = True
                return code
            finally:
                trainer.close()
        finally:
            from xlstm_rl.distributed import shutdown

            shutdown(graceful=together)


def _scale_out(args: argparse.Namespace) -> int | None:
    """Starts the processes of a ``--nproc`` / ``--actors`` run, or runs an actor rank; None
    when this process is a trainer (rank 0 or a data-parallel rank) or the only process."""
    import os

    from xlstm_rl.algorithms import get_algorithm
    from xlstm_rl.cli.launch import launch_local
    from xlstm_rl.distributed import launched_by_torchrun

    if args.nproc is None and args.actors is None and not launched_by_torchrun():
        return None
    config = _config_of(args)[0]
    spec = get_algorithm(config.algo)
    if args.nproc and spec.worker is not None:
        raise UserError(f"--nproc is for data-parallel algorithms; {config.algo} scales with "
                        "--actors N (actor processes feeding one learner)")
    if args.actors and spec.worker is None:
        raise UserError(f"--actors is for actor-learner algorithms; {config.algo} scales with "
                        "--nproc N (data-parallel processes)")
    for flag, value in (("--nproc", args.nproc), ("--actors", args.actors)):
        if value is not None and not 1 <= value <= 256:
            raise UserError(f"{flag} must be between 1 and 256, got {value}")
    if not launched_by_torchrun():
        count = args.nproc if spec.worker is None else args.actors + 1
        if count <= 1:
            return None
        return launch_local(count, args.argv[1:], fail_fast=spec.worker is None)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if spec.worker is None or rank == 0:
        return None
    return spec.run_worker(config, rank, world)


def _join_process_group(config: RunConfig) -> Any:
    """The process-group context of a data-parallel run (one process otherwise: an
    actor-learner algorithm's learner talks to its actors by itself)."""
    from xlstm_rl.algorithms import get_algorithm
    from xlstm_rl.distributed import DistContext, init_from_environment

    if get_algorithm(config.algo).worker is not None:
        return DistContext()
    with as_user_error("distributed training", types=(ValueError, RuntimeError)):
        return init_from_environment(config.train.resolved_device())


def _say(dist: Any, text: str) -> None:
    if dist.is_main:
        print(text, flush=True)


def _run(trainer: Any, config: RunConfig, run_dir: Path, ckpt: Any, args: argparse.Namespace,
         stop: StopFlag) -> int:
    from xlstm_rl.distributed import current

    dist = current()
    spaces = training_spaces(trainer)
    run_state = restore_trainer(trainer, ckpt) if ckpt is not None else None
    if ckpt is None and dist.is_main:
        prepare_new_run_dir(run_dir, overwrite=args.overwrite)
    loop = RunLoop(trainer, config, run_dir, spaces, run_state=run_state,
                   show_bar=not args.no_progress, dist=dist)
    if ckpt is None:
        loop.save("latest")  # resumable from the first moment
    if dist.is_main:
        save_config(config, run_dir / CONFIG_FILE)
    if loop.run_state.reached_target:
        _say(dist, f"this run already reached train.target_return "
                   f"({config.train.target_return}); nothing left to train (set "
                   "train.target_return=null, or higher, to continue)")
    action = "resuming" if trainer.global_step else "training"
    ranks = f" on {dist.world_size} processes" if dist.enabled else ""
    _say(dist, f"{action} {config.algo} + {config.model.core} on {config.env.id}{ranks}; run "
               f"directory: {run_dir}")
    with loop:
        code = loop.run(stop)
        summary = None if code else loop.finish()
    if summary is None:
        _say(dist, f"interrupted at step {trainer.global_step}; checkpoint written. "
                   f"Resume with: xlstm-rl train --resume {run_dir}")
        return code or INTERRUPT_EXIT.get(stop.signum or 2, 130)
    if dist.is_main:
        _print_summary(summary, run_dir)
    return 0


def _print_summary(summary: dict[str, float], run_dir: Path) -> None:
    parts = [f"return {summary['mean_return']:.3f} +- {summary['std_return']:.3f}",
             f"length {summary['mean_length']:.1f}"]
    if "success_rate" in summary and not math.isnan(summary["success_rate"]):
        parts.append(f"success {summary['success_rate']:.3f}")
    if summary.get("capped_episodes"):
        parts.append(f"{int(summary['capped_episodes'])} episodes cut at "
                     "train.eval_max_episode_steps")
    print(f"final evaluation ({int(summary['episodes'])} episodes): {', '.join(parts)}")
    print(f"run directory: {run_dir}  (checkpoints/, {EVAL_FILE}, {METRICS_FILE}, {TB_DIR}/)")
