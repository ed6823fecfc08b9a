"""Synthetic data: the users' layout and formats, varied shapes/spacings/scales, structure, determinism, speed."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from rsna_phase0.cli import main
from rsna_phase0.data.manifest import scan_layout_dirs
from rsna_phase0.data.readers import read_volume
from rsna_phase0.data.synth import synth_dataset


def test_synth_writes_the_users_layout_and_every_volume_passes_the_scan(tmp_path):
    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "d"), "--mri", "6", "--ct", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "d"
    mri = sorted((root / "OpenMind_processed").glob("*/*.nii.gz"))
    ct = sorted((root / "NIH_deeplesion" / "CT").glob("*.nii.gz"))
    assert {p.parent.name for p in mri} == {"MRI_T1", "MRI_T2", "MRA"} and len(mri) == 6 and len(ct) == 2
    manifest = scan_layout_dirs([root], workers=1, progress=False)
    assert len(manifest.accepted) == 8 and not manifest.rejected
    # CT is a 5-D float32 vector image with three windows in [0, 1], each using its whole range
    image = nib.load(ct[0])
    assert len(image.shape) == 5 and image.shape[3:] == (1, 3) and image.get_data_dtype() == np.float32
    windows = np.asarray(image.dataobj)
    assert windows.min() == 0.0 and windows.max() == 1.0
    assert all(windows[..., 0, c].max() == 1.0 for c in range(3))
    # shapes, spacings and intensity scales vary like the users' files
    records = [r for r in manifest.accepted if r.modality == "mri"]
    assert len({tuple(r.shape) for r in records}) == 6
    assert all(70 <= n <= 110 for r in records for n in r.shape)
    assert all(0.8 <= s <= 1.2 for r in records for s in r.spacing)
    maxima = [r.stats[0]["max"] for r in records]
    assert max(maxima) / min(maxima) > 5


def test_synth_volumes_have_structure_not_noise(tmp_path):
    synth_dataset(tmp_path, mri=3, ct=1, seed=0)
    mra = read_volume(next((tmp_path / "OpenMind_processed" / "MRA").glob("*")), "mri").array[0]
    t1 = read_volume(next((tmp_path / "OpenMind_processed" / "MRI_T1").glob("*")), "mri").array[0]
    background = t1[0, 0, 0]
    assert np.mean(t1 == background) > 0.3  # air around the head
    # neighbouring voxels are strongly correlated (smooth anatomy), unlike noise
    assert np.corrcoef(t1[:-1].ravel(), t1[1:].ravel())[0, 1] > 0.9
    # MRA: a few bright vessels, far above the brain
    bright = mra > np.percentile(mra, 99.5)
    assert 0.001 < bright.mean() < 0.02
    ct = read_volume(next((tmp_path / "NIH_deeplesion" / "CT").glob("*")), "ct").array
    assert np.mean(ct[2] > 0.5) < 0.1 and np.mean(ct[1] > 0.2) > 0.2  # bone is sparse in the bone window


def test_synth_is_reproducible_per_seed(tmp_path):
    a = synth_dataset(tmp_path / "a", mri=2, ct=1, seed=7)
    b = synth_dataset(tmp_path / "b", mri=2, ct=1, seed=7)
    c = synth_dataset(tmp_path / "c", mri=2, ct=1, seed=8)
    for x, y, z in zip(a, b, c, strict=True):
        vx, vy, vz = (np.asarray(nib.load(p).dataobj) for p in (x, y, z))
        np.testing.assert_array_equal(vx, vy)
        assert vx.shape != vz.shape or not np.array_equal(vx, vz)
