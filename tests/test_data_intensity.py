"""The MRI normalisation choice (foreground p0.5-p99.5 -> [0, 1]) and CT window checks."""

from __future__ import annotations

import numpy as np
import pytest

from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.intensity import check_ct_windows, foreground_points, normalize_mri
from tests.data_helpers import head


def test_mri_scales_from_unit_to_518_normalise_to_the_same_array():
    base = head((32, 32, 32))[None]
    unit = normalize_mri(base.copy(), "a")
    for scale, offset in ((518.0, -7.0), (100.0, 3.0), (0.01, 0.0)):
        other = normalize_mri(base * scale + offset, "b")
        np.testing.assert_allclose(other, unit, atol=2e-5)


def test_mri_normalisation_maps_background_to_zero_and_clips_outliers():
    image = head((32, 32, 32), scale=400, offset=-7)[None]
    image[0, 16, 16, 16] = 1e6  # one hot voxel must not squash the whole range
    out = normalize_mri(image, "x")
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[image == -7] == 0.0)
    foreground = out[image > -7]
    assert np.median(foreground) > 0.3  # the range came from the head, not from the outlier
    assert np.mean(foreground >= 1.0) < 0.01


def test_constant_mri_is_rejected():
    with pytest.raises(VolumeError, match="constant"):
        normalize_mri(np.full((1, 16, 16, 16), 3.0, np.float32), "flat.nii.gz")


def test_ct_windows_tolerate_round_off_but_not_out_of_range_values():
    windows = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 8)).astype(np.float32)
    windows[0, 0, 0, 0] = 1.0 + 1e-5
    assert check_ct_windows(windows.copy(), "ok").max() == 1.0
    windows[1, 0, 0, 0] = 1.5
    with pytest.raises(VolumeError, match="blood window spans"):
        check_ct_windows(windows, "bad")
    flat = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 8)).astype(np.float32)
    flat[2] = 0.0
    with pytest.raises(VolumeError, match="bone window is constant"):
        check_ct_windows(flat, "bad")


def test_foreground_points_lie_on_the_object():
    image = normalize_mri(head((32, 32, 32))[None], "x")
    points = foreground_points(image, "x", max_points=100)
    assert 0 < len(points) <= 100
    assert np.all(image[0, points[:, 0], points[:, 1], points[:, 2]] > 0.05)


def _mra_like(path_folder: str):
    """A head whose brightest ~1% are vessels of graded brightness (TOF-MRA: what an aneurysm model must see)."""
    rng = np.random.default_rng(0)
    image = head((40, 40, 40))[None] * 100.0
    inside = np.flatnonzero(image[0] > 10)
    vessels = rng.choice(inside, size=len(inside) // 100, replace=False)
    image[0].flat[vessels] = rng.uniform(200.0, 400.0, len(vessels))  # vessels: bright, and not all alike
    return image, vessels, f"/data/OpenMind_processed/{path_folder}/sub-1.nii.gz"


def test_mra_keeps_vessel_contrast_where_the_default_percentile_saturates_it():
    from rsna_phase0.data.intensity import normalize

    image, vessels, mra_path = _mra_like("MRA")
    _, _, t1_path = _mra_like("MRI_T1")
    as_mra = normalize(image.copy(), "mri", mra_path)[0].flat[vessels]
    as_t1 = normalize(image.copy(), "mri", t1_path)[0].flat[vessels]
    assert np.mean(as_t1 >= 1.0) > 0.5  # p99.5 saturates most vessel voxels
    assert np.mean(as_mra >= 1.0) < 0.05 and np.std(as_mra) > 0.1  # p99.99 keeps their grading


def _hu_phantom() -> np.ndarray:
    """(1, X, Y, Z) HU: air, soft tissue 40, a contrast-filled artery 400, bone 1000."""
    hu = np.full((1, 24, 24, 24), -1000.0, np.float32)
    hu[0, 4:20, 4:20, 4:20] = 40.0
    hu[0, 10:14, 10:14, 4:20] = 400.0
    hu[0, 4:6, 4:20, 4:20] = 1000.0
    return hu


def test_ct_in_hounsfield_units_is_cut_into_the_configured_windows(tmp_path):
    import nibabel as nib

    from rsna_phase0.data.intensity import Intensity, normalize
    from rsna_phase0.data.readers import read_volume

    path = tmp_path / "cta.nii.gz"
    nib.save(nib.Nifti1Image(_hu_phantom()[0], np.eye(4)), path)
    volume = read_volume(path, "ct")
    assert volume.array.shape == (1, 24, 24, 24)
    users = normalize(volume.array.copy(), "ct", str(path))
    assert users.shape == (3, 24, 24, 24)
    np.testing.assert_allclose(users[:, 12, 12, 12], [1.0, 1.0, 1300 / 3000], rtol=1e-6)  # artery saturated
    vessel = Intensity(ct_windows=((0.0, 80.0), (-20.0, 180.0), (-100.0, 600.0)))
    out = normalize(volume.array.copy(), "ct", str(path), vessel)
    np.testing.assert_allclose(out[2, 12, 12, 12], 500 / 700, rtol=1e-6)  # artery graded in the vessel window
    np.testing.assert_allclose(out[2, 8, 8, 8], 140 / 700, rtol=1e-6)  # soft tissue below it
    assert np.all(out[:, 0, 0, 0] == 0.0) and np.all(users[:, 0, 0, 0] == 0.0)  # air is background in every window
    four = Intensity(ct_windows=((0.0, 80.0), (-20.0, 180.0), (-900.0, 2100.0), (-100.0, 600.0)))
    assert normalize(volume.array.copy(), "ct", str(path), four).shape == (4, 24, 24, 24)


def test_ct_that_is_neither_hounsfield_nor_the_users_windows_is_rejected():
    from rsna_phase0.data.intensity import Intensity, normalize

    with pytest.raises(VolumeError, match="must be in Hounsfield units"):
        normalize(np.random.default_rng(0).uniform(0, 1, (1, 8, 8, 8)).astype(np.float32), "ct", "one.nii.gz")
    windows = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 8)).astype(np.float32)
    vessel = Intensity(ct_windows=((-100.0, 600.0),))
    with pytest.raises(VolumeError, match="pre-windowed CT .* cannot give the configured ct_windows"):
        normalize(windows, "ct", "three.nii.gz", vessel)
