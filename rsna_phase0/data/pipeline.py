"""PretrainData: what the training loop calls. Manifest in, deterministic MiMBatch streams out.

    data = PretrainData(manifest, preset, seed=0, ct_fraction=0.25, cache_dir=None)
    for batch in data.train_batches(epoch, start=step, rank=rank, world_size=world): ...
    for batch in data.val_batches(): ...

Only accepted manifest records are used; rejected ones are counted with their reasons in describe(). A volume that
is thinner than one global patch (patch_size * local_scale voxels at the target spacing) along any axis is excluded
here too, with the reason; thicker volumes smaller than the region are zero-padded (CT slabs are thin in z).

Loader workers (num_workers > 0) are persistent: one DataLoader serves every train_batches()/val_batches() call,
its workers keep running across epochs and each call only swaps the plan the batch sampler hands out. That is safe
because a SampleKey alone fixes its sample (no per-epoch state lives in a worker). A new call resets the shared
loader, so an older iterator from this object stops with an error if it is used again, rather than yielding
batches of the newer plan.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from rsna_phase0.batch import MiMBatch
from rsna_phase0.data.cache import CachedVolume, load_meta, other_spacings, spacing_tag
from rsna_phase0.data.manifest import Manifest, VolumeRecord
from rsna_phase0.data.sampler import PlannedBatch, SampleKey, is_validation, plan_epoch, plan_validation, rank_positions
from rsna_phase0.data.views import ArrayVolume, VolumeSource, make_sample
from rsna_phase0.data.workers import die_with_parent
from rsna_phase0.presets import Preset


def open_source(record: VolumeRecord, preset: Preset) -> ArrayVolume:
    """Read, normalise, resample and index a volume from its NIfTI file (the uncached path; the same array as its
    cache entry)."""
    from rsna_phase0.data.intensity import Intensity
    from rsna_phase0.data.prepare import load_training_volume

    prepared = load_training_volume(
        record.path, record.modality, preset.target_spacing_mm, Intensity.from_preset(preset)
    )
    return ArrayVolume(record.path, prepared.array, prepared.spacing, prepared.foreground)


class MiMSampleDataset(Dataset):
    """Map-style data set keyed by SampleKey: the key's seed alone fixes the crop, masks and augmentation."""

    def __init__(self, records: list[VolumeRecord], preset: Preset, cache: dict[int, CachedVolume]) -> None:
        self.records, self.preset, self.cache = records, preset, cache

    def source(self, file: int) -> VolumeSource:
        if file in self.cache:
            return self.cache[file]
        return open_source(self.records[file], self.preset)

    def __getitem__(self, key: SampleKey) -> dict:
        record = self.records[key.file]
        sample = make_sample(self.source(key.file), self.preset, np.random.default_rng(list(key.seed)), train=key.train)
        sample.update(modality=record.modality, path=record.path)
        return sample

    def __len__(self) -> int:
        return len(self.records)


def collate_mim(samples: list[dict]) -> MiMBatch:
    modalities = {s["modality"] for s in samples}
    if len(modalities) != 1:
        raise ValueError(f"a batch must hold one modality, got {sorted(modalities)}")

    def stack(name: str) -> torch.Tensor:
        # default_collate stacks straight into shared memory inside a worker: one copy fewer per batch to send
        return default_collate([torch.from_numpy(s[name]) for s in samples])

    local_image, local_mask = stack("local_image"), stack("local_mask")
    return MiMBatch(
        modality=modalities.pop(),
        global_image=stack("global_image"),
        global_mask=stack("global_mask"),
        local_image=local_image.flatten(0, 1),  # sample-major: row i*K + k
        local_mask=local_mask.flatten(0, 1),
        local_boxes=stack("local_boxes"),
        paths=[s["path"] for s in samples],
    )


class PlanSampler:
    """The batch sampler of the persistent DataLoader: each iteration hands out the plan set last."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def init_loader_worker(_worker_id: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)  # a killed trainer must not leave its loader workers behind
    # One blosc2 thread per worker: the loader's parallelism is its processes. Through the environment, which
    # c-blosc2 reads at each call: blosc2.set_nthreads() in a forked child tears down the parent's thread pool,
    # whose threads do not exist there, and segfaulted the workers on a 16-core GPU machine.
    os.environ["BLOSC_NTHREADS"] = "1"


class PretrainData:
    def __init__(
        self,
        manifest: Manifest | str | Path,
        preset: Preset,
        *,
        seed: int = 0,
        ct_fraction: float = 0.25,
        steps_per_epoch: int | None = None,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        cache_dir: str | Path | None = None,
        prefetch_factor: int = 4,
        persistent_workers: bool = True,
    ) -> None:
        if not isinstance(manifest, Manifest):
            manifest = Manifest.load(manifest)
        if not 0.0 <= ct_fraction <= 1.0:
            raise ValueError(f"ct_fraction {ct_fraction} must be in [0, 1]")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction {val_fraction} must be in [0, 1)")
        self.manifest, self.preset, self.seed = manifest, preset, seed
        self.ct_fraction, self.val_fraction, self.num_workers = ct_fraction, val_fraction, num_workers
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor {prefetch_factor} must be at least 1")
        self.prefetch_factor, self.persistent_workers = prefetch_factor, persistent_workers
        self._loader: DataLoader | None = None
        self._sampler = PlanSampler()
        self._generation = 0
        self.steps_per_epoch = int(steps_per_epoch or preset.steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch {self.steps_per_epoch} must be at least 1")
        self.excluded: list[tuple[VolumeRecord, str]] = [(r, r.reason) for r in manifest.rejected]
        min_mm = preset.patch_size * preset.local_scale * preset.target_spacing_mm
        self.records: list[VolumeRecord] = []
        for record in sorted(manifest.accepted, key=lambda r: r.relpath):
            extent = [n * s for n, s in zip(record.shape, record.spacing, strict=True)]
            if min(extent) < min_mm:
                self.excluded.append(
                    (
                        record,
                        f"extent {[round(e, 1) for e in extent]} mm is thinner than one global patch ({min_mm:g} mm) of preset {preset.name}",
                    )
                )
            else:
                self.records.append(record)
        self.val_files = [i for i, r in enumerate(self.records) if is_validation(r.relpath, val_fraction)]
        val = set(self.val_files)
        self.train_files = {
            m: [i for i, r in enumerate(self.records) if r.modality == m and i not in val] for m in ("mri", "ct")
        }
        for modality, needed in (("ct", ct_fraction > 0), ("mri", ct_fraction < 1)):
            if needed and not self.train_files[modality]:
                raise ValueError(
                    f"ct_fraction={ct_fraction} asks for {modality} batches, but the manifest has no usable {modality} "
                    f"training volume ({len(self.excluded)} excluded); add {modality} data or set ct_fraction="
                    f"{0.0 if modality == 'ct' else 1.0}"
                )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cached: dict[int, CachedVolume] = {}
        if self.cache_dir is not None:
            if not self.cache_dir.is_dir():
                raise FileNotFoundError(
                    f"{self.cache_dir}: cache folder does not exist; build it with `rsna-phase0 data cache`"
                )
            self._open_cache()
        self.dataset = MiMSampleDataset(self.records, preset, self.cached)

    def _open_cache(self) -> None:
        from rsna_phase0.data.intensity import Intensity

        self.intensity = Intensity.from_preset(self.preset)
        spacing = self.preset.target_spacing_mm
        elsewhere: dict[str, int] = {}
        for i, r in enumerate(self.records):
            meta = load_meta(self.cache_dir, r.modality, r.relpath, Path(r.path), spacing, intensity=self.intensity)
            if meta is not None:
                self.cached[i] = CachedVolume.from_meta(self.cache_dir, meta)
                continue
            for tag in other_spacings(self.cache_dir, r.modality, r.relpath, spacing):
                elsewhere[tag] = elsewhere.get(tag, 0) + 1
        if elsewhere:
            found = ", ".join(f"{n} at {tag}" for tag, n in sorted(elsewhere.items()))
            raise ValueError(
                f"cache {self.cache_dir}: preset {self.preset.name} trains at {spacing_tag(spacing)}, but "
                f"{sum(elsewhere.values())} volumes have entries only for another spacing ({found}); build "
                f"{spacing_tag(spacing)} entries with `rsna-phase0 data cache ... --out {self.cache_dir} --spacing "
                f"{spacing:g}` (entries of several spacings can share the folder)"
            )

    # -- plans ---------------------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> list[PlannedBatch]:
        return plan_epoch(
            self.train_files, self.steps_per_epoch, self.preset.batch_size, self.ct_fraction, self.seed, epoch
        )

    def validation_plan(self) -> list[PlannedBatch]:
        files = [(i, self.records[i].modality, self.records[i].relpath) for i in self.val_files]
        return plan_validation(files, self.preset.batch_size, self.seed)

    # -- batches -------------------------------------------------------------------------------------------------
    def train_batches(self, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[MiMBatch]:
        """This rank's share of the epoch's plan from position `start` on: plan[start + rank :: world_size]."""
        plan = self.plan(epoch)
        return self._load([plan[i] for i in rank_positions(len(plan), start, rank, world_size)])

    def val_batches(self, max_batches: int | None = None) -> Iterator[MiMBatch]:
        """Fixed validation batches (same crops and masks every call); empty when no file is held out."""
        return self._load(self.validation_plan()[:max_batches])

    def _load(self, batches: list[PlannedBatch]) -> Iterator[MiMBatch]:
        if not batches:
            return iter(())
        self._generation += 1  # any older iterator over the shared loader is now stale
        if self.num_workers == 0 or not self.persistent_workers:
            return iter(self._make_loader([list(b.keys) for b in batches]))
        if self._loader is None:
            self._loader = self._make_loader(self._sampler)
        self._sampler.batches = [list(b.keys) for b in batches]
        return self._guarded(iter(self._loader), self._generation)

    def _make_loader(self, batch_sampler) -> DataLoader:
        workers = {}
        if self.num_workers > 0:
            workers = dict(
                prefetch_factor=self.prefetch_factor,
                persistent_workers=self.persistent_workers,
                worker_init_fn=functools.partial(init_loader_worker, parent_pid=os.getpid()),
            )
        return DataLoader(
            self.dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            collate_fn=collate_mim,
            pin_memory=torch.cuda.is_available(),
            **workers,
        )

    def _guarded(self, batches: Iterator[MiMBatch], generation: int) -> Iterator[MiMBatch]:
        while True:
            # checked before each next(): the shared iterator may already serve a newer call's plan
            if generation != self._generation:
                raise RuntimeError(
                    "this batch iterator was superseded by a later train_batches()/val_batches() call on the same "
                    "PretrainData (its workers are shared); finish one iterator before starting the next"
                )
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch

    def _worker_note(self) -> str:
        if self.num_workers == 0:
            return " (batches built in the training process)"
        kind = "persistent across epochs" if self.persistent_workers else "restarted every epoch"
        return f" ({kind}, {self.prefetch_factor} batches prefetched each)"

    def fingerprint(self) -> dict:
        """The data plan in brief: a digest of the volumes used (path, modality, size) and the split, so a resume
        can tell that the data changed."""
        digest = hashlib.sha256()
        for i, r in enumerate(self.records):
            digest.update(f"{r.relpath}\t{r.modality}\t{r.size_bytes}\t{int(i in self.val_files)}\n".encode())
        n_val = len(self.val_files)
        return {
            "digest": digest.hexdigest(),
            "volumes": len(self.records),
            "train": len(self.records) - n_val,
            "validation": n_val,
        }

    # -- reporting -----------------------------------------------------------------------------------------------
    def describe(self) -> str:
        counts = Counter(r.modality for r in self.records)
        n_val = len(self.val_files)
        n_ct = int(round(self.ct_fraction * self.steps_per_epoch))
        lines = [
            f"data: {counts['mri']} MRI + {counts['ct']} CT volumes usable; "
            f"train {len(self.train_files['mri'])} MRI + {len(self.train_files['ct'])} CT, validation {n_val} "
            f"(val_fraction {self.val_fraction}, split by path hash)",
            f"epoch: {self.steps_per_epoch} batches of {self.preset.batch_size} ({n_ct} CT, "
            f"{self.steps_per_epoch - n_ct} MRI; ct_fraction {self.ct_fraction}), seed {self.seed}, "
            f"{self.num_workers} loader workers{self._worker_note()}",
            f"regions: {self.preset.region_size}^3 voxels at {self.preset.target_spacing_mm} mm -> global + "
            f"{self.preset.n_local} local views of {self.preset.input_size}^3",
        ]
        if self.cache_dir is None:
            lines.append("cache: not used (volumes are decompressed from .nii.gz for every crop)")
        else:
            missing = len(self.records) - len(self.cached)
            line = f"cache: {self.cache_dir} serves {len(self.cached)} of {len(self.records)} volumes"
            if missing:
                line += f"; {missing} read from .nii.gz (missing or stale entries: run `rsna-phase0 data cache`)"
            lines.append(line)
        lines.append(f"excluded: {len(self.excluded)} volumes (not used, not replaced)")
        reasons = Counter(reason.split(" (")[0] for _, reason in self.excluded)
        lines += [f"  {n} x {reason}" for reason, n in reasons.most_common()]
        lines += [f"  {r.relpath}: {reason}" for r, reason in self.excluded[:20]]
        if len(self.excluded) > 20:
            lines.append(f"  ... and {len(self.excluded) - 20} more (see the manifest)")
        return "\n".join(lines)
