"""Synthetic data in exactly the users' layout: small, varied, learnable head MRI and body CT volumes.

    OUT/OpenMind_processed/{MRI_T1,MRI_T2,MRA}/sub-synthNNN_<T1w|T2w|angio>.nii.gz   3-D float32, RAS
    OUT/NIH_deeplesion/CT/synth_ct_NNN.nii.gz                                      5-D (X,Y,Z,1,3) float32 vector

MRI: a head ellipsoid (scalp, skull, CSF rim, folded grey/white matter, two ventricles, bright tubular vessels in
MRA), a smooth bias field and mild noise, on a random intensity scale from [0, 1] up to about [-7, 518] like the
OpenMind files. CT: a body slab (fat, muscle, organs, aorta, spine and ribs, optionally lungs) in HU, windowed into
brain / blood / bone and min-max scaled per volume to [0, 1] as the users' converter does. Each volume is drawn from
its own seed (seed, kind, index), so any subset regenerates identically.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from rsna_phase0.data.layout import CT_ROOT, MRI_ROOT

MRI_KINDS = (("MRI_T1", "T1w"), ("MRI_T2", "T2w"), ("MRA", "angio"))
CT_HU_WINDOWS = ((0.0, 80.0), (-20.0, 180.0), (-900.0, 2100.0))  # brain L40/W80, blood L80/W200, bone L600/W3000
# tissue intensities per MRI kind: scalp, skull, csf, grey, white, vessel
_MRI_TISSUE = {
    "MRI_T1": (0.65, 0.12, 0.18, 0.5, 0.78, 0.55),
    "MRI_T2": (0.5, 0.08, 1.0, 0.62, 0.42, 0.15),
    "MRA": (0.25, 0.05, 0.12, 0.22, 0.2, 1.0),
}


def _affine(spacing: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape[:3]) - 1) / 2  # RAS, centred on the origin
    return affine


def _grid(shape: tuple[int, int, int], spacing: np.ndarray) -> list[np.ndarray]:
    """Open (broadcastable) physical coordinates in mm, centred on the volume."""
    return [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]


def _ellipsoid_radius(grid, centre, axes) -> np.ndarray:
    x, y, z = grid
    return np.sqrt(
        ((x - centre[0]) / axes[0])[:, None, None] ** 2
        + ((y - centre[1]) / axes[1])[None, :, None] ** 2
        + ((z - centre[2]) / axes[2])[None, None, :] ** 2
    )


def _stamp_tube(volume: np.ndarray, points: np.ndarray, radius: float, value: float) -> None:
    """Draw a tube through voxel-space `points` by stamping balls (much faster than distance maps)."""
    r = int(np.ceil(radius))
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[(offsets**2).sum(1) <= radius**2]
    voxels = (np.round(points)[:, None, :] + offsets[None]).reshape(-1, 3).astype(np.int64)
    inside = np.all((voxels >= 0) & (voxels < np.asarray(volume.shape)), axis=1)
    voxels = voxels[inside]
    volume[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = value


def _vessel_path(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth random curve through the inner brain, in voxel coordinates."""
    t = np.linspace(0, 1, 4 * max(shape))[:, None]
    centre = np.asarray(shape) / 2
    start = centre + rng.uniform(-0.25, 0.25, 3) * shape
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    wiggle = sum(
        rng.uniform(-0.06, 0.06, 3) * np.asarray(shape) * np.sin(2 * np.pi * (k * t + rng.uniform())) for k in (1, 2)
    )
    return start + direction * (t - 0.5) * 0.5 * np.asarray(shape) + wiggle


# tissue codes of a head map (index into a per-modality intensity table)
AIR, SCALP, SKULL, CSF, GREY, WHITE = range(6)


def head_tissues(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray):
    """The head anatomy without vessels: (tissue code map (X, Y, Z) uint8, brain mask, ellipsoid centre and axes in
    mm, normalised coordinates (x, y, z) for smooth fields). MRI and the labelled heads share it."""
    grid = _grid(shape, spacing)
    extent = np.asarray(shape) * spacing
    axes = extent * rng.uniform(0.36, 0.45, 3)
    centre = rng.uniform(-0.03, 0.03, 3) * extent
    r = _ellipsoid_radius(grid, centre, axes)
    x = grid[0][:, None, None] / axes[0]
    y = grid[1][None, :, None] / axes[1]
    z = grid[2][None, None, :] / axes[2]
    freq = rng.uniform(10, 16, 3)
    folds = (
        0.05 * np.sin(freq[0] * x + rng.uniform(0, 6)) * np.sin(freq[1] * y) * np.sin(freq[2] * z + rng.uniform(0, 6))
    )
    tissues = np.zeros(shape, np.uint8)
    tissues[r <= 1.0] = SCALP
    tissues[r <= 0.93] = SKULL
    tissues[r <= 0.86] = CSF
    tissues[r <= 0.83 + folds] = GREY
    tissues[r <= 0.66 + folds] = WHITE
    for side in (-1, 1):
        vent_centre = np.array([side * 0.12, rng.uniform(-0.05, 0.1), rng.uniform(0.0, 0.1)]) * extent
        vent_axes = np.array([0.05, 0.22, 0.1]) * extent * rng.uniform(0.8, 1.2, 3)
        tissues[_ellipsoid_radius(grid, vent_centre, vent_axes) <= 1.0] = CSF
    return tissues, r <= 0.83, centre, axes, (x, y, z)


def mri_bias_noise_scale(rng: np.random.Generator, image: np.ndarray, coords) -> np.ndarray:
    """A smooth bias field, mild noise on the head, then a random OpenMind-like intensity scale and offset."""
    x, y, z = coords
    coeffs = rng.uniform(-0.15, 0.15, 3)
    bias = 1.0 + coeffs[0] * x + coeffs[1] * y + coeffs[2] * z * x
    image = image * bias + rng.normal(0, 0.015, image.shape).astype(np.float32) * (image > 0)
    image = np.clip(image, 0, None)
    scale = float(np.exp(rng.uniform(0, np.log(520))))
    offset = float(rng.uniform(-7, 0)) if scale > 10 else 0.0
    return (image * scale + offset).astype(np.float32)


def synth_mri(
    rng: np.random.Generator, kind: str, shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One (X, Y, Z) float32 head MRI of `kind` (MRI_T1, MRI_T2, MRA) and its spacing (shape random if None)."""
    shape = tuple(int(n) for n in rng.integers(70, 111, 3)) if shape is None else tuple(shape)
    spacing = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    tissues, brain, _, _, coords = head_tissues(rng, shape, spacing)
    *table, vessel = _MRI_TISSUE[kind]
    image = np.array([0.0, *table], np.float32)[tissues]
    for _ in range(int(rng.integers(4, 8))):
        tube = np.zeros(shape, np.float32)
        _stamp_tube(tube, _vessel_path(rng, shape), rng.uniform(1.0, 2.2), 1.0)
        image[(tube > 0) & brain] = vessel
    return mri_bias_noise_scale(rng, image, coords), spacing


def synth_ct_hu(rng: np.random.Generator, shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One (X, Y, Z) thin body slab in Hounsfield units and its spacing (shape random if None)."""
    if shape is None:
        shape = (int(rng.integers(100, 141)), int(rng.integers(100, 141)), int(rng.integers(42, 57)))
    spacing = np.array([*([rng.uniform(0.8, 1.2)] * 2), rng.uniform(0.8, 1.2)], np.float32)
    x, y, z = _grid(shape, spacing)
    extent = np.asarray(shape) * spacing
    X, Y = x[:, None, None], y[None, :, None]
    Z = z[None, None, :] / extent[2]
    hu = np.full(shape, -1000.0, np.float32)

    def ellipse(cx, cy, ax, ay):
        return ((X - cx * extent[0]) / (ax * extent[0])) ** 2 + (
            (Y - cy * extent[1]) / (ay * extent[1])
        ) ** 2 <= 1 + 0 * Z

    bx, by = rng.uniform(0.4, 0.47), rng.uniform(0.3, 0.38)
    hu[ellipse(0, 0, bx, by)] = -100.0  # subcutaneous fat
    hu[ellipse(0, 0, bx - 0.04, by - 0.04)] = 40.0  # muscle / soft tissue
    if rng.uniform() < 0.5:  # chest: two lungs
        for side in (-1, 1):
            hu[ellipse(side * 0.18, 0.03, 0.13, 0.2 + 0.03 * np.sin(3 * Z))] = -850.0
    else:  # abdomen: liver and kidneys
        hu[ellipse(-0.15, 0.05, 0.17, 0.16)] = 60.0
        for side in (-1, 1):
            hu[ellipse(side * 0.15, -0.17, 0.05, 0.07)] = 30.0
    hu[ellipse(0.02, -0.08, 0.035, 0.035)] = rng.uniform(150, 250)  # contrast-filled aorta
    hu[ellipse(0, -0.22, 0.06, 0.055)] = 1100.0  # vertebral body: cortical shell
    hu[ellipse(0, -0.22, 0.045, 0.04)] = 350.0  # cancellous bone
    rib_phase = rng.uniform(0, 2 * np.pi)
    theta = np.arctan2(Y / by, X / bx)
    ring = ellipse(0, 0, bx - 0.05, by - 0.05) & ~ellipse(0, 0, bx - 0.075, by - 0.075)
    ribs = ring & (np.sin(8 * theta + rib_phase + 6 * Z) > 0.6) & (Y > -0.15 * extent[1])
    hu[ribs] = 900.0
    hu += rng.normal(0, 12, shape).astype(np.float32)
    return hu, spacing


def ct_windows(hu: np.ndarray) -> np.ndarray:
    """(X, Y, Z, 3) windows, each clipped then min-max scaled per volume to [0, 1] (the users' conversion)."""
    out = []
    for lo, hi in CT_HU_WINDOWS:
        w = np.clip(hu, lo, hi)
        w_min, w_max = float(w.min()), float(w.max())
        out.append((w - w_min) / max(w_max - w_min, 1e-6))
    return np.stack(out, axis=-1).astype(np.float32)


def write_mri(path: Path, image: np.ndarray, spacing: np.ndarray) -> None:
    nifti = nib.Nifti1Image(image, _affine(spacing, image.shape))
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, path)


def write_ct(path: Path, windows: np.ndarray, spacing: np.ndarray) -> None:
    """Store (X, Y, Z, 3) windows as SimpleITK does: a 5-D (X, Y, Z, 1, 3) vector image."""
    nifti = nib.Nifti1Image(windows[:, :, :, None, :], _affine(spacing, windows.shape))
    nifti.header.set_intent("vector")
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, path)


def synth_dataset(out: str | Path, mri: int = 8, ct: int = 4, seed: int = 0) -> list[Path]:
    """Write `mri` MRI volumes (cycling T1, T2, MRA) and `ct` CT volumes under `out`; returns their paths."""
    out = Path(out)
    written = []
    for i in range(mri):
        folder, suffix = MRI_KINDS[i % len(MRI_KINDS)]
        rng = np.random.default_rng([seed, 0, i])
        image, spacing = synth_mri(rng, folder)
        path = out / MRI_ROOT / folder / f"sub-synth{i:03d}_{suffix}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mri(path, image, spacing)
        written.append(path)
    for i in range(ct):
        rng = np.random.default_rng([seed, 1, i])
        hu, spacing = synth_ct_hu(rng)
        path = out / CT_ROOT / "CT" / f"synth_ct_{i:03d}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ct(path, ct_windows(hu), spacing)
        written.append(path)
    return written
