"""Labelled synthetic heads: images and label maps agree, vessels and aneurysms are where the labels say, half the
heads are positive, the CT version is the same heads, and everything is deterministic by seed."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from rsna_phase0.cli import main
from rsna_phase0.data.intensity import normalize
from rsna_phase0.data.readers import read_volume
from rsna_phase0.data.synth_labels import synth_labelled_dataset


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation by the 6-neighbourhood, `iterations` times (numpy only)."""
    for _ in range(iterations):
        grown = mask.copy()
        for axis in range(3):
            grown[(slice(None),) * axis + (slice(1, None),)] |= mask[(slice(None),) * axis + (slice(None, -1),)]
            grown[(slice(None),) * axis + (slice(None, -1),)] |= mask[(slice(None),) * axis + (slice(1, None),)]
        mask = grown
    return mask


def _arrays(root, name):
    image = nib.load(root / "images" / f"{name}.nii.gz")
    label = nib.load(root / "labels" / f"{name}.nii.gz")
    return image, label, np.asarray(label.dataobj)


def test_labelled_synth_writes_consistent_images_and_labels(tmp_path):
    root = tmp_path / "heads"
    result = CliRunner().invoke(main, ["data", "synth", str(root), "--labels", "--n", "6", "--size", "48"])
    assert result.exit_code == 0, result.output
    with open(root / "labels.csv", newline="") as handle:
        rows = {r["image"]: int(r["aneurysm"]) for r in csv.DictReader(handle)}
    assert sorted(rows) == [f"head_{i:03d}" for i in range(6)] and sum(rows.values()) == 3
    for name, positive in rows.items():
        image, label_nifti, label = _arrays(root, name)
        assert label_nifti.get_data_dtype() == np.uint8 and set(np.unique(label)) <= {0, 1, 2}
        assert label.shape == image.shape and np.allclose(label_nifti.affine, image.affine)
        assert (label == 2).any() == bool(positive)
        assert 300 < np.count_nonzero(label == 1) < 0.05 * label.size  # a vessel tree, not a blob
        # aneurysms touch the vessels they bulge from
        if positive:
            assert (dilate(label == 2, iterations=2) & (label == 1)).any()
        # the image shows what the labels say: bright vessels and aneurysms inside a darker brain
        volume = read_volume(root / "images" / f"{name}.nii.gz", "mri")
        normalised = normalize(volume.array, "mri", volume.path)[0]
        brain_tissue = (label == 0) & dilate(label > 0, iterations=4)
        assert normalised[label == 1].mean() > 0.8 and normalised[brain_tissue].mean() < 0.4
        if positive:
            assert normalised[label == 2].mean() > 0.7


def test_labelled_synth_is_deterministic_and_ct_holds_the_same_heads(tmp_path):
    a = synth_labelled_dataset(tmp_path / "a", n=3, seed=5, size_mm=40)
    b = synth_labelled_dataset(tmp_path / "b", n=3, seed=5, size_mm=40)
    synth_labelled_dataset(tmp_path / "c", n=3, seed=6, size_mm=40)
    ct = synth_labelled_dataset(tmp_path / "ct", n=3, seed=5, size_mm=40, modality="ct")
    assert a == b == ct
    for name in a:
        image_a, _, label_a = _arrays(tmp_path / "a", name)
        image_b, _, label_b = _arrays(tmp_path / "b", name)
        image_c, _, label_c = _arrays(tmp_path / "c", name)
        np.testing.assert_array_equal(np.asarray(image_a.dataobj), np.asarray(image_b.dataobj))
        np.testing.assert_array_equal(label_a, label_b)
        assert label_a.shape != label_c.shape or not np.array_equal(label_a, label_c)
        image_ct, _, label_ct = _arrays(tmp_path / "ct", name)
        np.testing.assert_array_equal(label_ct, label_a)  # the same head geometry as CTA
        assert image_ct.shape == (*label_a.shape, 1, 3)
        windows = read_volume(tmp_path / "ct" / "images" / f"{name}.nii.gz", "ct").array
        # contrast-filled arteries saturate the blood window; brain sits in its lower half
        assert windows[1][label_a == 1].mean() > 0.95
        assert windows[1][(label_a == 0) & dilate(label_a > 0, iterations=4)].mean() < 0.5
