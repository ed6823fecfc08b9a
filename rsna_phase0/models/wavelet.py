"""A true per-channel 3D Haar DWT: channels are folded into the batch axis, so a channel never mixes with another.

ptwt works in float32/float64 only, so both transforms run outside autocast and return float32 (float64 in, float64
out); callers cast back. Mode "zero" with Haar on even sizes adds no boundary coefficients.
"""

from __future__ import annotations

import ptwt
import torch

WAVELET = "haar"


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def dwt3(x: torch.Tensor, level: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """(B, C, D, H, W) -> (low band (B, C, D/2^L, H/2^L, W/2^L), high bands coarsest first, each (B, C, ...))."""
    if level < 1:
        raise ValueError(f"DWT level must be >= 1, got {level}")
    b, c, *spatial = x.shape
    if any(size % 2**level for size in spatial):
        raise ValueError(f"spatial size {tuple(spatial)} is not divisible by 2**{level} for a level-{level} Haar DWT")
    with torch.autocast(device_type=x.device.type, enabled=False):
        coeffs = ptwt.wavedec3(_full_precision(x).reshape(b * c, *spatial), WAVELET, mode="zero", level=level)
    low = coeffs[0].reshape(b, c, *coeffs[0].shape[-3:])
    highs = [{key: band.reshape(b, c, *band.shape[-3:]) for key, band in detail.items()} for detail in coeffs[1:]]
    return low, highs


def idwt3(low: torch.Tensor, highs: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Inverse of `dwt3`: (low band, high bands) -> (B, C, D, H, W) in float32 (or float64)."""
    b, c = low.shape[:2]
    dtype = torch.float64 if low.dtype == torch.float64 else torch.float32

    def fold(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).reshape(b * c, *t.shape[-3:])

    with torch.autocast(device_type=low.device.type, enabled=False):
        coeffs = [fold(low)] + [{key: fold(band) for key, band in detail.items()} for detail in highs]
        out = ptwt.waverec3(tuple(coeffs), WAVELET)
    return out.reshape(b, c, *out.shape[-3:])
