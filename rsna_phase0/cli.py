"""The `rsna-phase0` command line: argument parsing only; each command lives in its area's commands.py.

Command modules must not import torch at import time: `rsna-phase0 --help` and check-env stay fast.
"""

from __future__ import annotations

import click

from rsna_phase0.check_env.commands import check_env
from rsna_phase0.container.commands import docker
from rsna_phase0.data.commands import data
from rsna_phase0.evaluation.commands import evaluate
from rsna_phase0.models.commands import model_info
from rsna_phase0.training.commands import export_encoder, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsna_phase0")
def main() -> None:
    """Phase-0 self-supervised pre-training for the RSNA 2025 aneurysm challenge."""


for command in (check_env, data, model_info, train, export_encoder, evaluate, docker):
    main.add_command(command)
