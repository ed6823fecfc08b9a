"""`rsna-phase0 docker build|train|shell|check-env`."""

import click


@click.group("docker")
def docker() -> None:
    """Build and run the reference Docker image."""
