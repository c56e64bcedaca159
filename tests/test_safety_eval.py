"""``eval`` and ``load_policy`` never import or call what a checkpoint names (issue 8, item 2),
and an unwritable ``--json`` file fails before the evaluation (item 8)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest

from xlstm_rl.checkpoint import load_checkpoint, save_checkpoint
from xlstm_rl.cli import build_parser, main

TINY = ["--set", "env.num_envs=2", "--set", "env.kwargs.corridor_length=2", "--set",
        "model.hidden_size=8", "--set", "model.num_heads=2", "--set", "model.encoder_hidden=8",
        "--set", "ppo.rollout_len=8", "--set", "ppo.seq_len=8", "--set", "ppo.minibatches=1",
        "--set", "ppo.epochs=1", "--set", "train.eval_episodes=1", "--set",
        "train.torch_threads=1", "--total-steps", "16", "--no-progress"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safety_eval") / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run / "checkpoints" / "latest.safetensors"


def _hostile(good: Path, out: Path, marker: Path, env_id: str) -> Path:
    """A validly signed checkpoint whose config names code: a module to import and wrappers
    that would run a shell command and write a file of the file's choosing."""
    ckpt = load_checkpoint(good)
    wrappers = [{"name": "pydoc.pipepager", "kwargs": {"cmd": f"touch {marker}"}},
                {"name": "os.system", "kwargs": {}},
                {"name": "torch.save", "kwargs": {"f": str(marker)}}]
    config = {**ckpt.config, "env": {**ckpt.config["env"], "id": env_id, "wrappers": wrappers}}
    return save_checkpoint(out, ckpt.state, config=config, spaces=ckpt.spaces, extra=ckpt.extra)


def _one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("env_id, named", [
    ("xlstm_rl/TMaze-v0", "wrapper 'pydoc.pipepager'"),
    ("antigravity:Fly-v0", "env module 'antigravity'"),
])
def test_eval_refuses_a_checkpoint_that_names_code(good, tmp_path, capsys, env_id,
                                                   named) -> None:
    marker = tmp_path / "EXECUTED"
    path = _hostile(good, tmp_path / "evil.safetensors", marker, env_id)
    line = _one_error_line(capsys, ["eval", str(path), "--episodes", "1"])
    assert named in line and "--trust-checkpoint" in line and "--env" in line
    assert not marker.exists()


def test_eval_with_env_uses_no_wrapper_of_the_file(good, tmp_path, capsys) -> None:
    marker = tmp_path / "EXECUTED"
    path = _hostile(good, tmp_path / "evil.safetensors", marker, "xlstm_rl/TMaze-v0")
    for env in ("xlstm_rl/TMaze-v0", "this:xlstm_rl/TMaze-v0"):
        capsys.readouterr()
        assert main(["eval", str(path), "--episodes", "1", "--env", env]) == 0
        assert "return  mean" in capsys.readouterr().out
    assert not marker.exists()


def test_trust_flag_is_documented_as_running_the_files_code() -> None:
    group = cast(argparse._ArgumentGroup, build_parser()._subparsers)  # set: it has subcommands
    commands = cast("argparse._SubParsersAction[argparse.ArgumentParser]", group._group_actions[0])
    eval_parser = commands.choices["eval"]
    help_text = eval_parser.format_help()
    assert "--trust-checkpoint" in help_text and "trust" in help_text
    assert "runs code" in " ".join(help_text.split())


_PROBE = textwrap.dedent('''
    import json, sys
    import xlstm_rl
    from xlstm_rl.checkpoint import CheckpointError
    from xlstm_rl.cli import main
    named = ("this", "antigravity", "webbrowser", "pydoc")
    before = {m for m in named if m in sys.modules}
    policy = xlstm_rl.load_policy(sys.argv[1])
    after_load = sorted(m for m in named if m in sys.modules and m not in before)
    codes = [main(["eval", path, "--episodes", "1"]) for path in sys.argv[1:]]
    after_eval = sorted(m for m in named if m in sys.modules and m not in before)
    print(json.dumps({"before": sorted(before), "after_load": after_load,
                      "after_eval": after_eval, "codes": codes}))
''')


def test_load_policy_and_eval_import_nothing_the_file_names(good, tmp_path) -> None:
    marker = tmp_path / "EXECUTED"
    files = [str(_hostile(good, tmp_path / f"{name}.safetensors", marker, env_id))
             for name, env_id in (("this", "this:xlstm_rl/TMaze-v0"),
                                  ("antigravity", "antigravity:Fly-v0"))]
    out = subprocess.run([sys.executable, "-c", _PROBE, *files], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after_load"] == [] and result["after_eval"] == [], result
    assert result["codes"] == [2, 2]
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(f).name for f in files)


@pytest.mark.parametrize("target", ["/proc/xlstm-rl-eval.json", "FILE/eval.json"])
def test_unwritable_json_fails_before_evaluating(good, tmp_path, capsys, monkeypatch,
                                                 target) -> None:
    (tmp_path / "FILE").write_text("a regular file")
    target = target.replace("FILE", str(tmp_path / "FILE"))

    def never(*args, **kwargs):
        raise AssertionError("evaluated although --json cannot be written")

    monkeypatch.setattr("xlstm_rl.evaluation.evaluate_policy", never)
    line = _one_error_line(capsys, ["eval", str(good), "--json", target])
    assert "--json file" in line and "cannot be written" in line


def test_json_summary_is_written(good, tmp_path) -> None:
    out = tmp_path / "sub" / "e.json"
    assert main(["eval", str(good), "--episodes", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["episodes"] == 1
    assert [p.name for p in out.parent.iterdir()] == ["e.json"]  # no probe or temp file left
