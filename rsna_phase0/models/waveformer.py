"""WaveFormer stages on dense feature maps, masked positions held at zero (plain PyTorch, no MinkowskiEngine).

A block: LayerNorm per position -> per-channel Haar DWT -> self-attention among the low-frequency tokens (fully
hidden tokens are not keys) -> IDWT with the high bands kept -> residual; then a per-position MLP. Masked positions
are zeroed before and after every block, and everything except the DWT/attention is per position, so visible
outputs never see hidden content (hidden positions hold zeros, whatever the input there was).

Two layouts compute the same function (models/speedups.py): the (B, C, D, H, W) map with ptwt's DWT and IDWT, and,
with the `token_layout` speed-up, (B, D, H, W, C) tokens with the Haar low band updated in place of a full
DWT/IDWT round trip (`haar_low_band`, `add_low_band_change`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from rsna_phase0.models.geometry import stage_dwt_levels
from rsna_phase0.models.speedups import HOISTED_INVARIANTS, TOKEN_LAYOUT
from rsna_phase0.models.wavelet import dwt3, idwt3


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, D, H, W) map: per position, so no statistics cross positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)

    def last_axis(self, x: torch.Tensor) -> torch.Tensor:
        """The same LayerNorm on (..., C) tokens."""
        return super().forward(x)


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


@functools.lru_cache(maxsize=64)
def _position_table(grid: tuple[int, int, int], dim: int, device: torch.device, dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain constant, whatever mode the first call ran in
        return sincos_position_3d(grid, dim, device, dtype)


def cached_position_3d(grid: tuple[int, int, int], dim: int, device: torch.device, dtype) -> torch.Tensor:
    """`sincos_position_3d`, computed once per grid, width, device and dtype (a constant of the model); inside
    torch.compile it is traced as it is (the compiler folds it into the graph)."""
    if torch.compiler.is_compiling():
        return sincos_position_3d(grid, dim, device, dtype)
    return _position_table(grid, dim, device, dtype)


def low_band_keys(visible: torch.Tensor | None, levels: int) -> torch.Tensor | None:
    """(B, L) bool: a low-band token is a key when any voxel of its 2^levels block is visible (None: all are).
    A sample with no visible token (never produced by mim_masking.py) attends everywhere instead of NaN; its outputs
    are zeroed by the caller anyway."""
    if visible is None:
        return None
    keys = (F.max_pool3d(visible, 2**levels) if levels else visible).flatten(1) > 0
    return keys | ~keys.any(dim=1, keepdim=True)


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


HAAR_GAIN = 2 ** (-1.5)  # one 3D Haar level: low band = HAAR_GAIN * (sum of each 2x2x2 block)


def haar_low_band(tokens: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, D, H, W, C) -> the Haar DWT's low band after `levels` levels, (B, D/f, H/f, W/f, C), f = 2^levels, in
    float32 (float64 stays): per channel, as ptwt.wavedec3 on each channel."""
    b, d, h, w, c = tokens.shape
    f = 2**levels
    blocks = _full_precision(tokens).reshape(b, d // f, f, h // f, f, w // f, f, c)
    return blocks.sum(dim=(2, 4, 6)) * HAAR_GAIN**levels


def add_low_band_change(tokens: torch.Tensor, change: torch.Tensor, levels: int) -> torch.Tensor:
    """IDWT(low + change, the high bands of `tokens`) = tokens + HAAR_GAIN^levels * change on each 2^levels block
    (orthogonal Haar: a low-band coefficient alone reconstructs to a constant block), in float32 (float64 stays)."""
    b, d, h, w, c = tokens.shape
    f = 2**levels
    blocks = _full_precision(tokens).reshape(b, d // f, f, h // f, f, w // f, f, c)
    spread = (change * HAAR_GAIN**levels).reshape(b, d // f, 1, h // f, 1, w // f, 1, c)
    return (blocks + spread).reshape(b, d, h, w, c)


class LowBandAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """tokens (B, L, C); key_valid (B, L) bool with a key in every sample (`low_band_keys`), or None."""
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class WaveFormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int, mlp_ratio: float, speedups: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.levels = levels  # fixed by the preset (models/geometry.py), whatever the input size
        self.cached_position = HOISTED_INVARIANTS in speedups
        self.token_layout = TOKEN_LAYOUT in speedups
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = LowBandAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def position(self, grid, dim: int, device, dtype) -> torch.Tensor:
        grid = tuple(int(n) for n in grid)
        return (cached_position_3d if self.cached_position else sincos_position_3d)(grid, dim, device, dtype)

    def check_size(self, spatial) -> None:
        if any(side % 2**self.levels for side in spatial):
            raise ValueError(f"feature map {tuple(spatial)} cannot be Haar-decomposed {self.levels} times")

    def forward(
        self, x: torch.Tensor, visible: torch.Tensor | None, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, D, H, W); visible (B, 1, D, H, W) float 0/1 or None (everything visible); `key_valid`,
        `low_band_keys(visible, levels)`, when the stage computed it once for all its blocks. With the token
        layout, x is (B, D, H, W, C) and visible (B, D, H, W, 1)."""
        if self.token_layout:
            return self.forward_tokens(x, visible, key_valid)
        levels = self.levels
        self.check_size(x.shape[2:])
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
        tokens = tokens + self.position(grid, c, tokens.device, tokens.dtype)
        if key_valid is None:
            key_valid = low_band_keys(visible, levels)
        low = self.attn(tokens, key_valid).transpose(1, 2).reshape(b, c, *grid)
        h = idwt3(low, highs).to(x.dtype) if levels else low
        x = x + h
        if visible is not None:
            x = x * visible
        x = x + self.mlp(self.norm2(x).movedim(1, -1)).movedim(-1, 1)
        if visible is not None:
            x = x * visible
        return x

    def forward_tokens(
        self, x: torch.Tensor, visible: torch.Tensor | None, key_valid: torch.Tensor | None
    ) -> torch.Tensor:
        """The same block on (B, D, H, W, C) tokens; visible (B, D, H, W, 1) float 0/1 or None; `key_valid` from
        `low_band_keys`."""
        levels = self.levels
        h = self.norm1.last_axis(x)
        if visible is not None:
            h = h * visible
        low_full = haar_low_band(h, levels) if levels else h
        low = low_full.to(h.dtype)
        b, *grid, c = low.shape
        tokens = low.reshape(b, math.prod(grid), c) + self.position(grid, c, low.device, low.dtype)
        attended = self.attn(tokens, key_valid).reshape(low.shape)
        if levels:
            attended = add_low_band_change(h, attended.to(low_full.dtype) - low_full, levels).to(x.dtype)
        x = x + attended
        if visible is not None:
            x = x * visible
        x = x + self.mlp(self.norm2.last_axis(x))
        if visible is not None:
            x = x * visible
        return x


class WaveFormerStage(nn.Module):
    """k2 s2 downsampling (a visible output cell only reads cells of its own patch) + WaveFormer blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        head_dim: int,
        levels: int,
        mlp_ratio: float,
        speedups: tuple[str, ...] = (),
    ):
        super().__init__()
        self.down = nn.Conv3d(in_dim, dim, kernel_size=2, stride=2)
        self.down_norm = ChannelLayerNorm(dim)
        heads = dim // head_dim
        self.levels = levels
        self.hoisted = HOISTED_INVARIANTS in speedups
        self.token_layout = TOKEN_LAYOUT in speedups
        self.blocks = nn.ModuleList(WaveFormerBlock(dim, heads, levels, mlp_ratio, speedups) for _ in range(depth))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """x at the previous scale; `visible` (B, 1, ...) at this stage's (output) scale, or None."""
        x = self.down(x)
        if self.token_layout:
            return self._forward_tokens(x, visible)
        x = self.down_norm(x)
        if visible is not None:
            x = x * visible
        key_valid = low_band_keys(visible, self.levels) if self.hoisted else None
        for block in self.blocks:
            x = block(x, visible, key_valid)
        return x

    def _forward_tokens(self, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """The blocks on (B, D, H, W, C) tokens; returns the (B, C, D, H, W) map (a view of the tokens)."""
        if self.blocks:
            self.blocks[0].check_size(x.shape[2:])
        key_valid = low_band_keys(visible, self.levels)  # the same for every block
        tokens = self.down_norm.last_axis(x.movedim(1, -1))
        visible_tokens = None if visible is None else visible.movedim(1, -1)
        if visible_tokens is not None:
            tokens = tokens * visible_tokens
        for block in self.blocks:
            tokens = block(tokens, visible_tokens, key_valid)
        return tokens.movedim(-1, 1)


def preset_wave_stages(preset) -> nn.ModuleList:
    """The encoder's WaveFormer stages (those after the preset's sparse stages): the sparse encoder and its dense
    export build them the same way, so the export copies them by name."""
    dims, depths, levels = preset.stage_dims, preset.stage_depths, stage_dwt_levels(preset)
    return nn.ModuleList(
        WaveFormerStage(dims[i - 1], dims[i], depths[i], preset.head_dim, levels[i], preset.mlp_ratio, preset.speedups)
        for i in range(preset.sparse_stages, len(dims))
    )
