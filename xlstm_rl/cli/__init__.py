"""The ``xlstm-rl`` command line: ``train``, ``eval``, ``plot``, ``bench`` and ``compare``.

Every user error (bad arguments, config key or value, environment id, checkpoint, run
directory) prints one line ``error: ...`` on stderr and exits with code 2. Commands import
their heavy dependencies (torch, gymnasium, tensorboard, matplotlib) only when they run.

Exit codes: 0 success; 2 user error; 130 training interrupted by SIGINT (Ctrl-C) and 143 by
SIGTERM, in both cases after writing ``checkpoints/latest.safetensors`` (resume with
``--resume RUN_DIR``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xlstm_rl.version import __version__

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``error: ...``) and raise instead of exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(f"{message} (see '{self.prog} --help')")


class _ArgError(Exception):
    pass


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an agent (default: PPO + mLSTM on the T-maze)",
                       description="Train an agent. CONFIG is a YAML file or the name of a "
                       "packaged config (see 'xlstm-rl configs'); default: ppo-mlstm-tmaze.",
                       epilog="Ctrl-C (or SIGTERM) writes checkpoints/latest.safetensors and "
                       "exits with 130 (143); continue with --resume RUN_DIR.")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="config file or packaged config name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ppo.lr=1e-3 (repeatable)")
    p.add_argument("--env", metavar="ID", help="environment id (--set env.id=ID; another id "
                   "than the config's also clears env.kwargs); 'module:EnvId' imports module "
                   "first")
    p.add_argument("--total-steps", type=int, metavar="N",
                   help="env steps to train for (train.total_steps)")
    p.add_argument("--seed", type=int, metavar="S", help="seed (train.seed)")
    p.add_argument("--device", metavar="D", help="torch device (train.device)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="run directory (default: runs/<config>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest "
                   "checkpoint (config from DIR/config.yaml unless CONFIG is given)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, metavar="N", help="train data-parallel in N processes "
                   "on this machine (as torchrun --nproc-per-node N -m xlstm_rl train ...); "
                   "env.num_envs is per process")
    p.add_argument("--actors", type=int, metavar="N", help="actor-learner algorithms (r2d2): N "
                   "actor processes with their own envs feed one learner (Ape-X)")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or a run directory",
                       description="Evaluate a trained policy and print return statistics.")
    p.add_argument("source", metavar="CHECKPOINT_OR_RUN",
                   help="a .safetensors checkpoint or a run directory (best, else latest)")
    p.add_argument("--episodes", type=int, default=20, metavar="N",
                   help="episodes (default 20); env i of K runs (N + i) // K of them")
    p.add_argument("--max-episode-steps", type=int, default=100_000, metavar="T",
                   help="cut an episode after T steps and report it as capped (default 100000)")
    p.add_argument("--env", metavar="ID", help="evaluate on this env id instead of the run's")
    p.add_argument("--num-envs", type=int, metavar="K", help="parallel envs (default: the run's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="env seed (default 0)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p.add_argument("--device", default="cpu", metavar="D", help="torch device (default cpu)")
    p.add_argument("--video", metavar="DIR", help="record videos to DIR (needs moviepy and an "
                   "env that renders rgb_array; uses one env)")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="trust the checkpoint file: import the env module ('module:EnvId') and "
                   "apply the wrappers its config names, which runs code of the file's "
                   "choosing. Without it, eval imports and calls nothing the file names")


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot learning curves from TensorBoard logs",
                       description="Plot one TensorBoard scalar of one or more runs "
                       "(needs matplotlib: pip install 'xlstm-rl[plot]').")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument("--tag", default=None, metavar="TAG",
                   help="scalar tag to plot (default: the episode return)")
    p.add_argument("--out", default="learning_curves.png", metavar="PNG",
                   help="output image (default learning_curves.png)")
    p.add_argument("--smooth", type=float, default=0.0, metavar="A",
                   help="exponential smoothing weight in [0, 1) (default 0)")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write a JSON report",
                       description="cores: memory cores and reference kernels; kernels: "
                       "Triton vs reference kernels; ppo: PPO training throughput; r2d2: "
                       "R2D2 learner updates and actor env-steps per second.")
    p.add_argument("what", choices=("cores", "kernels", "ppo", "r2d2", "compile"),
                   help="what to benchmark")
    p.add_argument("--out", metavar="FILE", help="report file (default bench-<what>.json)")
    p.add_argument("--device", default=None, metavar="D",
                   help="torch device (default: cuda when available, else cpu)")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from xlstm_rl.compare.presets import PRESETS

    p = sub.add_parser("compare", help="memory benchmark: cores x algorithms x tasks x memory "
                       "lengths x seeds, with a report",
                       description="Train every cell of a matrix (cores x algorithms x tasks "
                       "x memory lengths x seeds) as parallel processes and write result rows, "
                       "report.md and PNG figures to OUT. Rerunning the same command resumes: "
                       "finished cells are kept. Presets: " + "; ".join(
                           f"{p.name}: {p.description}" for p in PRESETS.values()),
                       epilog="Exit codes: 0 all cells completed; 1 some cells failed (see "
                       "the report); 2 user error; 130 interrupted (rerun to resume).")
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                   help="the matrix to run (default quick)")
    p.add_argument("--cores", nargs="+", metavar="CORE", help="only these cores")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="only these tasks (tmaze, recall, cartpole-pos)")
    p.add_argument("--algos", nargs="+", metavar="ALGO", help="only these algorithms "
                   "(default: the preset's, else every registered one with configs)")
    p.add_argument("--lengths", nargs="+", type=int, metavar="L",
                   help="memory lengths for every task (default: the preset's)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds per cell (0 .. N-1)")
    p.add_argument("--steps", type=int, metavar="N", help="env steps per cell")
    p.add_argument("--jobs", type=int, metavar="N", help="cells run at once (default: the "
                   "preset's); each uses one torch thread")
    p.add_argument("--out", metavar="DIR", help="output directory (default compare-<preset>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every cell, applied last (repeatable)")
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the rows in OUT without running anything")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xlstm-rl``."""
    parser = _Parser(prog="xlstm-rl", description="Reinforcement learning with xLSTM memory.")
    parser.add_argument("--version", action="version", version=f"xlstm-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_plot(sub)
    _add_bench(sub)
    _add_compare(sub)
    sub.add_parser("configs", help="list the packaged configs")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("train", "eval", "bench", "compare"):
        from xlstm_rl.allocator import keep_freed_memory
        keep_freed_memory()  # no page faults for each step's large temporaries
    if args.command == "train":
        from xlstm_rl.cli.train import run_train
        return run_train(args)
    if args.command == "eval":
        from xlstm_rl.cli.eval import run_eval
        return run_eval(args)
    if args.command == "plot":
        from xlstm_rl.cli.plot import run_plot
        return run_plot(args)
    if args.command == "bench":
        from xlstm_rl.cli.bench import run_bench
        return run_bench(args)
    if args.command == "compare":
        from xlstm_rl.cli.compare import run_compare
        return run_compare(args)
    from xlstm_rl.config import DEFAULT_CONFIG, packaged_configs
    for name in packaged_configs():
        print(name + ("  (default)" if name == DEFAULT_CONFIG else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns the exit code (never raises for user errors).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for a user error, 130 / 143 after an interrupted training run.
    """
    from xlstm_rl.cli.errors import USER_ERRORS, report

    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv  # what --nproc hands on to the processes it starts
    except _ArgError as exc:
        return report(exc)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(args)
    except USER_ERRORS as exc:
        return report(exc)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler, or a second Ctrl-C
        print("interrupted", file=sys.stderr)
        return 130
