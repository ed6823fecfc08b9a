"""MiM hierarchical masking in input space, on the patch grid, before the encoder ever sees a voxel.

Level 0 (global): a random `global_mask_ratio` of the patches of the downsampled global view is hidden.
Level 1 (local): `n_local` boxes of `grid // local_scale` patches per axis are drawn where the global mask hides
the most anatomy: a box is chosen with probability proportional to the foreground its hidden patches hold (never a
fully visible box, nor one of air while the region holds anatomy elsewhere); each box is cut at native resolution
from the region and masked again with `local_mask_ratio` on its own grid.

Everything is drawn from a numpy Generator the caller seeds, so a sample's crops and masks are reproducible
(validation uses fixed seeds). `True` in a mask means hidden.
"""

from __future__ import annotations

import numpy as np


def random_patch_mask(grid: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A (grid, grid, grid) bool mask hiding exactly round(ratio * grid**3) patches, at least one and not all."""
    n = grid**3
    n_masked = min(max(int(round(ratio * n)), 1), n - 1)
    flat = np.zeros(n, dtype=bool)
    flat[rng.permutation(n)[:n_masked]] = True
    return flat.reshape(grid, grid, grid)


def box_sums(values: np.ndarray, box: int) -> np.ndarray:
    """(span, span, span) sums of a (grid, grid, grid) array over every box of `box` cells, by a summed-area table."""
    grid = values.shape[0]
    span = grid - box + 1
    table = np.pad(values, ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    z, y, x = np.meshgrid(np.arange(span), np.arange(span), np.arange(span), indexing="ij")
    z1, y1, x1 = z + box, y + box, x + box
    return (
        table[z1, y1, x1]
        - table[z, y1, x1]
        - table[z1, y, x1]
        - table[z1, y1, x]
        + table[z, y, x1]
        + table[z, y1, x]
        + table[z1, y, x]
        - table[z, y, x]
    )


def choose_local_boxes(
    global_mask: np.ndarray,
    box: int,
    n_local: int,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Origins (n_local, 3) in global patch-grid units of boxes of `box` patches per axis.

    Candidates are every patch-aligned position; each is weighted by the foreground (the share of each patch's
    voxels above background, `foreground` (grid, grid, grid); 1 everywhere when None) of the patches the global
    mask hides in it, so local views come from masked anatomy. A region with no hidden foreground at all (a crop
    in air) weights boxes by their hidden patches alone. Boxes are distinct while enough candidates exist.
    """
    hidden = global_mask.astype(np.float64)
    weights = box_sums(hidden * foreground, box).reshape(-1) if foreground is not None else np.zeros(1)
    if weights.sum() <= 0:
        weights = box_sums(hidden, box).reshape(-1)
    if weights.sum() == 0:
        raise ValueError("global mask hides no patch: local views need masked regions to come from")
    span = global_mask.shape[0] - box + 1
    candidates = np.flatnonzero(weights)
    replace = len(candidates) < n_local
    picks = rng.choice(len(weights), size=n_local, replace=replace, p=weights / weights.sum())
    return np.stack(np.unravel_index(picks, (span, span, span)), axis=1).astype(np.int64)


def patch_foreground_share(image: np.ndarray, patch: int, threshold: float = 0.0) -> np.ndarray:
    """(g, g, g) share of each patch's voxels of a (C, S, S, S) view with some channel above `threshold`."""
    above = (image > threshold).any(axis=0)
    g = above.shape[0] // patch
    return above.reshape(g, patch, g, patch, g, patch).mean(axis=(1, 3, 5))


def upsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A patch-grid mask repeated to voxel (or feature-map) resolution along the last three axes."""
    for axis in (-3, -2, -1):
        mask = np.repeat(mask, factor, axis=axis)
    return mask
