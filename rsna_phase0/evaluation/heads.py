"""Task heads over the encoder's maps, trained from scratch in both arms, and the encoder + head model.

Segmentation: a light UNet-style decoder. From the deepest map up: a k2 s2 transposed conv to the next finer
map's scale, concatenation with that map, two 3x3x3 conv + InstanceNorm + LeakyReLU; after the finest map (1/2 of
the input), one more upsampling to the input's scale and a 1x1x1 conv to the 3 classes. Widths are half the
encoder's per scale (at least 16). InstanceNorm, not BatchNorm: batches are 2-4 crops. No skip from the raw image:
every voxel the head labels comes through the encoder, which is what is being compared.

Classification: the deepest map pooled (mean and max over space: an aneurysm fills a cell or two of the coarsest
grid, which a mean alone dilutes), LayerNorm, then a linear layer (probe) or a 2-layer MLP (full fine-tune).

Probe mode: the encoder is frozen (no gradients, and eval mode: nothing in it changes, bit for bit).
"""

from __future__ import annotations

import torch
from torch import nn

from rsna_phase0.models.dense_encoder import DenseEncoder

N_CLASSES = 3  # background, vessel, aneurysm
MODES = ("full", "probe")


def _conv_norm_act(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_dim, out_dim, 3, padding=1, bias=False),
        nn.InstanceNorm3d(out_dim, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNetDecoder(nn.Module):
    def __init__(self, channels: list[int], n_classes: int = N_CLASSES) -> None:
        super().__init__()
        widths = [max(16, c // 2) for c in channels]
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):  # deepest-but-one map first
            below = channels[-1] if i == len(channels) - 2 else widths[i + 1]
            self.ups.append(nn.ConvTranspose3d(below, widths[i], 2, stride=2))
            self.blocks.append(
                nn.Sequential(_conv_norm_act(widths[i] + channels[i], widths[i]), _conv_norm_act(widths[i], widths[i]))
            )
        self.final_up = nn.ConvTranspose3d(widths[0], widths[0], 2, stride=2)
        self.final = nn.Sequential(_conv_norm_act(widths[0], widths[0]), nn.Conv3d(widths[0], n_classes, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Encoder maps (finest first) -> logits (B, n_classes, D, H, W) at the input's scale."""
        h = maps[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(maps[:-1]), strict=True):
            h = block(torch.cat([up(h), skip], dim=1))
        return self.final(self.final_up(h))


class PooledClassifier(nn.Module):
    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * channels)
        if mode == "probe":
            self.head = nn.Linear(2 * channels, 1)
        else:
            self.head = nn.Sequential(nn.Linear(2 * channels, channels), nn.GELU(), nn.Linear(channels, 1))

    @staticmethod
    def pool(deepest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, max) over space of (B, C, ...) -> two (B, C); windows of one case combine as mean of means, max."""
        flat = deepest.flatten(2).float()
        return flat.mean(2), flat.amax(2)

    def classify(self, mean: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.cat([mean, peak], dim=1)))[:, 0]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Encoder maps -> one logit per sample (aneurysm present)."""
        return self.classify(*self.pool(maps[-1]))


def make_head(task: str, encoder: DenseEncoder, mode: str) -> nn.Module:
    channels = encoder.get_feature_map_channels()
    if task == "segmentation":
        return UNetDecoder(channels)
    return PooledClassifier(channels[-1], mode)


class DownstreamModel(nn.Module):
    """encoder + head for one modality; `mode` "probe" freezes the encoder."""

    def __init__(self, encoder: DenseEncoder, head: nn.Module, modality: str, mode: str) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.encoder, self.head, self.modality, self.mode = encoder, head, modality, mode
        if mode == "probe":
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> DownstreamModel:
        super().train(mode)
        if self.mode == "probe":
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.mode == "probe":
            with torch.no_grad():
                return self.encoder(x, self.modality, hierarchical=True)
        return self.encoder(x, self.modality, hierarchical=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
