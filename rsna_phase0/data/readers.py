"""NIfTI readers: every volume comes out float32, channel-first (C, X, Y, Z), oriented RAS, with its spacing in mm.

MRI is 3-D (1 channel). CT is either 3-D in Hounsfield units (1 channel, cut into windows by data/intensity.py) or
holds the users' three HU windows (brain, blood, bone) as SimpleITK writes vector images, (X, Y, Z, 1, 3) under
nibabel, or as (X, Y, Z, 3) or channel-first (3, X, Y, Z). Anything else is rejected with a VolumeError naming the
file and the problem; nothing is ever substituted for an unreadable volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rsna_phase0.data.errors import VolumeError

MODALITIES = ("mri", "ct")
CT_WINDOWS = ("brain", "blood", "bone")
# a volume thinner than this along any axis cannot hold a single patch of any preset
MIN_AXIS_VOXELS = 8
SPACING_RANGE_MM = (0.01, 50.0)  # outside it a header is broken: no scanner makes 10 um or 5 cm voxels of a head
MAX_VOLUME_BYTES = 4 << 30  # float32 bytes of one volume (a 512x512x1024 CT with 3 windows is 3 GB)
MAX_DEFLATE_RATIO = 1032  # the most deflate (gzip) can compress: a larger claimed size cannot be in the file


@dataclass
class Volume:
    path: str
    modality: str
    array: np.ndarray  # (C, X, Y, Z) float32, RAS
    spacing: tuple[float, float, float]  # mm along X, Y, Z

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])


def check_file(path: Path) -> None:
    """Cheap checks before nibabel: the path is a readable, non-empty regular file."""
    if not path.exists():
        raise VolumeError(path, "file does not exist")
    if not path.is_file():
        raise VolumeError(path, "not a regular file (a directory or special file named like a volume)")
    size = path.stat().st_size
    if size == 0:
        raise VolumeError(path, "empty file (0 bytes)")


def spatial_layout(shape: tuple[int, ...], modality: str, path: Path) -> tuple[tuple[int, int, int], int, bool]:
    """(spatial shape, channels, channel_first) for a stored shape, or a VolumeError saying why it is not usable."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    ndim = len(shape)
    if ndim < 3:
        raise VolumeError(path, f"{ndim}-D image of shape {shape}: expected a 3-D volume")
    if modality == "mri":
        extra = shape[3:]
        if any(n != 1 for n in extra):
            raise VolumeError(
                path,
                f"{ndim}-D image of shape {shape} ({int(np.prod(extra))} volumes beyond the 3 spatial axes, "
                "a time series or multi-channel image?): MRI must be a single 3-D volume",
            )
        return tuple(shape[:3]), 1, False
    # CT
    if ndim == 5 and shape[3] == 1:
        channels, spatial, first = shape[4], shape[:3], False
    elif ndim == 4 and shape[3] == 3:
        channels, spatial, first = 3, shape[:3], False
    elif ndim == 4 and shape[0] == 3:
        channels, spatial, first = 3, shape[1:], True
    elif ndim == 3:  # Hounsfield units, one channel
        return tuple(shape), 1, False
    elif ndim == 4:
        raise VolumeError(
            path, f"4-D image of shape {shape} has {shape[3]} channels: CT needs the 3 windows {CT_WINDOWS}"
        )
    else:
        raise VolumeError(
            path,
            f"{ndim}-D image of shape {shape}: CT must be 3-D in HU, or the 3 windows as (X,Y,Z,1,3), (X,Y,Z,3) or "
            "channel-first (3,X,Y,Z)",
        )
    if channels != 3:
        raise VolumeError(path, f"image of shape {shape} has {channels} channels: CT needs the 3 windows {CT_WINDOWS}")
    return tuple(spatial), 3, first


def read_volume(path: str | Path, modality: str) -> Volume:
    """Load, validate and reorient one volume. Raises VolumeError for anything unusable."""
    path = Path(path)
    check_file(path)
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for foreign or broken headers
        raise VolumeError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(path, f"not a NIfTI image (nibabel read it as {type(image).__name__})")
    spatial, channels, channel_first = spatial_layout(tuple(image.shape), modality, path)
    if min(spatial) < MIN_AXIS_VOXELS:
        raise VolumeError(path, f"spatial shape {spatial} is thinner than {MIN_AXIS_VOXELS} voxels along an axis")
    check_header_spacing(image, path)
    check_claimed_size(image, path)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # truncated gzip, short file, zlib errors
        raise VolumeError(
            path, f"cannot read the voxel data, truncated or corrupt file ({type(exc).__name__}: {exc})"
        ) from exc
    data = np.moveaxis(data, 0, -1) if channel_first else data.reshape(*spatial, channels)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise VolumeError(path, f"{bad} NaN/Inf voxels of {data.size}")
    affine = image.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise VolumeError(path, "header has no usable affine (spacing and orientation unknown)")
    try:
        data, affine = to_ras(data, affine)
    except ValueError as exc:
        raise VolumeError(path, str(exc)) from exc
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(path, f"invalid voxel spacing {spacing} in the header")
    if not all(SPACING_RANGE_MM[0] <= s <= SPACING_RANGE_MM[1] for s in spacing):
        raise VolumeError(
            path,
            f"voxel spacing {tuple(round(s, 6) for s in spacing)} mm is outside [{SPACING_RANGE_MM[0]:g}, "
            f"{SPACING_RANGE_MM[1]:g}] mm: an absurd header, not a head scan",
        )
    array = np.ascontiguousarray(np.moveaxis(data, -1, 0))
    return Volume(path=str(path), modality=modality, array=array, spacing=spacing)


def check_header_spacing(image, path: Path) -> None:
    """Without a qform or sform the voxel size is pixdim alone: zero, negative or NaN there used to become 1 mm."""
    header = image.header
    if int(header["qform_code"]) != 0 or int(header["sform_code"]) != 0:
        return  # the affine carries the spacing; checked after orientation
    # nibabel's load "fixes" a zero pixdim to 1 (one stderr line): read the header as stored
    with nib.openers.ImageOpener(path) as handle:
        raw = type(header).from_fileobj(handle, check=False)
    pixdim = [float(v) for v in raw["pixdim"][1:4]]
    bad = [v for v in pixdim if not (np.isfinite(v) and v > 0)]
    if bad:
        raise VolumeError(
            path,
            f"header spacing pixdim {tuple(pixdim)} has zero, negative or NaN values and there is no qform/sform: "
            "the voxel size is unknown",
        )


def check_claimed_size(image, path: Path) -> None:
    """The voxel data the header claims must fit the file (and the memory bound) before any array is allocated:
    a 79-byte .nii.gz claiming 2048x2048x512 int16 drove a scan worker to 4.1 GB."""
    header = image.header
    claimed = int(np.prod(image.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    as_float = int(np.prod(image.shape, dtype=np.int64)) * 4
    if as_float > MAX_VOLUME_BYTES:
        raise VolumeError(
            path,
            f"shape {tuple(image.shape)} would take {as_float / 2**30:.1f} GB as float32, more than the "
            f"{MAX_VOLUME_BYTES / 2**30:g} GB a volume may use (each scan worker holds one)",
        )
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        if claimed > MAX_DEFLATE_RATIO * size:
            raise VolumeError(
                path,
                f"header claims {claimed / 2**20:.1f} MB of voxel data, more than a {size}-byte gzip file can hold "
                f"(deflate compresses at most {MAX_DEFLATE_RATIO}:1): truncated or corrupt file",
            )
        return
    offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))  # where nibabel will read
    if offset + claimed > size:
        raise VolumeError(
            path,
            f"header claims {claimed} bytes of voxel data from byte {offset}, but the file has {size} bytes: "
            "truncated or corrupt file",
        )


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip the three spatial axes of (X, Y, Z, C) data to the closest RAS orientation."""
    ornt = nib.orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, affine
    if np.isnan(ornt).any():
        raise ValueError("affine is degenerate: cannot orient the volume")
    affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape[:3])
    return nib.orientations.apply_orientation(data, ornt), affine
