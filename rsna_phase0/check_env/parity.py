"""Parity results: the rows of the check-env table, their statuses, the exit code, and shared helpers.

Statuses: ok; MISMATCH (must be identical: torch release and CUDA build, cuDNN, every runtime package,
MinkowskiEngine version, source and the torch/CUDA/Python it was compiled against, and it must run); warning
(a severity the user chooses with --strict: Python minor, driver, GPU and arch coverage, nvcc, dev packages, how
MinkowskiEngine was built); info (facts with no rule, or rules that do not apply, e.g. GPU rows with a CPU torch).
dev stand-in (the torch rows on a CPU development machine running the spec's declared [dev_torch]: expected there,
not the reference; exit 3). Every MISMATCH row carries the command that fixes it. The rules live in spec_rules.py (this machine against the
spec) and report_rules.py (against another machine's report). Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from rsna_phase0.check_env.facts import COULD_NOT_COLLECT, is_failed
from rsna_phase0.check_env.spec import Spec

OK, MISMATCH, WARNING, INFO = "ok", "MISMATCH", "warning", "info"
STAND_IN = "dev stand-in"
# Exit codes of check-env: a stand-in is neither parity (0) nor broken (1).
EXIT_PARITY, EXIT_MISMATCH, EXIT_NO_PROBE, EXIT_STAND_IN = 0, 1, 2, 3
CPU = "cpu"  # [torch] cuda = "cpu" in a spec: a CPU build of torch (torch.version.cuda is None)
BUILD_MINKOWSKI = "python installers/build_minkowski.py"


@dataclass(frozen=True)
class Row:
    field: str
    expected: str
    found: str
    status: str
    fix: str = ""


@dataclass
class ParityResult:
    rows: list[Row]
    report: dict
    strict: bool = False
    problem: str | None = None  # set when the machine could not be probed at all (exit code 2)
    against: str | None = None  # the other machine's report, when compared with one instead of the spec
    counts: dict = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.counts = {s: sum(r.status == s for r in self.rows) for s in (OK, MISMATCH, WARNING, INFO, STAND_IN)}

    @property
    def exit_code(self) -> int:
        if self.problem:
            return EXIT_NO_PROBE
        if self.counts[MISMATCH] or (self.strict and self.counts[WARNING]):
            return EXIT_MISMATCH
        return EXIT_STAND_IN if self.counts[STAND_IN] else EXIT_PARITY

    @property
    def fixes(self) -> list[str]:
        """The distinct fix commands of the failing rows, in table order."""
        failing = {MISMATCH, WARNING} if self.strict else {MISMATCH}
        fixes = list(dict.fromkeys(r.fix for r in self.rows if r.status in failing and r.fix))
        # Plain `pip install name==version` pins become one command (one resolver run, one line to paste).
        pins = [f.removeprefix("pip install ") for f in fixes if re.fullmatch(r"pip install [\w.-]+==[\w.+-]+", f)]
        if len(pins) > 1:
            first = fixes.index(f"pip install {pins[0]}")
            fixes = [f for f in fixes if f.removeprefix("pip install ") not in pins]
            fixes.insert(first, "pip install " + " ".join(pins))
        return fixes

    def to_dict(self) -> dict:
        return {
            "exit_code": self.exit_code,
            "strict": self.strict,
            "problem": self.problem,
            "against": self.against,
            "counts": self.counts,
            "rows": [r.__dict__ for r in self.rows],
        }


# ---------------------------------------------------------------- small helpers


def show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and is_failed(value):
        return value["error"] if value["error"].startswith(COULD_NOT_COLLECT) else f"absent ({value['error']})"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) or "-"
    return str(value)


def torch_cuda_of(torch: dict) -> str:
    return torch.get("cuda") or CPU


def torch_fix(spec: Spec, *, force: bool = False) -> str:
    force_flag = "--force-reinstall " if force else ""
    return (
        f"pip install {force_flag}torch=={spec.torch_version} --index-url {spec.torch_index_url}"
        f"  (then rebuild MinkowskiEngine: {minkowski_fix(spec)})"
    )


def reference_elsewhere(spec: Spec) -> str:
    return (
        f"the reference torch {spec.torch_version} (CUDA {spec.torch_cuda}) comes with the Docker image "
        "(make docker-build) or the Kaggle installer (python installers/kaggle_setup.py)"
    )


def minkowski_fix(spec: Spec | None) -> str:
    return f"{BUILD_MINKOWSKI} --cpu-only" if spec is not None and spec.torch_cuda == CPU else BUILD_MINKOWSKI


def source_text(record: dict | None) -> str:
    if not record:
        return "unknown (no build record)"
    source = record.get("source") or {}
    return f"{source.get('kind', '?')} {source.get('id', '?')}"


def minkowski_cuda_text(me: dict) -> str:
    runtime = me.get("runtime") or {}
    if "cuda" in runtime:
        return "yes" if runtime["cuda"] else "no"
    record = me.get("build") or {}
    if "cpu_only" in record:
        return "no" if record["cpu_only"] else "yes"
    return "unknown"


def gpu_text(gpu: dict) -> str:
    if "error" in gpu:
        return f"{COULD_NOT_COLLECT}: {gpu['error']}"
    return f"{gpu['name']}, sm {gpu['capability']}, {gpu['memory_gib']} GiB"
