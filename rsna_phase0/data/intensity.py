"""Intensity preprocessing: per-volume robust MRI normalisation, CT window checks, statistics, foreground points.

MRI normalisation (the choice, tested in tests/test_data_intensity.py): OpenMind volumes come on scales from
[0, 1] to about [-7, 518], with background at the volume's minimum. Foreground is every voxel above
`min + 1e-3 * (p99.9 - min)`; the volume is clipped to [p0.5, p99.5] of the foreground and scaled to [0, 1], so the
background maps to exactly 0, the brightest 0.5% of the head (vessels in MRA) saturate at 1, and two scans that
differ by an affine intensity map normalise to the same array. A constant volume has no range and is rejected.

CT windows were min-max scaled per volume upstream, so they must already lie in [0, 1] (a tolerance absorbs float
round-off, then they are clipped); a window outside that range, or a constant window, is rejected.
"""

from __future__ import annotations

import numpy as np

from rsna_phase0.data.errors import VolumeError

NORMALISATION_VERSION = 1  # bump when the normalisation changes: cached volumes built with another one are rebuilt
MRI_PERCENTILES = (0.5, 99.5)
CT_TOLERANCE = 1e-3
FOREGROUND_THRESHOLD = 0.05  # on normalised intensities: what counts as "not air" when choosing crop centres
MAX_FOREGROUND_POINTS = 4096
_STATS_VOXELS = 2_000_000


def subsample(array: np.ndarray, max_voxels: int = _STATS_VOXELS) -> np.ndarray:
    """A deterministic strided view of a (..., X, Y, Z) array with at most about `max_voxels` voxels per channel."""
    n = int(np.prod(array.shape[-3:]))
    step = 1
    while n / step**3 > max_voxels:
        step += 1
    return array[..., ::step, ::step, ::step]


def mri_foreground_range(array: np.ndarray) -> tuple[float, float]:
    """(p0.5, p99.5) of the foreground of a (1, X, Y, Z) or (X, Y, Z) MRI array."""
    values = subsample(array).reshape(-1)
    lo, hi = float(values.min()), float(np.percentile(values, 99.9))  # p99.9, not max: one hot voxel must not count
    foreground = values[values > lo + 1e-3 * (hi - lo)]
    if foreground.size < 0.01 * values.size:  # almost no foreground: use every voxel rather than a handful
        foreground = values
    p_lo, p_hi = np.percentile(foreground, MRI_PERCENTILES)
    return float(p_lo), float(p_hi)


def normalize_mri(array: np.ndarray, path: str) -> np.ndarray:
    """Robust per-volume normalisation to [0, 1] (see the module docstring). Raises VolumeError when constant."""
    p_lo, p_hi = mri_foreground_range(array)
    if not p_hi > p_lo:
        raise VolumeError(path, f"constant intensity ({p_lo:g} everywhere in the robust range): nothing to learn")
    out = (np.asarray(array, dtype=np.float32) - np.float32(p_lo)) / np.float32(p_hi - p_lo)
    return np.clip(out, 0.0, 1.0, out=out)  # clip after scaling so round-off cannot leave [0, 1]


def check_ct_windows(array: np.ndarray, path: str) -> np.ndarray:
    """Validate (3, X, Y, Z) CT windows in [0, 1]; returns them clipped. Raises VolumeError otherwise."""
    from rsna_phase0.data.readers import CT_WINDOWS

    for channel, name in enumerate(CT_WINDOWS):
        lo, hi = float(array[channel].min()), float(array[channel].max())
        if lo < -CT_TOLERANCE or hi > 1 + CT_TOLERANCE:
            raise VolumeError(path, f"CT {name} window spans [{lo:g}, {hi:g}], expected [0, 1] (windowed and scaled)")
        if hi == lo:
            raise VolumeError(path, f"CT {name} window is constant ({lo:g}): nothing to learn")
    return np.clip(array, 0.0, 1.0, out=array)


def normalize(array: np.ndarray, modality: str, path: str) -> np.ndarray:
    """The training-time intensity preprocessing of a (C, X, Y, Z) array for its modality."""
    if modality == "mri":
        return normalize_mri(array, path)
    return check_ct_windows(array, path)


def intensity_stats(array: np.ndarray) -> list[dict[str, float]]:
    """Per-channel p0.5 / p99.5 / mean / std / min / max of a (C, X, Y, Z) array, on a strided subsample."""
    stats = []
    for channel in subsample(array):
        values = channel.reshape(-1).astype(np.float64)
        p_lo, p_hi = np.percentile(values, MRI_PERCENTILES)
        stats.append(
            {
                "p0.5": float(p_lo),
                "p99.5": float(p_hi),
                "mean": float(values.mean()),
                "std": float(values.std()),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        )
    return stats


def foreground_points(normalised: np.ndarray, path: str, max_points: int = MAX_FOREGROUND_POINTS) -> np.ndarray:
    """Up to `max_points` (N, 3) int32 voxel coordinates spread over the foreground, for choosing crop centres."""
    mask = normalised.max(axis=0) > FOREGROUND_THRESHOLD
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        raise VolumeError(path, f"no voxel above the foreground threshold {FOREGROUND_THRESHOLD} after normalisation")
    if flat.size > max_points:
        flat = flat[np.linspace(0, flat.size - 1, max_points).astype(np.int64)]
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int32)
