"""Run directories (issue 8, items 1, 5 and 8): ``--overwrite`` deletes only what xlstm-rl
wrote, unwritable run directories fail up front, and Ctrl-C with async envs checkpoints."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlstm_rl.checkpoint import load_checkpoint
from xlstm_rl.cli import main
from xlstm_rl.rundir import MARKER_FILE, prepare_new_run_dir
from xlstm_rl.version import __version__

TINY = ["--set", "env.num_envs=2", "--set", "env.kwargs.corridor_length=2", "--set",
        "model.hidden_size=8", "--set", "model.num_heads=2", "--set", "model.encoder_hidden=8",
        "--set", "ppo.rollout_len=8", "--set", "ppo.seq_len=8", "--set", "ppo.minibatches=1",
        "--set", "ppo.epochs=1", "--set", "train.eval_episodes=1", "--set",
        "train.torch_threads=1", "--no-progress"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("safety_rundir") / "run"
    assert main(["train", *TINY, "--total-steps", "16", "--run-dir", str(path)]) == 0
    return path


def test_new_run_directories_carry_the_marker(run) -> None:
    info = json.loads((run / MARKER_FILE).read_text())
    assert info["library"] == "xlstm-rl" and info["version"] == __version__


def test_overwrite_never_deletes_a_users_files(tmp_path, capsys) -> None:
    folder = tmp_path / "project"
    for name, text in (("config.yaml", "env: {}\n"), ("notes.txt", "keep"),
                       ("src/main.py", "print(1)"), ("data/dataset.csv", "a,b"),
                       ("checkpoints/mine.bin", "x")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = _files(folder)
    line = _one_error_line(capsys, ["train", *TINY, "--run-dir", str(folder), "--overwrite"])
    assert "refusing to overwrite" in line and MARKER_FILE in line
    assert _files(folder) == before


@pytest.mark.parametrize("extra", ["notes.txt", "checkpoints/notes.txt", "tb/plot.png",
                                   "data/x.csv"])
def test_overwrite_refuses_a_run_dir_holding_foreign_files(run, tmp_path, capsys,
                                                           extra) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / extra).parent.mkdir(parents=True, exist_ok=True)
    (copy / extra).write_text("mine")
    before = _files(copy)
    line = _one_error_line(capsys, ["train", *TINY, "--run-dir", str(copy), "--overwrite"])
    assert "which xlstm-rl did not write" in line and extra.split("/")[0] in line
    assert _files(copy) == before


def test_overwrite_refuses_symlinks(run, tmp_path, capsys) -> None:
    copy, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(run, copy)
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    (copy / "tb" / "link").symlink_to(elsewhere)
    _one_error_line(capsys, ["train", *TINY, "--run-dir", str(copy), "--overwrite"])
    assert (elsewhere / "precious.txt").read_text() == "keep"


def test_overwrite_replaces_a_run_dir_written_by_xlstm_rl(run, tmp_path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".metrics.jsonl.tmp12345").write_text("torn")  # stale temp of a killed writer
    assert main(["train", *TINY, "--total-steps", "16", "--run-dir", str(copy),
                 "--overwrite"]) == 0
    assert not (copy / ".metrics.jsonl.tmp12345").exists()
    assert (copy / MARKER_FILE).is_file()
    assert (copy / "checkpoints" / "latest.safetensors").is_file()


def test_old_run_dir_without_marker_is_not_overwritten_but_resumes(run, tmp_path,
                                                                   capsys) -> None:
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / MARKER_FILE).unlink()
    before = _files(old)
    line = _one_error_line(capsys, ["train", *TINY, "--run-dir", str(old), "--overwrite"])
    assert "no .xlstm-rl-run marker" in line and "by hand" in line
    assert _files(old) == before
    assert main(["train", "--resume", str(old), "--total-steps", "32", "--no-progress",
                 "--set", "train.target_return=null"]) == 0  # it reached the target at 16
    assert load_checkpoint(old / "checkpoints" / "latest.safetensors").extra["global_step"] == 32


@pytest.mark.parametrize("target", ["/proc/xlstm-rl-test/run", "FILE/run"])
def test_unwritable_run_directory_is_one_line(tmp_path, capsys, target) -> None:
    (tmp_path / "FILE").write_text("a regular file")
    target = target.replace("FILE", str(tmp_path / "FILE"))
    line = _one_error_line(capsys, ["train", *TINY, "--run-dir", target])
    assert "cannot" in line and "run directory" in line
    assert (tmp_path / "FILE").read_text() == "a regular file"


def test_prepare_new_run_dir_leaves_no_probe(tmp_path) -> None:
    path = prepare_new_run_dir(tmp_path / "a" / "b")
    assert [p.name for p in path.iterdir()] == [MARKER_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_ctrl_c_to_the_process_group_with_async_envs_checkpoints(tmp_path) -> None:
    """SIGINT reaches the whole process group (a terminal's Ctrl-C): the async workers must
    survive it so the main process can snapshot them and write the checkpoint."""
    run = tmp_path / "run"
    argv = [sys.executable, "-c", "import sys; from xlstm_rl.cli import main; "
            "sys.exit(main(sys.argv[1:]))", "train", *TINY, "--set",
            "env.vectorization=async", "--total-steps", "100000000", "--run-dir", str(run)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no training iteration within 120 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]
    ckpt = load_checkpoint(run / "checkpoints" / "latest.safetensors")
    assert ckpt.extra["global_step"] >= 16
