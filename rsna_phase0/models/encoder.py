"""The Phase-0 encoder: modality stems + sparse MinkowskiEngine stages + dense WaveFormer stages.

Stage i halves the resolution (stage 0's k2 s2 step is the modality stem), so stage i's map has stride 2^(i+1) and
the last one stride `patch_size`, the mask patch. The sparse stages compute active voxels only: visible ones, minus
background when the preset sets `background_threshold` (models/sparse_stages.py). The contract follows SparK's: `get_downsample_ratio()`,
`get_feature_map_channels()`, `forward(x, mask, modality, hierarchical=True)`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rsna_phase0.models.cuda_graphs import GraphedFunction
from rsna_phase0.models.feature_masks import mask_at_stride, visible_weight
from rsna_phase0.models.geometry import check_input_size
from rsna_phase0.models.sparse_stages import (
    SparseConvNorm,
    SparseStage,
    active_voxels,
    coarser_active,
    sparse_to_dense,
    visible_voxels_to_sparse,
)
from rsna_phase0.models.speedups import GRAPH_WAVE_STAGES
from rsna_phase0.models.waveformer import preset_wave_stages
from rsna_phase0.presets import Preset


class EncoderFeatures(NamedTuple):
    maps: list[torch.Tensor]  # one (B, C_i, S/2^(i+1), ...) map per stage, zeros at hidden positions
    masks: list[torch.Tensor]  # the hidden mask (B, r_i, r_i, r_i) at each stage's scale


def check_input(x: torch.Tensor, modality: str, preset: Preset) -> None:
    """ValueError when `x` (B, C, D, H, W) does not fit the modality's channels or the encoder's sizes."""
    expected = preset.channels(modality)
    if x.ndim != 5 or x.shape[1] != expected:
        raise ValueError(
            f"{modality} input of shape {tuple(x.shape)}: expected (B, {expected}, D, H, W) for preset {preset.name}"
        )
    check_input_size(preset, tuple(x.shape[2:]))


class SparseWaveEncoder(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset
        dims, depths, n_sparse = preset.stage_dims, preset.stage_depths, preset.sparse_stages
        self.stems = nn.ModuleDict(
            {
                name: SparseConvNorm(channels, dims[0], kernel_size=2, stride=2, speedups=preset.speedups)
                for name, channels in preset.modality_channels.items()
            }
        )
        self.conv_stages = nn.ModuleList(
            SparseStage(dims[i - 1] if i else None, dims[i], depths[i], preset.sparse_conv_mode, preset.speedups)
            for i in range(n_sparse)
        )
        self.wave_stages = preset_wave_stages(preset)
        # not a module: parameter names (checkpoints, exports) stay those of wave_stages
        self.graphed_wave_stages = None
        if GRAPH_WAVE_STAGES in preset.speedups:
            self.graphed_wave_stages = GraphedFunction(self.wave_stages, self._wave_stage_maps, GRAPH_WAVE_STAGES)

    def get_downsample_ratio(self) -> int:
        return 2 ** len(self.preset.stage_dims)

    def get_feature_map_channels(self) -> list[int]:
        return list(self.preset.stage_dims)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        modality: str,
        hierarchical: bool = True,
        sparse_groups: list[int] | None = None,
    ):
        """x (B, C, S, S, S); mask (B, g, g, g) bool, True = hidden. Returns EncoderFeatures (or the last map and
        mask when `hierarchical` is False).

        `sparse_groups` (sizes summing to B) runs the sparse stages on each group of rows apart: one MinkowskiEngine
        pass per MiM level, so a level's features do not depend on another level's content even in their last bits
        (a sparse convolution's GEMMs round by the total number of active voxels). Dense stages run on the whole
        batch: per sample, at fixed shapes, their arithmetic does not depend on the other samples."""
        check_input(x, modality, self.preset)
        batch, size, patch = x.shape[0], x.shape[-1], self.get_downsample_ratio()
        if mask.shape != (batch, size // patch, size // patch, size // patch) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask {tuple(mask.shape)} {mask.dtype} does not fit input {tuple(x.shape)} with patch {patch}"
            )
        masks = [mask_at_stride(mask, patch, 2 ** (i + 1)) for i in range(len(self.preset.stage_dims))]
        if sparse_groups is None:
            maps = self.sparse_maps(x, mask, modality)
        else:
            parts = [
                self.sparse_maps(xs, ms, modality)
                for xs, ms in zip(x.split(sparse_groups), mask.split(sparse_groups), strict=True)
            ]
            maps = [torch.cat(level) for level in zip(*parts, strict=True)]
        maps += self.wave_maps(maps[-1], masks[len(maps) :])
        if not hierarchical:
            return maps[-1], masks[-1]
        return EncoderFeatures(maps, masks)

    def sparse_maps(self, x: torch.Tensor, mask: torch.Tensor, modality: str) -> list[torch.Tensor]:
        """Dense (B, C_i, ...) maps of the sparse stages, zero at inactive cells (float32 under any autocast)."""
        active = active_voxels(
            x, ~mask_at_stride(mask, self.get_downsample_ratio(), 1), self.preset.background_threshold
        )
        # MinkowskiEngine has no low-precision kernels worth using: the sparse stages run in float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._sparse_stages(x, active, modality)

    def wave_maps(self, h: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The WaveFormer stages' maps from the last sparse map `h`; `masks` are their hidden masks."""
        visibles = [visible_weight(stage_mask) for stage_mask in masks]
        if self.graphed_wave_stages is not None:
            return list(self.graphed_wave_stages(h, *visibles))
        return list(self._wave_stage_maps(h, *visibles))

    def _wave_stage_maps(self, h: torch.Tensor, *visibles: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = []
        for stage, visible in zip(self.wave_stages, visibles, strict=True):
            h = stage(h, visible)
            maps.append(h)
        return tuple(maps)

    def _sparse_stages(self, x: torch.Tensor, active: torch.Tensor, modality: str) -> list[torch.Tensor]:
        batch, size = x.shape[0], x.shape[-1]
        stem = self.stems[modality]
        dtype = stem.conv.kernel.dtype
        if self.preset.dense_strided_steps:
            # where(), not a product: a hidden voxel holding inf or NaN must not reach the sums either
            visible_input = torch.where(active.unsqueeze(1), x.to(dtype), 0.0)
            active = coarser_active(active)
            sparse = stem.strided_from_dense(visible_input, active, 2)
        else:
            sparse = stem(visible_voxels_to_sparse(x, active, dtype=dtype), batch)
        maps = []
        for i, stage in enumerate(self.conv_stages):
            stride = 2 ** (i + 1)
            if stage.down is not None:
                if self.preset.dense_strided_steps:
                    active = coarser_active(active)
                    sparse = stage.down.strided_from_dense(maps[-1], active, stride, sparse.coordinate_manager)
                else:
                    sparse = stage.down(sparse, batch)
            sparse = stage.run_blocks(sparse, batch)
            maps.append(sparse_to_dense(sparse, batch, size // stride))
        return maps
