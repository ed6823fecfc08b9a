"""Where volumes live and what they are: the users' folder layout decides modality and sub-type.

    <root>/OpenMind_processed/{MRI_T1,MRI_T2,MRA}/*.nii.gz   -> mri, sub-type MRI_T1 / MRI_T2 / MRA
    <root>/NIH_deeplesion/CT/*.nii.gz                        -> ct,  sub-type CT

A folder given on the command line may be the root or any of these sub-folders. Each file is identified by its
path relative to the layout root (`OpenMind_processed/MRI_T1/x.nii.gz`), which is the same on every machine, so the
validation split and the cache keys do not depend on where the data is mounted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MRI_ROOT, CT_ROOT = "OpenMind_processed", "NIH_deeplesion"
MRI_SUBTYPES = ("MRI_T1", "MRI_T2", "MRA")
CT_SUBTYPES = ("CT",)
VOLUME_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class VolumeFile:
    path: Path
    modality: str
    subtype: str
    relpath: str


def is_volume_name(name: str) -> bool:
    return name.endswith(VOLUME_SUFFIXES) and not name.startswith(".")


def canonical_stem(name: str) -> str:
    """`x.nii.nii.gz` and `x.nii.gz` both give `x`: the users' converter sometimes doubled the `.nii`."""
    stem = name[: -len(".gz")] if name.endswith(".gz") else name
    while stem.endswith(".nii"):
        stem = stem[: -len(".nii")]
    return stem


def _relpath(path: Path, modality: str, subtype: str) -> str:
    parts = path.parts
    root = MRI_ROOT if modality == "mri" else CT_ROOT
    if root in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index(root) :])
    return f"{subtype}/{path.name}"


def _leaf_files(folder: Path, modality: str, subtype: str) -> list[VolumeFile]:
    return [
        VolumeFile(
            path=p.absolute(), modality=modality, subtype=subtype, relpath=_relpath(p.absolute(), modality, subtype)
        )
        for p in sorted(folder.iterdir())
        if is_volume_name(p.name)
    ]


def _require_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (give the data root or a modality folder)")


def files_in(folder: str | Path, modality: str) -> list[VolumeFile]:
    """Volumes of a known modality under `folder` (a layout root, a modality root or a leaf folder of volumes)."""
    folder = Path(folder)
    _require_dir(folder)
    subtypes, root_name = (MRI_SUBTYPES, MRI_ROOT) if modality == "mri" else (CT_SUBTYPES, CT_ROOT)
    if (folder / root_name).is_dir():
        folder = folder / root_name
    subfolders = [folder / s for s in subtypes if (folder / s).is_dir()]
    if subfolders:
        return [f for sub in subfolders for f in _leaf_files(sub, modality, sub.name)]
    subtype = folder.name if folder.name in subtypes else modality
    return _leaf_files(folder, modality, subtype)


def classify_dir(folder: str | Path) -> list[tuple[str, Path]]:
    """(modality, folder) pairs that a command-line DIR stands for, decided by the layout's folder names."""
    folder = Path(folder)
    _require_dir(folder)
    name, parent = folder.name, folder.parent.name
    if name in MRI_SUBTYPES or name == MRI_ROOT:
        return [("mri", folder)]
    if name == CT_ROOT or (name in CT_SUBTYPES and parent == CT_ROOT):
        return [("ct", folder)]
    found = [(m, folder / r) for m, r in (("mri", MRI_ROOT), ("ct", CT_ROOT)) if (folder / r).is_dir()]
    if not found:
        raise ValueError(
            f"{folder}: cannot tell the modality from the folder name; give the data root (holding {MRI_ROOT}/ or "
            f"{CT_ROOT}/), {MRI_ROOT}[/{'|'.join(MRI_SUBTYPES)}] or {CT_ROOT}[/CT]"
        )
    return found


def find_duplicates(files: list[VolumeFile]) -> dict[Path, Path]:
    """{duplicate: kept} for files of one folder that share a canonical stem; the shortest name is kept."""
    groups: dict[tuple[Path, str], list[VolumeFile]] = {}
    for f in files:
        groups.setdefault((f.path.parent, canonical_stem(f.path.name)), []).append(f)
    duplicates = {}
    for group in groups.values():
        if len(group) > 1:
            kept, *others = sorted(group, key=lambda f: (len(f.path.name), f.path.name))
            duplicates.update({o.path: kept.path for o in others})
    return duplicates
