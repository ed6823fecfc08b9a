"""Read one case exactly as pre-training reads a volume, and its label map onto the same grid.

Image: rsna_phase0.data.readers.read_volume (validation, RAS), rsna_phase0.data.intensity.normalize with the
encoder preset's intensity settings (MRI: the upper percentile of the image's sequence, which pre-training reads
from the folder name and a caller may name instead; CT: its windows), then
rsna_phase0.data.resample.resample_to_spacing to the preset's target_spacing_mm. Label map: it must have the
image's spatial shape and affine and hold only 0, 1, 2; it is reoriented like the image and resampled
nearest-neighbour with the same scale factors (torch "nearest-exact" samples the voxel centre that the trilinear
image resampling interpolates around), so image and labels stay voxel for voxel aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np

from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.intensity import Intensity, normalize
from rsna_phase0.data.readers import check_file, read_volume, to_ras
from rsna_phase0.data.resample import at_target, resample_to_spacing
from rsna_phase0.evaluation.cases import ANEURYSM, LABEL_VALUES, CaseFiles
from rsna_phase0.presets import Preset

AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class Case:
    name: str
    image: np.ndarray  # (C, X, Y, Z) float32, normalised, at the target spacing
    label: np.ndarray | None  # (X, Y, Z) uint8 in LABEL_VALUES, or None (classification from a CSV)
    aneurysm: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def detect_modality(path) -> str:
    """ "mri" for a 3-D image, "ct" for a 3-window vector image (the readers' CT layouts), from the header alone."""
    check_file(path)
    try:
        shape = tuple(nib.load(path).shape)
    except Exception as exc:
        raise VolumeError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if len(shape) == 3 or (len(shape) > 3 and all(n == 1 for n in shape[3:])):
        return "mri"
    if shape[3:] in ((1, 3), (3,)) or (len(shape) == 4 and shape[0] == 3):
        return "ct"
    raise VolumeError(path, f"image of shape {shape} is neither a 3-D MRI nor a 3-window CT; pass --modality")


def resample_labels(label: np.ndarray, spacing, target_mm: float) -> np.ndarray:
    """(X, Y, Z) labels nearest-neighbour onto the grid resample_to_spacing gives the image."""
    exact = at_target(spacing, target_mm)
    if exact.all():
        return label
    import torch
    import torch.nn.functional as F

    factors = [1.0 if e else float(s) / target_mm for s, e in zip(spacing, exact, strict=True)]
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
        out = F.interpolate(t, scale_factor=factors, mode="nearest-exact", recompute_scale_factor=False)
    return out[0, 0].numpy().astype(np.uint8)


def read_label_map(path, image_header: nib.Nifti1Image) -> np.ndarray:
    """(labels (X, Y, Z) uint8, RAS) of a label map checked against its image's header; VolumeError otherwise."""
    check_file(path)
    try:
        nifti = nib.load(path)
        data = np.asarray(nifti.dataobj)
    except Exception as exc:
        raise VolumeError(path, f"cannot read the label map ({type(exc).__name__}: {exc})") from exc
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    image_shape = tuple(image_header.shape[:3])
    if data.shape != image_shape:
        raise VolumeError(path, f"label map shape {data.shape} differs from its image's {image_shape}")
    if not np.allclose(nifti.affine, image_header.affine, atol=AFFINE_TOLERANCE_MM):
        raise VolumeError(
            path,
            f"label map affine differs from its image's (voxel-to-mm maps must match):\n"
            f"{np.round(nifti.affine, 3)}\nvs image\n{np.round(image_header.affine, 3)}",
        )
    values = np.unique(data)
    bad = [v for v in values.tolist() if v not in LABEL_VALUES]
    if bad:
        raise VolumeError(path, f"label values {bad[:10]} outside {{0, 1, 2}} (background, vessel, aneurysm)")
    labels, _ = to_ras(data.astype(np.uint8)[..., None], image_header.affine)
    return np.ascontiguousarray(labels[..., 0])


def case_intensity(preset: Preset, mri_sequence: str | None) -> Intensity:
    """The preset's intensity settings; with `mri_sequence` (e.g. MRA), that sequence's percentile for every MRI."""
    intensity = Intensity.from_preset(preset)
    if mri_sequence is None:
        return intensity
    return replace(intensity, mri_upper_percentile=preset.mri_percentile(mri_sequence), mri_sequence_percentiles=())


def load_case(files: CaseFiles, modality: str, preset: Preset, mri_sequence: str | None = None) -> Case:
    """The preprocessed image (and label map) of one case; VolumeError naming the file for anything unusable."""
    target_mm = preset.target_spacing_mm
    volume = read_volume(files.image, modality)
    image = normalize(volume.array, modality, volume.path, case_intensity(preset, mri_sequence))
    image, _ = resample_to_spacing(image, volume.spacing, target_mm)
    label, aneurysm = None, files.aneurysm
    if files.label_map is not None:
        label = read_label_map(files.label_map, nib.load(files.image))
        has_aneurysm = int(bool((label == ANEURYSM).any()))  # before resampling, which may drop a tiny one
        label = resample_labels(label, volume.spacing, target_mm)
        if label.shape != image.shape[1:]:  # cannot happen with the same scale factors; guards future changes
            raise VolumeError(files.label_map, f"resampled labels {label.shape} vs image {image.shape[1:]}")
        if aneurysm is not None and aneurysm != has_aneurysm:
            raise VolumeError(
                files.label_map,
                f"the labels CSV says aneurysm={aneurysm} but the map has {'some' if has_aneurysm else 'no'} "
                "aneurysm (2) voxels",
            )
        aneurysm = has_aneurysm
    return Case(files.name, np.ascontiguousarray(image, dtype=np.float32), label, int(aneurysm))
