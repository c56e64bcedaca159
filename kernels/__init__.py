"""mLSTM / sLSTM kernels: pure-PyTorch reference and Triton, behind one dispatch.

This folder installs as ``xlstm_rl.kernels``; it is never a top-level package of its own.
"""
if __name__ != "xlstm_rl.kernels":  # e.g. `import kernels` from the repository root
    raise ImportError(f"'{__name__}' is not importable on its own: this folder is the package "
                      "xlstm_rl.kernels; install xlstm-rl and import xlstm_rl.kernels")
