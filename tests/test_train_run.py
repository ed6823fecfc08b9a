"""`rsna-phase0 train` in process, on real synthetic NIfTI data and the real model: resume, preflight, faults."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_helpers import TRAIN_MODULE, smoke_train_args

from rsna_phase0.cli import main
from rsna_phase0.training.checkpoint import load_checkpoint
from rsna_phase0.training.metrics import read_metrics


def train(train_data, out: Path, *args: str, env: dict | None = None):
    # tiny and fast: 5 batches per epoch so the runs cross epoch boundaries (validation, epoch checkpoints)
    argv = ["train", *smoke_train_args(train_data, out, *args)]
    result = CliRunner().invoke(main, argv, env=env, catch_exceptions=False)
    return result.exit_code, result.output


def train_process(train_data, out: Path, *args: str) -> tuple[int, str]:
    """The CLI in a fresh process: --deterministic needs OMP_NUM_THREADS=1 from the start (set by the command)."""
    argv = [*TRAIN_MODULE, *smoke_train_args(train_data, out, *args)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout + done.stderr


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


@pytest.mark.slow
def test_resume_continues_exactly(train_data, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    code, out = train_process(train_data, whole, "--max-steps", "8", "--deterministic")
    assert code == 0, out
    # the default speed-ups that need CUDA say so in the report, and run eagerly
    assert "decoder norm + GELU: eager (the fused kernels need CUDA, this is cpu)" in out
    code, out = train_process(train_data, split, "--max-steps", "3", "--deterministic")
    assert code == 0, out
    assert load_checkpoint(split / "last.pt")["step"] == 3
    code, out = train_process(train_data, split, "--max-steps", "8", "--deterministic", "--resume", "auto")
    assert code == 0, out
    assert "resuming from" in out
    expected, got = train_losses(whole), train_losses(split)
    assert sorted(got) == list(range(1, 9))
    # steps 4..8 ran after the resume, across the epoch boundary at step 5 (validation, epoch checkpoint)
    assert [got[s] for s in range(1, 9)] == [expected[s] for s in range(1, 9)]
    vals = [r for r in read_metrics(split / "metrics.jsonl") if r["kind"] == "val"]
    assert vals and vals == [r for r in read_metrics(whole / "metrics.jsonl") if r["kind"] == "val"]
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["position"] == b["position"] == {"epoch": 1, "batch": 3}
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert (split / "best_model.pt").exists() and (split / "checkpoint_epoch_0000.pt").exists()
    assert json.loads((split / "config.json").read_text())["train"]["deterministic"] is True


def test_fresh_run_refuses_to_overwrite_and_resume_refuses_other_settings(train_data, tmp_path):
    run = tmp_path / "run"
    assert train(train_data, run, "--max-steps", "1")[0] == 0
    code, out = train(train_data, run, "--max-steps", "2")
    assert code == 1 and "already holds a run" in out and "--resume auto" in out
    code, out = train(train_data, run, "--max-steps", "2", "--resume", "auto", "--set", "decoder_dim=16")
    assert code == 1 and "preset.decoder_dim: checkpoint 32, now 16" in out


def test_missing_data_folder_stops_before_training(train_data, tmp_path):
    missing = tmp_path / "nowhere"
    argv = ["train", "--preset", "smoke", "--mri-dir", str(missing), "--out", str(tmp_path / "run"), "--no-progress"]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 1
    assert f"--mri-dir {missing}: no such folder" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_environment_mismatch_stops_a_gpu_preset(train_data, tmp_path, monkeypatch):
    from rsna_phase0.check_env.check import run_check

    if run_check().exit_code == 0:
        pytest.skip("this machine is the reference environment: no mismatch to provoke")
    code, out = train(train_data, tmp_path / "run", "--preset", "dev", "--device", "cpu")
    assert code == 1
    verdicts = ("environment check: MISMATCH", "environment check: development stand-in")
    assert any(v in out for v in verdicts) and "--allow-env-mismatch" in out
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda"], "--device cuda, but torch sees no CUDA GPU"),
        (["--preset", "dev"], "expects a CUDA GPU and torch sees none"),
    ],
)
def test_cpu_where_cuda_is_required_stops(train_data, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out = train(train_data, tmp_path / "run", *args)
    assert code == 1 and message in out


def test_cuda_oom_halves_the_micro_batch_and_continues(train_data, tmp_path):
    run = tmp_path / "run"
    code, out = train(train_data, run, "--max-steps", "2", env={"RSNA_PHASE0_FAULT_OOM_ABOVE": "1"})
    assert code == 0, out
    assert "CUDA out of memory at micro-batch 2: retrying the step with micro-batch 1" in out
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["micro_splits"] for r in records] == [2, 2]
    assert load_checkpoint(run / "last.pt")["micro_splits"] == 2


def test_nonfinite_loss_stops_or_is_skipped(train_data, tmp_path):
    env = {"RSNA_PHASE0_FAULT_NAN_AT_STEP": "2"}
    code, out = train(train_data, tmp_path / "stop", "--max-steps", "3", env=env)
    assert code == 5 and "non-finite loss nan at step 2" in out
    assert load_checkpoint(tmp_path / "stop" / "last.pt")["step"] == 1  # the weights before the bad step, saved
    code, out = train(train_data, tmp_path / "skip", "--max-steps", "3", "--set", "skip_nonfinite=true", env=env)
    assert code == 0 and "step skipped" in out
    state = load_checkpoint(tmp_path / "skip" / "last.pt")
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_time_budget_stops_with_a_checkpoint_before_the_limit(train_data, tmp_path):
    import time

    run = tmp_path / "run"
    started = time.monotonic()
    code, out = train(train_data, run, "--time-budget", "25s", "--epochs", "1000")
    elapsed = time.monotonic() - started
    assert code == 0, out
    assert "stopped by the time budget" in out and "--resume auto" in out
    assert elapsed < 25 + 3  # the CLI's own start-up is outside its clock
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == max(train_losses(run)) > 0
    assert "loss_curve.png" in out


def test_export_encoder_loads_without_minkowski(train_data, tmp_path):
    run = tmp_path / "run"
    assert train(train_data, run, "--max-steps", "1")[0] == 0
    result = CliRunner().invoke(main, ["export-encoder", str(run / "last.pt"), str(tmp_path / "enc.pt")])
    assert result.exit_code == 0, result.output
    assert "verified: loads in plain PyTorch without MinkowskiEngine" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["export-encoder", str(bad), str(tmp_path / "enc2.pt")])
    assert result.exit_code == 1 and f"checkpoint {bad}: cannot be read" in result.output


def test_deterministic_on_cpu_demands_single_threaded_openmp(train_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    code, out = train(train_data, tmp_path / "run", "--deterministic")
    assert code == 1 and "--deterministic on the CPU needs OMP_NUM_THREADS=1" in out


def test_saved_manifest_replaces_the_scan_and_stale_ones_are_refused(train_data, tmp_path, monkeypatch):
    import shutil

    import rsna_phase0.data.manifest as manifest_module

    root = tmp_path / "data"
    shutil.copytree(train_data[0].parent, root)  # the shared data set stays untouched
    data = (root / "OpenMind_processed", root / "NIH_deeplesion" / "CT")
    saved = tmp_path / "manifest.json"
    result = CliRunner().invoke(main, ["data", "scan", str(root), "--out", str(saved), "--workers", "1"])
    assert result.exit_code == 0, result.output

    def no_scan(*_args, **_kwargs):
        raise AssertionError("the volumes were scanned although --manifest was given")

    monkeypatch.setattr(manifest_module, "scan_files", no_scan)
    code, out = train(data, tmp_path / "run", "--max-steps", "1", "--manifest", str(saved))
    assert code == 0, out
    assert f"manifest     used {saved}" in out and "12 files, the same as in the folders" in out
    assert "12 volumes accepted (4 CT, 8 MRI)" in out
    # a volume rewritten since the scan: refused before training, with the command that rebuilds the manifest
    changed = sorted(data[1].glob("*.nii.gz"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    code, out = train(data, tmp_path / "stale", "--max-steps", "1", "--manifest", str(saved))
    assert code == 1 and "1 volumes changed since the scan" in out and str(changed) in out
    assert f"rsna-phase0 data scan {data[0]} {data[1]} --out {saved}" in out
    assert not (tmp_path / "stale" / "last.pt").exists()
    # a manifest of other folders: here the CT folder is not given
    code, out = train((data[0], tmp_path / "empty_ct"), tmp_path / "other", "--manifest", str(saved))
    assert code == 1 and "--ct-dir" in out
    (tmp_path / "empty_ct").mkdir()
    code, out = train((data[0], tmp_path / "empty_ct"), tmp_path / "other", "--manifest", str(saved))
    assert code == 1 and "4 volumes of the manifest are not in the given folders" in out
