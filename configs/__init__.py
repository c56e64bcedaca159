"""YAML run configs shipped as package data.

This folder installs as ``xlstm_rl.configs``; it is never a top-level package of its own.
"""
if __name__ != "xlstm_rl.configs":  # e.g. `import configs` from the repository root
    raise ImportError(f"'{__name__}' is not importable on its own: this folder is the package "
                      "xlstm_rl.configs; install xlstm-rl and import xlstm_rl.configs")
