"""Units of ``xlstm-rl compare`` that need no training: statistics against hand-computed
values, the matrix from presets and the registry, resume decisions, Ctrl-C forwarding (with a
stand-in child process), and the report built from fabricated rows."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from xlstm_rl.algorithms import (AlgorithmSpec, algorithm_names, register_algorithm,
                                 unregister_algorithm)
from xlstm_rl.compare import runner as runner_module
from xlstm_rl.compare.matrix import Cell, build_matrix
from xlstm_rl.compare.presets import ALL_CORES, PRESETS, TASKS, Preset, TaskPlan
from xlstm_rl.compare.report import render_markdown, write_report
from xlstm_rl.compare.rows import build_row, write_row
from xlstm_rl.compare.runner import RunSummary, cell_action, run_cells
from xlstm_rl.compare.stats import bootstrap_ci, iqm, mean
from xlstm_rl.config import packaged_configs
from xlstm_rl.errors import UserError


# ------------------------------------------------------------------ statistics


def test_bootstrap_ci_against_hand_computed_quantiles() -> None:
    # One value, or all equal: every resample has the same mean.
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)
    # [0, 1]: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles are 0 and 1.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # [0, 0, 0, 1]: the mean is K/4 with K ~ Binomial(4, 1/4): P(K=0) = 0.316 > 2.5%, and
    # P(K <= 2) = 0.949 < 97.5% <= P(K <= 3) = 0.996, so the interval is (0, 0.75).
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0]) == (0.0, 0.75)
    # An 80% interval of the same: P(K = 0) = 0.316 > 10% and P(K <= 1) = 0.738 < 90% <=
    # P(K <= 2) = 0.949, so (0, 0.5).
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], confidence=0.8) == (0.0, 0.5)
    assert bootstrap_ci([1.0, 0.0, 0.5], seed=3) == bootstrap_ci([1.0, 0.0, 0.5], seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.0)


def test_iqm_and_mean_against_hand_computed_values() -> None:
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == 3.0          # n=5: cut 1 each end: (2+3+4)/3
    assert iqm([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 70.0]) == 3.5  # n=8: cut 2: (2+3+4+5)/4
    assert iqm([5.0, 1.0, 3.0]) == 3.0                       # n=3: nothing cut: the mean
    assert iqm([9.0, 0.0, 1.0, 1.0, 1.0, 1.0]) == 1.0        # n=6: cut 1 each end
    assert math.isnan(iqm([])) and math.isnan(mean([]))
    assert mean([1.0, 2.0, 6.0]) == 3.0


# ------------------------------------------------------------------ matrix


def test_matrix_takes_algorithms_from_the_registry_and_skips_missing_configs() -> None:
    toy = AlgorithmSpec(name="toy", config="x:y", trainer="x:y", policy="x:y")
    register_algorithm(toy)
    try:
        every = Preset(name="both", description="both memory tasks", algos=None,
                       plans=(TaskPlan("tmaze", (10,), 4096, 4096),
                              TaskPlan("recall", (10,), 4096, 4096)))
        cells, notes = build_matrix(every, seeds=1, lengths=[10])
    finally:
        unregister_algorithm("toy")
    assert "toy on tmaze: skipped, no packaged config 'toy-mlstm-tmaze'" in notes
    pairs = {(cell.algo, cell.task) for cell in cells}
    for algo in algorithm_names():  # every algorithm with a base config joins, no other
        for task in ("tmaze", "recall"):
            has_config = f"{algo}-mlstm-{task}" in packaged_configs()
            assert ((algo, task) in pairs) == has_config
    assert ("ppo", "tmaze") in pairs
    assert len(cells) == len(pairs) * len(ALL_CORES)
    cartpole, notes = build_matrix(PRESETS["quick"], tasks=["cartpole-pos"], algos=["ppo"],
                                   seeds=1, lengths=[200])
    assert {c.config for c in cartpole} == {"ppo-mlstm-cartpole-pos"} and not notes
    assert "env.kwargs.max_episode_steps=200" in cartpole[0].overrides
    assert f"train.target_return={0.95 * 200}" in cartpole[0].overrides


def test_every_core_gets_the_same_settings_but_its_core() -> None:
    cells, _ = build_matrix(PRESETS["quick"], seeds=1)
    by_length: dict[int, set[tuple[str, ...]]] = {}
    for cell in cells:
        rest = tuple(o for o in cell.overrides if not o.startswith(("model.core=",
                                                                    "model.pattern=")))
        by_length.setdefault(cell.length, set()).add((cell.config, str(cell.steps), *rest))
    assert all(len(settings) == 1 for settings in by_length.values())
    xlstm = next(c for c in cells if c.core == "xlstm")
    assert "model.pattern=ms" in xlstm.overrides
    assert TASKS["tmaze"].target_return(20) == 0.95
    assert TASKS["cartpole-pos"].score(475.0, 500) == 0.95


def test_bad_selections_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown core 'lsmt'; did you mean 'lstm'"):
        build_matrix(PRESETS["quick"], cores=["lsmt"])
    with pytest.raises(UserError, match="memory lengths must be at least 1"):
        build_matrix(PRESETS["quick"], lengths=[0])
    with pytest.raises(UserError, match="--steps must be at least 1"):
        build_matrix(PRESETS["quick"], steps=0)


# ------------------------------------------------------------------ resume decisions


def _cell(**changes) -> Cell:
    base = dict(algo="ppo", task="tmaze", length=5, core="mlp", seed=0, config="ppo-mlstm-tmaze",
                overrides=("model.core=mlp",), steps=1000)
    return Cell(**{**base, **changes})  # type: ignore[arg-type]


def test_cell_action_skips_finished_resumes_interrupted_restarts_failed(tmp_path) -> None:
    cell = _cell()
    assert cell_action(tmp_path, cell) == "fresh"
    folder = tmp_path / "cells" / cell.id
    (folder / "run" / "checkpoints").mkdir(parents=True)
    (folder / "run" / "checkpoints" / "latest.safetensors").write_bytes(b"x")
    (folder / "spec.json").write_text(json.dumps(cell.spec()))
    assert cell_action(tmp_path, cell) == "resume"
    assert cell_action(tmp_path, _cell(steps=2000)) == "fresh"  # another budget: start over
    write_row(tmp_path / "results", {"id": cell.id, "status": "failed", **cell.spec()})
    assert cell_action(tmp_path, cell) == "fresh"  # failed cells are retried from scratch
    write_row(tmp_path / "results", {"id": cell.id, "status": "ok", **cell.spec()})
    assert cell_action(tmp_path, cell) == "skip"
    assert cell_action(tmp_path, _cell(steps=2000)) == "fresh"  # the row is for another spec


# ------------------------------------------------------------------ Ctrl-C

CHILD = """
import signal, sys, time
print('sigint default', signal.getsignal(signal.SIGINT) is signal.default_int_handler)
signal.signal(signal.SIGINT, lambda *a: sys.exit(130))
print('started', flush=True)
time.sleep(60)
"""


@pytest.fixture
def inherited_sigint(request) -> Iterator[Any]:
    """SIGINT's disposition as the runner inherits it (``request.param``), whatever pytest was
    started with (``make test &`` from a script, CI); SIGINT's and SIGTERM's are put back after.

    SIGTERM gets a handler that does nothing, so that a SIGTERM the runner failed to handle
    fails the test instead of killing pytest."""
    found = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, request.param)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    yield request.param
    for signum, handler in found.items():
        if handler is not None:  # None: installed outside Python, never changed here
            signal.signal(signum, handler)


def _run_interrupted(tmp_path, monkeypatch, signums: list[int]
                     ) -> tuple[RunSummary, list[str], list[str], list[Cell]]:
    """Runs three cells two at a time with :data:`CHILD`; once both started, sends ``signums``
    to this process a second apart. Returns the summary, the lines echoed, the lines echoed
    before the last signal, and the cells."""
    monkeypatch.setattr(Cell, "train_argv", lambda self, run_dir, resume:
                        [sys.executable, "-c", CHILD])
    cells = [_cell(seed=0), _cell(seed=1), _cell(seed=2)]
    lines: list[str] = []
    before_last: list[str] = []

    def interrupt() -> None:
        for _ in range(200):
            logs = [tmp_path / "cells" / c.id / "train.log" for c in cells[:2]]
            if all(p.is_file() and "started" in p.read_text() for p in logs):
                break
            threading.Event().wait(0.05)
        for i, signum in enumerate(signums):
            if i:
                threading.Event().wait(1.0)  # several polls of the runner
            before_last[:] = lines
            os.kill(os.getpid(), signum)

    timer = threading.Thread(target=interrupt)
    timer.start()
    summary = run_cells(cells, tmp_path, jobs=2, echo=lines.append)
    timer.join()
    return summary, lines, before_last, cells


def _assert_stopped_without_rows(tmp_path, summary: RunSummary, lines: list[str],
                                 cells: list[Cell]) -> None:
    assert summary.interrupted and not summary.ran and not summary.failed
    assert sorted(lines) == [f"interrupted: {c.id}" for c in cells[:2]]
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "cells" / cells[2].id).exists()  # never started
    assert float((tmp_path / "cells" / cells[0].id / "wall.json").read_text()) > 0
    for cell in cells[:2]:  # the cells start with SIGINT's default action, whatever compare's
        assert "sigint default True" in (tmp_path / "cells" / cell.id / "train.log").read_text()


@pytest.mark.parametrize("inherited_sigint", [signal.default_int_handler], indirect=True)
def test_ctrl_c_stops_the_children_and_keeps_no_row(tmp_path, monkeypatch,
                                                    inherited_sigint) -> None:
    """SIGINT to the runner is forwarded once to each child (which exits 130 as training
    does after writing its checkpoint); no row is written and the wall time is kept."""
    term = signal.getsignal(signal.SIGTERM)
    summary, lines, _, cells = _run_interrupted(tmp_path, monkeypatch, [signal.SIGINT])
    _assert_stopped_without_rows(tmp_path, summary, lines, cells)
    assert signal.getsignal(signal.SIGINT) is inherited_sigint  # restored as found
    assert signal.getsignal(signal.SIGTERM) is term
    assert runner_module.STOP_GRACE_S > 0


@pytest.mark.parametrize("inherited_sigint", [signal.SIG_IGN], indirect=True)
def test_an_inherited_ignored_sigint_stays_ignored_and_sigterm_stops(tmp_path, monkeypatch,
                                                                     inherited_sigint) -> None:
    """Started with SIGINT ignored, the runner ignores Ctrl-C (nothing is forwarded, no cell
    ends) and SIGTERM still stops every cell; SIGINT is ignored again afterwards."""
    term = signal.getsignal(signal.SIGTERM)
    summary, lines, before_term, cells = _run_interrupted(
        tmp_path, monkeypatch, [signal.SIGINT, signal.SIGTERM])
    assert before_term == []  # the SIGINT a second before stopped nothing
    _assert_stopped_without_rows(tmp_path, summary, lines, cells)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is term


# ------------------------------------------------------------------ report


def _row(core: str, seed: int, score: float | None, length: int = 10, reached=None) -> dict:
    cell = _cell(core=core, seed=seed, length=length)
    return {"id": cell.id, "status": "ok" if score is not None else "failed",
            "error": None if score is not None else "exit 1: boom", **cell.spec(),
            "final_score": score, "best_score": score, "steps_to_threshold": reached,
            "wall_s": 10.0, "env_steps_per_s": 100.0, "curve": [[500, 0.5], [1000, score or 0]]}


def test_report_table_has_mean_ci_and_iqm_from_five_seeds(tmp_path) -> None:
    rows = [_row("mlstm", s, v, reached=500 + 100 * s if v else None)
            for s, v in enumerate([1, 1, 1, 0, 1])]
    rows += [_row("mlp", s, v) for s, v in enumerate([0.5, 0.5])]
    rows += [_row("mlp", 2, None), _row("mlp", 0, 0.5, length=40)]
    text = render_markdown(rows, title="T", notes=["a note"])
    low, high = (0.4, 1.0)  # 5 seeds, 4 of them 1: 2.5% / 97.5% quantiles of the means
    assert "- a note" in text
    assert f"| tmaze | ppo | 10 | 0.80 [{low:.2f}, {high:.2f}] | 0.50 [0.50, 0.50] |" in text
    assert "| tmaze | ppo | 40 |  | 0.50 [0.50, 0.50] |" in text
    assert ("| tmaze | ppo | 10 | mlstm | 5 | 0.80 [0.40, 1.00] | 1.00 | 0.80 | 4/5 | 650 | "
            "100 | 10 |") in text  # IQM of 0,1,1,1,1 = 1; median of 500, 600, 700, 900
    assert "| tmaze | ppo | 10 | mlp | 2 (+1 failed) | 0.50 [0.50, 0.50] | - |" in text
    assert "`ppo-tmaze-L10-mlp-s2`: exit 1: boom" in text
    pytest.importorskip("matplotlib")
    files = write_report(tmp_path, rows, title="T")
    assert [f.name for f in files] == ["report.md", "score_vs_length.png", "learning_curves.png"]
    assert all(f.stat().st_size > 1000 for f in files)


def test_rows_score_returns_per_horizon_and_find_the_first_step_past_the_threshold(
        tmp_path) -> None:
    """CartPole's score is eval return / horizon: ``eval/return_mean`` in metrics.jsonl and
    ``mean_return`` in eval.json (the two files name it differently)."""
    cell = _cell(task="cartpole-pos", length=200)
    run = tmp_path / "run"
    run.mkdir()
    metrics = [{"step": 100, "eval/return_mean": 50.0}, {"step": 200, "perf/sps": 10.0},
               {"step": 300, "eval/return_mean": 192.0, "perf/sps": 30.0},
               {"step": 400, "eval/return_mean": 180.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics)
                                       + '{"step": 500, "eval/ret')  # a torn last line
    (run / "eval.json").write_text(json.dumps({"global_step": 400, "mean_return": 170.0,
                                               "success_rate": float("nan")}))
    row = build_row(cell, run, wall_s=4.0)
    assert row["status"] == "ok" and row["final_score"] == 0.85 and row["final_return"] == 170.0
    assert row["curve"] == [[100, 0.25], [300, 0.96], [400, 0.9]]
    assert row["best_score"] == 0.96 and row["steps_to_threshold"] == 300
    assert row["env_steps_per_s"] == 100.0 and row["train_sps"] == 20.0
    failed = build_row(cell, tmp_path / "missing", wall_s=1.0, error="exit 2: error: boom")
    assert failed["status"] == "failed" and failed["final_score"] is None
    assert failed["error"] == "exit 2: error: boom" and failed["curve"] == []


def test_plans_per_algorithm_with_their_own_lengths_seeds_and_episode_settings() -> None:
    preset = Preset(name="two", description="ppo and r2d2 plans", seeds=2, algos=("ppo",),
                    plans=(TaskPlan("tmaze", (10, 20), 4096, 4096, algos=("ppo",)),
                           TaskPlan("tmaze", (30,), 2048, 1024, algos=("r2d2",), seeds=1)))
    cells, notes = build_matrix(preset, cores=["mlstm"])
    assert not notes
    by_algo = {algo: [c for c in cells if c.algo == algo] for algo in ("ppo", "r2d2")}
    assert {(c.length, c.seed, c.steps) for c in by_algo["ppo"]} == {
        (10, 0, 4096), (10, 1, 4096), (20, 0, 4096), (20, 1, 4096)}
    (r2d2,) = by_algo["r2d2"]
    assert (r2d2.length, r2d2.seed, r2d2.steps) == (30, 0, 2048)
    # one stored sequence holds a whole episode (corridor + 2 steps) at every length
    assert {"r2d2.trace_len=32", "r2d2.period=32", "train.eval_every=1024"} <= set(
        r2d2.overrides)
    assert not any(o.startswith("r2d2.") for c in by_algo["ppo"] for o in c.overrides)
    only_r2d2, _ = build_matrix(preset, cores=["mlstm"], algos=["r2d2"], seeds=3)
    assert {c.algo for c in only_r2d2} == {"r2d2"} and len(only_r2d2) == 3
    full, _ = build_matrix(PRESETS["full"], seeds=1)
    assert {(c.algo, c.task) for c in full} == {("ppo", "tmaze"), ("ppo", "recall"),
                                                 ("r2d2", "tmaze")}
