"""Packaging and import layout.

``xlstm_rl/{kernels,agents,envs,configs}`` are committed relative symlinks to the top-level
folders, so the source tree itself is the ``xlstm_rl`` package (for editors, type checkers and a
bare ``PYTHONPATH``). The wheel holds every subpackage and the YAML configs as real files, and
the repository's generic folder names never import as packages of their own.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("kernels", "agents", "envs", "configs")
FOLDERS = {"xlstm_rl": "xlstm_rl", **{name: f"xlstm_rl.{name}" for name in LINKED}}


def _source_files(folder: str) -> dict[str, Path]:
    """Python, YAML and C files under a top-level folder, by their path inside the wheel."""
    prefix = "xlstm_rl" if folder == "xlstm_rl" else f"xlstm_rl/{folder}"
    return {f"{prefix}/{p.relative_to(ROOT / folder).as_posix()}": p
            for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yaml", ".c", ".h"}
            and "__pycache__" not in p.parts}


def _source_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under the five roots, as its installed name."""
    names = set()
    for folder, prefix in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            names.add(".".join((prefix, *rel)))
    return names


@pytest.mark.parametrize("name", LINKED)
def test_subpackage_is_a_relative_symlink_to_the_top_level_folder(name: str) -> None:
    link = ROOT / "xlstm_rl" / name
    assert link.is_symlink(), f"{link} must be a symlink to ../{name}"
    assert os.readlink(link) == f"../{name}", "relative, so it holds in any checkout"
    assert link.resolve() == (ROOT / name).resolve()
    if (ROOT / ".git").exists():  # committed as a link (mode 120000), not as a copied folder
        mode = subprocess.run(["git", "ls-files", "-s", f"xlstm_rl/{name}"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.split()[:1]
        assert mode == ["120000"], mode


def test_plain_checkout_resolves_subpackages(tmp_path: Path) -> None:
    """No site-packages (``-S``: neither the install nor its import hook), only the repository
    on the path: the subpackages resolve to the plain files through the symlinks."""
    probe = ("import importlib.resources, xlstm_rl.configs, xlstm_rl.agents\n"
             "print(xlstm_rl.configs.__file__)\n"
             "print(sorted(p.name for p in importlib.resources.files('xlstm_rl.configs')"
             ".iterdir() if p.name.endswith('.yaml'))[0])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == str(ROOT / "xlstm_rl" / "configs" / "__init__.py")
    assert out[1].endswith(".yaml")


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


def test_wheel_holds_real_files_not_links(wheel: zipfile.ZipFile) -> None:
    links = [i.filename for i in wheel.infolist() if stat.S_ISLNK(i.external_attr >> 16)]
    assert not links, f"symlink entries in the wheel: {links}"
    for folder in ("kernels", "configs"):  # the files' contents, not a link target path
        for name, source in _source_files(folder).items():
            assert wheel.read(name) == source.read_bytes(), name


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


@pytest.mark.parametrize("name", LINKED)
def test_generic_name_from_repo_root_does_not_load_our_code(name: str) -> None:
    probe = (f"import sys\ntry:\n    import {name}\n"
             "except ImportError as e:\n    print('refused', e)\n"
             f"else:\n    print('loaded', getattr({name}, '__file__', None))\n"
             "print(sorted(m for m in sys.modules if m.startswith('xlstm_rl')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("refused"), out
    assert f"xlstm_rl.{name}" in out[0]
    assert out[1] == "[]", "importing the bare folder name must not load any xlstm_rl module"


@pytest.mark.parametrize("name", LINKED)
def test_install_does_not_expose_generic_names(name: str, tmp_path: Path) -> None:
    """Outside the repository root, the install (editable or not) puts only ``xlstm_rl`` on the
    path: a same-named third-party package, if any, is not shadowed by our folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (f"import importlib.util\nspec = importlib.util.find_spec({name!r})\n"
             "print(spec.origin if spec else None)")
    origin = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert origin == "None" or not Path(origin).resolve().is_relative_to(ROOT), origin
