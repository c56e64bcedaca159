"""``python -m xlstm_rl ...`` runs the ``xlstm-rl`` command line (as ``torchrun -m`` needs)."""
import sys

from xlstm_rl.cli import main

if __name__ == "__main__":
    sys.exit(main())
