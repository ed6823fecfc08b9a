"""The encoder as plain PyTorch (dense Conv3d + BatchNorm3d + the same WaveFormer stages), for fine-tuning.

Module names mirror the sparse encoder (models/encoder.py, models/sparse_stages.py) so models/export.py maps
weights one to one. With every voxel visible and none background (the preset's `background_threshold`), it
computes what the sparse encoder computes. No MinkowskiEngine.
"""

from __future__ import annotations

import torch
from torch import nn

from rsna_phase0.batch import MODALITY_CHANNELS
from rsna_phase0.models.waveformer import WaveFormerStage
from rsna_phase0.presets import Preset


class DenseConvBN(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv3d(in_dim, out_dim, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = nn.BatchNorm3d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class DenseResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_bn = DenseConvBN(dim, dim, kernel_size=3, stride=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv_bn(x))


class DenseStage(nn.Module):
    def __init__(self, in_dim: int | None, dim: int, depth: int) -> None:
        super().__init__()
        self.down = DenseConvBN(in_dim, dim, kernel_size=2, stride=2) if in_dim is not None else None
        self.blocks = nn.ModuleList(DenseResidualBlock(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        for block in self.blocks:
            x = block(x)
        return x


class DenseEncoder(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset
        dims, depths, n_sparse = preset.stage_dims, preset.stage_depths, preset.sparse_stages
        self.stems = nn.ModuleDict(
            {
                name: DenseConvBN(channels, dims[0], kernel_size=2, stride=2)
                for name, channels in MODALITY_CHANNELS.items()
            }
        )
        self.conv_stages = nn.ModuleList(
            DenseStage(dims[i - 1] if i else None, dims[i], depths[i]) for i in range(n_sparse)
        )
        self.wave_stages = nn.ModuleList(
            WaveFormerStage(dims[i - 1], dims[i], depths[i], preset.head_dim, preset.attention_grid, preset.mlp_ratio)
            for i in range(n_sparse, len(dims))
        )

    def get_downsample_ratio(self) -> int:
        return 2 ** len(self.preset.stage_dims)

    def get_feature_map_channels(self) -> list[int]:
        return list(self.preset.stage_dims)

    def forward(self, x: torch.Tensor, modality: str, hierarchical: bool = True):
        """x (B, C, D, H, W), each side a multiple of the downsample ratio -> one map per stage (or the last)."""
        if modality not in MODALITY_CHANNELS or x.shape[1] != MODALITY_CHANNELS[modality]:
            raise ValueError(
                f"input with {x.shape[1]} channels does not fit modality {modality!r} ({MODALITY_CHANNELS})"
            )
        ratio = self.get_downsample_ratio()
        if any(side % ratio for side in x.shape[2:]):
            raise ValueError(f"input {tuple(x.shape)}: every side must be a multiple of {ratio}")
        maps = []
        h = self.stems[modality](x)
        for stage in self.conv_stages:
            h = stage(h)
            maps.append(h)
        for stage in self.wave_stages:
            h = stage(h, None)
            maps.append(h)
        return maps if hierarchical else maps[-1]
