"""The encoder as plain PyTorch, for fine-tuning: the function the sparse encoder computes, on dense tensors.

SparK's own formulation of a sparse CNN: every convolution of the sparse stages runs densely with inactive voxels
held at zero and its output multiplied by the active mask, and the per-sample normalisation takes its moments over
active voxels only. Active is what it is in pre-training: a voxel with some channel above the preset's
`background_threshold` (air and zero padding stay inactive at fine-tuning too, never reaching layers that never saw
them), and, when a patch mask is given, visible. The WaveFormer stages are the same modules as in pre-training,
with the DWT levels the preset fixes (models/geometry.py), so any input size that is a multiple of `size_multiple`
works. Module and parameter names mirror models/encoder.py and models/sparse_stages.py, so models/encoder_file.py maps
weights one to one. No MinkowskiEngine.

Given a patch mask, `forward` is also the masked-dense reference that tests and benchmarks compare the
MinkowskiEngine stages against (written from the rules above, not from how the sparse code computes its sets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsna_phase0.models.feature_masks import mask_at_stride, visible_weight
from rsna_phase0.models.geometry import check_input_size, size_multiple
from rsna_phase0.models.waveformer import preset_wave_stages
from rsna_phase0.presets import Preset

NORM_EPS = 1e-5  # as models/sparse_stages.py


class MaskedInstanceNorm(nn.Module):
    """Per sample and channel, moments over the cells where `active` (B, 1, ...) is 1; zero elsewhere."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, y: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        dims = (2, 3, 4)
        count = active.sum(dim=dims, keepdim=True).clamp_min(1.0)
        mean = (y * active).sum(dim=dims, keepdim=True) / count
        var = (((y - mean) * active) ** 2).sum(dim=dims, keepdim=True) / count
        shape = (1, -1, 1, 1, 1)
        out = (y - mean) * torch.rsqrt(var + NORM_EPS) * self.weight.view(shape) + self.bias.view(shape)
        return out * active


class DenseConvNorm(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv3d(in_dim, out_dim, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = MaskedInstanceNorm(out_dim)

    def forward(self, x: torch.Tensor, active_out: torch.Tensor) -> torch.Tensor:
        """x is zero at inactive cells; `active_out` (B, 1, ...) float 0/1 is the active mask at the output."""
        return self.norm(self.conv(x) * active_out, active_out)


class DenseResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_norm = DenseConvNorm(dim, dim, kernel_size=3, stride=1)

    def forward(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.conv_norm(x, active)) * active


class DenseStage(nn.Module):
    def __init__(self, in_dim: int | None, dim: int, depth: int) -> None:
        super().__init__()
        self.down = DenseConvNorm(in_dim, dim, kernel_size=2, stride=2) if in_dim is not None else None
        self.blocks = nn.ModuleList(DenseResidualBlock(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x, active)
        for block in self.blocks:
            x = block(x, active)
        return x


class DenseEncoder(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset
        dims, depths, n_sparse = preset.stage_dims, preset.stage_depths, preset.sparse_stages
        self.stems = nn.ModuleDict(
            {
                name: DenseConvNorm(channels, dims[0], kernel_size=2, stride=2)
                for name, channels in preset.modality_channels.items()
            }
        )
        self.conv_stages = nn.ModuleList(
            DenseStage(dims[i - 1] if i else None, dims[i], depths[i]) for i in range(n_sparse)
        )
        self.wave_stages = preset_wave_stages(preset)

    def get_downsample_ratio(self) -> int:
        return 2 ** len(self.preset.stage_dims)

    def get_feature_map_channels(self) -> list[int]:
        return list(self.preset.stage_dims)

    @property
    def size_multiple(self) -> int:
        """Every side of an input must be a multiple of this (e.g. 64, 96, 128 for the kaggle preset's 32)."""
        return size_multiple(self.preset)

    def channels(self, modality: str) -> int:
        return self.preset.channels(modality)

    def active_input(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, D, H, W) float 0/1: voxels the sparse stages compute (not background; visible, given a mask)."""
        active = torch.ones_like(x[:, :1])
        threshold = self.preset.background_threshold
        if threshold is not None:
            active = (x > threshold).any(dim=1, keepdim=True).to(x.dtype)
        if mask is not None:
            active = active * visible_weight(mask_at_stride(mask, self.get_downsample_ratio(), 1)).to(x.dtype)
        return active

    def forward(self, x: torch.Tensor, modality: str, hierarchical: bool = True, mask: torch.Tensor | None = None):
        """x (B, C, D, H, W), each side a multiple of `size_multiple` -> one map per stage (or the last);
        `mask` (B, D/p, H/p, W/p) bool, True = hidden (p the downsample ratio), hides patches as in pre-training."""
        expected = self.channels(modality)
        if x.ndim != 5 or x.shape[1] != expected:
            raise ValueError(
                f"{modality} input of shape {tuple(x.shape)}: expected (B, {expected}, D, H, W) for preset "
                f"{self.preset.name}"
            )
        check_input_size(self.preset, tuple(x.shape[2:]))
        active_in = self.active_input(x, mask)
        actives, level = [], active_in  # a coarser cell is active when any of its 2^3 children is
        for _ in range(self.preset.sparse_stages):
            level = F.max_pool3d(level, 2)
            actives.append(level)
        h = self.stems[modality](torch.where(active_in > 0, x, 0.0), actives[0])
        maps = []
        for stage, active in zip(self.conv_stages, actives, strict=True):
            h = stage(h, active)
            maps.append(h)
        for i, stage in enumerate(self.wave_stages, start=len(maps)):
            visible = None
            if mask is not None:
                visible = visible_weight(mask_at_stride(mask, self.get_downsample_ratio(), 2 ** (i + 1))).to(h.dtype)
            h = stage(h, visible)
            maps.append(h)
        return maps if hierarchical else maps[-1]
