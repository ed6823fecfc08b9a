"""The unified sampler: exact modality ratio and epoch length, a stable split, exact resume, ranks partition the plan."""

from __future__ import annotations

import pytest
import torch

from rsna_phase0.data.manifest import Manifest, VolumeRecord, scan_dirs
from rsna_phase0.data.pipeline import PretrainData
from rsna_phase0.data.sampler import is_validation
from rsna_phase0.data.synth import synth_dataset
from rsna_phase0.presets import get_preset

SMOKE = get_preset("smoke")


def _records(n_mri: int, n_ct: int, prefix: str = "") -> list[VolumeRecord]:
    def record(modality, i):
        folder = "OpenMind_processed/MRI_T1" if modality == "mri" else "NIH_deeplesion/CT"
        rel = f"{folder}/{prefix}{modality}{i:04d}.nii.gz"
        return VolumeRecord(
            path=f"/data/{rel}",
            relpath=rel,
            modality=modality,
            subtype="x",
            status="ok",
            shape=[100, 100, 60],
            spacing=[1.0, 1.0, 1.0],
            channels=1 if modality == "mri" else 3,
        )

    return [record("mri", i) for i in range(n_mri)] + [record("ct", i) for i in range(n_ct)]


@pytest.mark.parametrize(("steps", "ct_fraction"), [(20, 0.25), (7, 0.3), (13, 0.0), (9, 1.0)])
def test_epoch_has_exactly_the_asked_length_and_modality_ratio(steps, ct_fraction):
    data = PretrainData(Manifest(_records(40, 10)), SMOKE, ct_fraction=ct_fraction, steps_per_epoch=steps, seed=3)
    for epoch in (0, 1):
        plan = data.plan(epoch)
        assert len(plan) == data.steps_per_epoch == steps
        assert sum(b.modality == "ct" for b in plan) == round(ct_fraction * steps)
        for batch in plan:
            assert len(batch.keys) == SMOKE.batch_size
            assert {data.records[k.file].modality for k in batch.keys} == {batch.modality}
            assert not any(k.file in data.val_files for k in batch.keys)
    assert [b.modality for b in data.plan(0)] != [b.modality for b in data.plan(1)] or ct_fraction in (0.0, 1.0)
    assert data.plan(1) == PretrainData(
        Manifest(_records(40, 10)), SMOKE, ct_fraction=ct_fraction, steps_per_epoch=steps, seed=3
    ).plan(1)


def test_files_are_used_evenly_within_an_epoch():
    data = PretrainData(Manifest(_records(30, 0)), SMOKE, ct_fraction=0.0, steps_per_epoch=50, val_fraction=0.0)
    counts = torch.bincount(torch.tensor([k.file for b in data.plan(0) for k in b.keys]), minlength=30)
    assert counts.max() - counts.min() <= 1  # 100 draws over 30 files: 3 or 4 each


def test_validation_split_is_stable_when_files_are_added():
    small = PretrainData(Manifest(_records(200, 50)), SMOKE, val_fraction=0.2)
    val_small = {small.records[i].relpath for i in small.val_files}
    grown = PretrainData(Manifest(_records(200, 50) + _records(300, 80, prefix="new")), SMOKE, val_fraction=0.2)
    val_grown = {grown.records[i].relpath for i in grown.val_files}
    old = {r.relpath for r in small.records}
    assert val_grown & old == val_small
    assert 0.1 < len(val_small) / 250 < 0.3
    assert all(is_validation(rel, 0.2) for rel in val_small)


def test_missing_modality_fails_loudly_with_the_fix():
    with pytest.raises(ValueError, match="no usable ct training volume.*ct_fraction=0.0"):
        PretrainData(Manifest(_records(10, 0)), SMOKE, ct_fraction=0.25)


def test_thin_volumes_are_excluded_with_the_reason():
    records = _records(5, 2)
    records[0].shape = [100, 100, 10]  # 10 mm < one global patch (16 mm for smoke)
    data = PretrainData(Manifest(records), SMOKE, val_fraction=0.0)
    assert len(data.records) == 6
    assert "thinner than one global patch (16 mm)" in data.describe()


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth_dataset(root, mri=6, ct=3, seed=1)
    return scan_dirs([root / "OpenMind_processed"], [root / "NIH_deeplesion" / "CT"], workers=1, progress=False)


def _same(a, b):
    assert a.modality == b.modality and a.paths == b.paths
    for name in ("global_image", "global_mask", "local_image", "local_mask", "local_boxes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_resume_and_ranks_reproduce_the_plan_exactly(synth_manifest):
    data = PretrainData(synth_manifest, SMOKE, steps_per_epoch=6, ct_fraction=0.34, val_fraction=0.0, seed=5)
    full = list(data.train_batches(2))
    assert len(full) == 6 and sum(b.modality == "ct" for b in full) == 2
    for batch in full:
        batch.validate()
    for got, want in zip(list(data.train_batches(2, start=4)), full[4:], strict=True):
        _same(got, want)
    rank0, rank1 = list(data.train_batches(2, rank=0, world_size=2)), list(data.train_batches(2, rank=1, world_size=2))
    for got, want in zip(rank0 + rank1, full[0::2] + full[1::2], strict=True):
        _same(got, want)
    # resuming at start=3 with two ranks: rank 0 builds plan 3 and 5, rank 1 builds plan 4
    for got, want in zip(list(data.train_batches(2, start=3, rank=0, world_size=2)), [full[3], full[5]], strict=True):
        _same(got, want)
    # worker processes do not change what a batch holds
    workers = PretrainData(
        synth_manifest, SMOKE, steps_per_epoch=6, ct_fraction=0.34, val_fraction=0.0, seed=5, num_workers=2
    )
    for got, want in zip(list(workers.train_batches(2, start=4)), full[4:], strict=True):
        _same(got, want)


def test_persistent_workers_serve_every_epoch_and_resume_exactly(synth_manifest):
    kwargs = dict(steps_per_epoch=4, ct_fraction=0.25, val_fraction=0.3, seed=2)
    plain = PretrainData(synth_manifest, SMOKE, **kwargs)
    shared = PretrainData(synth_manifest, SMOKE, num_workers=2, prefetch_factor=3, **kwargs)
    assert "2 loader workers (persistent across epochs, 3 batches prefetched each)" in shared.describe()
    # what the trainer does: a few batches (preflight), epochs with validation between them, a resume mid-epoch
    first = shared.train_batches(0)
    _same(next(first), next(plain.train_batches(0)))
    calls = [("train", 0, 0), ("val", None, None), ("train", 1, 0), ("val", None, None), ("train", 2, 3)]
    for kind, epoch, start in calls:
        if kind == "val":
            got, want = list(shared.val_batches()), list(plain.val_batches())
            assert got
        else:
            got, want = list(shared.train_batches(epoch, start=start)), list(plain.train_batches(epoch, start=start))
            assert len(got) == 4 - start
        for a, b in zip(got, want, strict=True):
            _same(a, b)
    # an iterator superseded by a later call fails loudly instead of yielding the later call's batches
    stale = shared.train_batches(0)
    newer = shared.train_batches(1)
    with pytest.raises(RuntimeError, match="superseded by a later train_batches"):
        next(stale)
    _same(next(newer), next(plain.train_batches(1)))


def test_validation_batches_are_identical_every_call(synth_manifest):
    data = PretrainData(synth_manifest, SMOKE, steps_per_epoch=2, val_fraction=0.5, seed=0)
    first, second = list(data.val_batches()), list(data.val_batches())
    assert first and len(first) == len(second)
    assert sum(b.batch_size for b in first) == len(data.val_files)
    for a, b in zip(first, second, strict=True):
        _same(a, b)


@pytest.mark.gpu
def test_batches_arrive_pinned_and_move_to_the_gpu(synth_manifest):
    data = PretrainData(synth_manifest, SMOKE, steps_per_epoch=2, val_fraction=0.0, num_workers=1)
    batch = next(iter(data.train_batches(0)))
    assert batch.global_image.is_pinned() and batch.local_image.is_pinned() and batch.global_mask.is_pinned()
    on_gpu = batch.to("cuda", non_blocking=True)
    on_gpu.validate()
    assert on_gpu.global_image.is_cuda and torch.equal(on_gpu.local_mask.cpu(), batch.local_mask)
