"""`rsna-phase0 evaluate`: argument parsing and printing only; the work lives in experiment.py and report.py."""

from __future__ import annotations

from pathlib import Path

import click

from rsna_phase0.evaluation import DEFAULT_LR, DEFAULT_STEPS


def _int_or_path(value: str) -> int | str:
    return int(value) if value.strip().isdigit() else value


def _fractions(value: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated numbers in (0, 1], e.g. 1.0,0.25") from None
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise click.BadParameter(f"{value!r}: each label fraction must be in (0, 1]")
    return fractions


def _modes(value: str) -> tuple[str, ...]:
    from rsna_phase0.evaluation.heads import MODES

    modes = tuple(v.strip() for v in value.split(",") if v.strip())
    if not modes or any(m not in MODES for m in modes):
        raise click.BadParameter(f"{value!r}: choose from {', '.join(MODES)} (comma-separated)")
    return modes


@click.command("evaluate")
@click.argument("encoder", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="labelled folder: images/NAME.nii.gz + labels/NAME.nii.gz (0/1/2) and/or labels.csv (image,aneurysm)",
)
@click.option("--task", required=True, type=click.Choice(["segmentation", "classification"]))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="default: ./evaluate_TASK")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--holdout",
    default="20",
    show_default=True,
    help="held-out cases (a number; drawn once, stratified) or a split file (JSON train/test, or one name a line)",
)
@click.option("--label-fractions", "fractions", default="1.0,0.25", show_default=True, help="training labels kept")
@click.option("--modes", default="full,probe", show_default=True, help="full fine-tune and/or frozen-encoder probe")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True, help="per fine-tune")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="default: the encoder preset's")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_LR, show_default=True, help="AdamW, head"
)
@click.option(
    "--encoder-lr", type=click.FloatRange(min=0, min_open=True), default=None, help="full mode (default: --lr)"
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default="auto", show_default=True)
@click.option(
    "--modality",
    type=click.Choice(["auto", "mri", "ct"]),
    default="auto",
    show_default=True,
    help="auto: 3-D images are MRI, 3-window vector images CT (pass ct for CT in Hounsfield units)",
)
@click.option(
    "--mri-sequence",
    default=None,
    help="MRI sequence whose clipping percentile applies (e.g. MRA: p99.99, so vessels do not saturate); "
    "default: each image's folder name, as in pre-training",
)
@click.option(
    "--max-inference-size",
    type=click.IntRange(min=8),
    default=128,
    show_default=True,
    help="cases up to this cube side are scored whole; larger ones by overlapping windows of it",
)
def evaluate(encoder: Path, data_dir: Path, task: str, out_dir: Path | None, **options) -> None:
    """Check that pre-training paid off: fine-tune ENCODER (an exported encoder) and the same architecture from
    random initialisation under the same budget, per seed, label fraction and mode; score the held-out cases
    (Dice per class, or AUC) and write OUT/evaluate.{txt,json,png}."""
    from rsna_phase0.data.errors import VolumeError
    from rsna_phase0.evaluation.experiment import EvaluateSettings, run_evaluation
    from rsna_phase0.evaluation.report import format_table, write_report

    settings = EvaluateSettings(
        task=task,
        seeds=options["seeds"],
        holdout=_int_or_path(options["holdout"]),
        label_fractions=_fractions(options["fractions"]),
        modes=_modes(options["modes"]),
        steps=options["steps"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        encoder_lr=options["encoder_lr"],
        device=options["device"],
        amp=options["amp"],
        modality=options["modality"],
        mri_sequence=options["mri_sequence"],
        max_inference_size=options["max_inference_size"],
    )
    out_dir = out_dir or Path(f"evaluate_{task}")
    try:
        payload = run_evaluation(encoder, data_dir, settings, out_dir, echo=click.echo)
    except (VolumeError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    paths = write_report(payload, out_dir)
    click.echo(format_table(payload), nl=False)
    click.echo(f"took {payload['seconds']:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")
