"""Small NIfTI writers shared by the data tests (generated in tmp_path, never stored in the repository)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def head(shape=(24, 24, 24), scale: float = 1.0, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    """A bright ball with texture on a constant background: foreground, background and a range to normalise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    image = np.where(r < 0.8, 0.5 + 0.4 * np.sin(6 * grids[0]) * np.cos(5 * grids[1]), 0.0)
    image = image + (r < 0.8) * rng.normal(0, 0.02, shape)
    return (image * scale + offset).astype(np.float32)


def ct_windows(shape=(24, 24, 16), seed: int = 0) -> np.ndarray:
    """(X, Y, Z, 3) windows in [0, 1] with a body and a bright bone."""
    rng = np.random.default_rng(seed)
    body = head(shape, seed=seed)
    windows = np.stack([body, np.clip(body * 1.2, 0, 1), (body > 0.7) * 1.0], axis=-1)
    windows[..., 2] = np.maximum(windows[..., 2], rng.uniform(0, 0.1, shape))
    return windows.astype(np.float32)


def save(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def save_ct(path: Path, windows: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    """As SimpleITK writes a vector image: (X, Y, Z, 1, 3)."""
    return save(path, windows[:, :, :, None, :], spacing)
