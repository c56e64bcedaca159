"""Reinforcement-learning agents (recurrent PPO; R2D2 next).

This folder installs as ``xlstm_rl.agents``; it is never a top-level package of its own.
"""
if __name__ != "xlstm_rl.agents":  # e.g. `import agents` from the repository root
    raise ImportError(f"'{__name__}' is not importable on its own: this folder is the package "
                      "xlstm_rl.agents; install xlstm-rl and import xlstm_rl.agents")
