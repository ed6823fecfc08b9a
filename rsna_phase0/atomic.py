"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the complete new one, never a torn one.

The one recipe every checkpoint, report, lock file and wheel goes through: a temp file in the target's folder
(a rename is atomic only within one filesystem), write, flush, fsync, os.replace, fsync the folder (so the rename
itself survives a power cut). A failed or interrupted write removes its temp file and leaves the old target as it was.

Standard library only: the installers import this before anything else is installed (Dockerfile, Kaggle, CI).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Temp files are ".NAME.tmp-PID-RANDOM": hidden, unique per writer, and found again by this glob after a SIGKILL.
TEMP_GLOB = ".*.tmp-*"


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, mode: int | None = None) -> Path:
    """Call `write(handle)` on a binary temp file beside `path`, then make it `path` in one step; returns `path`.

    `mode` sets the file's permission bits; None gives what open() would (0o666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.chmod(tmp, mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    return write_atomic(path, lambda handle: handle.write(data), mode=mode)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int | None = None) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode(encoding)), mode=mode)


def write_json_atomic(
    path: str | os.PathLike,
    payload: object,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    mode: int | None = None,
) -> Path:
    """`payload` as JSON with a final newline (the file is a complete line for `tail` and `diff`)."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n", mode=mode)


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike, *, mode: int | None = None) -> Path:
    """Copy `src` to `dst` atomically, streaming in 1 MiB chunks (wheels and checkpoints are too big to read whole)."""
    with open(src, "rb") as source:  # opened first: a missing source fails before a temp file exists
        return write_atomic(dst, lambda handle: shutil.copyfileobj(source, handle, 1 << 20), mode=mode)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries, which makes a rename in it durable; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def folder_write_problem(folder: str | os.PathLike) -> str | None:
    """Why no file can be created in `folder` (tried for real: root passes os.access even on /proc), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not an existing folder"
    probe = folder / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot create a file in {folder} ({exc.strerror or exc})"
    return None


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a library re-raised it as another type (torch: "file write failed")."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_message(path: str | os.PathLike, needed_bytes: int | None) -> str:
    """One line for a full disk: the path, the space needed and free, and that the previous file is intact."""
    path = Path(path)
    free = None
    folder = path if path.is_dir() else path.parent
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
    need = f"needs about {_mb(needed_bytes)}" if needed_bytes else "needs more space"
    have = f", {_mb(free)} free" if free is not None else ""
    return f"no space left on the device of {path} ({need}{have}); the previous {path.name} (if any) is intact"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def _create_temp(path: Path) -> tuple[int, str]:
    # O_EXCL on a fresh random name: no clash between writers (threads, ranks); mode 0o666 lets the umask decide
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = str(path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a unique temp file for {path.name}")
