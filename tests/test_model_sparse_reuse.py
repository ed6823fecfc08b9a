"""The sparse stages' bookkeeping: one coordinate manager per batch, one kernel map per stride reused by every block
and by backward, no stride-1 coordinate map with dense k2 s2 steps; and which voxels are active."""

from __future__ import annotations

import re

import pytest
import torch
from model_helpers import patch_masks, tiny_preset

import rsna_phase0.models.encoder as encoder_module
from rsna_phase0.models.encoder import SparseWaveEncoder
from rsna_phase0.models.sparse_stages import active_voxels, coarser_active


def _managers_after_a_step(preset, monkeypatch) -> list:
    seen = []
    to_dense = encoder_module.sparse_to_dense

    def spy(x, batch_size, size):
        seen.append(x.coordinate_manager)
        return to_dense(x, batch_size, size)

    monkeypatch.setattr(encoder_module, "sparse_to_dense", spy)
    torch.manual_seed(0)
    encoder = SparseWaveEncoder(preset).train()
    x = torch.rand(2, 1, 32, 32, 32) + 0.05
    out = encoder(x, patch_masks(2, preset.grid, 0.6, seed=0), "mri")
    sum(m.square().sum() for m in out.maps).backward()
    return seen


@pytest.mark.parametrize("dense_strided_steps", [True, False])
def test_one_manager_and_one_kernel_map_per_stride(dense_strided_steps, monkeypatch):
    preset = tiny_preset(stage_depths=(2, 2, 1), dense_strided_steps=dense_strided_steps)
    managers = _managers_after_a_step(preset, monkeypatch)
    assert len(managers) == 2 and managers[0] is managers[1]
    # MinkowskiEngine 0.5.4 lists its maps in the manager's repr: "[s, s, s, ]:\tCoordinateMap..." and
    # "[s, s, s, ]->[s, s, s, ]:\t..._kernel_map" (with two backspaces before each "]", removed here)
    text = str(managers[0]).replace("\x08", "")
    strides = sorted(int(s) for s in re.findall(r"\[(\d+), \d+, \d+, \]:\s*CoordinateMap", text))
    kernel_maps = re.findall(r"\[(\d+), \d+, \d+, \]->\[(\d+), \d+, \d+, \]:\s*\w*kernel_map", text)
    submanifold = [a for a, b in kernel_maps if a == b]
    assert sorted(int(s) for s in submanifold) == [2, 4], text  # two blocks per stride share one map
    if dense_strided_steps:
        assert strides == [2, 4] and len(kernel_maps) == 2, text  # no stride-1 map, no k2 s2 kernel maps
    else:
        assert strides == [1, 2, 4] and len(kernel_maps) == 4, text


def test_active_voxels_are_visible_and_not_background():
    image = torch.zeros(1, 3, 4, 4, 4)
    image[0, 2, 0] = 0.5  # one channel above the threshold is enough
    image[0, :, 3] = 9.0  # bright, but hidden below
    visible = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    visible[0, 3] = False
    active = active_voxels(image, visible, background_threshold=0.0)
    assert active[0, 0].all() and not active[0, 1:].any()
    assert torch.equal(active_voxels(image, visible, background_threshold=None), visible)
    coarse = coarser_active(active)
    assert coarse.shape == (1, 2, 2, 2) and coarse[0, 0].all() and not coarse[0, 1].any()


def test_presets_reject_unknown_sparse_conv_modes():
    with pytest.raises(ValueError, match="sparse_conv_mode"):
        tiny_preset(sparse_conv_mode="fast")
