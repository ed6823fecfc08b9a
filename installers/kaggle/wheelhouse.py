"""An offline wheelhouse for Kaggle: made once with internet (`kaggle_setup.py --make-wheelhouse DIR`), attached
later as a data set, found under /kaggle/input/* and installed from with no network at all.

Standard library only. A wheelhouse is one flat folder: every locked wheel (pip checks them with --require-hashes),
a pip wheel (to bootstrap the environment without ensurepip), the MinkowskiEngine wheel(s) with their build record,
the MinkowskiEngine sdist (to rebuild for other archs offline), and `rsna_phase0_wheelhouse.json`, the manifest:
what it was made for (Python, the lock's sha256, archs) and each file's sha256.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rsna_phase0.atomic import sha256_file, write_json_atomic
from rsna_phase0.core import requirements_lock as kaggle_lock

MANIFEST = "rsna_phase0_wheelhouse.json"
SCHEMA = 1


class WheelhouseError(RuntimeError):
    pass


@dataclass(frozen=True)
class Wheelhouse:
    folder: Path
    manifest: dict

    @property
    def sdist(self) -> Path | None:
        name = self.manifest.get("sdist")
        return self.folder / name if name and (self.folder / name).is_file() else None

    def missing(self, pins: dict[str, kaggle_lock.Pin]) -> list[str]:
        """Locked packages (without an environment marker) this wheelhouse has no wheel of with a locked hash."""
        have: dict[str, set[str]] = {}
        for name, digest in self.manifest.get("files", {}).items():
            if name.endswith(".whl") and (self.folder / name).is_file():
                try:
                    pkg, _ = kaggle_lock.wheel_name_version(name)
                except kaggle_lock.LockError:
                    continue
                have.setdefault(pkg, set()).add(f"sha256:{digest}")
        return sorted(p.name for p in pins.values() if not p.marker and not have.get(p.name, set()) & set(p.hashes))


def read(folder: Path) -> Wheelhouse | None:
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return Wheelhouse(Path(folder), manifest) if manifest.get("schema") == SCHEMA else None


def find(roots: list[Path]) -> list[Wheelhouse]:
    """Wheelhouses in the given folders and up to three levels below each (Kaggle mounts data sets and notebook
    outputs at /kaggle/input/NAME/, the folder inside may be nested)."""
    found, seen = [], set()
    for root in roots:
        for pattern in (MANIFEST, f"*/{MANIFEST}", f"*/*/{MANIFEST}", f"*/*/*/{MANIFEST}"):
            for path in sorted(Path(root).glob(pattern)):
                folder = path.parent.resolve()
                house = read(folder) if folder not in seen else None
                if house is not None:
                    seen.add(folder)
                    found.append(house)
    return found


def write_manifest(folder: Path, *, python: str, lock_path: Path, archs: str | None, sdist: str | None) -> dict:
    folder = Path(folder)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "schema": SCHEMA,
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": python,
        "lock_sha256": sha256_file(lock_path),
        "minkowski_archs": archs,
        "sdist": sdist,
        "files": files,
    }
    write_json_atomic(folder / MANIFEST, manifest, sort_keys=True)
    return manifest


def add_file(folder: Path, path: Path) -> None:
    target = Path(folder) / Path(path).name
    if not target.exists() or target.stat().st_size != Path(path).stat().st_size:
        shutil.copy2(path, target)


def size_text(folder: Path) -> str:
    total = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
    return f"{total / 2**30:.2f} GiB" if total > 2**29 else f"{total / 2**20:.0f} MiB"
