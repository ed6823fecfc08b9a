"""MiM views: fixed physical size crops, the global view is the pooled region, local views are the region at their
boxes, boxes lie in masked regions, and every preset's shapes match the batch contract."""

from __future__ import annotations

import numpy as np
import pytest

from rsna_phase0.data.views import ArrayVolume, augment, crop_region, local_origin_voxels, make_sample, mim_views, pool
from rsna_phase0.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_views_match_the_region_and_the_preset(name):
    preset = get_preset(name)
    rng = np.random.default_rng(1)
    channels = 3 if name == "smoke" else 1
    region = rng.normal(size=(channels, *[preset.region_size] * 3)).astype(np.float32)
    views = mim_views(region, preset, rng)
    s, g, k, f = preset.input_size, preset.grid, preset.n_local, preset.local_scale
    assert views["global_image"].shape == (channels, s, s, s)
    assert views["global_mask"].shape == (g, g, g) and views["global_mask"].dtype == bool
    assert views["local_image"].shape == (k, channels, s, s, s)
    assert views["local_mask"].shape == (k, g, g, g) and views["local_mask"].dtype == bool
    assert views["local_boxes"].shape == (k, 3) and views["local_boxes"].dtype == np.int64
    # the global view is the region average-pooled by local_scale (check one voxel explicitly too)
    np.testing.assert_allclose(views["global_image"], pool(region, f), rtol=1e-6)
    np.testing.assert_allclose(views["global_image"][0, 1, 2, 3], region[0, 2:4, 4:6, 6:8].mean(), rtol=1e-5)
    box = preset.local_box_patches
    for origin, local in zip(views["local_boxes"], views["local_image"], strict=True):
        assert np.all(origin >= 0) and np.all(origin + box <= g)
        o = local_origin_voxels(origin, preset)
        np.testing.assert_array_equal(local, region[:, o[0] : o[0] + s, o[1] : o[1] + s, o[2] : o[2] + s])
        # the box covers globally hidden patches: local views come from masked regions
        assert views["global_mask"][
            origin[0] : origin[0] + box, origin[1] : origin[1] + box, origin[2] : origin[2] + box
        ].any()
    assert views["global_mask"].mean() == pytest.approx(preset.global_mask_ratio, abs=1.0 / g**3)
    assert views["local_mask"][0].mean() == pytest.approx(preset.local_mask_ratio, abs=1.0 / g**3)


def _ramp_volume(shape, spacing):
    """Intensity = physical x coordinate in mm, so a crop's content tells which millimetres it covers."""
    x = (np.arange(shape[0]) + 0.5) * spacing[0]
    array = np.broadcast_to(x[:, None, None], shape)[None].astype(np.float32)
    return ArrayVolume("ramp", array, spacing, np.zeros((0, 3), np.int64))


def test_crops_have_a_fixed_physical_size_whatever_the_spacing():
    preset = get_preset("smoke")  # region 64 voxels at 1 mm = 64 mm
    native = crop_region(_ramp_volume((160, 80, 80), (1.0, 1.0, 1.0)), np.array([80, 40, 40]), preset)
    fine = crop_region(_ramp_volume((320, 80, 80), (0.5, 1.0, 1.0)), np.array([160, 40, 40]), preset)
    assert native.shape == fine.shape == (1, 64, 64, 64)
    # both cover x in [48, 112] mm: same physical content despite a 2x finer grid
    assert native[0, :, 0, 0].min() == pytest.approx(48.5) and native[0, :, 0, 0].max() == pytest.approx(111.5)
    np.testing.assert_allclose(fine[0, 1:-1, 0, 0], native[0, 1:-1, 0, 0], atol=0.3)


def test_regions_larger_than_the_volume_are_zero_padded_not_squashed():
    preset = get_preset("smoke")
    volume = ArrayVolume("slab", np.ones((3, 40, 40, 20), np.float32), (1.0, 1.0, 1.0), np.zeros((0, 3)))
    region = crop_region(volume, np.array([20, 20, 10]), preset)
    assert region.shape == (3, 64, 64, 64)
    assert region.sum() == 3 * 40 * 40 * 20  # every voxel kept once, at native size
    assert region[:, 32, 32, :].tolist()[0] == [0.0] * 22 + [1.0] * 20 + [0.0] * 22


def test_augmentation_is_a_flip_rotation_and_jitter_of_the_region():
    rng = np.random.default_rng(0)
    region = rng.uniform(size=(1, 16, 16, 16)).astype(np.float32)
    out, jitter = augment(region, np.random.default_rng(5))
    assert out.shape == region.shape and np.shares_memory(out, region)  # flips/rotation: a view, nothing copied
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(region.ravel()))  # voxels permuted, not changed
    assert not np.array_equal(out, region)
    assert np.all(np.abs(jitter.scale - 1) <= 0.1) and np.all(np.abs(jitter.shift) <= 0.05)


@pytest.mark.parametrize("channels", [1, 3])
def test_jittering_the_views_equals_jittering_the_region(channels):
    """The views are cut from the flipped/rotated view and jittered afterwards: the same as cutting them from the
    materialised, jittered region (above the floor that keeps tissue above the background the jitter is affine, and
    pooling is linear), only cheaper."""
    preset = get_preset("smoke")
    region = np.random.default_rng(2).uniform(0.1, 1.0, size=(channels, *[preset.region_size] * 3)).astype(np.float32)
    view, jitter = augment(region, np.random.default_rng(9))
    materialised = jitter.apply_(np.ascontiguousarray(view).copy())
    fast = mim_views(view, preset, np.random.default_rng(4), jitter)
    slow = mim_views(materialised.astype(np.float32), preset, np.random.default_rng(4))
    for key in ("global_mask", "local_mask", "local_boxes"):
        np.testing.assert_array_equal(fast[key], slow[key])
    for key in ("global_image", "local_image"):
        assert fast[key].dtype == np.float32 and fast[key].flags.c_contiguous
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-5, atol=1e-6)


def test_pooling_a_strided_view_equals_the_mean_of_each_cell():
    region = np.random.default_rng(3).normal(size=(2, 8, 12, 16)).astype(np.float32)
    view = np.rot90(np.flip(region, axis=3), axes=(1, 2))  # negative and swapped strides
    want = np.ascontiguousarray(view).reshape(2, 6, 2, 4, 2, 8, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(pool(view, 2), want, rtol=1e-5, atol=1e-6)
    want = region.reshape(2, 2, 4, 3, 4, 4, 4).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(pool(region, 4), want, rtol=1e-5, atol=1e-6)


def test_samples_prefer_foreground_and_are_fixed_by_the_seed():
    preset = get_preset("smoke")
    array = np.zeros((1, 200, 200, 200), np.float32)
    array[:, 150:190, 150:190, 150:190] = 1.0
    points = np.argwhere(array[0] > 0)[::97]
    volume = ArrayVolume("corner", array, (1.0, 1.0, 1.0), points)
    samples = [make_sample(volume, preset, np.random.default_rng([7, i]), train=True) for i in range(20)]
    with_object = sum(s["global_image"].max() > 0.5 for s in samples)
    assert with_object >= 15  # a uniform centre would hit the small corner object in about 1 of 20 crops
    again = make_sample(volume, preset, np.random.default_rng([7, 3]), train=True)
    for key, value in samples[3].items():
        np.testing.assert_array_equal(value, again[key])


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_keeps_the_active_set_of_validation(channels):
    """The sparse stages compute voxels with some channel above 0 (background_threshold): intensity jitter must not
    switch air on or dim tissue off, so a region's active set in training equals the one validation sees."""
    preset = get_preset("smoke")
    rng = np.random.default_rng(7)
    region = rng.uniform(0.0, 1.0, (channels, *[preset.region_size] * 3)).astype(np.float32)
    region[:, :, :, : preset.region_size // 2] = 0.0  # air
    region[:, :4] = np.float32(0.01)  # dim tissue, below the jitter's shift
    if channels == 3:
        region[1:, 4:8] = 0.0  # a voxel can be 0 in some CT windows and not in others
    threshold = preset.background_threshold
    for seed in range(20):
        _, jitter = augment(region, np.random.default_rng(seed))
        plain = mim_views(region, preset, np.random.default_rng(100 + seed))
        jittered = mim_views(region, preset, np.random.default_rng(100 + seed), jitter)
        for name in ("global_image", "local_image"):
            active = (plain[name] > threshold).any(axis=-4)
            np.testing.assert_array_equal((jittered[name] > threshold).any(axis=-4), active, err_msg=name)
            assert not np.array_equal(jittered[name], plain[name])  # the jitter did act (the check can fail)
