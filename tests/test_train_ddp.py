"""Two-process DDP (gloo on the CPU) under torchrun, against one process accumulating the same plan batches."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from train_helpers import TORCHRUN_TWO_PROCESSES, TRAIN_MODULE, smoke_train_args

from rsna_phase0.training.checkpoint import load_checkpoint
from rsna_phase0.training.metrics import read_metrics


def train_args(train_data, out: Path, *args: str) -> list[str]:
    return smoke_train_args(train_data, out, "--deterministic", *args, steps_per_epoch=10)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_accumulating_and_resumes_at_world_size_1(train_data, tmp_path):
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    done = run(TORCHRUN_TWO_PROCESSES + train_args(train_data, ddp_run, "--max-steps", "3"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stderr and "reached max_steps=3" in done.stderr
    assert done.stderr.count("[train] preflight") == 1  # rank 0 reports, rank 1 stays quiet
    assert "no unused-parameter search" in done.stderr  # DDP without find_unused_parameters (the idle stem is touched)
    state = load_checkpoint(ddp_run / "last.pt")
    assert state["world_size"] == 2 and state["position"] == {"epoch": 0, "batch": 6}

    # one process taking the same two plan batches per step (accum_steps=2) must see the same losses
    done = run(TRAIN_MODULE + train_args(train_data, single_run, "--max-steps", "3", "--set", "accum_steps=2"))
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, single = losses(ddp_run), losses(single_run)
    assert ddp[0] == pytest.approx(single[0], rel=1e-6)  # same batches, same weights: only the sum order differs
    # after an update Adam turns noise-level gradients (summed in another order) into +-lr steps: close, not equal
    assert ddp[1:] == pytest.approx(single[1:], rel=1e-2)

    # the DDP checkpoint resumes in one process: the plan position carries on (1 batch per step now)
    done = run(TRAIN_MODULE + train_args(train_data, ddp_run, "--max-steps", "5", "--resume", "auto"))
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(ddp_run / "last.pt")
    assert state["world_size"] == 1 and state["step"] == 5 and state["position"] == {"epoch": 0, "batch": 8}
    assert len(losses(ddp_run)) == 5
