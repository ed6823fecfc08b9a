"""`rsna-phase0 train` never loses a run or trains on changed data without a word (issue 13: D1, D7, disk full and
a volume that becomes unreadable mid-run). In process, resuming copies of one short run."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_helpers import smoke_train_args

from rsna_phase0.cli import main
from rsna_phase0.data import pipeline
from rsna_phase0.data.errors import VolumeError
from rsna_phase0.training.checkpoint import load_checkpoint
from rsna_phase0.training.metrics import read_metrics


def train(data, out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *smoke_train_args(data, out, *args)], catch_exceptions=False)
    return result.exit_code, result.output


def steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


@pytest.fixture(scope="module")
def base_run(train_data, tmp_path_factory):
    """Six steps: epoch 0 ends at step 5 (checkpoint_epoch_0000.pt, best_model.pt), last.pt at step 6."""
    run = tmp_path_factory.mktemp("base") / "run"
    code, out = train(train_data, run, "--max-steps", "6")
    assert code == 0, out
    return run


@pytest.fixture()
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    return copy


def test_d1_no_resume_refuses_and_resume_auto_without_last_takes_the_newest_checkpoint(train_data, run):
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    code, out = train(train_data, run, "--max-steps", "7")
    assert code == 1 and f"{run} already holds a run (" in out and "continue it with `--resume auto`" in out
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before  # nothing overwritten
    (run / "last.pt").unlink()
    code, out = train(train_data, run, "--max-steps", "7", "--resume", "auto")
    assert code == 0, out
    assert f"no last.pt in {run}; resuming from " in out and "(step 5), the newest checkpoint that loads" in out
    assert steps(run) == [1, 2, 3, 4, 5, 6, 7]  # step 6 of the lost last.pt is recorded once, by this session
    assert load_checkpoint(run / "best_model.pt")["step"] == 5  # not replaced by an earlier model


def _fewer_volumes(train_data, tmp_path) -> Path:
    mri = tmp_path / "mri"
    shutil.copytree(train_data[0], mri)
    next(iter(sorted(mri.rglob("*.nii.gz")))).unlink()
    return mri


def test_d7_resume_on_changed_data_is_refused_unless_allowed_and_then_recorded(train_data, run, tmp_path):
    changed = (_fewer_volumes(train_data, tmp_path), train_data[1])
    code, out = train(changed, run, "--max-steps", "7", "--resume", "auto")
    assert code == 1, out
    assert "the data differ from what the checkpoint trained on: 12 volumes (train 11, validation 1) then, " in out
    assert "--set allow_data_change=true to continue on the new data" in out
    code, out = train(changed, run, "--max-steps", "7", "--resume", "auto", "--set", "allow_data_change=true")
    assert code == 0, out
    assert "data changed at step 6 (allow_data_change)" in out
    recorded = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "data_change"]
    assert len(recorded) == 1 and recorded[0]["before"]["volumes"] == 12 and recorded[0]["after"]["volumes"] == 11
    assert load_checkpoint(run / "last.pt")["data_changes"][0]["step"] == 6


def test_a_volume_unreadable_mid_run_saves_last_pt_first_then_stops_naming_it(train_data, run, monkeypatch):
    real = pipeline.MiMSampleDataset.__getitem__

    def failing(self, key):
        if max(steps(run)) >= 7:  # after one step of this session: the file "disappears"
            raise VolumeError(self.records[key.file].path, "cannot read the voxel data (the volume went away)")
        return real(self, key)

    monkeypatch.setattr(pipeline.MiMSampleDataset, "__getitem__", failing)
    code, out = train(train_data, run, "--max-steps", "10", "--resume", "auto")
    assert code == 1, out
    assert "a volume became unreadable during the run: " in out and "(the volume went away)" in out
    assert "saved last.pt at step 7 first" in out and "continue with --resume auto" in out
    assert load_checkpoint(run / "last.pt")["step"] == 7 == max(steps(run))
    assert "Traceback" not in out


def test_disk_full_while_training_is_one_line_and_keeps_last_pt(train_data, run, monkeypatch):
    real = torch.save

    def full(obj, handle, *args, **kwargs):
        if max(steps(run)) >= 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    code, out = train(train_data, run, "--max-steps", "9", "--resume", "auto", "--set", "checkpoint_every_min=0")
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("[train] error:")]
    assert len(errors) == 1, out
    assert f"[train] error: no space left on the device of {run / 'last.pt'} (needs about " in errors[0]
    assert "the previous last.pt (if any) is intact" in errors[0] and "Traceback" not in out
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert not list(run.glob(".*.tmp-*"))
