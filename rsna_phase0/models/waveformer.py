"""WaveFormer stages on dense feature maps, masked positions held at zero (plain PyTorch, no MinkowskiEngine).

A block: LayerNorm per position -> per-channel Haar DWT -> self-attention among the low-frequency tokens (fully
hidden tokens are not keys) -> IDWT with the high bands kept -> residual; then a per-position MLP. Masked positions
are zeroed before and after every block, and everything except the DWT/attention is per position, so visible
outputs never see hidden content (hidden positions hold zeros, whatever the input there was).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsna_phase0.models.wavelet import dwt3, idwt3


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, D, H, W) map: per position, so no statistics cross positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def sincos_position_3d(grid: tuple[int, int, int], dim: int, device, dtype) -> torch.Tensor:
    """Fixed 3D sine-cosine position code (L, dim): works for any grid size (fine-tuning may change it)."""
    per_axis = dim // 6
    out = torch.zeros(*grid, dim, device=device, dtype=torch.float32)
    if per_axis == 0:
        return out.reshape(-1, dim).to(dtype)
    freqs = 1.0 / (100.0 ** (torch.arange(per_axis, device=device, dtype=torch.float32) / per_axis))
    axes = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij")
    for i, coord in enumerate(axes):
        angles = coord[..., None] * freqs
        out[..., 2 * i * per_axis : (2 * i + 1) * per_axis] = angles.sin()
        out[..., (2 * i + 1) * per_axis : (2 * i + 2) * per_axis] = angles.cos()
    return out.reshape(-1, dim).to(dtype)


class LowBandAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if key_valid is not None:
            # a sample with no visible token (never produced by masking.py) attends everywhere instead of NaN;
            # its outputs are zeroed by the caller anyway
            key_valid = key_valid | ~key_valid.any(dim=1, keepdim=True)
            attn_mask = key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class WaveFormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int, mlp_ratio: float) -> None:
        super().__init__()
        self.levels = levels  # fixed by the preset (models/geometry.py), whatever the input size
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = LowBandAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """x (B, C, D, H, W); visible (B, 1, D, H, W) float 0/1 or None (everything visible)."""
        levels = self.levels
        if any(side % 2**levels for side in x.shape[2:]):
            raise ValueError(f"feature map {tuple(x.shape[2:])} cannot be Haar-decomposed {levels} times")
        h = self.norm1(x)
        if visible is not None:
            h = h * visible
        if levels:
            low, highs = dwt3(h, levels)
            low = low.to(h.dtype)
        else:
            low, highs = h, []
        b, c, *grid = low.shape
        tokens = low.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_position_3d(tuple(grid), c, tokens.device, tokens.dtype)
        key_valid = None
        if visible is not None:
            # a low-band token is a key when any voxel of its 2^L block is visible
            key_valid = (F.max_pool3d(visible, 2**levels) if levels else visible).flatten(1) > 0
        low = self.attn(tokens, key_valid).transpose(1, 2).reshape(b, c, *grid)
        h = idwt3(low, highs).to(x.dtype) if levels else low
        x = x + h
        if visible is not None:
            x = x * visible
        x = x + self.mlp(self.norm2(x).movedim(1, -1)).movedim(-1, 1)
        if visible is not None:
            x = x * visible
        return x


class WaveFormerStage(nn.Module):
    """k2 s2 downsampling (a visible output cell only reads cells of its own patch) + WaveFormer blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, head_dim: int, levels: int, mlp_ratio: float):
        super().__init__()
        self.down = nn.Conv3d(in_dim, dim, kernel_size=2, stride=2)
        self.down_norm = ChannelLayerNorm(dim)
        heads = dim // head_dim
        self.blocks = nn.ModuleList(WaveFormerBlock(dim, heads, levels, mlp_ratio) for _ in range(depth))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """x at the previous scale; `visible` (B, 1, ...) at this stage's (output) scale, or None."""
        x = self.down_norm(self.down(x))
        if visible is not None:
            x = x * visible
        for block in self.blocks:
            x = block(x, visible)
        return x
