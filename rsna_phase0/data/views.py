"""From a volume to one MiM sample: a fixed-physical-size region, light augmentation, then the global and local views.

A region is `preset.region_size` voxels per axis at `preset.target_spacing_mm`, i.e. a fixed physical size: it is
cut around a centre drawn from the foreground (so views are not mostly air), read at native resolution, resampled
only when the volume's spacing differs from the target, and zero-padded where it leaves the volume (0 is background
for normalised MRI and air in every CT window). Volumes are never squashed into a cube.

Augmentation (training only) acts on the region BEFORE the views are cut, so global and local views stay the same
anatomy: random flips per axis, a random multiple of 90 degrees in the axial (X, Y) plane, intensity jitter. The
jitter never crosses the background: values at or below it stay as they are and values above it stay above it, so
the voxels the sparse stages compute (some channel above background) are the same in training and validation.
The views follow rsna_phase0/mim_masking.py exactly: the global view is the region average-pooled by `local_scale`;
local view k is the region's native voxels at `box_origin * patch_size * local_scale`, spanning `input_size`.

Speed (a loader worker builds one sample in a few milliseconds): volumes come already at the target spacing (the
cache and `open_source` resample whole volumes once), flips and the rotation stay numpy views, and the intensity
jitter is applied to the views after they are cut instead of to the 8x larger region (per channel and affine above
the background, so up to the floor that keeps tissue above it, the same as jittering the region).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rsna_phase0.data.resample import at_target
from rsna_phase0.mim_masking import choose_local_boxes, patch_foreground_share, random_patch_mask
from rsna_phase0.presets import Preset

RANDOM_CENTRE_PROB = 0.1  # a few crops anywhere, so the model also sees edges and background
INTENSITY_SCALE, INTENSITY_SHIFT = 0.1, 0.05


class VolumeSource(Protocol):
    """What the view code needs from a volume, whether held in memory or read lazily from the cache."""

    path: str
    spacing: tuple[float, float, float]
    foreground: np.ndarray  # (N, 3) int voxel coordinates

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
        """The (C, *(hi - lo)) block with lo <= hi inside the volume."""


@dataclass
class ArrayVolume:
    path: str
    array: np.ndarray  # (C, X, Y, Z) normalised float32
    spacing: tuple[float, float, float]
    foreground: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])

    def read(self, lo, hi) -> np.ndarray:
        return self.array[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def read_padded(source: VolumeSource, lo: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The (C, *size) block starting at voxel `lo` (may lie partly outside), zero outside the volume."""
    shape = np.asarray(source.shape)
    a, b = np.clip(lo, 0, shape), np.clip(lo + size, 0, shape)
    inner = source.read(tuple(int(v) for v in a), tuple(int(v) for v in b))
    if np.array_equal(a - lo, np.zeros(3)) and np.array_equal(b - a, size):
        return np.asarray(inner, dtype=np.float32)  # may be a read-only view of the source: never written to
    out = np.zeros((inner.shape[0], *(int(s) for s in size)), np.float32)
    o = a - lo
    out[:, o[0] : o[0] + inner.shape[1], o[1] : o[1] + inner.shape[2], o[2] : o[2] + inner.shape[3]] = inner
    return out


def source_extent(spacing, region_size: int, target_spacing: float) -> np.ndarray:
    """Voxels per axis of the source that cover `region_size` voxels at `target_spacing`."""
    spacing = np.asarray(spacing, dtype=np.float64)
    exact = at_target(spacing, target_spacing)
    extent = np.maximum(np.round(region_size * target_spacing / spacing), 1).astype(np.int64)
    return np.where(exact, region_size, extent)


def choose_centre(source: VolumeSource, rng: np.random.Generator) -> np.ndarray:
    if len(source.foreground) and rng.random() >= RANDOM_CENTRE_PROB:
        return np.asarray(source.foreground[rng.integers(len(source.foreground))], dtype=np.int64)
    return np.array([rng.integers(n) for n in source.shape], dtype=np.int64)


def crop_region(source: VolumeSource, centre: np.ndarray, preset: Preset) -> np.ndarray:
    """A (C, R, R, R) region of fixed physical size around `centre`, resampled to the target spacing if needed."""
    size = preset.region_size
    extent = source_extent(source.spacing, size, preset.target_spacing_mm)
    block = read_padded(source, centre - extent // 2, extent)
    if np.all(extent == size):
        return block
    return resample(block, (size, size, size))


def resample(block: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of a (C, X, Y, Z) block to `size` (cell-centred, so physical extents match)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(block))[None]
        return F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0].numpy()


JITTER_FLOOR = 1e-3  # how far above the background jittered tissue stays


@dataclass(frozen=True)
class Jitter:
    """Per-channel intensity jitter x * scale + shift above the background, applied to the views once cut."""

    scale: np.ndarray  # (C,) float32
    shift: np.ndarray
    background: float = 0.0  # values <= this are background (normalised: air and padding are exactly 0)

    def apply_(self, views: np.ndarray) -> np.ndarray:
        """In place on a (..., C, X, Y, Z) float32 array that this code owns. A channel value at or below the
        background is left alone; one above it becomes max(x * scale + shift, background + JITTER_FLOOR), so no
        voxel enters or leaves the sparse stages' active set (some channel above the background)."""
        above = views > self.background
        jittered = views * self.scale[:, None, None, None] + self.shift[:, None, None, None]
        np.maximum(jittered, np.float32(self.background + JITTER_FLOOR), out=jittered)
        np.copyto(views, jittered, where=above)
        return views


def augment(region: np.ndarray, rng: np.random.Generator, background: float = 0.0) -> tuple[np.ndarray, Jitter]:
    """Flips and an in-plane 90-degree rotation of a (C, X, Y, Z) region (a view, nothing copied), and the
    per-channel intensity jitter to apply to whatever is cut from it."""
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            region = np.flip(region, axis=axis)
    region = np.rot90(region, k=int(rng.integers(4)), axes=(1, 2))
    channels = region.shape[0]
    scale = rng.uniform(1 - INTENSITY_SCALE, 1 + INTENSITY_SCALE, channels).astype(np.float32)
    shift = rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT, channels).astype(np.float32)
    return region, Jitter(scale, shift, background)


def pool(region: np.ndarray, factor: int) -> np.ndarray:
    """Average pooling of a (C, X, Y, Z) array (any strides, e.g. a flipped view) by `factor` per spatial axis.

    One axis at a time, densest in memory first, each step summing `factor` strided slices: the first step already
    shrinks the data by `factor`, nothing is copied up front (reshape would copy a non-contiguous view), and
    numpy's slow reduction over interleaved axes is avoided.
    """
    out = region
    for axis in sorted((1, 2, 3), key=lambda a: abs(region.strides[a])):
        n = region.shape[axis] // factor
        parts = [out[(slice(None),) * axis + (slice(i, i + n * factor, factor),)] for i in range(factor)]
        summed = np.add(parts[0], parts[1], dtype=np.float32) if factor > 1 else np.array(parts[0], np.float32)
        for part in parts[2:]:
            summed += part
        out = summed
    out *= np.float32(1.0 / factor**3)
    return out


def local_origin_voxels(box_origin: np.ndarray, preset: Preset) -> np.ndarray:
    """Where a local box (in global patch-grid units) starts in the region, in voxels."""
    return np.asarray(box_origin) * preset.patch_size * preset.local_scale


def mim_views(
    region: np.ndarray, preset: Preset, rng: np.random.Generator, jitter: Jitter | None = None
) -> dict[str, np.ndarray]:
    """The global view, its mask, K boxes in masked regions, K native-resolution local views and their masks;
    `jitter` (from augment) is applied to both views as if it had been applied to the region."""
    s = preset.input_size
    global_mask = random_patch_mask(preset.grid, preset.global_mask_ratio, rng)
    global_image = pool(region, preset.local_scale)
    foreground = patch_foreground_share(global_image, preset.patch_size, background_level(preset))
    boxes = choose_local_boxes(global_mask, preset.local_box_patches, preset.n_local, rng, foreground)
    local_images = np.empty((preset.n_local, region.shape[0], s, s, s), np.float32)
    for k, o in enumerate(local_origin_voxels(boxes, preset)):
        local_images[k] = region[:, o[0] : o[0] + s, o[1] : o[1] + s, o[2] : o[2] + s]
    local_masks = np.stack(
        [random_patch_mask(preset.grid, preset.local_mask_ratio, rng) for _ in range(preset.n_local)]
    )
    if jitter is not None:
        jitter.apply_(global_image)
        jitter.apply_(local_images)
    return {
        "global_image": global_image,
        "global_mask": global_mask,
        "local_image": local_images,
        "local_mask": local_masks,
        "local_boxes": boxes.astype(np.int64),
    }


def background_level(preset: Preset) -> float:
    """Intensities at or below this are background (the sparse stages' threshold; 0 when they compute it)."""
    return preset.background_threshold if preset.background_threshold is not None else 0.0


def make_sample(source: VolumeSource, preset: Preset, rng: np.random.Generator, train: bool) -> dict[str, np.ndarray]:
    """One MiM sample from a volume; everything random comes from `rng`, so a seed fixes the sample."""
    region = crop_region(source, choose_centre(source, rng), preset)
    jitter = None
    if train:
        region, jitter = augment(region, rng, background_level(preset))
    return mim_views(region, preset, rng, jitter)
