"""Labelled synthetic heads for a downstream check (`rsna-phase0 data synth OUT --labels`):

    OUT/images/head_NNN.nii.gz   MRA-like head (3-D float32) or, with modality "ct", a CTA head in the users' three
                                 HU windows (5-D (X,Y,Z,1,3) vector image, as synth.write_ct writes)
    OUT/labels/head_NNN.nii.gz   uint8 label map on the same grid: 0 background, 1 vessel, 2 aneurysm
    OUT/labels.csv               image,aneurysm (0/1 per head)

The head anatomy is synth.head_tissues (the pre-training heads'). The vessels are a tree drawn in millimetres: a
circle-of-Willis-like ring low in the brain, fed by two carotids and a basilar artery from below, with anterior,
middle (each splitting in two) and posterior branches curving up and out; radii 1-2.5 mm. Half of the heads (an
exact half, at seeded positions) carry 1-3 saccular bulges: spheres of radius 2-5 mm attached beside a junction of
the tree, bulging out of the vessel wall. Every bright tube in the image is labelled; aneurysm voxels override
vessel voxels. Geometry is drawn before intensities, so the MRI and CT versions of a seed are the same heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rsna_phase0.atomic import write_text_atomic
from rsna_phase0.data.synth import (
    _MRI_TISSUE,
    AIR,
    CSF,
    GREY,
    SCALP,
    SKULL,
    WHITE,
    _affine,
    ct_windows,
    head_tissues,
    mri_bias_noise_scale,
    write_ct,
    write_mri,
)
from rsna_phase0.evaluation.cases import ANEURYSM, BACKGROUND, VESSEL

LABELLED_MODALITIES = ("mri", "ct")
# MRA intensities per tissue code (air, then the pre-training heads' MRA tissues) and for flowing blood
_MRA_TABLE = np.array([0.0, *_MRI_TISSUE["MRA"][:5]], np.float32)
_MRA_VESSEL = _MRI_TISSUE["MRA"][5]
# CTA in Hounsfield units: contrast-filled arteries far above brain (~300-500 HU)
_CT_TABLE = {AIR: -1000.0, SCALP: 30.0, SKULL: 1200.0, CSF: 8.0, GREY: 40.0, WHITE: 28.0}
_CT_VESSEL_HU = (300.0, 450.0)


@dataclass
class Segment:
    """One vessel: a centre line (N, 3) in mm and its radius in mm."""

    points: np.ndarray
    radius: float


def _curve(rng: np.random.Generator, start, end, bend: float, step_mm: float) -> np.ndarray:
    """A quadratic Bezier from start to end (mm) with a random bend, sampled every `step_mm` or finer."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    control = (start + end) / 2 + rng.normal(0, bend, 3)
    length = np.linalg.norm(control - start) + np.linalg.norm(end - control)
    t = np.linspace(0, 1, max(2, int(np.ceil(length / step_mm)) + 1))[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def vessel_tree(
    rng: np.random.Generator, centre: np.ndarray, axes: np.ndarray, step_mm: float
) -> tuple[list[Segment], list[tuple[np.ndarray, float]]]:
    """Vessel segments and junction sites (point in mm, local radius in mm) inside one head's brain ellipsoid."""
    brain = 0.83 * axes  # the brain's semi-axes in mm (synth.head_tissues: the brain is r <= 0.83)

    def at(u) -> np.ndarray:  # normalised brain coordinates (x left-right, y posterior-anterior, z up) -> mm
        return centre + np.asarray(u, float) * brain

    z0 = rng.uniform(-0.4, -0.25)
    rx, ry = rng.uniform(0.18, 0.24), rng.uniform(0.2, 0.27)
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False) + rng.uniform(-0.1, 0.1, 8)
    # ring nodes: 0 at +x (lateral), 2 anterior, 4 at -x (lateral), 6 posterior
    ring = [at((rx * np.cos(a), ry * np.sin(a), z0 + rng.uniform(-0.03, 0.03))) for a in angles]
    ring_radius = rng.uniform(1.4, 1.9)
    segments = [
        Segment(_curve(rng, a, b, 0.5, step_mm), ring_radius) for a, b in zip(ring, ring[1:] + ring[:1], strict=True)
    ]
    junctions: list[tuple[np.ndarray, float]] = [(node, ring_radius) for node in ring[::2]]

    def branch(start: np.ndarray, end: np.ndarray, radius: float, bend: float) -> np.ndarray:
        segments.append(Segment(_curve(rng, start, end, bend, step_mm), radius))
        junctions.append((start, radius))
        return segments[-1].points

    # feeding arteries from the skull base: two carotids into the lateral nodes, the basilar into the posterior one
    for side, node in ((1, 0), (-1, 4)):
        branch(at((side * 0.22, 0.05, -0.8)), ring[node], rng.uniform(2.1, 2.5), 1.0)
    branch(at((0.0, -0.25, -0.8)), ring[6], rng.uniform(1.8, 2.2), 1.0)
    # outgoing branches curving up and out: anterior pair, middle pair (each splitting in two), posterior pair
    for node, end_u, radius, splits in (
        (1, (0.08, 0.7, 0.3), 1.3, False),
        (3, (-0.08, 0.7, 0.3), 1.3, False),
        (0, (0.7, 0.1, 0.0), 1.6, True),
        (4, (-0.7, 0.1, 0.0), 1.6, True),
        (5, (-0.3, -0.65, 0.05), 1.2, False),
        (7, (0.3, -0.65, 0.05), 1.2, False),
    ):
        end_u = np.asarray(end_u) + rng.uniform(-0.06, 0.06, 3)
        radius *= rng.uniform(0.85, 1.15)
        points = branch(ring[node], at(end_u), radius, 2.0)
        if splits:  # a bifurcation two thirds of the way, its two children fanning out up and down
            fork = points[int(len(points) * 0.66)]
            for spread in (-1, 1):
                child = np.clip(end_u + spread * np.array([0.0, 0.15, 0.3]) + rng.uniform(-0.05, 0.05, 3), -0.75, 0.75)
                branch(fork, at(child), max(1.0, 0.75 * radius), 1.5)
    return segments, junctions


def _stamp_balls(label: np.ndarray, points_mm: np.ndarray, radius_mm: float, spacing: np.ndarray, value: int):
    """Set every voxel within `radius_mm` of a point (mm, grid centred on the volume) to `value`."""
    reach = np.ceil(radius_mm / spacing).astype(int)
    offsets = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in reach], indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[((offsets * spacing) ** 2).sum(1) <= radius_mm**2]
    centres = np.round(np.asarray(points_mm) / spacing + (np.asarray(label.shape) - 1) / 2).astype(np.int64)
    voxels = (centres[:, None, :] + offsets[None]).reshape(-1, 3)
    voxels = voxels[np.all((voxels >= 0) & (voxels < label.shape), axis=1)]
    label[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = value


def _aneurysms(rng, junctions, count: int, centre: np.ndarray, brain: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """`count` (sphere centre mm, radius mm) beside distinct junctions, bulging out of the wall, inside the brain."""
    spheres = []
    for index in rng.permutation(len(junctions)):
        site, vessel_radius = junctions[index]
        radius = rng.uniform(2.0, 5.0)
        direction = rng.normal(size=3)
        sphere = site + direction / np.linalg.norm(direction) * (vessel_radius + 0.5 * radius)
        if np.linalg.norm((sphere - centre) / brain) <= 0.75:
            spheres.append((sphere, radius))
        if len(spheres) == count:
            break
    return spheres


def synth_labelled_head(
    rng: np.random.Generator, modality: str = "mri", size_mm: float = 96.0, aneurysm: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label map uint8, spacing) of one head about `size_mm` across. MRI: an (X, Y, Z) MRA-like volume on
    a random intensity scale; CT: (X, Y, Z, 3) CTA windows. With `aneurysm`, 1-3 bulges (label 2)."""
    if modality not in LABELLED_MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {LABELLED_MODALITIES}")
    spacing = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    shape = tuple(int(n) for n in np.round(size_mm * rng.uniform(0.95, 1.05, 3) / spacing))
    tissues, brain, centre, axes, coords = head_tissues(rng, shape, spacing)
    label = np.zeros(shape, np.uint8)
    segments, junctions = vessel_tree(rng, centre, axes, step_mm=0.5 * float(spacing.min()))
    for segment in segments:
        _stamp_balls(label, segment.points, segment.radius, spacing, VESSEL)
    if aneurysm:
        for sphere, radius in _aneurysms(rng, junctions, int(rng.integers(1, 4)), centre, 0.83 * axes):
            _stamp_balls(label, sphere[None], radius, spacing, ANEURYSM)
    label[~brain] = BACKGROUND
    # intensities (drawn after the geometry, so both modalities of a seed are the same head)
    if modality == "mri":
        image = _MRA_TABLE[tissues]
        image[label == VESSEL] = _MRA_VESSEL
        image[label == ANEURYSM] = _MRA_VESSEL * rng.uniform(0.85, 1.0)
        return mri_bias_noise_scale(rng, image, coords), label, spacing
    hu = np.array([_CT_TABLE[t] for t in range(6)], np.float32)[tissues]
    vessel_hu = rng.uniform(*_CT_VESSEL_HU)
    hu[label == VESSEL] = vessel_hu
    hu[label == ANEURYSM] = vessel_hu * rng.uniform(0.85, 1.0)
    hu += rng.normal(0, 8, shape).astype(np.float32)
    return ct_windows(hu), label, spacing


def write_label(path: Path, label: np.ndarray, spacing: np.ndarray) -> None:
    nifti = nib.Nifti1Image(label.astype(np.uint8), _affine(spacing, label.shape))
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, path)


def synth_labelled_dataset(
    out: str | Path, n: int = 40, seed: int = 0, modality: str = "mri", size_mm: float = 96.0
) -> dict[str, int]:
    """Write `n` labelled heads under `out` (layout in the module docstring); returns {name: aneurysm 0/1}. An
    exact half (n // 2, at positions drawn from the seed) carry aneurysms; each head has its own seed
    (seed, 2, index), so any subset regenerates identically."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    positive = set(np.random.default_rng([seed, 2]).permutation(n)[: n // 2].tolist())
    heads: dict[str, int] = {}
    for i in range(n):
        name = f"head_{i:03d}"
        image, label, spacing = synth_labelled_head(
            np.random.default_rng([seed, 2, i]), modality, size_mm, i in positive
        )
        (write_mri if modality == "mri" else write_ct)(out / "images" / f"{name}.nii.gz", image, spacing)
        write_label(out / "labels" / f"{name}.nii.gz", label, spacing)
        heads[name] = int(bool((label == ANEURYSM).any()))
        if heads[name] != (i in positive):
            raise RuntimeError(f"{name}: no aneurysm could be placed inside the brain (seed {seed}); try another seed")
    rows = ["image,aneurysm", *(f"{name},{aneurysm}" for name, aneurysm in heads.items())]
    write_text_atomic(out / "labels.csv", "\n".join(rows) + "\n")
    return heads
