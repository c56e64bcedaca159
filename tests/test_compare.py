"""``xlstm-rl compare`` end to end: a tiny matrix through the CLI, its report and figures,
resume after an interrupt (only the unfinished cell runs again) and a crashing cell that is
recorded as failed while the others finish.

Every cell here is a real ``python -m xlstm_rl train`` subprocess with tiny widths and a few
hundred steps, so the module costs a handful of process start-ups.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from xlstm_rl.cli import main
from xlstm_rl.compare.matrix import Cell, build_matrix
from xlstm_rl.compare.presets import PRESETS
from xlstm_rl.compare.report import write_report
from xlstm_rl.compare.rows import load_rows
from xlstm_rl.compare.runner import run_cells

TESTS = Path(__file__).resolve().parent
TINY = ["--set", "model.hidden_size=8", "--set", "model.encoder_hidden=8",
        "--set", "model.num_heads=2", "--set", "env.num_envs=4", "--set", "ppo.rollout_len=32",
        "--set", "train.eval_every=128", "--set", "train.eval_episodes=4"]
MATRIX = ["compare", "--cores", "mlstm", "mlp", "--tasks", "tmaze", "--lengths", "2", "3",
          "--seeds", "1", "--steps", "256", "--jobs", "2", "--no-progress", *TINY]
IDS = [f"ppo-tmaze-L{length}-{core}-s0" for length in (2, 3) for core in ("mlstm", "mlp")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> dict:
    """The tiny matrix run once through the CLI (4 cells, 2 at a time)."""
    out = tmp_path_factory.mktemp("compare") / "out"
    code = main([*MATRIX, "--out", str(out)])
    rows = {row["id"]: row for row in load_rows(out)}
    stamps = {i: (out / "results" / f"{i}.json").stat().st_mtime_ns for i in IDS}
    return {"out": out, "code": code, "rows": rows, "stamps": stamps}


@pytest.fixture(scope="module")
def rerun(first_run, tmp_path_factory) -> dict:
    """After the first run: one cell loses its row and run (as if interrupted before it
    started); the rerun adds a cell whose environment returns a NaN reward mid-training."""
    out: Path = first_run["out"]
    lost = IDS[0]
    (out / "results" / f"{lost}.json").unlink()
    shutil.rmtree(out / "cells" / lost)
    cells, _ = build_matrix(PRESETS["quick"], cores=["mlstm", "mlp"], tasks=["tmaze"],
                            lengths=[2, 3], seeds=1, steps=256, extra=TINY[1::2])
    base = next(c for c in cells if c.id == IDS[1])
    crash = dataclasses.replace(base, task="tmaze", length=99, overrides=(
        *base.overrides, "env.id=faulty_envs:xlstm_rl_test/NaNReward-v0", "env.kwargs={}"))
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(TESTS))  # the children import faulty_envs
    lines: list[str] = []
    try:
        summary = run_cells([*cells, crash], out, jobs=2, echo=lines.append)
    finally:
        mp.undo()
    return {"out": out, "lost": lost, "crash": crash, "summary": summary, "lines": lines}


def test_tiny_matrix_through_the_cli_writes_rows_report_and_figures(first_run) -> None:
    out, rows = first_run["out"], first_run["rows"]
    assert first_run["code"] == 0
    assert sorted(rows) == sorted(IDS)
    for row in rows.values():
        assert row["status"] == "ok" and row["error"] is None
        assert row["steps_done"] == 256 and row["steps"] == 256
        assert 0.0 <= row["final_score"] <= 1.0 and row["best_score"] >= row["final_score"]
        assert row["wall_s"] > 0 and row["env_steps_per_s"] > 0 and row["train_sps"] > 0
        assert [step for step, _ in row["curve"]] == [128, 256]
        if row["steps_to_threshold"] is not None:
            assert row["steps_to_threshold"] in (128, 256)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    report = (out / "report.md").read_text()
    for length in (2, 3):
        assert f"| tmaze | ppo | {length} | " in report  # summary row: one column per core
        for core in ("mlstm", "mlp"):
            assert f"| tmaze | ppo | {length} | {core} | 1 | " in report  # detail row
    assert "command: `xlstm-rl compare --preset quick --cores mlstm mlp" in report
    for png in ("score_vs_length.png", "learning_curves.png"):
        data = (out / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 5000
        assert f"]({png})" in report


def test_rerun_runs_only_the_unfinished_cell(first_run, rerun) -> None:
    out, lost = rerun["out"], rerun["lost"]
    summary = rerun["summary"]
    assert sorted(summary.skipped) == sorted(set(IDS) - {lost})
    assert summary.ran == [lost] and not summary.interrupted
    for cell_id in set(IDS) - {lost}:  # untouched: same row file, trained once
        assert (out / "results" / f"{cell_id}.json").stat().st_mtime_ns == \
            first_run["stamps"][cell_id]
        assert (out / "cells" / cell_id / "train.log").read_text().count("\n== ") == 0
    row = json.loads((out / "results" / f"{lost}.json").read_text())
    assert row["status"] == "ok" and row["steps_done"] == 256
    assert row["finished_at"] >= first_run["rows"][lost]["finished_at"]


def test_a_crashing_cell_is_recorded_as_failed_and_the_others_finish(rerun) -> None:
    out, crash = rerun["out"], rerun["crash"]
    assert rerun["summary"].failed == [crash.id]
    row = json.loads((out / "results" / f"{crash.id}.json").read_text())
    assert row["status"] == "failed" and row["final_score"] is None
    assert row["error"].startswith("exit 2: error:") and "reward" in row["error"]
    assert any(line.startswith(f"failed: {crash.id} (exit 2: error:") for line in rerun["lines"])
    assert f"ok: {rerun['lost']}" in rerun["lines"]
    rows = load_rows(out)
    assert len(rows) == 5 and sum(r["status"] == "ok" for r in rows) == 4
    write_report(out / "with_failure", rows, title="t", plots=False)
    report = (out / "with_failure" / "report.md").read_text()
    assert "## Failed cells" in report and f"`{crash.id}`: exit 2: error:" in report
    assert "| tmaze | ppo | 99 | mlp | 0 (+1 failed) | - |" in report


def test_cli_errors_are_one_line(first_run, capsys) -> None:
    for argv, words in ((["--cores", "mlstmm"], "did you mean 'mlstm'"),
                        (["--tasks", "maze"], "unknown task 'maze'"),
                        (["--algos", "ppo2"], "unknown algorithm 'ppo2'"),
                        (["--seeds", "0"], "--seeds must be at least 1")):
        assert main(["compare", *argv, "--list"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_list_prints_every_cell_with_its_overrides(capsys) -> None:
    assert main(["compare", "--preset", "quick", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    quick = PRESETS["quick"]
    plan = quick.plans[0]
    assert len(lines) == len(quick.cores) * len(plan.lengths) * quick.seeds
    assert lines[0].startswith("ppo-tmaze-L") and "--set model.core=" in lines[0]


def test_report_only_rebuilds_the_report_without_running(first_run, tmp_path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(first_run["out"], out, ignore=shutil.ignore_patterns("cells"))
    (out / "report.md").unlink()
    assert main([*MATRIX, "--out", str(out), "--report-only"]) == 0
    assert not (out / "cells").exists()
    assert "| tmaze | ppo | 3 | mlp | 1 | " in (out / "report.md").read_text()


def test_cell_ids_and_argv() -> None:
    cell = Cell("ppo", "tmaze", 20, "xlstm", 3, "ppo-mlstm-tmaze", ("model.core=xlstm",), 1000)
    assert cell.id == "ppo-tmaze-L20-xlstm-s3"
    argv = cell.train_argv(Path("d"), resume=False)
    assert argv[2:5] == ["xlstm_rl", "train", "ppo-mlstm-tmaze"]
    assert ["--set", "model.core=xlstm"] == argv[5:7] and "--overwrite" in argv
    assert cell.train_argv(Path("d"), resume=True)[4:] == ["--resume", "d", "--no-progress"]
