"""`rsna-phase0 check-env` (placeholder until the check-env module lands)."""

import click


@click.command("check-env")
def check_env() -> None:
    """Prove this environment equals the reference one."""
    raise click.ClickException("check-env is not implemented yet")
