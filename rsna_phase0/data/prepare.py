"""A volume as training sees it: read, oriented RAS, intensity-normalised, resampled to the target spacing, with
its foreground points. The cache stores exactly this, and the uncached path builds exactly this, so a crop is the
same whichever path served it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PreparedVolume:
    path: str
    array: np.ndarray  # (C, X, Y, Z) float32 at `spacing`
    spacing: tuple[float, float, float]  # the target spacing on every axis
    source_spacing: tuple[float, float, float]
    foreground: np.ndarray  # (N, 3) int32 voxel coordinates at `spacing`


def load_training_volume(path: str, modality: str, spacing_mm: float, intensity=None) -> PreparedVolume:
    """Raises VolumeError (naming the file) for anything unusable. `intensity`: data.intensity.Intensity (the
    presets' defaults when None)."""
    from rsna_phase0.data.intensity import DEFAULT_INTENSITY, foreground_points, normalize
    from rsna_phase0.data.readers import read_volume
    from rsna_phase0.data.resample import resample_to_spacing

    volume = read_volume(path, modality)
    # normalise before resampling: the robust range comes from the original voxels, as the manifest's scan saw them
    array = normalize(volume.array, modality, path, intensity or DEFAULT_INTENSITY)
    array, spacing = resample_to_spacing(array, volume.spacing, spacing_mm)
    return PreparedVolume(path, array, spacing, volume.spacing, foreground_points(array, path))
