"""The blosc2 crop cache: volumes stored at the target spacing, the same crops as the NIfTI path, resumable, damaged
entries rebuilt and never read, and an entry never used for a preset with another spacing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rsna_phase0.cli import main
from rsna_phase0.data.cache import CachedVolume, build_cache, entry_paths, load_meta
from rsna_phase0.data.layout import files_in
from rsna_phase0.data.manifest import scan_dirs
from rsna_phase0.data.pipeline import PretrainData, open_source
from rsna_phase0.data.synth import synth_dataset
from rsna_phase0.data.views import read_padded
from rsna_phase0.presets import get_preset
from tests.data_helpers import save

SMOKE = get_preset("smoke")


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "data"
    synth_dataset(root, mri=3, ct=2, seed=4)
    files = files_in(root, "mri") + files_in(root, "ct")
    return root, files


def test_cached_crops_equal_nifti_crops(dataset, tmp_path):
    root, files = dataset
    report = build_cache(files, tmp_path / "cache", workers=2, progress=False)
    assert (report.built, report.skipped, report.failed) == (5, 0, [])
    manifest = scan_dirs([root], [root], workers=1, progress=False)
    for record in manifest.accepted:
        meta = load_meta(tmp_path / "cache", record.modality, record.relpath, Path(record.path), 1.0)
        cached, direct = CachedVolume.from_meta(tmp_path / "cache", meta), open_source(record, get_preset("kaggle"))
        # stored at the target spacing (synthetic volumes come at 0.8-1.2 mm): no crop needs resampling
        assert cached.spacing == direct.spacing == (1.0, 1.0, 1.0)
        assert meta["source_spacing"] == pytest.approx(record.spacing, rel=1e-5)
        want = [int(n * s + 1e-6) for n, s in zip(record.shape, meta["source_spacing"], strict=True)]
        assert list(cached.shape) == list(direct.shape) == want
        np.testing.assert_array_equal(cached.foreground, direct.foreground)
        lo, size = np.array([-5, 10, 3]), np.array([40, 50, 30])  # partly outside: padding must agree too
        np.testing.assert_array_equal(read_padded(cached, lo, size), read_padded(direct, lo, size))
    plain = PretrainData(manifest, SMOKE, steps_per_epoch=3, val_fraction=0.0)
    fast = PretrainData(manifest, SMOKE, steps_per_epoch=3, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert "serves 5 of 5 volumes" in fast.describe() and "cache: not used" in plain.describe()
    for a, b in zip(plain.train_batches(0), fast.train_batches(0), strict=True):
        assert torch.equal(a.global_image, b.global_image) and torch.equal(a.local_image, b.local_image)


def test_cache_resumes_and_rebuilds_damaged_entries(dataset, tmp_path):
    _, files = dataset
    cache = tmp_path / "cache"
    build_cache(files, cache, workers=1, progress=False)
    mri = [f for f in files if f.modality == "mri"]
    truncated, flipped, partial, stale = (entry_paths(cache, f.modality, f.relpath, 1.0) for f in mri + files[3:4])
    # 1: data file cut short (an interrupted copy); 2: same size, bytes changed; 3: no .json (died before commit)
    truncated[0].write_bytes(truncated[0].read_bytes()[:-100])
    raw = bytearray(flipped[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    flipped[0].write_bytes(bytes(raw))
    partial[1].unlink()
    # 4: the source changed after caching
    source = files[3].path
    os.utime(source, (source.stat().st_atime, source.stat().st_mtime + 10))
    assert load_meta(cache, mri[0].modality, mri[0].relpath, mri[0].path) is None  # cheap check catches truncation
    assert (
        load_meta(cache, mri[1].modality, mri[1].relpath, mri[1].path) is not None
    )  # same size: only a re-hash sees it
    assert load_meta(cache, mri[1].modality, mri[1].relpath, mri[1].path, verify="full") is None
    report = build_cache(files, cache, workers=1, progress=False)
    assert (report.built, report.skipped) == (4, 1)
    for f in files:
        assert load_meta(cache, f.modality, f.relpath, f.path, verify="full") is not None
    assert build_cache(files, cache, workers=1, progress=False).skipped == 5


def test_pretrain_data_does_not_use_stale_entries(dataset, tmp_path):
    root, files = dataset
    build_cache(files, tmp_path / "cache", workers=1, progress=False)
    entry_paths(tmp_path / "cache", files[0].modality, files[0].relpath, 1.0)[1].unlink()
    manifest = scan_dirs([root], [root], workers=1, progress=False)
    data = PretrainData(manifest, SMOKE, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert "serves 4 of 5 volumes; 1 read from .nii.gz" in data.describe()


def test_an_entry_serves_only_its_own_spacing(dataset, tmp_path):
    root, files = dataset
    cache = tmp_path / "cache"
    build_cache(files, cache, workers=1, progress=False, spacing_mm=1.0)
    manifest = scan_dirs([root], [root], workers=1, progress=False)
    coarse = SMOKE.with_overrides(target_spacing_mm=2.0)
    with pytest.raises(
        ValueError,
        match=r"trains at 2mm, but 5 volumes have entries only for another spacing \(5 at 1mm\).*--spacing 2",
    ):
        PretrainData(manifest, coarse, val_fraction=0.0, cache_dir=cache)
    result = CliRunner().invoke(
        main, ["data", "cache", str(root), "--out", str(cache), "--spacing", "2", "--workers", "1"]
    )
    assert result.exit_code == 0 and "5 built, 0 already complete" in result.output, result.output
    for f in files:  # both spacings live side by side, each sized for its own grid
        fine = load_meta(cache, f.modality, f.relpath, f.path, 1.0, verify="full")
        wide = load_meta(cache, f.modality, f.relpath, f.path, 2.0, verify="full")
        assert fine["spacing"] == [1.0] * 3 and wide["spacing"] == [2.0] * 3
        assert [n // 2 for n in fine["shape"][1:]] == wide["shape"][1:]  # floor(n s / 2) = floor(floor(n s) / 2)
    assert "serves 5 of 5 volumes" in PretrainData(manifest, coarse, val_fraction=0.0, cache_dir=cache).describe()


def test_bad_volumes_are_reported_not_cached(tmp_path):
    folder = tmp_path / "OpenMind_processed" / "MRI_T2"
    save(folder / "zeros.nii.gz", np.zeros((16, 16, 16), np.float32))
    (folder / "empty.nii.gz").write_bytes(b"")
    result = CliRunner().invoke(main, ["data", "cache", str(tmp_path), "--out", str(tmp_path / "c"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "0 built" in result.output and "2 rejected" in result.output
    assert "empty.nii.gz: empty file" in result.output and "zeros.nii.gz: constant" in result.output
    assert not list((tmp_path / "c").rglob("*.b2nd"))


def test_parallel_cache_and_scan_after_threaded_torch_work_in_the_same_process(tmp_path):
    # A forked pool child that resamples with torch after the parent ran a multi-threaded torch op deadlocked
    # (OpenMP's thread pool does not survive fork): the pools must not depend on the parent's thread state.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import torch
        from pathlib import Path
        from rsna_phase0.data.cache import build_cache
        from rsna_phase0.data.layout import files_in
        from rsna_phase0.data.manifest import scan_dirs
        from rsna_phase0.data.synth import synth_dataset
        torch.set_num_threads(2)
        torch.nn.functional.conv3d(torch.randn(2, 4, 24, 24, 24), torch.randn(8, 4, 3, 3, 3)).sum().item()
        root = Path({str(tmp_path / "data")!r})
        synth_dataset(root, mri=2, ct=1, seed=1)
        manifest = scan_dirs([root / "OpenMind_processed"], [root / "NIH_deeplesion" / "CT"], workers=2, progress=False)
        assert len(manifest.accepted) == 3, manifest.summary_table()
        files = files_in(root, "mri") + files_in(root, "ct")
        build_cache(files, {str(tmp_path / "cache")!r}, workers=2, progress=False)
        print("done")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-3000:]
