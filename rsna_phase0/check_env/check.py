"""The parity check as a Python API: what `rsna-phase0 check-env` runs and what training calls before it starts.

    result = run_check()                  # this machine against env/reference.toml (or $RSNA_PHASE0_SPEC)
    result.exit_code, result.rows, result.report
    print(render_table(result))

Standard library only at import time.
"""

from __future__ import annotations

import dataclasses
import os

from rsna_phase0.check_env import facts, parity, report_rules, spec_rules
from rsna_phase0.check_env.parity import EXIT_MISMATCH, EXIT_STAND_IN, MISMATCH, STAND_IN, WARNING, ParityResult, Row
from rsna_phase0.check_env.report import load_report, make_report
from rsna_phase0.check_env.spec import Spec, load_spec


class EnvironmentMismatch(RuntimeError):
    """Raised by require_parity(): the message is the table and the fixes."""


def run_check(
    spec: Spec | str | os.PathLike | None = None,
    against: str | os.PathLike | dict | None = None,
    strict: bool = False,
    collected: dict | None = None,
) -> ParityResult:
    """Probe this machine (or use `collected`, probes injected by tests) and compare with the spec or a report.

    Never raises for a bad machine or a bad --against file: those give exit code 2 with `problem` saying why.
    A malformed spec raises SpecError (a bug in the checkout, not in the machine).
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    other = None
    if against is not None:
        try:
            other = against if isinstance(against, dict) else load_report(against)
        except ValueError as exc:
            return ParityResult([], make_report({}, spec.path), strict, problem=str(exc), against=str(against))
    names = list(spec.packages) + [
        n for n in (other or {}).get("probes", {}).get("packages", {}) if n not in spec.packages
    ]
    if collected is None:
        collected = facts.collect(names, list(spec.dev_packages))
    if other is None:
        rows = spec_rules.compare_with_spec(collected, spec)
    else:
        rows = report_rules.compare_with_report(collected, other["probes"])
    problem = None
    if facts.is_failed(collected.get("torch", {})):
        problem = f"torch could not be probed: {collected['torch']['error']} (install it: {parity.torch_fix(spec)})"
    label = None
    if other is not None:
        origin = "given as a dict" if isinstance(against, dict) else str(against)
        label = f"{origin} (host {other.get('hostname', '?')}, {other.get('time', 'time unknown')})"
    result = ParityResult(rows, make_report(collected, spec.path), strict, problem=problem, against=label)
    result.report["parity"] = result.to_dict()
    return result


def require_parity(strict: bool = False, allow_mismatch: bool = False, log=print) -> ParityResult:
    """For training: refuse to start unless the environment is the reference one (or the user allowed it)."""
    result = run_check(strict=strict)
    if result.exit_code == 0:
        return result
    table = render_table(result)
    if allow_mismatch and result.exit_code in (EXIT_MISMATCH, EXIT_STAND_IN):
        log(f"WARNING: the environment differs from the reference; continuing as asked (--allow-env-mismatch)\n{table}")
        return result
    raise EnvironmentMismatch(f"the environment is not the reference one:\n{table}")


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(result: ParityResult, width: int = 64) -> str:
    """A plain-text table of the rows, then the fix commands and a one-line verdict."""
    lines = []
    if result.problem:
        lines.append(f"could not probe: {result.problem}")
    rows = result.rows
    if result.against:
        lines.append(f"expected = the report {result.against}; found = this machine")
    if rows:
        header = Row("field", "expected", "found", "status")
        widths = [
            min(max(len(getattr(r, col)) for r in [header, *rows]), width)
            for col in ("field", "expected", "found", "status")
        ]
        for r in [header, *rows]:
            cells = (r.field, r.expected, r.found, r.status)
            lines.append("  ".join(_cell(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    if result.fixes:
        lines.append("")
        lines.append("to fix:")
        lines += [f"  {fix}" for fix in result.fixes]
    counts = result.counts
    verdict = {0: "PARITY", 1: "NOT THE REFERENCE ENVIRONMENT", 2: "COULD NOT PROBE"}.get(result.exit_code)
    strict = " (--strict: warnings fail)" if result.strict and counts[WARNING] else ""
    tally = f"{counts[MISMATCH]} mismatch(es), {counts[WARNING]} warning(s){strict}; exit {result.exit_code}"
    lines.append("")
    lines.append(f"{verdict}: {tally}" if verdict else stand_in_verdict(result, tally))
    return "\n".join(lines)


def stand_in_verdict(result: ParityResult, tally: str) -> str:
    """Exit 3: everything else matches and torch is the spec's declared CPU stand-in."""
    torch = next(r for r in result.rows if r.field == "torch" and r.status == STAND_IN)
    spec = load_spec(result.report.get("spec_path"))
    rebuild = parity.minkowski_fix(dataclasses.replace(spec, torch_cuda=parity.CPU))
    return (
        f"development stand-in (expected on a CPU dev machine): torch {torch.found} is the declared stand-in for the "
        f"reference {torch.expected}; no other mismatch: {tally}\n"
        f"Keep this torch: MinkowskiEngine here was compiled against it (after changing torch, rebuild it: {rebuild}). "
        f"For the reference environment itself: {parity.reference_elsewhere(spec)}."
    )
