"""The `train` command lines the training tests share: a tiny smoke run on the `train_data` fixture's NIfTI files."""

from __future__ import annotations

import sys
from pathlib import Path

# `python -m rsna_phase0.training`: the CLI in a fresh process (SIGKILL, torchrun, --deterministic need one)
TRAIN_MODULE = [sys.executable, "-m", "rsna_phase0.training"]
# the same under torchrun with two processes on this machine (gloo on the CPU, nccl on two GPUs)
TORCHRUN_TWO_PROCESSES = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "rsna_phase0.training",
]


def smoke_train_args(train_data, out: Path, *args: str, steps_per_epoch: int = 5) -> list[str]:
    """Options of `train` for the smoke preset, few batches per epoch (so runs cross epoch boundaries), then `args`."""
    mri, ct = train_data
    return [
        "--preset",
        "smoke",
        "--mri-dir",
        str(mri),
        "--ct-dir",
        str(ct),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"steps_per_epoch={steps_per_epoch}",
        "--set",
        "warmup_steps=2",
        *args,
    ]
