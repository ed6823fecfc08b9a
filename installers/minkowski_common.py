"""Shared pieces of the MinkowskiEngine build module: its error type, version parsing and atomic file writes.

Standard library only: this runs before anything else is installed (Dockerfile, Kaggle notebook, CI).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


class BuildError(RuntimeError):
    """Building, installing or verifying MinkowskiEngine failed; the message says why and how to fix it."""


class FixError(BuildError):
    """A source fix could not find the text it edits: the source changed and must not be half-patched."""


def version_tuple(text: str | None) -> tuple[int, ...]:
    """'12.4' -> (12, 4); '2.13.0+cpu' -> (2, 13, 0); None or '' -> ()."""
    if not text:
        return ()
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, os.replace: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a (large) file atomically, streaming instead of reading it whole."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while chunk := inp.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
