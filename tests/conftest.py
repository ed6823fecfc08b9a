"""Shared test fixtures and markers."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine (see README, Testing on a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
