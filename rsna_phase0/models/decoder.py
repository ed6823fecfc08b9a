"""SparK densify + a light UNet decoder that predicts voxels, with one output head per modality.

Densify, per encoder scale: LayerNorm per position (statistics never cross positions), hidden positions replaced
by a learned mask token, then a k3 projection to the decoder's width at that scale, so hidden positions take
context from their visible neighbours. The decoder starts at the coarsest scale with `decoder_dim` channels and
halves per upsampling (transposed conv k2 s2, then k3 conv), adding each finer scale's densified map (SparK's
skips), down to stride 1. Its normalisation is per sample (GroupNorm with one group per channel, i.e. InstanceNorm,
which autocast keeps in float32): the MiM levels share a batch, and batch statistics would carry the local views'
content, by design what the global view hides, into the global view's prediction.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rsna_phase0.models.norm_gelu import fused_path, norm_gelu_fused
from rsna_phase0.models.speedups import AMP_DTYPE_GROUP_NORM, FUSED_NORM_GELU
from rsna_phase0.models.waveformer import ChannelLayerNorm
from rsna_phase0.presets import Preset

MIN_DECODER_WIDTH = 8


def decoder_widths(preset: Preset) -> list[int]:
    """Width at the coarsest scale first, then after each of the len(stage_dims) upsamplings."""
    return [max(preset.decoder_dim // 2**j, MIN_DECODER_WIDTH) for j in range(len(preset.stage_dims) + 1)]


class Densify(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(in_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, in_dim, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.proj = nn.Conv3d(in_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, feature: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        filled = torch.where(
            hidden.unsqueeze(1), self.mask_token.to(feature.dtype), self.norm(feature).to(feature.dtype)
        )
        return self.proj(filled)


class InstanceGroupNorm(nn.GroupNorm):
    """GroupNorm(C, C): per sample and channel. With `amp_dtype_group_norm` a half-precision map is normalised in
    its own dtype (the kernel still accumulates its statistics in float32) instead of in autocast's float32 copy,
    so the GELU after it and the next convolution read half the bytes and nothing is cast back."""

    def __init__(self, channels: int, in_amp_dtype: bool = False) -> None:
        super().__init__(channels, channels)
        self.in_amp_dtype = in_amp_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.in_amp_dtype or x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class InstanceNormGelu(InstanceGroupNorm):
    """InstanceGroupNorm and the GELU after it in one module (the `fused_norm_gelu` speed-up): on CUDA with Triton
    the pair runs as models/norm_gelu.py's kernels on a channels-last map (normalised in the map's dtype, as
    `amp_dtype_group_norm`), elsewhere eagerly, the same function. The parameters are the norm's, so checkpoints
    do not depend on the choice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_path(x.device) is None:
            return norm_gelu_fused(x, self.weight, self.bias, self.eps)
        return F.gelu(super().forward(x))


class UpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, speedups: tuple[str, ...] = ()) -> None:
        super().__init__()
        amp_norm = AMP_DTYPE_GROUP_NORM in speedups
        self.up = nn.ConvTranspose3d(in_dim, out_dim, kernel_size=2, stride=2)
        # fused or not, the same indices (the GELU slot empty when the norm applies it), so the same parameter names
        fused = FUSED_NORM_GELU in speedups
        norm = InstanceNormGelu if fused else InstanceGroupNorm
        self.body = nn.Sequential(
            norm(out_dim, amp_norm),
            nn.Identity() if fused else nn.GELU(),
            nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            norm(out_dim, amp_norm),
            nn.Identity() if fused else nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.up(x))


class DecoderOutput(NamedTuple):
    prediction: torch.Tensor  # (B, C_modality, S, S, S), in per-patch-normalised units
    features: list[torch.Tensor]  # decoder maps, coarsest (stride patch_size) first, then after each upsampling


class SparkDecoder(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        widths = decoder_widths(preset)
        dims = preset.stage_dims
        n = len(dims)
        # densify[j] serves the encoder map at stride patch_size / 2^j (j = 0 is the coarsest)
        self.densify = nn.ModuleList(Densify(dims[n - 1 - j], widths[j]) for j in range(n))
        self.up_blocks = nn.ModuleList(UpBlock(widths[j], widths[j + 1], preset.speedups) for j in range(n))
        self.fused_norm_gelu = FUSED_NORM_GELU in preset.speedups
        self.heads = nn.ModuleDict(
            {
                name: nn.Conv3d(widths[-1], channels, kernel_size=1)
                for name, channels in preset.modality_channels.items()
            }
        )

    def forward(self, maps: list[torch.Tensor], masks: list[torch.Tensor], modality: str) -> DecoderOutput:
        features = []
        x = None
        # the fused norm + GELU kernels read channels-last maps, and so do cuDNN's convolutions: the decoder's maps
        # stay channels-last throughout (the WaveFormer stages' maps already are, as views of their tokens)
        channels_last = self.fused_norm_gelu and fused_path(maps[0].device) is None
        for j, (densify, up) in enumerate(zip(self.densify, self.up_blocks, strict=True)):
            feature = maps[-1 - j]
            if channels_last:
                feature = feature.contiguous(memory_format=torch.channels_last_3d)
            skip = densify(feature, masks[-1 - j])
            x = skip if x is None else x + skip
            features.append(x)
            x = up(x)
        features.append(x)
        return DecoderOutput(self.heads[modality](x), features)
