"""Environment reports: the probes of one machine as a JSON file, written atomically, read back with validation.

A report from the Docker image and one from a Kaggle notebook can be compared field by field (`check-env --against`).
Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from rsna_phase0.atomic import folder_write_problem, write_json_atomic

REPORT_SCHEMA = 1


class ReportError(ValueError):
    """A report file that cannot be used: the message names the file and the problem."""


def make_report(probes: dict, spec_path: str | os.PathLike, parity: dict | None = None) -> dict:
    return {
        "schema": REPORT_SCHEMA,
        "kind": "rsna_phase0 environment report",
        "hostname": socket.gethostname(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec_path": str(spec_path),
        "probes": probes,
        **({"parity": parity} if parity is not None else {}),
    }


def save_report(path: str | os.PathLike, report: dict) -> Path:
    """Write a report atomically: a reader (or `--against`) never sees half of one. Returns the path."""
    return write_json_atomic(path, report, indent=2)


def report_target_problem(path: str | os.PathLike) -> str | None:
    """Why a report cannot be written at `path`, or None."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; give a file name, e.g. report.json inside it"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # missing folders are created (save_report)
        folder = folder.parent
    return folder_write_problem(folder)


def load_report(path: str | os.PathLike) -> dict:
    """Read and validate a report; ReportError names the file and says what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report: {exc.strerror or exc}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not valid JSON ({exc}); write one with `rsna-phase0 check-env --write-report`"
        ) from None
    if not isinstance(report, dict) or not isinstance(report.get("probes"), dict):
        raise ReportError(
            f"{path}: not an environment report (no 'probes'); write one with `rsna-phase0 check-env --write-report`"
        )
    malformed = [f"{name} is {type(v).__name__}" for name, v in report["probes"].items() if not isinstance(v, dict)]
    if malformed:  # a probe is always a mapping (its values or its error); anything else would crash the comparison
        raise ReportError(
            f"{path}: malformed probes ({', '.join(malformed)}; each must be a mapping); write the report again "
            "with `rsna-phase0 check-env --write-report`"
        )
    schema = report.get("schema")
    if schema != REPORT_SCHEMA:
        raise ReportError(f"{path}: report schema {schema!r}, this rsna_phase0 reads schema {REPORT_SCHEMA}")
    return report
