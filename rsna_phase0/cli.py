"""The `rsna-phase0` command line: argument parsing only; each command's logic lives in its own module."""

from __future__ import annotations

import click

from rsna_phase0.env.commands import check_env


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsna_phase0")
def main() -> None:
    """Phase-0 self-supervised pre-training for the RSNA 2025 aneurysm challenge."""


main.add_command(check_env)
