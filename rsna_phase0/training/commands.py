"""`rsna-phase0 train` and `rsna-phase0 export-encoder`."""

import click


@click.command("train")
def train() -> None:
    """Pre-train the Phase-0 encoder."""
    raise click.ClickException("train is not implemented yet")


@click.command("export-encoder")
def export_encoder() -> None:
    """Export the dense encoder from a checkpoint."""
    raise click.ClickException("export-encoder is not implemented yet")
