"""Readers refuse headers that lie (issue 13, D5/D6): bad spacing, and data sizes the file cannot hold, rejected
with the reason before any array is allocated."""

from __future__ import annotations

import gzip
import io
import resource

import nibabel as nib
import numpy as np
import pytest

from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.readers import read_volume


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 1.0, np.nan)])
def test_zero_negative_or_nan_pixdim_without_qform_sform_is_rejected_not_1mm(tmp_path, pixdim):
    path = tmp_path / "bad.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_shape((16, 16, 16))
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)
    header["pixdim"][1:4] = pixdim  # no qform/sform: this is the only spacing; nib.save would "fix" it
    raw = io.BytesIO()
    header.write_to(raw)
    path.write_bytes(gzip.compress(raw.getvalue() + b"\0" * 4 + np.ones(16**3, np.float32).tobytes()))
    with pytest.raises(VolumeError, match="has zero, negative or NaN values and there is no qform/sform") as caught:
        read_volume(path, "mri")
    assert caught.value.path == str(path)


def test_absurd_spacing_is_rejected_with_the_range(tmp_path):
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.diag([200.0, 1, 1, 1])), path)
    with pytest.raises(VolumeError, match=r"voxel spacing \(200.0, 1.0, 1.0\) mm is outside \[0.01, 50\] mm"):
        read_volume(path, "mri")


def _header_only(shape, dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header.set_data_offset(352)
    buffer = io.BytesIO()
    header.write_to(buffer)
    return buffer.getvalue()


def test_a_tiny_gzip_claiming_a_huge_volume_is_rejected_before_allocating(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_header_only((2048, 2048, 512))))
    assert path.stat().st_size < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(VolumeError, match="would take 8.0 GB as float32, more than the 4 GB a volume may use"):
        read_volume(path, "mri")
    path.write_bytes(gzip.compress(_header_only((512, 512, 256))))  # under the bound: the ratio check
    with pytest.raises(VolumeError, match=r"header claims 128.0 MB of voxel data, more than a \d+-byte gzip"):
        read_volume(path, "mri")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: no 128 MB array was made


def test_an_uncompressed_file_shorter_than_its_header_claims_is_rejected(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(_header_only((64, 64, 64)) + b"\0" * 1000)
    with pytest.raises(VolumeError, match="header claims 524288 bytes of voxel data from byte 352, but the file has"):
        read_volume(path, "mri")
