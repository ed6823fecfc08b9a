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
