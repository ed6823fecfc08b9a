"""`rsna-phase0 check-env`: a thin CLI over rsna_phase0.check_env.check (no torch import here; probes use subprocesses)."""

from __future__ import annotations

import json
import sys

import click


@click.command("check-env")
@click.option("--json", "as_json", is_flag=True, help="Print the report and the rows as JSON instead of a table.")
@click.option("--write-report", type=click.Path(dir_okay=False), help="Also write this machine's report (JSON) here.")
@click.option(
    "--against", type=click.Path(dir_okay=False), help="Compare with another machine's report instead of the spec."
)
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False),
    help="Version spec (default: $RSNA_PHASE0_SPEC or env/reference.toml).",
)
def check_env(
    as_json: bool, write_report: str | None, against: str | None, strict: bool, spec_path: str | None
) -> None:
    """Prove this environment equals the reference one (exit 0), or say what differs and how to fix it.

    Exit codes: 0 parity, 1 mismatch (or warnings with --strict), 2 could not probe.
    """
    from rsna_phase0.check_env.check import render_table, run_check
    from rsna_phase0.check_env.report import save_report
    from rsna_phase0.check_env.spec import SpecError

    if write_report:  # checked before probing: an unwritable path must not cost the probes and then a traceback
        from rsna_phase0.check_env.report import report_target_problem

        problem = report_target_problem(write_report)
        if problem:
            click.echo(f"check-env: --write-report {write_report}: {problem}", err=True)
            sys.exit(2)
    try:
        result = run_check(spec=spec_path, against=against, strict=strict)
    except SpecError as exc:
        click.echo(f"check-env: {exc}", err=True)
        sys.exit(2)
    if write_report:
        if result.report.get("probes"):
            click.echo(f"report written to {save_report(write_report, result.report)}", err=True)
        else:
            click.echo(f"no report written to {write_report}: nothing was probed", err=True)
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    else:
        click.echo(render_table(result))
    sys.exit(result.exit_code)
