"""Shared test fixtures and markers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the benchmark scripts' modules (profile_trace, throughput_measure, ...) are tested as they are run: from their folder
sys.path.insert(0, str(REPO / "benchmarks"))
# the installers' packages (installers.minkowski, ...), which run from a checkout and are never pip-installed
sys.path.insert(0, str(REPO))


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


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """A small synthetic data set shared by the training tests: (mri_dir, ct_dir), real NIfTI files."""
    from rsna_phase0.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("train_data")
    synth_dataset(root, mri=8, ct=4, seed=0)
    return root / "OpenMind_processed", root / "NIH_deeplesion" / "CT"
