"""Package discovery for xlstm-rl.

The top-level folders ``xlstm_rl/ kernels/ agents/ envs/ configs/`` install under the single
namespace ``xlstm_rl`` (``xlstm_rl.kernels``, ``xlstm_rl.agents``, ...). Every subpackage is
discovered here, so a new folder with an ``__init__.py`` can never silently drop out of the wheel.
"""
from setuptools import find_packages, setup

ROOTS = {"xlstm_rl": "xlstm_rl", "xlstm_rl.kernels": "kernels", "xlstm_rl.agents": "agents",
         "xlstm_rl.envs": "envs", "xlstm_rl.configs": "configs"}


def _discover() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        packages.append(name)
        for sub in find_packages(where=folder):
            if name == "xlstm_rl" and sub.split(".")[0] in {"kernels", "agents", "envs", "configs"}:
                continue
            packages.append(f"{name}.{sub}")
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _discover()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR,
      package_data={"xlstm_rl.configs": ["*.yaml"]}, include_package_data=True)
