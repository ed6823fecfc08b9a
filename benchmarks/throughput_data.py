"""Data for benchmarks/throughput.py: synthetic NIfTI files in the users' layout, read by the real loaders.

`write_dataset` writes head MRI (T1, T2, MRA) and body CT with rsna_phase0.data.synth, either small (random sizes
about 70-110 voxels per axis: seconds to write, for the CPU check) or at the users' sizes (MRI 256x256x180, CT
512x512x60x3, as benchmarks/data_loading.py). `LoaderData` scans them into a manifest, builds the blosc2 cache and
hands out PretrainData streams with or without it, so batches come through exactly the code that trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

USERS_MRI_SHAPE = (256, 256, 180)
USERS_CT_SHAPE = (512, 512, 60)


def write_dataset(root: Path, sizes: str) -> None:
    """3 MRI (one per kind) + 1 CT under `root`; `sizes` is 'small' or 'users'."""
    from rsna_phase0.data.layout import CT_ROOT, MRI_ROOT
    from rsna_phase0.data.synth import MRI_KINDS, ct_windows, synth_ct_hu, synth_dataset, synth_mri, write_ct, write_mri

    if sizes == "small":
        synth_dataset(root, mri=3, ct=1, seed=0)
        return
    if sizes != "users":
        raise ValueError(f"unknown data sizes {sizes!r}; use 'small' or 'users'")
    for i, (folder, suffix) in enumerate(MRI_KINDS):
        image, spacing = synth_mri(np.random.default_rng([0, 0, i]), folder, shape=USERS_MRI_SHAPE)
        path = root / MRI_ROOT / folder / f"sub-bench{i:03d}_{suffix}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mri(path, image, np.ones(3, np.float32))  # 1 mm: no resampling, as the OpenMind files
    hu, _ = synth_ct_hu(np.random.default_rng([0, 1, 0]), shape=USERS_CT_SHAPE)
    path = root / CT_ROOT / "CT" / "bench_ct_000.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ct(path, ct_windows(hu), np.array([0.8, 0.8, 1.0], np.float32))


@dataclass
class LoaderData:
    """A scanned synthetic data set and its cache folder, ready to feed PretrainData."""

    root: Path
    manifest: object
    cache_dir: Path
    seconds_to_write: float
    seconds_to_cache: float

    @classmethod
    def create(cls, root: Path, sizes: str, workers: int) -> LoaderData:
        from rsna_phase0.data.cache import build_cache
        from rsna_phase0.data.layout import files_in
        from rsna_phase0.data.manifest import scan_dirs

        start = time.perf_counter()
        write_dataset(root / "data", sizes)
        written = time.perf_counter() - start
        manifest = scan_dirs([root / "data"], [root / "data"], workers=workers, progress=False)
        rejected = [(r.relpath, r.reason) for r in manifest.rejected]
        if rejected:
            raise RuntimeError(f"synthetic benchmark volumes were rejected by the scan: {rejected}")
        start = time.perf_counter()
        files = files_in(root / "data", "mri") + files_in(root / "data", "ct")
        report = build_cache(files, root / "cache", workers=workers, progress=False)
        if report.failed:
            raise RuntimeError(f"building the benchmark cache failed: {report.failed}")
        return cls(root, manifest, root / "cache", written, time.perf_counter() - start)

    def pretrain_data(self, preset, *, cached: bool, num_workers: int, steps: int, ct_fraction: float = 0.25):
        from rsna_phase0.data.pipeline import PretrainData

        return PretrainData(
            self.manifest,
            preset,
            seed=0,
            ct_fraction=ct_fraction,
            steps_per_epoch=steps,
            val_fraction=0.0,
            num_workers=num_workers,
            cache_dir=self.cache_dir if cached else None,
        )

    def first_batch(self, preset, modality: str):
        """One batch of `modality` from the cache (num_workers 0): what the model timings run on."""
        data = self.pretrain_data(
            preset, cached=True, num_workers=0, steps=1, ct_fraction=1.0 if modality == "ct" else 0.0
        )
        return next(iter(data.train_batches(0)))
