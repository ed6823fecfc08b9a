"""The scan manifest: one record per volume (accepted or rejected with the reason), built in parallel, saved as JSON.

Training reads the manifest and uses only accepted volumes; a rejected volume is reported, never replaced.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsna_phase0.atomic import write_json_atomic
from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.layout import VolumeFile, classify_dir, files_in, find_duplicates
from rsna_phase0.data.workers import spawn_pool
from rsna_phase0.training import faults

MANIFEST_SCHEMA = 1
PROGRESS_MIN_FILES = 20  # smaller scans finish before a bar would help


@dataclass
class VolumeRecord:
    path: str
    relpath: str
    modality: str
    subtype: str
    status: str  # "ok" or "rejected"
    reason: str = ""
    shape: list[int] = field(default_factory=list)  # spatial (X, Y, Z) after reorientation to RAS
    channels: int = 0
    spacing: list[float] = field(default_factory=list)
    dtype: str = ""
    stats: list[dict] = field(default_factory=list)  # per channel, raw intensities (see intensity_stats)
    size_bytes: int = 0
    mtime: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Manifest:
    records: list[VolumeRecord]
    created: str = ""
    schema: int = MANIFEST_SCHEMA

    @property
    def accepted(self) -> list[VolumeRecord]:
        return [r for r in self.records if r.ok]

    @property
    def rejected(self) -> list[VolumeRecord]:
        return [r for r in self.records if not r.ok]

    def save(self, path: str | Path) -> None:
        write_json_atomic(
            path,
            {"schema": self.schema, "created": self.created, "records": [asdict(r) for r in self.records]},
            indent=1,
            mode=0o644,  # shared manifests stay readable by other users whatever the umask
        )

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{path}: cannot read the manifest ({exc}); rebuild it with `rsna-phase0 data scan`"
            ) from exc
        if payload.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(
                f"{path}: manifest schema {payload.get('schema')!r}, this code reads {MANIFEST_SCHEMA}; "
                "rebuild it with `rsna-phase0 data scan`"
            )
        try:
            records = [VolumeRecord(**r) for r in payload["records"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: malformed manifest record ({exc}); rebuild it with `rsna-phase0 data scan`"
            ) from exc
        return cls(records=records, created=payload.get("created", ""))

    def summary_table(self, max_reasons: int = 20) -> str:
        counts = Counter((r.modality, r.subtype, r.status) for r in self.records)
        groups = sorted({(m, s) for m, s, _ in counts})
        lines = [f"{'modality':<9}{'sub-type':<10}{'ok':>7}{'rejected':>10}"]
        for modality, subtype in groups:
            ok, bad = counts[(modality, subtype, "ok")], counts[(modality, subtype, "rejected")]
            lines.append(f"{modality:<9}{subtype:<10}{ok:>7}{bad:>10}")
        lines.append(f"{'total':<19}{len(self.accepted):>7}{len(self.rejected):>10}")
        rejected = self.rejected
        if rejected:
            lines.append("rejected (not used, not replaced):")
            lines += [f"  {r.relpath}: {r.reason}" for r in rejected[:max_reasons]]
            if len(rejected) > max_reasons:
                lines.append(f"  ... and {len(rejected) - max_reasons} more (see the manifest's records)")
        return "\n".join(lines)


def inspect_volume(file: VolumeFile) -> VolumeRecord:
    """Read and check one volume exactly as training will; the record says ok or why not."""
    from rsna_phase0.data.intensity import foreground_points, intensity_stats, normalize
    from rsna_phase0.data.readers import read_volume

    record = VolumeRecord(
        path=str(file.path), relpath=file.relpath, modality=file.modality, subtype=file.subtype, status="rejected"
    )
    faults.maybe_slow_scan()
    try:
        stat = file.path.stat()
        record.size_bytes, record.mtime = stat.st_size, stat.st_mtime
        volume = read_volume(file.path, file.modality)
        record.shape, record.channels = list(volume.shape), volume.array.shape[0]
        record.spacing = [round(s, 6) for s in volume.spacing]
        record.dtype = _stored_dtype(file.path)
        record.stats = intensity_stats(volume.array)
        foreground_points(normalize(volume.array, file.modality, str(file.path)), str(file.path))
    except VolumeError as exc:
        record.reason = exc.reason
        return record
    except OSError as exc:
        record.reason = f"cannot read the file ({type(exc).__name__}: {exc})"
        return record
    except Exception as exc:  # one odd file must not end a scan of thousands: record it loudly instead
        record.reason = f"unexpected error while reading ({type(exc).__name__}: {exc})"
        return record
    record.status = "ok"
    return record


def _stored_dtype(path: Path) -> str:
    import nibabel as nib

    return str(nib.load(path).get_data_dtype())


def scan_files(files: list[VolumeFile], workers: int | None = None, progress: bool = True) -> Manifest:
    duplicates = find_duplicates(files)
    todo = [f for f in files if f.path not in duplicates]
    records = {
        f.path: VolumeRecord(
            path=str(f.path),
            relpath=f.relpath,
            modality=f.modality,
            subtype=f.subtype,
            status="rejected",
            reason=f"duplicate of {duplicates[f.path].name} (same name once the repeated .nii is removed)",
        )
        for f in files
        if f.path in duplicates
    }
    workers = (os.cpu_count() or 1) if workers is None else workers
    bar = _progress(len(todo), progress)
    if workers <= 1 or len(todo) <= 1:
        for f in todo:
            records[f.path] = inspect_volume(f)
            bar.update()
    else:
        with spawn_pool(min(workers, len(todo))) as pool:
            futures = {pool.submit(inspect_volume, f): f for f in todo}
            for future in as_completed(futures):
                records[futures[future].path] = future.result()
                bar.update()
    bar.close()
    return Manifest(records=[records[f.path] for f in files], created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def scan_dirs(
    mri_dirs: Iterable[str | Path] = (),
    ct_dirs: Iterable[str | Path] = (),
    workers: int | None = None,
    progress: bool = True,
) -> Manifest:
    """Scan MRI and CT folders (roots or sub-folders of the users' layout) into a Manifest."""
    files = [f for d in mri_dirs for f in files_in(d, "mri")] + [f for d in ct_dirs for f in files_in(d, "ct")]
    return scan_files(_unique(files), workers=workers, progress=progress)


def scan_layout_dirs(dirs: Iterable[str | Path], workers: int | None = None, progress: bool = True) -> Manifest:
    """Scan folders whose modality is told by their names (the `data scan DIR...` command)."""
    files = [f for d in dirs for modality, folder in classify_dir(d) for f in files_in(folder, modality)]
    return scan_files(_unique(files), workers=workers, progress=progress)


def _unique(files: list[VolumeFile]) -> list[VolumeFile]:
    seen: dict[Path, VolumeFile] = {}
    for f in files:
        seen.setdefault(f.path, f)
    return list(seen.values())


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="scan", unit="vol", disable=not enabled or total < PROGRESS_MIN_FILES)


def load_checked_manifest(
    path: str | Path, mri_dirs: Iterable[str | Path] = (), ct_dirs: Iterable[str | Path] = ()
) -> Manifest:
    """A saved manifest, checked against the folders training was given instead of read blindly: it must list
    exactly the volume files in those folders (same paths and modalities), and each must still have the size it
    had when scanned. Costs a folder listing and one stat per file, not a read. Raises ValueError saying what
    differs and how to rebuild the manifest."""
    mri_dirs, ct_dirs = list(mri_dirs), list(ct_dirs)
    manifest = Manifest.load(path)
    files = _unique([f for d in mri_dirs for f in files_in(d, "mri")] + [f for d in ct_dirs for f in files_in(d, "ct")])
    on_disk = {str(f.path): f.modality for f in files}
    listed = {r.path: r for r in manifest.records}
    problems: list[tuple[str, list[str]]] = []
    missing = [p for p in listed if p not in on_disk]
    new = [p for p in on_disk if p not in listed]
    relabelled = [p for p, m in on_disk.items() if p in listed and listed[p].modality != m]
    resized = []
    for p, record in listed.items():
        if p in on_disk:
            try:
                size = os.stat(p).st_size
            except OSError as exc:
                resized.append(f"{p}: cannot stat ({exc})")
                continue
            if size != record.size_bytes:
                resized.append(f"{p}: {record.size_bytes} bytes when scanned, {size} now")
    problems += [
        (f"{len(missing)} volumes of the manifest are not in the given folders", missing),
        (f"{len(new)} volumes in the given folders are not in the manifest", new),
        (f"{len(relabelled)} volumes have another modality than the manifest says", relabelled),
        (f"{len(resized)} volumes changed since the scan", resized),
    ]
    problems = [(what, examples) for what, examples in problems if examples]
    if problems:
        folders = " ".join(str(d) for d in mri_dirs + ct_dirs)
        detail = "; ".join(f"{what} (e.g. {examples[0]})" for what, examples in problems)
        raise ValueError(
            f"manifest {path} does not match the data: {detail}. It was made for other folders or the data changed; "
            f"rebuild it with `rsna-phase0 data scan {folders} --out {path}`, or train without --manifest"
        )
    return manifest
