"""The crop cache: each volume stored once, normalised, oriented and resampled to the training spacing, as a chunked
blosc2 NDArray (`.b2nd`), so a training crop decompresses only the blocks it touches instead of the whole `.nii.gz`
and never needs resampling.

Layout: CACHE/<modality>/<stem>-<hash>-<spacing>mm.b2nd (the data) and .json next to it (target and source
spacing, shape, foreground points, the source's size and mtime, the normalisation version, and the SHA-256 and byte
size of the .b2nd file). The target spacing is part of an entry's name, so entries for several spacings can share
a folder and an entry is never read for a preset with another spacing. Both files are written to temporary names
and renamed; the .json is written last and is the commit mark, so an interrupted build leaves no entry that looks
complete. An entry is used only when its .json parses, matches the source file, this code's normalisation and the
spacing asked for, and its data file has the recorded size (`verify="full"` also re-hashes it, as `data cache`
does before skipping an entry); anything else is rebuilt by `rsna-phase0 data cache`, never read.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsna_phase0.atomic import disk_full_message, is_disk_full, sha256_file, write_json_atomic
from rsna_phase0.data.errors import DataDiskFullError, VolumeError
from rsna_phase0.data.layout import VolumeFile, canonical_stem
from rsna_phase0.data.workers import spawn_pool
from rsna_phase0.training import faults

CACHE_SCHEMA = 2  # 2: volumes stored at the target spacing
DEFAULT_SPACING_MM = 1.0  # every preset's target_spacing_mm
CHUNK = 64  # voxels per axis of a chunk (the unit of storage)
BLOCK = 32  # voxels per axis of a block (the unit of decompression): a 128^3 crop decompresses 4-5 per axis
# LZ4HC decompresses a crop about 2x faster than ZSTD (benchmarks/data_loading.py) for ~8% more disk
CODEC, CLEVEL = "LZ4HC", 5


def spacing_tag(spacing_mm: float) -> str:
    return f"{float(spacing_mm):g}mm"


def entry_paths(cache_dir: str | Path, modality: str, relpath: str, spacing_mm: float) -> tuple[Path, Path]:
    digest = hashlib.sha256(relpath.encode()).hexdigest()[:12]
    stem = canonical_stem(Path(relpath).name)
    base = Path(cache_dir) / modality / f"{stem}-{digest}-{spacing_tag(spacing_mm)}"
    return base.with_name(base.name + ".b2nd"), base.with_name(base.name + ".json")


def other_spacings(cache_dir: str | Path, modality: str, relpath: str, spacing_mm: float) -> list[str]:
    """Spacing tags of entries of this volume built for other spacings (to say why none fits)."""
    data_path, _ = entry_paths(cache_dir, modality, relpath, spacing_mm)
    prefix = data_path.name[: -len(spacing_tag(spacing_mm) + ".b2nd")]
    tags = {p.name[len(prefix) : -len(".json")] for p in data_path.parent.glob(f"{glob.escape(prefix)}*.json")}
    return sorted(tags - {spacing_tag(spacing_mm)})


def _source_fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime}


def load_meta(
    cache_dir: str | Path,
    modality: str,
    relpath: str,
    source: Path,
    spacing_mm: float = DEFAULT_SPACING_MM,
    verify: str = "size",
    intensity=None,
) -> dict | None:
    """The entry's metadata when the entry for `spacing_mm` is complete and current (built with `intensity`, the
    presets' defaults when None), else None (`verify`: "size" or "full")."""
    from rsna_phase0.data.intensity import DEFAULT_INTENSITY

    data_path, meta_path = entry_paths(cache_dir, modality, relpath, spacing_mm)
    try:
        meta = json.loads(meta_path.read_text())
        fingerprint = _source_fingerprint(source)
        current = (
            meta.get("schema") == CACHE_SCHEMA
            and meta.get("normalisation") == (intensity or DEFAULT_INTENSITY).tag()
            and meta.get("relpath") == relpath
            and meta.get("target_spacing_mm") == float(spacing_mm)
            and meta["source"]["size"] == fingerprint["size"]
            and meta["source"]["mtime"] == fingerprint["mtime"]
            and data_path.stat().st_size == meta["data_bytes"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not current or (verify == "full" and sha256_file(data_path) != meta["data_sha256"]):
        return None
    return meta


def write_entry(
    file: VolumeFile,
    cache_dir: str | Path,
    dtype: str = "float32",
    spacing_mm: float = DEFAULT_SPACING_MM,
    intensity=None,
) -> dict:
    """Read, normalise (with `intensity`, the presets' defaults when None), resample to `spacing_mm` and store one
    volume; returns its metadata. Raises VolumeError for a bad volume."""
    import blosc2

    from rsna_phase0.data.intensity import DEFAULT_INTENSITY
    from rsna_phase0.data.prepare import load_training_volume

    intensity = intensity or DEFAULT_INTENSITY
    prepared = load_training_volume(str(file.path), file.modality, spacing_mm, intensity)
    array = prepared.array.astype(dtype, copy=False)
    data_path, meta_path = entry_paths(cache_dir, file.modality, file.relpath, spacing_mm)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{data_path.stem}.", suffix=".b2nd", dir=data_path.parent)
    os.close(fd)
    os.unlink(tmp_name)  # blosc2 creates the file itself
    try:
        faults.maybe_slow_cache()
        chunks = (array.shape[0], *(min(CHUNK, n) for n in array.shape[1:]))
        blocks = (array.shape[0], *(min(BLOCK, n) for n in array.shape[1:]))
        cparams = {"codec": blosc2.Codec[CODEC], "clevel": CLEVEL, "filters": [blosc2.Filter.SHUFFLE]}
        blosc2.asarray(
            np.ascontiguousarray(array), urlpath=tmp_name, mode="w", chunks=chunks, blocks=blocks, cparams=cparams
        )
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, data_path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError | RuntimeError) and (is_disk_full(exc) or _short_of(data_path, array.nbytes)):
            # blosc2 says only "Error while creating the NDArray"
            raise DataDiskFullError(
                f"{disk_full_message(data_path, array.nbytes)}; nothing of {file.path} was cached"
            ) from None
        raise
    meta = {
        "schema": CACHE_SCHEMA,
        "relpath": file.relpath,
        "modality": file.modality,
        "normalisation": intensity.tag(),
        "source": _source_fingerprint(file.path),
        "target_spacing_mm": float(spacing_mm),
        "source_spacing": list(prepared.source_spacing),
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "spacing": list(prepared.spacing),
        "foreground": prepared.foreground.tolist(),
        "data_file": data_path.name,
        "data_bytes": data_path.stat().st_size,
        "data_sha256": sha256_file(data_path),
        "data_crc32": crc32_file(
            data_path
        ),  # what the loader checks (cheaper than SHA-256; benchmarks/cache_verify.py)
    }
    try:
        write_json_atomic(meta_path, meta, indent=None, mode=0o644)
    except OSError as exc:
        if is_disk_full(exc):
            raise DataDiskFullError(disk_full_message(meta_path, 1 << 16)) from None
        raise
    return meta


def _short_of(path: Path, needed: int) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < needed
    except OSError:
        return False


def crc32_file(path: str | Path) -> int:
    value = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            value = zlib.crc32(block, value)
    return value


@dataclass
class CachedVolume:
    """A VolumeSource read lazily from a cache entry (see views.VolumeSource)."""

    path: str  # the source volume, for messages
    data_path: str
    spacing: tuple[float, float, float]
    foreground: np.ndarray
    full_shape: tuple[int, ...]
    crc32: int | None = None  # of the whole data file, checked once per process before the first crop
    sha256: str = ""  # for entries written before data_crc32 existed
    # the open array, per process: a handle opened before a DataLoader fork must not be shared with the workers
    _handle: tuple[int, object] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_meta(cls, cache_dir: str | Path, meta: dict) -> CachedVolume:
        data_path, _ = entry_paths(cache_dir, meta["modality"], meta["relpath"], meta["target_spacing_mm"])
        return cls(
            path=meta["source"]["path"],
            data_path=str(data_path),
            spacing=tuple(meta["spacing"]),
            foreground=np.asarray(meta["foreground"], dtype=np.int64).reshape(-1, 3),
            full_shape=tuple(meta["shape"]),
            crc32=meta.get("data_crc32"),
            sha256=meta.get("data_sha256", ""),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.full_shape[1:])

    def _array(self):
        import blosc2

        if self._handle is None or self._handle[0] != os.getpid():
            self._verify()
            self._handle = (os.getpid(), blosc2.open(self.data_path, mode="r"))
        return self._handle[1]

    def _verify(self) -> None:
        """The data file is what was written: one flipped byte used to decode without error, values off by 0.35."""
        if self.crc32 is not None:
            found, expected, what = crc32_file(self.data_path), self.crc32, "CRC-32"
        else:
            found, expected, what = sha256_file(self.data_path), self.sha256, "SHA-256"
        if found != expected:
            cache_dir = Path(self.data_path).parent.parent
            raise VolumeError(
                self.data_path,
                f"cache entry of {self.path} is damaged ({what} of the file differs from the one recorded when it "
                f"was built); rebuild it with `rsna-phase0 data cache <your data folders> --out {cache_dir}` "
                "(only damaged or missing entries are rebuilt)",
            )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}  # spawned workers open their own

    def read(self, lo, hi) -> np.ndarray:
        try:
            block = self._array()[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        except Exception as exc:  # blosc2 raises RuntimeError/ValueError for damaged frames
            raise VolumeError(
                self.data_path,
                f"cache entry of {self.path} is unreadable ({type(exc).__name__}: {exc}); "
                "rebuild it with `rsna-phase0 data cache`",
            ) from exc
        return np.asarray(block, dtype=np.float32)


@dataclass
class CacheReport:
    built: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    rebuilt: list[str] = field(default_factory=list)  # had an entry that was damaged, incomplete or stale
    swept: list[str] = field(default_factory=list)  # temp files an interrupted build left

    def summary(self) -> str:
        lines = [f"cache: {self.built} built, {self.skipped} already complete, {len(self.failed)} rejected"]
        if self.swept:
            lines.append(
                f"  removed {len(self.swept)} temp files left by an interrupted build: {', '.join(self.swept[:5])}"
            )
        if self.rebuilt:
            lines.append(
                f"  rebuilt {len(self.rebuilt)} damaged, incomplete or stale entries: {', '.join(self.rebuilt)}"
            )
        lines += [f"  {rel}: {reason}" for rel, reason in self.failed]
        return "\n".join(lines)


class CacheBusyError(RuntimeError):
    """Another `data cache` is building in the same folder."""


@contextlib.contextmanager
def _build_lock(cache_dir: Path):
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheBusyError(
                f"{cache_dir}: another `rsna-phase0 data cache` is building here; wait for it"
            ) from None
        yield  # the kernel drops the lock if this process dies


def _sweep_temps(cache_dir: Path) -> list[str]:
    """Temp files of writes a kill interrupted (hidden: ".STEM.XXXX.b2nd" and ".NAME.tmp-PID-RANDOM")."""
    swept = []
    for tmp in sorted(cache_dir.glob("*/.*")):
        if tmp.is_file() and (tmp.suffix == ".b2nd" or ".tmp-" in tmp.name):
            tmp.unlink(missing_ok=True)
            swept.append(f"{tmp.parent.name}/{tmp.name}")
    return swept


def _build_one(file: VolumeFile, cache_dir: str, dtype: str, spacing_mm: float) -> tuple[str, str | None]:
    try:
        write_entry(file, cache_dir, dtype, spacing_mm)
    except VolumeError as exc:
        return file.relpath, exc.reason
    return file.relpath, None


def build_cache(
    files: Iterable[VolumeFile],
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
    dtype: str = "float32",
    spacing_mm: float = DEFAULT_SPACING_MM,
) -> CacheReport:
    """Cache every file not already cached and verified at `spacing_mm` (resumable: complete entries are re-hashed
    and skipped). One build per folder at a time; temp files of a killed build are removed first."""
    with _build_lock(Path(cache_dir)):
        return _build_locked(list(files), Path(cache_dir), workers, progress, dtype, spacing_mm)


def _build_locked(files, cache_dir: Path, workers, progress, dtype, spacing_mm) -> CacheReport:
    from tqdm import tqdm

    report = CacheReport(swept=_sweep_temps(cache_dir))
    todo = []
    for f in files:
        if load_meta(cache_dir, f.modality, f.relpath, f.path, spacing_mm, verify="full") is None:
            todo.append(f)
            if entry_paths(cache_dir, f.modality, f.relpath, spacing_mm)[1].exists():
                report.rebuilt.append(f.relpath)
        else:
            report.skipped += 1
    workers = (os.cpu_count() or 1) if workers is None else workers
    bar = tqdm(total=len(todo), desc="cache", unit="vol", disable=not progress or len(todo) < 2)
    results = []
    if workers <= 1 or len(todo) <= 1:
        for f in todo:
            results.append(_build_one(f, str(cache_dir), dtype, spacing_mm))
            bar.update()
    else:
        with spawn_pool(min(workers, len(todo))) as pool:
            for future in as_completed([pool.submit(_build_one, f, str(cache_dir), dtype, spacing_mm) for f in todo]):
                results.append(future.result())
                bar.update()
    bar.close()
    for relpath, reason in sorted(results, key=lambda r: r[0]):
        if reason is None:
            report.built += 1
        else:
            report.failed.append((relpath, reason))
    return report
