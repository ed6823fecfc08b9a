"""What a MinkowskiEngine build would find here, probed before torch is installed: nvcc, compiler, BLAS, GPUs, room.

Standard library only. The build module checks the toolchain again against the installed torch right before it
compiles; this earlier look lets the plan say what will block a build (and the ways out) before any download.
Each probe has a timeout and never raises; `build_problems` turns what is missing into messages with the fix.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from installers.minkowski import toolchain as mt
from rsna_phase0.core.probes import find_nvcc, nvcc_release, run_command, usable_cores

GIB = 1 << 30
TORCH_DISK_BYTES = 8 * GIB  # torch + nvidia-*-cu12 wheels, downloaded and unpacked


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: str  # "7.5"


@dataclass(frozen=True)
class BuildOutlook:
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


def gpus() -> tuple[Gpu, ...]:
    result = run_command(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], timeout=20)
    found = []
    for line in (result.stdout if result.ok else "").splitlines():
        name, _, cap = line.rpartition(",")
        if re.fullmatch(r"\s*\d+\.\d+\s*", cap):
            found.append(Gpu(name.strip(), cap.strip()))
    return tuple(found)


def probe(work_dir: str | Path, blas: str = "openblas") -> BuildOutlook:
    nvcc = find_nvcc()
    cxx = mt.find_cxx()
    existing = Path(work_dir).resolve()
    while not existing.exists() and existing != existing.parent:  # the folder may not be made yet
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = 0
    return BuildOutlook(
        nvcc=nvcc,
        nvcc_version=nvcc_release(nvcc),
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


def build_problems(tool: BuildOutlook, *, torch_cuda: str, cpu_only: bool, blas: str = "openblas") -> list[str]:
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
