"""`rsna-phase0 train` on CUDA: AMP (bf16, fp16 + GradScaler), the GPU guard, resume, and 2-GPU DDP (nccl)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from train_helpers import TORCHRUN_TWO_PROCESSES, TRAIN_MODULE, smoke_train_args

from rsna_phase0.training.checkpoint import load_checkpoint
from rsna_phase0.training.metrics import read_metrics

pytestmark = pytest.mark.gpu


def train_args(train_data, out: Path, *args: str) -> list[str]:
    return smoke_train_args(train_data, out, "--device", "cuda", "--allow-env-mismatch", *args, steps_per_epoch=6)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.mark.parametrize(("amp", "expected"), [("auto", None), ("fp16", "fp16 + GradScaler")])
def test_cuda_run_with_amp_resumes(train_data, tmp_path, amp, expected):
    out = tmp_path / "run"
    cli = TRAIN_MODULE
    done = run(cli + train_args(train_data, out, "--max-steps", "4", "--set", f"amp={amp}"))
    assert done.returncode == 0, done.stderr[-4000:]
    major, _ = torch.cuda.get_device_capability()
    assert f"AMP {expected or ('bf16' if major >= 8 else 'fp16 + GradScaler')}" in done.stderr
    assert "peak GPU memory" in done.stderr
    state = load_checkpoint(out / "last.pt")
    assert (state["scaler"] is not None) == (amp == "fp16" or major < 8)
    done = run(cli + train_args(train_data, out, "--max-steps", "8", "--set", f"amp={amp}", "--resume", "auto"))
    assert done.returncode == 0, done.stderr[-4000:]
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["loss"] is not None for r in records)


def test_cuda_run_with_graphed_wave_stages_and_loader_workers(train_data, tmp_path):
    """CUDA graphs (default speed-ups) captured at step 1 while the loader's workers and pin-memory thread run."""
    out = tmp_path / "graphed"
    settings = ("--set", "num_workers=2", "--max-steps", "6")
    done = run(TRAIN_MODULE + train_args(train_data, out, *settings))
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WaveFormer stages in training steps: replayed from CUDA graphs" in done.stderr
    assert "decoder and loss in training steps: replayed from CUDA graphs" in done.stderr
    assert "decoder norm + GELU: fused Triton kernels, channels-last (speed-up fused_norm_gelu)" in done.stderr
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["loss"] is not None for r in records)


def test_two_gpu_ddp(train_data, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    out = tmp_path / "ddp"
    done = run(TORCHRUN_TWO_PROCESSES + train_args(train_data, out, "--max-steps", "6"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stderr and "no unused-parameter search" in done.stderr
    state = load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 6
