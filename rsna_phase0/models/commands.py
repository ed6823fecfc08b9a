"""`rsna-phase0 model-info`."""

import click


@click.command("model-info")
def model_info() -> None:
    """Parameters, feature shapes and activation memory of a preset."""
    raise click.ClickException("model-info is not implemented yet")
