"""The one exception the data pipeline raises for bad input: it names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class VolumeError(Exception):
    """A volume that cannot be used. `path` and `reason` are kept apart so a manifest can record the reason."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:  # torch's DataLoader re-raises a worker's exception from its message alone
            self.path, self.reason = "", str(path)
            super().__init__(self.reason)
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataDiskFullError(Exception):
    """No room to write a cache entry or a manifest; the message names the path and the space needed."""
