"""The masked-dense oracle of the sparse encoder (tests and benchmarks only: never a product fallback).

It computes what SparK's official code computes: every conv runs densely on the whole volume with inactive voxels
zeroed, its output multiplied by the active mask, BatchNorm statistics taken over active voxels only. Active: visible
and, when the preset sets `background_threshold`, some channel above it; a coarser cell is active when any of its
2^3 children is (what a k2 s2 sparse conv produces). Written from those rules alone, independent of how the sparse
encoder computes its active sets. Weights
come from a sparse encoder through the export's conversion, so sparse == oracle checks the MinkowskiEngine
stages, their kernel layout and the export together. Running BatchNorm statistics are not updated here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsna_phase0.models.dense_encoder import DenseConvBN, DenseEncoder
from rsna_phase0.models.encoder import EncoderFeatures, check_modality
from rsna_phase0.models.export import dense_state_from_sparse
from rsna_phase0.models.masks import mask_at_stride, visible_weight


def masked_conv_bn(layer: DenseConvBN, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """x is zero at hidden positions; `visible` is the mask at the output's scale."""
    y = layer.conv(x) * visible
    norm = layer.norm
    if norm.training:
        count = visible.sum()
        mean = (y * visible).sum(dim=(0, 2, 3, 4)) / count
        var = (((y - mean[None, :, None, None, None]) * visible) ** 2).sum(dim=(0, 2, 3, 4)) / count
    else:
        mean, var = norm.running_mean, norm.running_var
    shape = (1, -1, 1, 1, 1)
    scale = norm.weight.view(shape) / torch.sqrt(var.view(shape) + norm.eps)
    y = (y - mean.view(shape)) * scale + norm.bias.view(shape)
    return y * visible


class MaskedDenseEncoder(nn.Module):
    """Same contract as SparseWaveEncoder.forward; `from_sparse` copies a sparse encoder's weights."""

    def __init__(self, dense: DenseEncoder) -> None:
        super().__init__()
        self.dense = dense
        self.preset = dense.preset

    @classmethod
    def from_sparse(cls, sparse_encoder) -> MaskedDenseEncoder:
        dense = DenseEncoder(sparse_encoder.preset).to(next(sparse_encoder.parameters()).dtype)
        state = {k: v.detach().clone() for k, v in dense_state_from_sparse(sparse_encoder.state_dict()).items()}
        dense.load_state_dict(state)
        oracle = cls(dense).to(next(sparse_encoder.parameters()).device)
        return oracle.train(sparse_encoder.training)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, modality: str, hierarchical: bool = True):
        check_modality(x, modality)
        patch = self.dense.get_downsample_ratio()
        n = len(self.preset.stage_dims)
        masks = [mask_at_stride(mask, patch, 2 ** (i + 1)) for i in range(n)]
        visible = [visible_weight(m).to(x.dtype) for m in masks]
        active_input = visible_weight(mask_at_stride(mask, patch, 1)).to(x.dtype)
        threshold = self.preset.background_threshold
        if threshold is not None:
            active_input = active_input * (x > threshold).any(dim=1, keepdim=True).to(x.dtype)
        # active cells per sparse stage: max-pooling the active input (any child active)
        active, level = [], active_input
        for _ in range(self.preset.sparse_stages):
            level = F.max_pool3d(level, 2)
            active.append(level)
        h = masked_conv_bn(self.dense.stems[modality], torch.where(active_input > 0, x, 0.0), active[0])
        maps = []
        for i, stage in enumerate(self.dense.conv_stages):
            if stage.down is not None:
                h = masked_conv_bn(stage.down, h, active[i])
            for block in stage.blocks:
                h = h + F.gelu(masked_conv_bn(block.conv_bn, h, active[i]))
            maps.append(h)
        for stage, vis in zip(self.dense.wave_stages, visible[len(maps) :], strict=True):
            h = stage(h, vis)
            maps.append(h)
        if not hierarchical:
            return maps[-1], masks[-1]
        return EncoderFeatures(maps, masks)
