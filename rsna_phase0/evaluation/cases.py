"""Find the cases of a labelled NIfTI folder and check that every file has its partner, before anything is read.

Accepted layouts (NAME matches across them; `.nii.gz` or `.nii`):

    DIR/images/NAME.nii.gz + DIR/labels/NAME.nii.gz   label maps: 0 background, 1 vessel, 2 aneurysm
    DIR/images/NAME.nii.gz + DIR/labels.csv           one row per image: image,aneurysm (0/1); classification only

Both may be present (then they must agree: a head is positive exactly when its map holds aneurysm voxels). Images
may also lie in DIR itself. The CSV's columns may use the RSNA names (SeriesInstanceUID, Aneurysm Present).
Anything missing, duplicated or unmatched is a VolumeError naming the file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from rsna_phase0.data.errors import VolumeError

TASKS = ("segmentation", "classification")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_COLUMNS = ("image", "SeriesInstanceUID")
LABEL_COLUMNS = ("aneurysm", "Aneurysm Present")
BACKGROUND, VESSEL, ANEURYSM = 0, 1, 2  # the label map values (uint8)
LABEL_VALUES = (BACKGROUND, VESSEL, ANEURYSM)


@dataclass(frozen=True)
class CaseFiles:
    name: str
    image: Path
    label_map: Path | None
    aneurysm: int | None  # from the CSV; None when only a label map says it


def nifti_name(path: Path) -> str | None:
    """NAME of NAME.nii.gz / NAME.nii, or None for any other file."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = nifti_name(path)
        if name is None or not path.is_file():
            continue
        if name in files:
            raise VolumeError(path, f"two files for case {name!r} ({files[name].name} and {path.name})")
        files[name] = path
    return files


def read_labels_csv(path: Path) -> dict[str, int]:
    """{image name: aneurysm 0/1} from a CSV with an image and an aneurysm column (see the module docstring)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
        label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
        if image_col is None or label_col is None:
            raise VolumeError(
                path, f"columns {columns}: need an image column {IMAGE_COLUMNS} and a label column {LABEL_COLUMNS}"
            )
        labels: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            image, value = (row.get(image_col) or "").strip(), (row.get(label_col) or "").strip()
            name = nifti_name(Path(image)) or image
            if not name:
                raise VolumeError(path, f"line {line}: empty {image_col}")
            if value not in ("0", "1", "0.0", "1.0"):
                raise VolumeError(path, f"line {line}: {label_col} {value!r} for {name!r} is not 0 or 1")
            if name in labels:
                raise VolumeError(path, f"line {line}: {name!r} appears twice")
            labels[name] = int(float(value))
    if not labels:
        raise VolumeError(path, "no rows")
    return labels


def find_cases(data_dir: str | Path, task: str) -> list[CaseFiles]:
    """The cases of `data_dir` for `task`, sorted by name; VolumeError for any missing or unmatched file."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise VolumeError(data_dir, "not a folder")
    image_dir = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    images = _nifti_files(image_dir)
    if not images:
        raise VolumeError(image_dir, "no .nii.gz / .nii images")
    label_dir, csv_path = data_dir / "labels", data_dir / "labels.csv"
    maps = _nifti_files(label_dir) if label_dir.is_dir() else None
    csv_labels = read_labels_csv(csv_path) if csv_path.is_file() else None
    if maps is None and (task == "segmentation" or csv_labels is None):
        need = "label maps" if task == "segmentation" else "label maps or a labels.csv"
        raise VolumeError(data_dir, f"{task} needs {need}: {label_dir}/NAME.nii.gz (0/1/2) for each image")
    if maps is not None:
        for name, path in maps.items():
            if name not in images:
                raise VolumeError(path, f"label map without an image ({image_dir}/{name}.nii.gz)")
    if csv_labels is not None:
        for name in csv_labels:
            if name not in images:
                raise VolumeError(csv_path, f"row {name!r} has no image in {image_dir}")
    cases = []
    for name, image in images.items():
        label_map = maps.get(name) if maps is not None else None
        if maps is not None and label_map is None:
            raise VolumeError(image, f"no label map {label_dir}/{name}.nii.gz")
        aneurysm = csv_labels.get(name) if csv_labels is not None else None
        if csv_labels is not None and aneurysm is None and label_map is None:
            raise VolumeError(image, f"no row in {csv_path}")
        cases.append(CaseFiles(name, image, label_map, aneurysm))
    return cases
