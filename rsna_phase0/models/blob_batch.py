"""Synthetic MiM batches for benchmarks, model-info and tests: structured volumes (smooth ellipsoid blobs) cut
into global and local views exactly as the batch contract says, masked by rsna_phase0/mim_masking.py."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rsna_phase0.batch import MiMBatch
from rsna_phase0.mim_masking import choose_local_boxes, patch_foreground_share, random_patch_mask
from rsna_phase0.presets import Preset


def blob_volume(size: int, channels: int, rng: np.random.Generator, n_blobs: int = 6) -> np.ndarray:
    """(channels, size, size, size) float32 in [0, 1): a sum of soft ellipsoids with random centres, radii and
    intensities, plus a gentle gradient, clipped at 0 (air, as normalised volumes have); channels are different
    monotone maps of it (like CT windows)."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = 0.2 * (rng.uniform(-1, 1) * z + rng.uniform(-1, 1) * y)
    for _ in range(n_blobs):
        centre = rng.uniform(-0.7, 0.7, size=3)
        radii = rng.uniform(0.15, 0.5, size=3)
        dist = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
        volume = volume + rng.uniform(0.5, 1.5) / (1.0 + np.exp(np.minimum(6.0 * (dist - 1.0), 50.0)))
    # normalised like the loaders' output: intensities in [0, 1) with background (air) at exactly 0
    volume = np.clip(volume, 0.0, None)
    out = [np.tanh(volume * (1.0 + 0.5 * c)) for c in range(channels)]
    return np.stack(out).astype(np.float32)


def synthetic_batch(
    preset: Preset, batch_size: int, modality: str = "mri", seed: int = 0, content: str = "blobs"
) -> MiMBatch:
    """A MiMBatch of `batch_size` regions with `preset.n_local` local views each ("blobs" or "noise" content)."""
    rng = np.random.default_rng(seed)
    channels = preset.channels(modality)
    s, g, box, scale = preset.input_size, preset.grid, preset.local_box_patches, preset.local_scale
    globals_, global_masks, locals_, local_masks, boxes = [], [], [], [], []
    for _ in range(batch_size):
        if content == "blobs":
            region = torch.from_numpy(blob_volume(preset.region_size, channels, rng))
        elif content == "noise":
            region = torch.from_numpy(rng.standard_normal((channels,) + (preset.region_size,) * 3).astype(np.float32))
        else:
            raise ValueError(f"unknown synthetic content {content!r}; use 'blobs' or 'noise'")
        global_mask = random_patch_mask(g, preset.global_mask_ratio, rng)
        global_view = F.avg_pool3d(region[None], scale)[0]
        foreground = patch_foreground_share(global_view.numpy(), preset.patch_size)
        origins = choose_local_boxes(global_mask, box, preset.n_local, rng, foreground)
        globals_.append(global_view)
        global_masks.append(torch.from_numpy(global_mask))
        for origin in origins:
            z, y, x = (int(o) * preset.patch_size * scale for o in origin)
            locals_.append(region[:, z : z + s, y : y + s, x : x + s])
            local_masks.append(torch.from_numpy(random_patch_mask(g, preset.local_mask_ratio, rng)))
        boxes.append(torch.from_numpy(origins))
    return MiMBatch(
        modality=modality,
        global_image=torch.stack(globals_),
        global_mask=torch.stack(global_masks),
        local_image=torch.stack(locals_),
        local_mask=torch.stack(local_masks),
        local_boxes=torch.stack(boxes),
    )
