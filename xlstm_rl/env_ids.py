"""The ids of the built-in tasks and their registration with gymnasium, done by ``import xlstm_rl``.

``import xlstm_rl`` must not import gymnasium (it costs a few hundred milliseconds, and
``xlstm-rl --help`` stays free of it), and gymnasium 1.x has no plugin entry points that
would register our ids when it is imported. So:

* gymnasium already imported: the ids are registered at once;
* otherwise a one-shot import hook registers them right after ``import gymnasium`` finishes.

Either way the entry points are strings (``"xlstm_rl.envs.tmaze:TMazeEnv"``), so gymnasium
imports an env module only in ``gymnasium.make``. ``import xlstm_rl.envs`` registers them as
well (:func:`xlstm_rl.envs.register_envs`), whatever the order of imports.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing only: importlib.abc alone would import tempfile, shutil, bz2, ...
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

TMAZE_ID = "xlstm_rl/TMaze-v0"
DELAYED_RECALL_ID = "xlstm_rl/DelayedRecall-v0"
POSITION_ONLY_CARTPOLE_ID = "xlstm_rl/PositionOnlyCartPole-v0"
VELOCITY_ONLY_CARTPOLE_ID = "xlstm_rl/VelocityOnlyCartPole-v0"

TASKS: dict[str, dict[str, Any]] = {
    TMAZE_ID: {"entry_point": "xlstm_rl.envs.tmaze:TMazeEnv", "reward_threshold": 1.0},
    DELAYED_RECALL_ID: {"entry_point": "xlstm_rl.envs.recall:DelayedRecallEnv",
                        "reward_threshold": 1.0},
    POSITION_ONLY_CARTPOLE_ID: {"entry_point": "xlstm_rl.envs.cartpole:make_position_only_cartpole",
                                "max_episode_steps": 500, "reward_threshold": 475.0},
    VELOCITY_ONLY_CARTPOLE_ID: {"entry_point": "xlstm_rl.envs.cartpole:make_velocity_only_cartpole",
                                "max_episode_steps": 500, "reward_threshold": 475.0},
}
"""Id -> keyword arguments of ``gymnasium.register``."""
TASK_IDS: tuple[str, ...] = tuple(TASKS)

__all__ = ["TASKS", "TASK_IDS", "register_on_gymnasium_import", "register_tasks"]


def register_tasks() -> tuple[str, ...]:
    """Registers the tasks with gymnasium (imported here); ids already registered are left alone.

    Returns:
        The task ids.
    """
    import gymnasium  # noqa: PLC0415 - only once gymnasium is wanted (see the module docstring)

    for env_id, spec_kwargs in TASKS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **spec_kwargs)
    return TASK_IDS


class _AfterGymnasiumImport:  # a meta path finder; importlib.abc's base class costs imports
    """Finds ``gymnasium`` through the finders after it and makes that spec's loader register
    the tasks once gymnasium's ``__init__`` has run; then it leaves ``sys.meta_path``.

    It stays until gymnasium is actually imported: ``importlib.util.find_spec("gymnasium")``
    (a common "is it installed" check, torchrl's among them) finds without executing.
    """

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "gymnasium":
            return None
        # the finders after this one, as the import system would ask them (no recursion)
        later = sys.meta_path[sys.meta_path.index(self) + 1:] if self in sys.meta_path else []
        for finder in later:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    _register_after_exec(spec.loader, self)
                return spec
        return None


def _register_after_exec(loader: Any, finder: _AfterGymnasiumImport) -> None:
    """Wraps ``loader.exec_module`` (that instance only, for one call) to register afterwards."""
    run = loader.exec_module

    def exec_then_register(module: ModuleType) -> None:
        delattr(loader, "exec_module")  # the loader's own method again (a reload is not ours)
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        run(module)
        register_tasks()

    try:
        setattr(loader, "exec_module", exec_then_register)  # noqa: B010 - mypy: no method assignment
    except AttributeError:  # a loader with __slots__: `import xlstm_rl.envs` still registers
        pass


def register_on_gymnasium_import() -> None:
    """Registers the tasks now if gymnasium is imported, else right after it is (called by
    ``import xlstm_rl``; calling it again is harmless)."""
    gymnasium = sys.modules.get("gymnasium")
    if gymnasium is not None:
        if hasattr(gymnasium, "register"):  # not while gymnasium itself is half imported
            register_tasks()
        return
    if not any(isinstance(finder, _AfterGymnasiumImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterGymnasiumImport())
