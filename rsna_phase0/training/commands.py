"""`rsna-phase0 train` and `rsna-phase0 export-encoder` (argument parsing only; torch is imported inside)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

PRESET_CHOICES = ("smoke", "dev", "kaggle", "production")


def _duration(_ctx, _param, value):
    if value is None:
        return None
    from rsna_phase0.training.config import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not seconds > 0:
        raise click.BadParameter(f"{value!r}: the budget must be more than 0 s, e.g. 8h30m, 45m or 90s")
    return seconds


@click.command("train")
@click.option(
    "--preset", type=click.Choice(PRESET_CHOICES), default=None, help="default: the --config file's preset, else smoke"
)
@click.option(
    "--mri-dir",
    "mri_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="OpenMind folder (MRI_T1/MRI_T2/MRA inside) or a folder of MRI volumes; repeatable",
)
@click.option(
    "--ct-dir",
    "ct_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="DeepLesion CT folder (3-window NIfTI); repeatable",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run folder (checkpoints, metrics, config)")
@click.option("--resume", default=None, help="auto (RUN_DIR/last.pt if present) or a checkpoint path")
@click.option(
    "--time-budget",
    callback=_duration,
    default=None,
    help="stop with a checkpoint before this much wall time, e.g. 8h30m, 45m, 90s",
)
@click.option(
    "--max-steps", type=int, default=None, help="stop after N optimiser steps (the lr schedule follows --epochs)"
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="total epochs of the run (the lr schedule's length; smoke preset: 8, else 100); raise it with --resume "
    "auto to train on",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON/TOML settings, or a run's config.json",
)
@click.option(
    "--set", "set_items", multiple=True, metavar="KEY=VALUE", help="override a preset field or training setting"
)
@click.option("--allow-env-mismatch", is_flag=True, help="train even if check-env finds a difference")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=None)
@click.option(
    "--deterministic", is_flag=True, default=None, help="deterministic algorithms (slower; exact resume on CPU)"
)
@click.option("--num-workers", type=int, default=None, help="data loading processes per rank")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None, help="crop cache folder")
@click.option(
    "--manifest",
    "manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="a saved `rsna-phase0 data scan ... --out FILE` of these folders, used instead of re-reading every volume "
    "(checked: same files, same sizes)",
)
@click.option("--no-progress", is_flag=True, help="no progress bars (logs only)")
def train(
    preset,
    mri_dirs,
    ct_dirs,
    out,
    resume,
    time_budget,
    max_steps,
    epochs,
    config_file,
    set_items,
    allow_env_mismatch,
    device,
    seed,
    deterministic,
    num_workers,
    cache_dir,
    manifest,
    no_progress,
) -> None:
    """Pre-train the Phase-0 encoder: preflight report, then the loop with resumable checkpoints.

    Exit codes: 0 finished or stopped by the time budget (last.pt saved); 1 refused or failed; 4 hang watchdog;
    5 non-finite loss; 130 SIGINT / 143 SIGTERM (last.pt saved). Under torchrun every rank runs this command.
    """
    import os

    if deterministic and "torch" not in sys.modules:
        # MinkowskiEngine's CPU kernels run OpenMP threads that sum in varying order; OpenMP reads this at load time
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rsna_phase0.training.config import load_config_file, parse_set_items, resolve_config

    try:
        file_values = load_config_file(config_file) if config_file else {}
        flags = {
            "epochs": epochs,
            "max_steps": max_steps,
            "seed": seed,
            "num_workers": num_workers,
            "deterministic": deterministic,
        }
        config = resolve_config(preset, file_values, parse_set_items(set_items), flags)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    request = dict(
        out=out,
        mri_dirs=list(mri_dirs),
        ct_dirs=list(ct_dirs),
        resume=resume,
        time_budget_s=time_budget,
        allow_env_mismatch=allow_env_mismatch,
        device=device,
        cache_dir=cache_dir,
        manifest=manifest,
        progress=not no_progress,
    )
    exit_with(run_from_cli(config, **request))


def run_from_cli(config: dict, **request_fields) -> int:
    """Run and print the summary; errors that the user can fix become one message and exit code 1."""
    from rsna_phase0.training.checkpoint import CheckpointError
    from rsna_phase0.training.preflight import PreflightError
    from rsna_phase0.training.trainer import RunRequest, TrainingError, run_training

    try:
        result = run_training(RunRequest(config=config, **request_fields))
    except (PreflightError, CheckpointError, TrainingError) as exc:
        click.echo(f"[train] error: {exc}", err=True)
        return 1
    click.echo(result.summary() if result.files else f"[train] {result.reason}", err=True)
    return int(result.exit_code)


def exit_with(code: int) -> None:
    if code:
        sys.exit(code)


@click.command("export-encoder")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export_encoder(checkpoint, out) -> None:
    """Export the dense encoder (plain PyTorch, no MinkowskiEngine needed) from a training checkpoint."""
    from rsna_phase0.training.checkpoint import CheckpointError
    from rsna_phase0.training.export import export_encoder_file

    try:
        summary = export_encoder_file(checkpoint, out)
    except (CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary)
