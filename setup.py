"""Package discovery for xlstm-rl.

Layout: the top-level folders ``kernels/ agents/ envs/ configs/`` are reached as
``xlstm_rl.kernels`` etc. through relative symlinks committed in git
(``xlstm_rl/kernels -> ../kernels``, ...). So ``xlstm_rl`` is one ordinary package tree that
editors, type checkers and a bare ``PYTHONPATH=<repo>`` all resolve without an import hook.

- Wheels hold real files: ``find_packages`` walks through the symlinked folders and
  ``build_py`` copies their files' contents (a test builds a wheel and checks there are no links).
- Editable install (``pip install -e .``): setuptools maps only the top-level name ``xlstm_rl``
  to ``<repo>/xlstm_rl`` (its finder, not a ``.pth`` line adding the repository root), so the
  generic folder names never become importable through the install. They do become importable
  when the repository root itself is on ``sys.path`` (running Python from the root, or
  ``PYTHONPATH=<repo>``): the guard at the top of each folder's ``__init__.py`` then refuses
  ``import kernels`` & co., so our modules are never loaded twice under two names.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["xlstm_rl", "xlstm_rl.*"]),
      package_data={"xlstm_rl.configs": ["*.yaml"], "xlstm_rl.kernels.cpu": ["*.c", "*.h"]},
      include_package_data=True)
