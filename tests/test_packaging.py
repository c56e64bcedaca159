"""The wheel holds every subpackage and the YAML configs under the single ``xlstm_rl`` namespace,
and the repository's generic folder names never import as packages of their own."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"xlstm_rl": "xlstm_rl", "kernels": "xlstm_rl.kernels", "agents": "xlstm_rl.agents",
           "envs": "xlstm_rl.envs", "configs": "xlstm_rl.configs"}


def _source_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under the five roots, as its installed name."""
    names = set()
    for folder, prefix in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            names.add(".".join((prefix, *rel)))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("xlstm_rl-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_holds_every_subpackage(wheel: zipfile.ZipFile) -> None:
    files = set(wheel.namelist())
    in_wheel = {str(Path(f).parent).replace("/", ".") for f in files if f.endswith("__init__.py")}
    missing = _source_packages() - in_wheel
    assert not missing, f"subpackages missing from the wheel: {sorted(missing)}"
    assert "xlstm_rl/kernels/reference/mlstm_chunkwise.py" in files


def test_wheel_has_no_generic_top_level_names(wheel: zipfile.ZipFile) -> None:
    tops = {f.split("/")[0] for f in wheel.namelist() if not f.split("/")[0].endswith(".dist-info")}
    assert tops == {"xlstm_rl"}


def test_wheel_holds_yaml_configs(wheel: zipfile.ZipFile) -> None:
    sources = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    packaged = {Path(f).name for f in wheel.namelist() if f.startswith("xlstm_rl/configs/")
                and f.endswith(".yaml")}
    assert sources == packaged


def test_wheel_declares_console_script(wheel: zipfile.ZipFile) -> None:
    (entry,) = [f for f in wheel.namelist() if f.endswith("entry_points.txt")]
    assert "xlstm-rl = xlstm_rl.cli:main" in wheel.read(entry).decode()


@pytest.mark.parametrize("name", ["agents", "envs", "kernels", "configs"])
def test_generic_name_from_repo_root_does_not_load_our_code(name: str) -> None:
    probe = (f"import sys\ntry:\n    import {name}\nexcept ImportError as e:\n    print('refused', e)\n"
             f"else:\n    print('loaded', getattr({name}, '__file__', None))\n"
             "print(sorted(m for m in sys.modules if m.startswith('xlstm_rl')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("refused"), out
    assert f"xlstm_rl.{name}" in out[0]
    assert out[1] == "[]", "importing the bare folder name must not load any xlstm_rl module"
