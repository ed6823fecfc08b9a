"""Whole-volume resampling to the training spacing, done once per volume (when caching, or when a volume is read
from .nii.gz) so that crops never need resampling.

The output grid has exactly the target spacing and starts at the same physical corner as the input (cell-centred:
output voxel i covers [i, i + 1) * target mm); an axis whose spacing is already within SPACING_TOLERANCE of the
target is kept voxel for voxel. Trilinear, in float32, through torch (deterministic on the CPU).
"""

from __future__ import annotations

import numpy as np

SPACING_TOLERANCE = 1e-3  # relative: spacings this close to the target are treated as the target


def at_target(spacing, target_mm: float) -> np.ndarray:
    """Per axis: is the spacing already the target (within the tolerance)?"""
    spacing = np.asarray(spacing, dtype=np.float64)
    return np.abs(spacing - target_mm) <= SPACING_TOLERANCE * target_mm


def resample_to_spacing(array: np.ndarray, spacing, target_mm: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A (C, X, Y, Z) float32 array and its spacing, resampled to `target_mm` per axis; returns (array, spacing)."""
    exact = at_target(spacing, target_mm)
    target = (float(target_mm),) * 3
    if exact.all():
        return array, target
    import torch
    import torch.nn.functional as F

    # the scale factors, not a rounded size, set where output voxels sample the input: exactly the target spacing
    # (torch makes floor(n * factor) voxels per axis)
    factors = [1.0 if e else float(s) / target_mm for s, e in zip(spacing, exact, strict=True)]
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
        out = F.interpolate(
            t, scale_factor=factors, mode="trilinear", align_corners=False, recompute_scale_factor=False
        )
    return out[0].numpy(), target
