"""Library version (single source for pyproject and checkpoints)."""
__version__ = "0.1.0"
