"""`rsna-phase0 data scan|cache|synth`: argument parsing and printing only; the work lives in plain functions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click


@click.group("data")
def data() -> None:
    """Scan, cache and synthesise data sets."""


@data.command("scan")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="write the manifest (JSON) here")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON instead of the summary table")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="processes (default: every core)")
def scan(dirs: tuple[Path, ...], out: Path | None, as_json: bool, workers: int | None) -> None:
    """Read every volume under DIRS (data root, OpenMind_processed[/MRI_T1|MRI_T2|MRA] or NIH_deeplesion[/CT]) and
    record shape, spacing, intensity statistics, and ok or rejected with the reason."""
    from rsna_phase0.atomic import disk_full_message, folder_write_problem, is_disk_full
    from rsna_phase0.data.manifest import scan_layout_dirs

    if out is not None:  # before the scan: its work must not be lost to an unwritable --out
        folder = out.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        problem = folder_write_problem(folder)
        if problem:
            raise click.ClickException(f"--out {out}: {problem}")
    try:
        manifest = scan_layout_dirs(dirs, workers=workers, progress=not as_json)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if out is not None:
        try:
            manifest.save(out)
        except OSError as exc:
            if not is_disk_full(exc):
                raise click.ClickException(f"--out {out}: cannot write the manifest ({exc})") from None
            need = len(json.dumps([asdict(r) for r in manifest.records]))
            click.echo(manifest.summary_table())
            raise click.ClickException(
                f"{disk_full_message(out, need)}; the scan's table is above: free space and run the scan again "
                "(or give --out on another disk)"
            ) from None
    if as_json:
        click.echo(
            json.dumps({"created": manifest.created, "records": [asdict(r) for r in manifest.records]}, indent=1)
        )
    else:
        click.echo(manifest.summary_table())
        if out is not None:
            click.echo(f"manifest: {out}")
    if not manifest.accepted:
        raise click.ClickException("no usable volume found")


@data.command("cache")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="cache folder")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="processes (default: every core)")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="stored precision (float16 halves the size; intensities are in [0, 1])",
)
@click.option(
    "--spacing",
    "spacing_mm",
    type=click.FloatRange(min=0.05, max=10.0),
    default=1.0,
    show_default=True,
    help="store volumes resampled to this voxel size in mm: the preset's target_spacing_mm (every preset: 1)",
)
def cache(sources: tuple[Path, ...], out: Path, workers: int | None, dtype: str, spacing_mm: float) -> None:
    """Store SOURCES (layout folders, or a manifest .json: its accepted volumes) as chunked blosc2 for fast crops,
    already resampled to --spacing so training never resamples a crop. Resumable: complete, verified entries are
    skipped; partial or corrupt ones are rebuilt."""
    from rsna_phase0.data.cache import build_cache
    from rsna_phase0.data.layout import VolumeFile, classify_dir, files_in
    from rsna_phase0.data.manifest import Manifest

    files: list[VolumeFile] = []
    try:
        for source in sources:
            if source.is_file():
                files += [
                    VolumeFile(Path(r.path), r.modality, r.subtype, r.relpath) for r in Manifest.load(source).accepted
                ]
            else:
                files += [f for modality, folder in classify_dir(source) for f in files_in(folder, modality)]
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    from rsna_phase0.data.cache import CacheBusyError
    from rsna_phase0.data.errors import DataDiskFullError

    try:
        report = build_cache(files, out, workers=workers, dtype=dtype, spacing_mm=spacing_mm)
    except (DataDiskFullError, CacheBusyError) as exc:
        raise click.ClickException(
            f"{exc}; complete entries are kept, run the same command again to continue"
        ) from None
    click.echo(report.summary())
    click.echo(f"cache: {out}")


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--mri", "n_mri", type=click.IntRange(min=0), default=8, show_default=True, help="MRI volumes (T1, T2, MRA)"
)
@click.option("--ct", "n_ct", type=click.IntRange(min=0), default=4, show_default=True, help="CT volumes")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--labels",
    is_flag=True,
    help="instead: labelled heads for `rsna-phase0 evaluate` (OUT/images, OUT/labels: 0 background, 1 vessel, "
    "2 aneurysm; OUT/labels.csv)",
)
@click.option(
    "--n", "n_labelled", type=click.IntRange(min=1), default=40, show_default=True, help="with --labels: heads"
)
@click.option(
    "--modality",
    type=click.Choice(["mri", "ct"]),
    default="mri",
    show_default=True,
    help="with --labels: MRA-like heads, or the same heads as CTA in the three HU windows",
)
@click.option(
    "--size",
    "size_mm",
    type=click.FloatRange(min=32.0, max=400.0),
    default=96.0,
    show_default=True,
    help="with --labels: head field of view in mm (about this many voxels at 1 mm)",
)
@click.pass_context
def synth(
    ctx: click.Context,
    out: Path,
    n_mri: int,
    n_ct: int,
    seed: int,
    labels: bool,
    n_labelled: int,
    modality: str,
    size_mm: float,
) -> None:
    """Write a small synthetic data set in the users' layout under OUT (seconds), or with --labels labelled heads
    with vessel trees and aneurysms (about 0.1 s a head at 96^3)."""
    given = {
        name
        for name in ("n_mri", "n_ct", "n_labelled", "modality", "size_mm")
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    wrong = given & ({"n_mri", "n_ct"} if labels else {"n_labelled", "modality", "size_mm"})
    if wrong:
        flags = {"n_mri": "--mri", "n_ct": "--ct", "n_labelled": "--n", "modality": "--modality", "size_mm": "--size"}
        raise click.UsageError(
            f"{', '.join(sorted(flags[w] for w in wrong))} "
            + ("does not apply with --labels" if labels else "needs --labels")
        )
    if labels:
        from rsna_phase0.data.synth_labels import synth_labelled_dataset

        heads = synth_labelled_dataset(out, n=n_labelled, seed=seed, modality=modality, size_mm=size_mm)
        click.echo(f"wrote {len(heads)} labelled {modality} heads ({sum(heads.values())} with aneurysms) under {out}")
        return
    from rsna_phase0.data.synth import synth_dataset

    written = synth_dataset(out, mri=n_mri, ct=n_ct, seed=seed)
    click.echo(f"wrote {len(written)} volumes ({n_mri} MRI, {n_ct} CT) under {out}")
