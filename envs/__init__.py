"""Gymnasium environments: memory tasks, wrappers, make_env / make_vec_env.

This folder installs as ``xlstm_rl.envs``; it is never a top-level package of its own.
"""
if __name__ != "xlstm_rl.envs":  # e.g. `import envs` from the repository root
    raise ImportError(f"'{__name__}' is not importable on its own: this folder is the package "
                      "xlstm_rl.envs; install xlstm-rl and import xlstm_rl.envs")
