"""Fault injection for the survival tests, switched on only by environment variables (all unset in real runs).

- RSNA_PHASE0_FAULT_SLOW_SAVE=SECONDS: pause inside every checkpoint write (temp file written, not yet renamed), so a test's
  SIGKILL can land in the middle of one.
- RSNA_PHASE0_FAULT_SLOW_SCAN=SECONDS: every volume of a data scan (the trainer's preflight too) takes this long, so a
  test's signal lands while the scan's worker processes run.
- RSNA_PHASE0_FAULT_SLOW_CACHE=SECONDS: pause before each cache entry's data file is written (kills land mid-build).
- RSNA_PHASE0_FAULT_HANG_AT_STEP=N: the loop stops making progress before step N (exercises the watchdog).
- RSNA_PHASE0_FAULT_OOM_ABOVE=B: a micro-batch of more than B regions raises CUDA OutOfMemoryError (OOM back-off).
- RSNA_PHASE0_FAULT_NAN_AT_STEP=N: the loss of step N becomes NaN.
"""

from __future__ import annotations

import os
import time


def _int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def slow_save_seconds() -> float:
    return float(os.environ.get("RSNA_PHASE0_FAULT_SLOW_SAVE") or 0.0)


def maybe_slow_scan() -> None:
    delay = float(os.environ.get("RSNA_PHASE0_FAULT_SLOW_SCAN") or 0.0)
    if delay:
        time.sleep(delay)


def maybe_slow_cache() -> None:
    delay = float(os.environ.get("RSNA_PHASE0_FAULT_SLOW_CACHE") or 0.0)
    if delay:
        time.sleep(delay)


def maybe_hang(step: int) -> None:
    if _int("RSNA_PHASE0_FAULT_HANG_AT_STEP") == step:
        while True:  # a stuck data loader or collective looks like this from the outside
            time.sleep(3600)


def maybe_oom(micro_batch_size: int) -> None:
    limit = _int("RSNA_PHASE0_FAULT_OOM_ABOVE")
    if limit is not None and micro_batch_size > limit:
        import torch

        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory (injected by RSNA_PHASE0_FAULT_OOM_ABOVE={limit}, micro-batch {micro_batch_size})"
        )


def nan_at_step(step: int) -> bool:
    return _int("RSNA_PHASE0_FAULT_NAN_AT_STEP") == step
