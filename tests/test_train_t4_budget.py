"""The weekly Kaggle budget estimate counts a real step's FLOPs (dense and sparse) and scales with the work."""

from __future__ import annotations

import torch

from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.presets import get_preset
from rsna_phase0.training.t4_budget import USERS_VOLUMES, count_step_flops, describe_weekly_budget, weekly_epochs


def test_step_flops_grow_with_the_batch_and_leave_gradients_alone():
    preset = get_preset("smoke")
    torch.manual_seed(0)
    model = Pretrainer(preset)
    one = count_step_flops(model, synthetic_batch(preset, 1, seed=0))
    two = count_step_flops(model, synthetic_batch(preset, 2, seed=0))
    assert one.dense > 1e6 and one.sparse > 1e5
    assert 1.7 < two.dense / one.dense < 2.3  # twice the regions, about twice the work
    assert all(p.grad is None for p in model.parameters())
    budget = weekly_epochs(two, regions_per_step=2)
    # epochs x (volumes / regions per step) x seconds per step = the weekly hours
    hours = budget["epochs"] * USERS_VOLUMES / 2 * two.t4_seconds / 3600
    assert abs(hours - 30.0) < 1e-6
    line = describe_weekly_budget(two, 2, measured_step_s=0.1)
    assert "epochs of 6,244 volumes" in line and "estimate" in line
