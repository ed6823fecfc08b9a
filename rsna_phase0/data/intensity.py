"""Intensity preprocessing: per-volume robust MRI normalisation, CT windows, statistics, foreground points.

MRI normalisation (the choice, tested in tests/test_data_intensity.py): OpenMind volumes come on scales from
[0, 1] to about [-7, 518], with background at the volume's minimum. Foreground is every voxel above
`min + 1e-3 * (p99.9 - min)`; the volume is clipped to [p0.5, upper] of the foreground and scaled to [0, 1], so the
background maps to exactly 0 and two scans that differ by an affine intensity map normalise to the same array. The
upper percentile is per sequence (the volume's folder name): p99.5 by default, p99.99 for MRA, whose vessels (what
an aneurysm model must see) are the brightest ~1% of the head and would all saturate at p99.5. A constant volume
has no range and is rejected.

CT arrives either pre-windowed (the users' files: brain [0, 80], blood [-20, 180] and bone [-900, 2100] HU, each
min-max scaled per volume upstream) and must then already lie in [0, 1] (a tolerance absorbs float round-off, then
they are clipped; a window outside that range, or a constant one, is rejected), or in Hounsfield units as one
channel, cut into the configured windows (e.g. a vessel window [-100, 600] HU for CTA, where the users' brain and
blood windows saturate contrast-filled arteries at 300-500 HU), each scaled to [0, 1]: air maps to 0 in every
window. Pre-windowed files hold the users' three windows only, so they need those as the configured windows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rsna_phase0.data.errors import VolumeError
from rsna_phase0.presets import USERS_CT_WINDOWS, Preset

NORMALISATION_VERSION = 2  # bump when the normalisation changes: cached volumes built with another one are rebuilt
MRI_PERCENTILES = (0.5, 99.5)  # the defaults; the upper one is per sequence (Intensity)
HU_RANGE = (-3024.0, 32767.0)  # what a CT in Hounsfield units can hold (int16 scanners' padding to their maximum)
MIN_HU_SPAN = 200.0  # a one-channel CT spanning less than this is not in HU (a single pre-windowed channel?)


@dataclass(frozen=True)
class Intensity:
    """The intensity settings of a preset (rsna_phase0/presets.py): what a volume's normalised array depends on."""

    mri_upper_percentile: float = MRI_PERCENTILES[1]
    mri_sequence_percentiles: tuple[tuple[str, float], ...] = (("MRA", 99.99),)
    ct_windows: tuple[tuple[float, float], ...] = USERS_CT_WINDOWS

    @classmethod
    def from_preset(cls, preset: Preset) -> Intensity:
        return cls(preset.mri_upper_percentile, preset.mri_sequence_percentiles, preset.ct_windows)

    def mri_upper(self, path: str | Path) -> float:
        """The upper percentile for the MRI at `path`: its sequence is the name of the folder it lies in."""
        return dict(self.mri_sequence_percentiles).get(Path(path).parent.name, self.mri_upper_percentile)

    def tag(self) -> str:
        """A short name of these settings and NORMALISATION_VERSION, for cache entries built with them."""
        text = json.dumps([NORMALISATION_VERSION, asdict(self)], sort_keys=True)
        return "n" + hashlib.sha256(text.encode()).hexdigest()[:8]


DEFAULT_INTENSITY = Intensity()
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


def mri_foreground_range(array: np.ndarray, upper: float = MRI_PERCENTILES[1]) -> tuple[float, float]:
    """(p0.5, p_upper) of the foreground of a (1, X, Y, Z) or (X, Y, Z) MRI array."""
    values = subsample(array).reshape(-1)
    lo, hi = float(values.min()), float(np.percentile(values, 99.9))  # p99.9, not max: one hot voxel must not count
    foreground = values[values > lo + 1e-3 * (hi - lo)]
    if foreground.size < 0.01 * values.size:  # almost no foreground: use every voxel rather than a handful
        foreground = values
    p_lo, p_hi = np.percentile(foreground, (MRI_PERCENTILES[0], upper))
    return float(p_lo), float(p_hi)


def normalize_mri(array: np.ndarray, path: str, upper: float = MRI_PERCENTILES[1]) -> np.ndarray:
    """Robust per-volume normalisation to [0, 1] (see the module docstring). Raises VolumeError when constant."""
    p_lo, p_hi = mri_foreground_range(array, upper)
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


def window_ct_hu(array: np.ndarray, path: str, windows: tuple[tuple[float, float], ...]) -> np.ndarray:
    """(1, X, Y, Z) CT in Hounsfield units -> (len(windows), X, Y, Z): each window clipped and scaled to [0, 1]."""
    lo, hi = float(array.min()), float(array.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise VolumeError(path, f"one-channel CT spans [{lo:g}, {hi:g}]: not Hounsfield units {list(HU_RANGE)}")
    if hi - lo < MIN_HU_SPAN:
        raise VolumeError(
            path,
            f"one-channel CT spans only [{lo:g}, {hi:g}]: a CT given as one channel must be in Hounsfield units "
            f"(a span of at least {MIN_HU_SPAN:g} HU); pre-windowed CT needs the 3 windows as channels",
        )
    out = np.empty((len(windows), *array.shape[1:]), np.float32)
    for channel, (w_lo, w_hi) in enumerate(windows):
        np.clip(array[0], w_lo, w_hi, out=out[channel])
        out[channel] -= np.float32(w_lo)
        out[channel] *= np.float32(1.0 / (w_hi - w_lo))
    return out


def normalize(array: np.ndarray, modality: str, path: str, intensity: Intensity = DEFAULT_INTENSITY) -> np.ndarray:
    """The training-time intensity preprocessing of a (C, X, Y, Z) array for its modality: MRI normalised with its
    sequence's percentile, CT in HU (one channel) cut into the configured windows, pre-windowed CT checked."""
    if modality == "mri":
        return normalize_mri(array, path, intensity.mri_upper(path))
    if array.shape[0] == 1:
        return window_ct_hu(array, path, intensity.ct_windows)
    if tuple(intensity.ct_windows) != USERS_CT_WINDOWS:
        raise VolumeError(
            path,
            f"pre-windowed CT ({array.shape[0]} channels: the users' windows {list(USERS_CT_WINDOWS)} HU) cannot give "
            f"the configured ct_windows {[list(w) for w in intensity.ct_windows]}: convert it from Hounsfield units "
            "(one channel) or keep the default ct_windows",
        )
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
