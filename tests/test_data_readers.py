"""Readers and the scan: every kind of bad input is rejected with a reason naming the file; good files are kept."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from rsna_phase0.cli import main
from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.intensity import normalize
from rsna_phase0.data.manifest import Manifest, scan_dirs
from rsna_phase0.data.readers import read_volume
from tests.data_helpers import ct_windows, head, save, save_ct


def _truncated(path):
    save(path, head((32, 32, 32), seed=3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_mri_files(folder):
    """name -> (writer, words the reason must contain)"""
    return {
        "truncated.nii.gz": (_truncated, "truncated or corrupt"),
        "empty.nii.gz": (lambda p: p.write_bytes(b""), "empty file"),
        "text.nii.gz": (lambda p: p.write_text("not an image at all\n" * 20), "cannot read as NIfTI"),
        "flat2d.nii.gz": (lambda p: save(p, np.ones((20, 20), np.float32)), "2-D image"),
        "timeseries.nii.gz": (lambda p: save(p, np.stack([head()] * 5, axis=-1)), "time series"),
        "nan.nii.gz": (lambda p: save(p, np.where(head() > 0.6, np.nan, head())), "NaN/Inf"),
        "inf.nii.gz": (lambda p: save(p, np.where(head() > 0.6, np.inf, head())), "NaN/Inf"),
        "zeros.nii.gz": (lambda p: save(p, np.zeros((24, 24, 24), np.float32)), "constant"),
        "sliver.nii.gz": (lambda p: save(p, head((24, 24, 4))), "thinner than 8 voxels"),
        "adir.nii.gz": (lambda p: p.mkdir(), "not a regular file"),
    }


def test_each_bad_mri_is_rejected_with_a_reason_naming_the_file(tmp_path):
    for name, (write, words) in _bad_mri_files(tmp_path).items():
        path = tmp_path / name
        write(path)
        with pytest.raises(VolumeError) as info:
            normalize(read_volume(path, "mri").array, "mri", str(path))  # the checks the scan applies
        assert info.value.path == str(path), name
        assert words in info.value.reason, (name, info.value.reason)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("channels", [2, 4])
def test_ct_with_wrong_channel_count_is_rejected(tmp_path, channels):
    path = save(tmp_path / "ct.nii.gz", np.zeros((16, 16, 16, 1, channels), np.float32))
    with pytest.raises(VolumeError, match=f"{channels} channels: CT needs the 3 windows"):
        read_volume(path, "ct")


def test_ct_windows_outside_unit_range_are_rejected(tmp_path):
    from rsna_phase0.data.intensity import check_ct_windows

    path = save_ct(tmp_path / "hu.nii.gz", ct_windows() * 1000 - 500)  # raw HU, not windowed
    volume = read_volume(path, "ct")
    with pytest.raises(VolumeError, match="window spans"):
        check_ct_windows(volume.array, str(path))


def test_ct_layouts_agree_and_come_out_channel_first(tmp_path):
    windows = ct_windows()
    paths = {
        "vector5d": save_ct(tmp_path / "a.nii.gz", windows, spacing=(0.7, 0.7, 2.5)),
        "last": save(tmp_path / "b.nii.gz", windows, spacing=(0.7, 0.7, 2.5)),
        "first": save(tmp_path / "c.nii.gz", np.moveaxis(windows, -1, 0).copy(), spacing=(0.7, 0.7, 2.5)),
    }
    volumes = {k: read_volume(p, "ct") for k, p in paths.items()}
    for key in ("vector5d", "last"):
        assert volumes[key].array.shape == (3, 24, 24, 16)
        np.testing.assert_array_equal(volumes[key].array, np.moveaxis(windows, -1, 0))
        assert volumes[key].spacing == pytest.approx((0.7, 0.7, 2.5))
    # channel-first: the affine describes the three spatial axes after the channel axis
    assert volumes["first"].array.shape == (3, 24, 24, 16)
    np.testing.assert_array_equal(volumes["first"].array, volumes["last"].array)


def test_mri_is_reoriented_to_ras_with_spacing_following_the_axes(tmp_path):
    image = head((20, 24, 28))
    # LPS-like storage: x and y flipped, and axes permuted (stored axis 0 is superior)
    affine = np.array([[0, 0, -0.8, 0], [0, -1.2, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]], float)
    path = save(tmp_path / "lps.nii.gz", image, affine=affine)
    volume = read_volume(path, "mri")
    expected = nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(volume.array[0], expected)
    assert volume.array.shape == (1, 28, 24, 20)
    assert volume.spacing == pytest.approx((0.8, 1.2, 2.0))


def test_mri_with_trailing_singleton_axis_is_accepted(tmp_path):
    path = save(tmp_path / "x.nii.gz", head()[..., None])
    assert read_volume(path, "mri").array.shape == (1, 24, 24, 24)


def test_scan_keeps_good_files_and_records_each_bad_one(tmp_path):
    t1 = tmp_path / "OpenMind_processed" / "MRI_T1"
    t1.mkdir(parents=True)
    for name, (write, _) in _bad_mri_files(t1).items():
        write(t1 / name)
    save(t1 / "good.nii.gz", head(scale=518, offset=-7))
    save(t1 / "good2.nii.gz", head(seed=1))
    save(t1 / "good2.nii.nii.gz", head(seed=1))  # the users' doubled suffix: same stem as good2
    ct = tmp_path / "NIH_deeplesion" / "CT"
    save_ct(ct / "body.nii.gz", ct_windows())
    save(ct / "two.nii.gz", np.zeros((16, 16, 16, 1, 2), np.float32))

    manifest = scan_dirs([tmp_path / "OpenMind_processed"], [tmp_path / "NIH_deeplesion"], workers=2, progress=False)

    ok = {r.relpath for r in manifest.accepted}
    assert ok == {
        "OpenMind_processed/MRI_T1/good.nii.gz",
        "OpenMind_processed/MRI_T1/good2.nii.gz",
        "NIH_deeplesion/CT/body.nii.gz",
    }
    rejected = {r.relpath.split("/")[-1]: r.reason for r in manifest.rejected}
    assert "duplicate of good2.nii.gz" in rejected["good2.nii.nii.gz"]
    assert "3 windows" in rejected["two.nii.gz"]
    for name, (_, words) in _bad_mri_files(t1).items():
        assert words in rejected[name], (name, rejected[name])
    good = next(r for r in manifest.accepted if r.relpath.endswith("/good.nii.gz"))
    assert (good.modality, good.subtype, good.shape, good.channels) == ("mri", "MRI_T1", [24, 24, 24], 1)
    assert good.stats[0]["min"] == pytest.approx(-7) and good.stats[0]["p99.5"] > 300
    table = manifest.summary_table()
    assert "MRI_T1" in table and "empty.nii.gz: empty file" in table

    manifest.save(tmp_path / "m.json")
    again = Manifest.load(tmp_path / "m.json")
    assert again.records == manifest.records


def test_manifest_load_names_the_fix_for_a_broken_file(tmp_path):
    (tmp_path / "m.json").write_text("{ not json")
    with pytest.raises(ValueError, match="rsna-phase0 data scan"):
        Manifest.load(tmp_path / "m.json")


def test_scan_command_classifies_folders_and_writes_the_manifest(tmp_path):
    save(tmp_path / "OpenMind_processed" / "MRA" / "a.nii.gz", head())
    save(tmp_path / "OpenMind_processed" / "MRI_T2" / "b.nii.gz", head(seed=2))
    save_ct(tmp_path / "NIH_deeplesion" / "CT" / "c.nii.gz", ct_windows())
    (tmp_path / "OpenMind_processed" / "MRA" / "bad.nii.gz").write_bytes(b"")
    out = tmp_path / "manifest.json"
    runner = CliRunner()
    result = runner.invoke(main, ["data", "scan", str(tmp_path), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "bad.nii.gz: empty file" in result.output
    records = json.loads(out.read_text())["records"]
    assert {(r["subtype"], r["status"]) for r in records} == {
        ("MRA", "ok"),
        ("MRI_T2", "ok"),
        ("CT", "ok"),
        ("MRA", "rejected"),
    }
    # a sub-folder alone works too, and --json prints records
    result = runner.invoke(main, ["data", "scan", str(tmp_path / "NIH_deeplesion" / "CT"), "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert [r["modality"] for r in json.loads(result.output)["records"]] == ["ct"]
    # a folder that is not part of the layout is refused with the accepted forms
    os.makedirs(tmp_path / "elsewhere")
    result = runner.invoke(main, ["data", "scan", str(tmp_path / "elsewhere")])
    assert result.exit_code != 0 and "cannot tell the modality" in result.output
