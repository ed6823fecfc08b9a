"""Checkpoint files: atomic, verified writes; loads that explain failures; resume choice; rotation.

A checkpoint is written to a temp file in the same folder, flushed and fsynced, renamed over the target with
os.replace and the folder fsynced, so a crash or SIGKILL at any moment leaves either the old file or the new one,
never a torn one (rsna_phase0.atomic). Leftover temp files (".NAME.tmp-PID...") from a killed write are removed at the
next start.

Every checkpoint file is independent (last.pt, best_model.pt and the epoch files are copies, never hard links: a
damaged one must not take the others with it) and has a digest file NAME.sha256 (`sha256sum -c` format). The digest
is taken of the bytes as they are written, checked by re-reading the file after the rename, and checked again on
every load. The digest file lists the new digest (and the old file's) before the rename and only the new one after,
so a kill between the two steps never makes a good file look damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from rsna_phase0.atomic import (
    TEMP_GLOB,
    disk_full_message,
    is_disk_full,
    sha256_file,
    write_atomic,
    write_text_atomic,
)
from rsna_phase0.training import faults

FORMAT = "rsna_phase0.checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best_model.pt"
EPOCH_PATTERN = "checkpoint_epoch_{:04d}.pt"
DIGEST_SUFFIX = ".sha256"
REQUIRED_KEYS = ("format", "version", "model", "optimizer", "scheduler", "rng", "position", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class _HashingWriter:
    """A write-only file object that hashes what passes through it (torch.save needs only write and flush)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


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


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def recorded_digests(path: Path) -> set[str] | None:
    """The digests NAME.sha256 accepts for `path`, or None when it has none (written before digests existed)."""
    try:
        text = digest_path(path).read_text()
    except FileNotFoundError:
        return None
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def _digest_lines(digests: list[str], name: str) -> str:
    return "".join(f"{d}  {name}\n" for d in digests)


def write_verified(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `target` atomically with its digest file, then read it back and compare (see the module docstring)."""
    target = Path(target)
    old = sorted(recorded_digests(target) or set()) if target.exists() else []
    written: list[str] = []

    def write_and_record(handle: BinaryIO) -> None:
        hashing = _HashingWriter(handle)
        write(hashing)
        written.append(hashing.digest.hexdigest())
        # before the rename: the digest file accepts both the file there now and the one about to replace it
        write_text_atomic(digest_path(target), _digest_lines([written[0], *old], target.name))

    atomic_write(target, write_and_record)
    on_disk = sha256_file(target)
    if on_disk != written[0]:
        raise CheckpointError(
            f"checkpoint {target}: reads back differently from what was written (SHA-256 {on_disk[:12]}..., "
            f"wrote {written[0][:12]}...): the disk or filesystem is failing; copy the run folder elsewhere"
        )
    write_text_atomic(digest_path(target), _digest_lines(written, target.name))


def _state_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_state_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_state_bytes(v) for v in value)
    return 0


class DiskFullError(CheckpointError):
    """No room for a checkpoint; the previous one is intact."""


def save_checkpoint(state: dict, target: str | Path) -> float:
    """Write a verified checkpoint atomically; returns the seconds it took (the time budget keeps a margin for it)."""
    start = time.perf_counter()
    target = Path(target)
    state = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    try:
        write_verified(target, lambda handle: torch.save(state, handle))
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc) or (
            isinstance(exc, RuntimeError) and "write" in str(exc).lower() and _nearly_full(target)
        ):
            raise DiskFullError(
                f"{disk_full_message(target, _state_bytes(state) + (1 << 20))}. Free space (or copy the run folder "
                "to a larger disk) and continue with --resume auto"
            ) from exc
        raise
    return time.perf_counter() - start


def _nearly_full(target: Path) -> bool:
    # torch reports a failed write as RuntimeError("... file write failed") without the errno
    try:
        return shutil.disk_usage(target.parent).free < 64 << 20
    except OSError:
        return False


def copy_checkpoint(source: Path, target: Path) -> None:
    """`source`'s finished file as an independent, verified copy named `target` (never a hard link)."""
    try:
        with open(source, "rb") as handle:
            write_verified(target, lambda out: shutil.copyfileobj(handle, out, 1 << 20))
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(
                f"{disk_full_message(target, source.stat().st_size)}. Free space and continue with --resume auto"
            ) from exc
        raise


def _unreadable_reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        # not torch's advice to load with weights_only=False: that would run whatever code the file holds
        return "it holds Python objects that a safe load refuses, so it was not written by rsna-phase0 train"
    return f"{type(exc).__name__}: {text[:300]}"


def load_checkpoint(path: str | Path, map_location="cpu", *, suggest: bool = True) -> dict:
    """The verified state of a checkpoint, or CheckpointError naming the file, the problem and (with `suggest`)
    the newest other checkpoint of its folder that loads."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        return _load(path, map_location)
    except CheckpointError as exc:
        if not suggest:
            raise
        raise CheckpointError(f"{exc}. {fallback_hint(path)}") from exc.__cause__


def _load(path: Path, map_location) -> dict:
    expected = recorded_digests(path)
    if expected is not None:
        found = sha256_file(path)
        if found not in expected:
            raise CheckpointError(
                f"checkpoint {path}: damaged: its SHA-256 {found[:12]}... is not the {sorted(expected)[0][:12]}... "
                f"recorded in {digest_path(path).name} when it was written"
            )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for torn or foreign files
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({_unreadable_reason(exc)}); it is damaged or not a checkpoint of "
            "this project"
        ) from None
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


def run_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint files of a run folder, newest first."""
    names = [LAST, BEST] + [p.name for p in folder.glob("checkpoint_epoch_*.pt")]
    found = [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest_loadable(folder: Path, exclude: Path | None = None) -> tuple[Path | None, dict | None, list[str]]:
    """(path, state) of the newest checkpoint in `folder` that loads, or (None, None); and why newer ones did not."""
    skipped = []
    for candidate in run_checkpoints(folder) if folder.is_dir() else []:
        if exclude is not None and candidate == exclude:
            continue
        try:
            return candidate, _load(candidate, "cpu"), skipped
        except CheckpointError as exc:
            skipped.append(str(exc))
    return None, None, skipped


def fallback_hint(path: Path) -> str:
    other, state, _ = newest_loadable(path.parent, exclude=path)
    if other is None:
        return f"No other checkpoint in {path.parent} loads"
    return (
        f"The newest checkpoint that loads is {other} (step {state['step']}): resume from it with "
        f"`--resume {other}`"
    )


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
        digest_path(old).unlink(missing_ok=True)
    return stale


@dataclass
class ResumeFrom:
    path: Path
    state: dict
    note: str = ""  # said when the choice was not the obvious one


def find_resume(run_dir: Path, resume: str | None) -> ResumeFrom | None:
    """The checkpoint to resume from: None for a fresh run. Never lets a new run overwrite an existing one."""
    last = run_dir / LAST
    if resume is None:
        held = [p.name for p in run_checkpoints(run_dir)] if run_dir.is_dir() else []
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.stat().st_size > 0:
            held.append(metrics.name)
        if held:
            raise CheckpointError(
                f"{run_dir} already holds a run ({', '.join(held)}); continue it with `--resume auto`, or start "
                "over in a new folder (another --out); nothing was changed"
            )
        return None
    if resume == "auto":
        if last.exists():
            return ResumeFrom(last, load_checkpoint(last))
        path, state, skipped = newest_loadable(run_dir)
        if path is None:
            if skipped:
                raise CheckpointError(
                    f"--resume auto: no {LAST} in {run_dir} and none of its checkpoints loads ({'; '.join(skipped)}); "
                    "move them away or choose another --out"
                )
            return None
        note = (
            f"--resume auto: no {LAST} in {run_dir}; resuming from {path.name} (step {state['step']}), the newest "
            "checkpoint that loads"
        )
        if skipped:
            note += f" (skipped: {'; '.join(skipped)})"
        return ResumeFrom(path, state, note)
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file (--resume takes auto or the path of a .pt file)")
    return ResumeFrom(path, load_checkpoint(path))
