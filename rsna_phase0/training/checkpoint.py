"""Checkpoint files: atomic writes, loads that explain failures, rotation of epoch checkpoints.

A checkpoint is written to a temp file in the same folder, flushed and fsynced, renamed over the target with
os.replace and the folder fsynced, so a crash or SIGKILL at any moment leaves either the old file or the new one,
never a torn one (rsna_phase0.atomic). Leftover temp files (".NAME.tmp-PID...") from a killed write are removed at the
next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from rsna_phase0.atomic import TEMP_GLOB, copy_atomic, fsync_dir, write_atomic
from rsna_phase0.training import faults

FORMAT = "rsna_phase0.checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best_model.pt"
EPOCH_PATTERN = "checkpoint_epoch_{:04d}.pt"
REQUIRED_KEYS = ("format", "version", "model", "optimizer", "scheduler", "rng", "position", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")  # matches TEMP_GLOB, so a killed link is swept


def atomic_write(target: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Run `write(file)` into a temp file beside `target`, then make it `target` in one step."""

    def write_then_maybe_pause(handle: BinaryIO) -> None:
        write(handle)
        delay = faults.slow_save_seconds()
        if delay:  # the survival test's SIGKILL lands here: temp file complete on disk, not yet renamed
            handle.flush()
            time.sleep(delay)

    write_atomic(target, write_then_maybe_pause)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write(target, lambda handle: handle.write(text.encode()))


def atomic_write_json(target: str | Path, data) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(state: dict, target: str | Path) -> float:
    """Write a checkpoint atomically; returns the seconds it took (the time budget keeps a margin for it)."""
    start = time.perf_counter()
    state = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    atomic_write(target, lambda handle: torch.save(state, handle))
    return time.perf_counter() - start


def link_or_copy(source: Path, target: Path) -> None:
    """Give `source`'s finished file a second name atomically (a hard link costs nothing; copy where unsupported)."""
    tmp = _temp_path(target)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        copy_atomic(source, target)
        return
    os.replace(tmp, target)
    fsync_dir(target.parent)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for torn or foreign files
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            "it is damaged or not a checkpoint of this project"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: not an rsna_phase0 training checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
        )
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {state.get('version')}, this code reads {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing {', '.join(missing)}")
    return state


def remove_stale_temps(folder: Path) -> list[Path]:
    removed = []
    for tmp in folder.glob(TEMP_GLOB):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def rotate_epoch_checkpoints(folder: Path, keep: int) -> list[Path]:
    files = sorted(folder.glob("checkpoint_epoch_*.pt"))
    stale = files[:-keep] if keep > 0 else []
    for old in stale:
        old.unlink()
    return stale


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None for a fresh run; refuses to overwrite an existing run by accident."""
    last = run_dir / LAST
    if resume is None:
        if last.exists():
            raise CheckpointError(
                f"{run_dir} already holds a run ({last}); pass --resume auto to continue it or choose another --out"
            )
        return None
    if resume == "auto":
        return last if last.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file (--resume takes auto or the path of a .pt file)")
    return path
