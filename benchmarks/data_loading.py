"""Crops per second per core: `.nii.gz` against the blosc2 cache (and an uncompressed .npy mmap for reference).

    python benchmarks/data_loading.py [--preset kaggle] [--repeats 3] [--step-seconds 0.6] [--loader-workers 1,3]

Generates, in a temporary folder, a 256x256x180 MRI at 1 mm and a 512x512x60x3 CT at 0.8 mm in-plane (the users'
sizes and layouts), then times one full training sample (read, normalise, crop the preset's region, augment, cut
the MiM views) in one process, i.e. per core (blosc2 and torch held to one thread). `--step-seconds` is the GPU
time of one training step you want the loader to keep up with; the script prints how many loader workers that
needs. `--loader-workers` then runs the real PretrainData loader from the cache (1 MRI + 1 CT volume, the epoch's
CT share as in training) with each worker count and prints batches/s and the step time it can feed. Figures go in
issue notes, never in tests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
import torch

from rsna_phase0.data.cache import CachedVolume, build_cache, load_meta
from rsna_phase0.data.layout import files_in
from rsna_phase0.data.manifest import VolumeRecord
from rsna_phase0.data.pipeline import open_source
from rsna_phase0.data.synth import ct_windows, synth_ct_hu, synth_mri, write_ct, write_mri
from rsna_phase0.data.views import ArrayVolume, make_sample
from rsna_phase0.presets import get_preset


def make_volumes(root: Path) -> None:
    rng = np.random.default_rng(0)
    image, _ = synth_mri(rng, "MRI_T1", shape=(256, 256, 180))
    path = root / "OpenMind_processed" / "MRI_T1" / "big_T1w.nii.gz"
    path.parent.mkdir(parents=True)
    write_mri(path, image, np.ones(3, np.float32))
    hu, _ = synth_ct_hu(rng, shape=(512, 512, 60))
    path = root / "NIH_deeplesion" / "CT" / "big_ct.nii.gz"
    path.parent.mkdir(parents=True)
    write_ct(path, ct_windows(hu), np.array([0.8, 0.8, 1.0], np.float32))


def rate(make, repeats: int, rounds: int = 3) -> float:
    """Samples per second of `make(i)` after one warm-up call: the best of `rounds` (the cores may be shared)."""
    make(repeats)  # warm-up on a seed not timed below
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(repeats):
            make(i)
        best = max(best, repeats / (time.perf_counter() - start))
    return best


def npy_volume(source: ArrayVolume, folder: Path) -> ArrayVolume:
    path = folder / (Path(source.path).name + ".npy")
    np.save(path, source.array)
    return ArrayVolume(source.path, np.load(path, mmap_mode="r"), source.spacing, source.foreground)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kaggle")
    parser.add_argument("--repeats", type=int, default=3, help="samples timed from .nii.gz (the cache gets 10x)")
    parser.add_argument("--step-seconds", type=float, default=0.6, help="GPU seconds per training step to keep up with")
    parser.add_argument("--cores", type=int, default=4, help="cores of the target machine (Kaggle: 4)")
    parser.add_argument(
        "--loader-workers", default="", help="comma-separated worker counts for the PretrainData run (e.g. 1,3)"
    )
    parser.add_argument("--loader-batches", type=int, default=40, help="batches timed per worker count")
    parser.add_argument("--ct-fraction", type=float, default=0.25)
    args = parser.parse_args()
    blosc2.set_nthreads(1)
    torch.set_num_threads(1)
    preset = get_preset(args.preset)
    print(
        f"preset {preset.name}: region {preset.region_size}^3, batch {preset.batch_size}, {os.cpu_count()} cores here"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_volumes(root / "data")
        print(f"generated test volumes in {time.perf_counter() - t:.1f} s")
        files = files_in(root / "data", "mri") + files_in(root / "data", "ct")
        t = time.perf_counter()
        build_cache(files, root / "cache", workers=1, progress=False, spacing_mm=preset.target_spacing_mm)
        print(f"built the cache in {time.perf_counter() - t:.1f} s (one process)")
        needed = preset.batch_size / args.step_seconds
        for f in files:
            record = VolumeRecord(
                path=str(f.path), relpath=f.relpath, modality=f.modality, subtype=f.subtype, status="ok"
            )
            meta = load_meta(root / "cache", f.modality, f.relpath, f.path, preset.target_spacing_mm, verify="full")
            cached = CachedVolume.from_meta(root / "cache", meta)
            in_memory = open_source(record, preset)
            mmap = npy_volume(in_memory, root)
            sizes = {
                ".nii.gz": f.path.stat().st_size,
                ".b2nd": Path(cached.data_path).stat().st_size,
                ".npy": (root / (f.path.name + ".npy")).stat().st_size,
            }

            def sample(source_of):
                return lambda i: make_sample(source_of(), preset, np.random.default_rng([1, i]), train=True)

            rates = {
                ".nii.gz": rate(sample(lambda r=record: open_source(r, preset)), args.repeats, 1),
                ".b2nd": rate(sample(lambda c=cached: c), args.repeats * 10),
                ".npy mmap": rate(sample(lambda m=mmap: m), args.repeats * 10),
            }
            stored = "x".join(str(n) for n in (*in_memory.shape, in_memory.array.shape[0]))
            spacing = "x".join(f"{v:g}" for v in meta["source_spacing"])
            print(
                f"\n{f.modality.upper()} at {spacing} mm, cached as {stored} at {preset.target_spacing_mm:g} mm: "
                "samples/s per core (sizes on disk)"
            )
            for name, value in rates.items():
                size = sizes.get(name.split()[0], 0) / 2**20
                print(f"  {name:<10} {value:7.2f}/s  {size:7.1f} MiB")
            speedup = rates[".b2nd"] / rates[".nii.gz"]
            workers = int(np.ceil(needed / rates[".b2nd"]))
            print(
                f"  cache speed-up {speedup:.1f}x; to feed {needed:.1f} samples/s ({preset.batch_size} per "
                f"{args.step_seconds} s step) the cache needs {workers} worker(s) "
                f"({'fits' if workers < args.cores else 'does NOT fit'} {args.cores} cores minus the main process); "
                f".nii.gz would need {int(np.ceil(needed / rates['.nii.gz']))}"
            )
        for workers in [int(w) for w in args.loader_workers.split(",") if w.strip()]:
            loader_rate(root, files, preset, workers, args)


def loader_rate(root: Path, files, preset, workers: int, args) -> None:
    """Batches/s of PretrainData over the cache with `workers` persistent workers (start-up not timed)."""
    from rsna_phase0.data.manifest import scan_files
    from rsna_phase0.data.pipeline import PretrainData

    manifest = scan_files(files, workers=1, progress=False)
    steps = args.loader_batches + 2 * max(workers, 1) * 4
    data = PretrainData(
        manifest,
        preset,
        ct_fraction=args.ct_fraction,
        steps_per_epoch=steps,
        val_fraction=0.0,
        num_workers=workers,
        cache_dir=root / "cache",
    )
    batches = data.train_batches(0)
    for _ in range(steps - args.loader_batches):  # workers started and their prefetch queues full
        next(batches)
    start = time.perf_counter()
    count = sum(1 for _ in batches)
    seconds = (time.perf_counter() - start) / count
    print(
        f"\nPretrainData, cache, {workers} worker(s), ct_fraction {args.ct_fraction}: {1 / seconds:.1f} batches/s "
        f"of {preset.batch_size} ({1000 * seconds:.1f} ms/batch); feeds a step of >= {seconds / 0.95 * 1000:.0f} ms "
        "with under 5% wait (on this machine's cores)"
    )


if __name__ == "__main__":
    main()
