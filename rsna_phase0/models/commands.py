"""`rsna-phase0 model-info` (torch is imported inside the command, so the CLI stays fast)."""

from __future__ import annotations

import click


@click.command("model-info")
@click.option("--preset", "preset_name", default="smoke", show_default=True, help="smoke, dev, kaggle or production")
@click.option("--embed-dim", type=int, default=None, help="override the embed size (the last stage's width)")
@click.option("--modality", type=click.Choice(["mri", "ct"]), default="mri", show_default=True)
@click.option("--no-measure", is_flag=True, help="skip the forward pass that measures activation memory")
@click.option(
    "--peak-memory",
    "batch_sizes",
    type=click.IntRange(min=1),
    multiple=True,
    help="also measure the peak GPU memory of training steps at this batch size (repeatable; needs --device cuda)",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (for --peak-memory)")
@click.option(
    "--amp",
    type=click.Choice(["auto", "bf16", "fp16", "off"]),
    default="auto",
    show_default=True,
    help="mixed precision for --peak-memory (fp16 as on a T4)",
)
def model_info(
    preset_name: str, embed_dim: int | None, modality: str, no_measure: bool, batch_sizes, device: str, amp: str
) -> None:
    """Parameters per part, feature shapes per stage, activation memory per sample and (on a GPU) peak memory of a
    training step of a preset."""
    from rsna_phase0.presets import get_preset

    try:
        preset = get_preset(preset_name)
        if embed_dim is not None:
            preset = preset.with_embed_dim(embed_dim)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    from rsna_phase0.models.info import describe

    try:
        for line in describe(
            preset, measure=not no_measure, modality=modality, device=device, amp=amp, batch_sizes=batch_sizes
        ):
            click.echo(line)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
