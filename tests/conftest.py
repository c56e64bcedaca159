"""Shared pytest configuration.

Tests marked ``gpu`` are skipped here, at collection, when no CUDA device is present (never by
a module-level skip, so the same files run unchanged on a GPU machine).
"""
import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the suite's tensors are small, where OpenMP start-up and barrier
    costs dominate (and oversubscribe a shared 2-core CI machine)."""
    torch.set_num_threads(1)
