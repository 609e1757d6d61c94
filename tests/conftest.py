"""Tests marked `gpu` need an NVIDIA GPU: they skip cleanly where there is none (CI)."""
import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from nestor.codegen import gpu_present
    if gpu_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none present)")
    for item in gpu_items:
        item.add_marker(skip)
