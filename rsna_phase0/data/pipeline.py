"""PretrainData: what the training loop calls. Manifest in, deterministic MiMBatch streams out.

    data = PretrainData(manifest, preset, seed=0, ct_fraction=0.25, cache_dir=None)
    for batch in data.train_batches(epoch, start=step, rank=rank, world_size=world): ...
    for batch in data.val_batches(): ...

Only accepted manifest records are used; rejected ones are counted with their reasons in describe(). A volume that
is thinner than one global patch (patch_size * local_scale voxels at the target spacing) along any axis is excluded
here too, with the reason; thicker volumes smaller than the region are zero-padded (CT slabs are thin in z).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsna_phase0.batch import MiMBatch
from rsna_phase0.data.cache import CachedVolume, load_meta
from rsna_phase0.data.manifest import Manifest, VolumeRecord
from rsna_phase0.data.sampler import PlannedBatch, SampleKey, is_validation, plan_epoch, plan_validation, rank_positions
from rsna_phase0.data.views import ArrayVolume, VolumeSource, make_sample
from rsna_phase0.presets import Preset


def open_source(record: VolumeRecord) -> ArrayVolume:
    """Read, normalise and index a volume from its NIfTI file (the uncached path)."""
    from rsna_phase0.data.intensity import foreground_points, normalize
    from rsna_phase0.data.readers import read_volume

    volume = read_volume(record.path, record.modality)
    array = normalize(volume.array, record.modality, record.path)
    return ArrayVolume(record.path, array, volume.spacing, foreground_points(array, record.path))


class MiMSampleDataset(Dataset):
    """Map-style data set keyed by SampleKey: the key's seed alone fixes the crop, masks and augmentation."""

    def __init__(self, records: list[VolumeRecord], preset: Preset, cache: dict[int, CachedVolume]) -> None:
        self.records, self.preset, self.cache = records, preset, cache

    def source(self, file: int) -> VolumeSource:
        return self.cache[file] if file in self.cache else open_source(self.records[file])

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
        return torch.from_numpy(np.stack([s[name] for s in samples]))

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
    ) -> None:
        if not isinstance(manifest, Manifest):
            manifest = Manifest.load(manifest)
        if not 0.0 <= ct_fraction <= 1.0:
            raise ValueError(f"ct_fraction {ct_fraction} must be in [0, 1]")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction {val_fraction} must be in [0, 1)")
        self.manifest, self.preset, self.seed = manifest, preset, seed
        self.ct_fraction, self.val_fraction, self.num_workers = ct_fraction, val_fraction, num_workers
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
            for i, r in enumerate(self.records):
                meta = load_meta(self.cache_dir, r.modality, r.relpath, Path(r.path))
                if meta is not None:
                    self.cached[i] = CachedVolume.from_meta(self.cache_dir, meta)
        self.dataset = MiMSampleDataset(self.records, preset, self.cached)

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
        loader = DataLoader(
            self.dataset,
            batch_sampler=[list(b.keys) for b in batches],
            num_workers=self.num_workers,
            collate_fn=collate_mim,
            pin_memory=torch.cuda.is_available(),
        )
        return iter(loader)

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
            f"{self.num_workers} loader workers",
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
