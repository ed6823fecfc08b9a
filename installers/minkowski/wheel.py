"""Embed and read the build record (`rsna_build.json`) inside a wheel's dist-info.

The file is added to the wheel's RECORD with its sha256 and size, so pip installs it like any other file and
`importlib.metadata.distribution("MinkowskiEngine").read_text("rsna_build.json")` finds it (check-env does).
Standard library only (and rsna_phase0.atomic, which is too).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

from installers.minkowski.errors import BuildError
from rsna_phase0.atomic import write_atomic
from rsna_phase0.core.probes import BUILD_RECORD, parse_build_record

SCHEMA = 1


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def dist_info_dir(names: list[str]) -> str:
    """The wheel's single top-level `*.dist-info/` folder (name case as in the wheel)."""
    dirs = {name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise BuildError(f"expected one .dist-info folder in the wheel, found {sorted(dirs) or 'none'}")
    return dirs.pop()


def embed_build_record(wheel: Path, record: dict) -> None:
    """Rewrite `wheel` (atomically) with dist-info/rsna_build.json added to it and to RECORD."""
    wheel = Path(wheel)
    payload = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        dist_info = dist_info_dir(names)
        target, record_name = f"{dist_info}/{BUILD_RECORD}", f"{dist_info}/RECORD"
        if record_name not in names:
            raise BuildError(f"{wheel}: no {record_name}; not a valid wheel")
        rows = [
            row for row in csv.reader(io.StringIO(src.read(record_name).decode("utf-8"))) if row and row[0] != target
        ]
        # RECORD lists itself last with empty hash and size; keep it last.
        body = [row for row in rows if row[0] != record_name]
        body.append([target, _record_hash(payload), str(len(payload))])
        body.append([record_name, "", ""])
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(body)

        def rewrite(handle) -> None:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as dst:
                for info in src.infolist():
                    if info.filename in (target, record_name):
                        continue
                    dst.writestr(info, src.read(info.filename))
                dst.writestr(_zipinfo(target, src), payload)
                dst.writestr(_zipinfo(record_name, src), out.getvalue().encode("utf-8"))

        write_atomic(wheel, rewrite)


def _zipinfo(name: str, like: zipfile.ZipFile) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=like.infolist()[0].date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def read_build_record(wheel: Path) -> dict | None:
    """The embedded record, or None for a wheel built without this module (or unreadable)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = f"{dist_info_dir(zf.namelist())}/{BUILD_RECORD}"
            record, _ = parse_build_record(zf.read(name).decode("utf-8") if name in zf.namelist() else None)
            return record
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, BuildError):
        return None


def verify_record(wheel: Path) -> None:
    """Check every RECORD hash of the wheel (what pip does on install); raise BuildError on a mismatch."""
    with zipfile.ZipFile(wheel) as zf:
        record_name = f"{dist_info_dir(zf.namelist())}/RECORD"
        for row in csv.reader(io.StringIO(zf.read(record_name).decode("utf-8"))):
            if not row or not row[1]:
                continue
            data = zf.read(row[0])
            if _record_hash(data) != row[1] or (row[2] and int(row[2]) != len(data)):
                raise BuildError(f"{wheel}: RECORD hash or size mismatch for {row[0]}")
