"""Probes of this machine: each returns a dict of facts, or {"error": "<why>"} when it could not collect.

Standard library only at import time: the Kaggle installer imports this before torch exists. Anything that touches
torch, a GPU or a compiled extension runs in a child process with a timeout (probe_torch.py, probe_minkowski.py),
so that a missing torch, a dead GPU or a segfaulting MinkowskiEngine yields "could not collect", never a hang or a
crash. `collect()` runs the slow probes concurrently (the whole check stays under a few seconds).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rsna_phase0.core.probes import (
    BUILD_RECORD,
    COMMAND_TIMEOUT,
    describe_exit,
    find_nvcc,
    parse_build_record,
    parse_nvcc_version,
    run_command,
)

COULD_NOT_COLLECT = "could not collect"
WORKER_PREFIX = "RSNA_PROBE "
HERE = Path(__file__).resolve().parent

# Seconds. Generous on purpose: a cold torch import on a Kaggle disk can take 10-20 s; it only bounds a hang.
WORKER_TIMEOUT = 60.0


def failed(why: str) -> dict:
    return {"error": why}


def is_failed(facts: object) -> bool:
    return isinstance(facts, dict) and "error" in facts and len(facts) == 1


def worker_lines(stdout: str) -> list[dict]:
    """The JSON payloads a worker printed (library chatter on stdout is ignored)."""
    payloads = []
    for line in stdout.splitlines():
        if line.startswith(WORKER_PREFIX):
            try:
                payloads.append(json.loads(line[len(WORKER_PREFIX) :]))
            except json.JSONDecodeError:
                continue
    return payloads


def run_worker(script: str, timeout: float) -> tuple[list[dict], str | None]:
    """Run a worker script of this folder with this interpreter; returns its payloads and what went wrong, if anything.

    -P keeps the script's folder off sys.path so that our module names cannot shadow anything torch imports.
    """
    result = run_command([sys.executable, "-P", str(HERE / script)], timeout=timeout)
    payloads = worker_lines(result.stdout)
    if result.error:
        return payloads, result.error
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        return payloads, f"{script} {describe_exit(result.returncode)}" + (f": {' | '.join(tail)}" if tail else "")
    return payloads, None


# ---------------------------------------------------------------- probes


def probe_python() -> dict:
    try:
        return {
            "version": platform.python_version(),
            "minor": f"{sys.version_info.major}.{sys.version_info.minor}",
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
            "kaggle": bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")),
        }
    except Exception as exc:  # platform probing reads files and runs uname; never let it break the check
        return failed(f"{COULD_NOT_COLLECT}: {type(exc).__name__}: {exc}")


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception as exc:  # a broken dist-info: report it as found-but-unreadable
        return f"{COULD_NOT_COLLECT}: {type(exc).__name__}: {exc}"


def probe_packages(names: list[str]) -> dict:
    return {name: installed_version(name) for name in names}


def probe_torch(timeout: float = WORKER_TIMEOUT) -> dict:
    """torch's version, CUDA build, cuDNN, arch list and every visible GPU (in a child process)."""
    payloads, problem = run_worker("probe_torch.py", timeout)
    if not payloads:
        return failed(f"{COULD_NOT_COLLECT}: {problem or 'the torch probe printed nothing'}")
    return payloads[-1] if "error" in payloads[-1] else {**payloads[-1], **({"problem": problem} if problem else {})}


def parse_nvidia_smi(stdout: str) -> dict:
    gpus = []
    driver = None
    for line in stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        driver = parts[0]
        gpus.append({"name": parts[1], "memory_mib": parts[2]})
    if driver is None:
        return failed(f"{COULD_NOT_COLLECT}: unexpected nvidia-smi output {stdout.strip()[:200]!r}")
    return {"driver": driver, "gpus": gpus}


def probe_nvidia_smi(timeout: float = COMMAND_TIMEOUT) -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return failed("nvidia-smi not on PATH")
    result = run_command(
        [exe, "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader,nounits"], timeout=timeout
    )
    if result.error:
        return failed(f"{COULD_NOT_COLLECT}: {result.error}")
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip()[:200]
        return failed(f"{COULD_NOT_COLLECT}: nvidia-smi {describe_exit(result.returncode)}: {why}")
    return parse_nvidia_smi(result.stdout)


def nvcc_facts(stdout: str) -> dict:
    parsed = parse_nvcc_version(stdout)
    if parsed is None:
        return failed(f"{COULD_NOT_COLLECT}: unexpected nvcc --version output {stdout.strip()[-200:]!r}")
    return {"version": parsed[0], "full": parsed[1]}


def probe_nvcc(timeout: float = COMMAND_TIMEOUT) -> dict:
    exe = find_nvcc()
    if exe is None:
        return failed("nvcc not found (CUDA_HOME, PATH, /usr/local/cuda)")
    result = run_command([exe, "--version"], timeout=timeout)
    if result.error:
        return failed(f"{COULD_NOT_COLLECT}: {result.error}")
    if result.returncode != 0:
        return failed(f"{COULD_NOT_COLLECT}: {exe} --version {describe_exit(result.returncode)}")
    facts = nvcc_facts(result.stdout)
    return facts if is_failed(facts) else {**facts, "path": exe}


def probe_minkowski_install() -> dict:
    """Is MinkowskiEngine installed, which version, and how was it built (its rsna_build.json)? No import."""
    try:
        dist = importlib.metadata.distribution("MinkowskiEngine")
    except importlib.metadata.PackageNotFoundError:
        return {"installed": False}
    except Exception as exc:
        return failed(f"{COULD_NOT_COLLECT}: {type(exc).__name__}: {exc}")
    facts: dict = {"installed": True, "version": dist.version}
    try:
        record, problem = parse_build_record(dist.read_text(BUILD_RECORD))
    except Exception as exc:
        record, problem = None, f"{BUILD_RECORD} unreadable: {type(exc).__name__}: {exc}"
    facts["build"] = record
    if problem:
        facts["build_problem"] = problem
    return facts


def probe_minkowski_runtime(timeout: float = WORKER_TIMEOUT) -> dict:
    """Import MinkowskiEngine and run a tiny sparse convolution on the CPU and on each GPU (in a child process)."""
    payloads, problem = run_worker("probe_minkowski.py", timeout)
    steps = {p["step"]: p for p in payloads if isinstance(p, dict) and "step" in p}
    if "import" not in steps:
        return failed(f"{COULD_NOT_COLLECT}: {problem or 'the MinkowskiEngine probe printed nothing'}")
    imported = steps["import"]
    facts: dict = {"import": "ok" if imported["ok"] else f"failed: {imported.get('error')}"}
    if imported["ok"]:
        facts["cuda"] = imported.get("cuda")
        facts["conv"] = {
            name: ("ok" if s["ok"] else f"failed: {s.get('error')}")
            for name, s in steps.items()
            if name not in ("import", "done")
        }
        if "done" not in steps:
            # A step crashed or hung the worker: say where, the steps before it keep their results.
            facts["conv"]["crash"] = f"failed: {problem or 'the probe stopped early'}"
    return facts


def collect(
    package_names: list[str],
    dev_package_names: list[str] = (),
    *,
    command_timeout: float = COMMAND_TIMEOUT,
    worker_timeout: float = WORKER_TIMEOUT,
) -> dict:
    """Every probe, the slow ones concurrently. Values are JSON-serialisable."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        torch_f = pool.submit(probe_torch, worker_timeout)
        me_install = probe_minkowski_install()
        me_runtime_f = pool.submit(probe_minkowski_runtime, worker_timeout) if me_install.get("installed") else None
        smi_f = pool.submit(probe_nvidia_smi, command_timeout)
        nvcc_f = pool.submit(probe_nvcc, command_timeout)
        probes = {
            "python": probe_python(),
            "packages": probe_packages(list(package_names)),
            "dev_packages": probe_packages(list(dev_package_names)),
        }
        minkowski = dict(me_install)
        if me_runtime_f is not None:
            minkowski["runtime"] = me_runtime_f.result()
        probes.update(torch=torch_f.result(), nvidia_smi=smi_f.result(), nvcc=nvcc_f.result(), minkowski=minkowski)
    return probes
