"""What a MinkowskiEngine build would find here, probed before torch is installed: nvcc, compiler, BLAS, GPUs, room.

Standard library only. The build module checks the toolchain again against the installed torch right before it
compiles; this earlier look lets the plan say what will block a build (and the ways out) before any download.
Each probe has a timeout and never raises; `build_problems` turns what is missing into messages with the fix.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from installers.minkowski import toolchain as mt

GIB = 1 << 30
TORCH_DISK_BYTES = 8 * GIB  # torch + nvidia-*-cu12 wheels, downloaded and unpacked


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: str  # "7.5"


@dataclass(frozen=True)
class Toolchain:
    nvcc: str | None
    nvcc_version: str | None  # "12.1"
    cxx: str | None
    gcc: str | None
    blas_ok: bool
    gpus: tuple[Gpu, ...]
    free_disk_bytes: int
    mem_available_bytes: int | None
    cores: int

    @property
    def max_jobs(self) -> int:
        return mt.size_max_jobs(self.mem_available_bytes, self.cores)


def _run(command: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def find_nvcc() -> str | None:
    """$CUDA_HOME's nvcc, else PATH's, else /usr/local/cuda's (where Kaggle's GPU images keep their CUDA 12 toolkit).
    PyPI's nvidia-cuda-nvcc-cu12 wheels hold ptxas, libnvvm and headers but no nvcc, so they are no candidate."""
    candidates = [os.path.join(os.environ[v], "bin", "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def nvcc_release(nvcc: str) -> str | None:
    match = re.search(r"release (\d+\.\d+)", _run([nvcc, "--version"]) or "")
    return match.group(1) if match else None


def gpus() -> tuple[Gpu, ...]:
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    found = []
    for line in (out or "").splitlines():
        name, _, cap = line.rpartition(",")
        if re.fullmatch(r"\s*\d+\.\d+\s*", cap):
            found.append(Gpu(name.strip(), cap.strip()))
    return tuple(found)


def usable_cores() -> int:
    """CPUs this process may use: the affinity mask, lowered by a cgroup v2 CPU quota (containers, Kaggle)."""
    cores = mt.usable_cores()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def probe(work_dir: str | Path, blas: str = "openblas") -> Toolchain:
    nvcc = find_nvcc()
    cxx = mt.find_cxx()
    existing = Path(work_dir).resolve()
    while not existing.exists() and existing != existing.parent:  # the folder may not be made yet
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = 0
    return Toolchain(
        nvcc=nvcc,
        nvcc_version=nvcc_release(nvcc) if nvcc else None,
        cxx=cxx,
        gcc=mt.gcc_version(cxx),
        blas_ok=bool(cxx) and mt.blas_header_found(cxx, blas),
        gpus=gpus(),
        free_disk_bytes=free,
        mem_available_bytes=mt.mem_available_bytes(),
        cores=usable_cores(),
    )


def archs_for(gpu_list: tuple[Gpu, ...]) -> str | None:
    """TORCH_CUDA_ARCH_LIST for the GPUs present ("6.0", "7.5", ...); None without a GPU."""
    caps = sorted({g.capability for g in gpu_list}, key=lambda c: tuple(int(x) for x in c.split(".")))
    return ";".join(caps) or None


def build_problems(tool: Toolchain, *, torch_cuda: str, cpu_only: bool, blas: str = "openblas") -> list[str]:
    """What stops a MinkowskiEngine build here, each with the ways out; empty when a build can start."""
    problems = []
    if not cpu_only:
        want = torch_cuda.split(".")[0]
        ways = (
            f"on a Kaggle GPU notebook the CUDA {want}.x toolkit is at /usr/local/cuda: `export "
            f"CUDA_HOME=/usr/local/cuda` (os.environ['CUDA_HOME'] in the notebook); elsewhere install a CUDA {want}.x "
            f"toolkit and set CUDA_HOME (pip's nvidia-cuda-nvcc-cu{want} has no nvcc); or attach a wheelhouse with a "
            "prebuilt wheel (--wheelhouse DIR, made by --make-wheelhouse), or build without CUDA with --cpu-only"
        )
        if tool.nvcc is None:
            problems.append(f"no nvcc found ($CUDA_HOME, PATH, /usr/local/cuda) for torch's CUDA {torch_cuda}: {ways}")
        elif tool.nvcc_version is None:
            problems.append(f"{tool.nvcc} --version does not name its CUDA release: {ways}")
        elif tool.nvcc_version.split(".")[0] != want:
            problems.append(
                f"{tool.nvcc} is CUDA {tool.nvcc_version} but torch is built with CUDA {torch_cuda}, and torch "
                f"refuses to build extensions with another CUDA major: {ways}"
            )
    if tool.cxx is None:
        problems.append("no C++ compiler ($CXX, c++, g++): install g++, or give a prebuilt wheel with --wheelhouse")
    elif not tool.blas_ok:
        problems.append(f"the compiler cannot include the {blas} header: {mt.blas_fix_hint(blas)}")
    if tool.free_disk_bytes < mt.MIN_FREE_BYTES:
        problems.append(
            f"only {tool.free_disk_bytes / GIB:.1f} GiB free disk; a build needs {mt.MIN_FREE_BYTES / GIB:.0f} GiB"
        )
    if tool.mem_available_bytes is not None and tool.mem_available_bytes < mt.BYTES_PER_JOB:
        problems.append(
            f"only {tool.mem_available_bytes / GIB:.1f} GiB memory available; one compile job needs about "
            f"{mt.BYTES_PER_JOB / GIB:.1f} GiB"
        )
    return problems
