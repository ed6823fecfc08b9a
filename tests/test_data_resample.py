"""Whole-volume resampling to the target spacing: exact physical positions, untouched axes kept voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest

from rsna_phase0.data.resample import resample_to_spacing


def _ramp(shape, spacing, axis):
    """Intensity = physical coordinate (mm) of each voxel centre along `axis`, so values tell where a voxel lies."""
    centres = (np.arange(shape[axis]) + 0.5) * spacing[axis]
    view = [1, 1, 1]
    view[axis] = -1
    return np.broadcast_to(centres.reshape(view), shape)[None].astype(np.float32).copy()


@pytest.mark.parametrize(("spacing", "axis"), [((0.8, 1.0, 1.0), 0), ((1.0, 0.5, 1.0), 1), ((1.0, 1.0, 1.6), 2)])
def test_output_voxels_sit_at_the_target_grid(spacing, axis):
    shape = (40, 36, 30)
    array = _ramp(shape, spacing, axis)
    out, out_spacing = resample_to_spacing(array, spacing, 1.0)
    assert out_spacing == (1.0, 1.0, 1.0) and out.dtype == np.float32
    n = int(shape[axis] * spacing[axis])
    assert out.shape[1 + axis] == n  # floor(n * spacing / target): same corner, never past the volume's extent
    for other in {0, 1, 2} - {axis}:
        assert out.shape[1 + other] == shape[other]
    profile = np.moveaxis(out[0], axis, 0)[:, 0, 0]
    inner = slice(1, n - 1)  # the two edge voxels clamp at the border, as any cell-centred resampling does
    np.testing.assert_allclose(profile[inner], (np.arange(n) + 0.5)[inner], atol=1e-4)


def test_volumes_at_the_target_spacing_are_returned_unchanged():
    array = np.random.default_rng(0).uniform(size=(3, 10, 12, 14)).astype(np.float32)
    out, spacing = resample_to_spacing(array, (1.0, 0.9995, 1.0004), 1.0)  # within the 1e-3 tolerance
    assert out is array and spacing == (1.0, 1.0, 1.0)
    out, _ = resample_to_spacing(array, (1.0, 1.0, 0.5), 1.0)
    assert out.shape == (3, 10, 12, 7)
    # along untouched axes every voxel keeps its value: pairs of z-voxels are averaged, nothing else
    np.testing.assert_allclose(out, array.reshape(3, 10, 12, 7, 2).mean(axis=-1), rtol=1e-5, atol=1e-6)
