"""Looking at this machine without importing anything heavy: commands with a timeout, nvcc, usable cores, the
MinkowskiEngine build record. check-env (rsna_phase0/check_env/facts.py) and both installers use these.

Standard library only: the installers run them before torch exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUILD_RECORD = "rsna_build.json"  # written into MinkowskiEngine's dist-info by installers/build_minkowski.py
COMMAND_TIMEOUT = 10.0  # seconds; generous on purpose, it only bounds a hang


@dataclass(frozen=True)
class CommandResult:
    returncode: int | None  # None: it did not finish (timeout, not found, could not start)
    stdout: str
    stderr: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_command(argv: list[str], timeout: float = COMMAND_TIMEOUT, env: dict | None = None) -> CommandResult:
    """Run a command with a timeout; never raises. On timeout the whole process group is killed (a wrapper
    script's children too) and what it printed so far is kept."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        return CommandResult(None, "", "", f"{argv[0]} could not start: {exc}")
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # something outside the group holds the pipes open: give up on them
            stdout, stderr = "", ""
        return CommandResult(None, stdout or "", stderr or "", f"{Path(argv[0]).name} timed out after {timeout:g} s")
    return CommandResult(proc.returncode, stdout, stderr)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def find_nvcc() -> str | None:
    """nvcc as torch's extension builder would find it: $CUDA_HOME (or $CUDA_PATH), then PATH, then
    /usr/local/cuda (where Kaggle's GPU images keep their CUDA 12 toolkit). PyPI's nvidia-cuda-nvcc-cu12 wheels hold
    ptxas, libnvvm and headers but no nvcc, so they are no candidate."""
    homes = [os.environ[v] for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates = [Path(home) / "bin" / "nvcc" for home in homes[:1]]
    on_path = shutil.which("nvcc")
    candidates += [Path(on_path)] if on_path else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def parse_nvcc_version(stdout: str) -> tuple[str, str] | None:
    """('12.1', '12.1.105') from the text of `nvcc --version`; None when it does not say."""
    match = re.search(r"release (\d+\.\d+), V([\d.]+)", stdout)
    return (match.group(1), match.group(2)) if match else None


def nvcc_release(nvcc: str | None, timeout: float = 30) -> str | None:
    """'12.4' from `nvcc --version`; None when there is no nvcc or it does not answer."""
    if not nvcc:
        return None
    result = run_command([nvcc, "--version"], timeout=timeout)
    parsed = parse_nvcc_version(result.stdout) if result.ok else None
    return parsed[0] if parsed else None


def usable_cores() -> int:
    """CPUs this process may use: the affinity mask, lowered by a cgroup v2 CPU quota (containers, Kaggle)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def parse_build_record(text: str | None) -> tuple[dict | None, str | None]:
    """rsna_build.json's text -> (record, problem); (None, None) when there is none."""
    if text is None:
        return None, None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{BUILD_RECORD} is not valid JSON: {exc}"
    if not isinstance(record, dict) or "schema" not in record:
        return None, f"{BUILD_RECORD} has no schema field: not written by installers/build_minkowski.py"
    return record, None
