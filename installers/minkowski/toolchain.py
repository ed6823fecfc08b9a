"""Probe the toolchain a MinkowskiEngine build will use, and check it before spending minutes compiling.

Every probe runs with a timeout and returns a value or None; `check_toolchain` turns what is missing into one
BuildError naming the fix. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from installers.minkowski.errors import BuildError
from rsna_phase0.core.probes import find_nvcc, nvcc_release, run_command
from rsna_phase0.core.versions import version_tuple

# One compile job of MinkowskiEngine's larger translation units peaks at about 2.5 GB (cc1plus / cicc).
BYTES_PER_JOB = 2_500_000_000
# A build tree plus objects of a CUDA build for several archs stays under this; checked before copying.
MIN_FREE_BYTES = 3 * 1024**3
PROBE_TIMEOUT_S = 120

_TORCH_PROBE = r"""
import json, sys
out = {"python": "%d.%d" % sys.version_info[:2], "python_tag": "cp%d%d" % sys.version_info[:2]}
try:
    import torch
except Exception as exc:
    out["torch_error"] = repr(exc)
else:
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["gpu_archs"] = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}) if out["cuda_available"] else []
    try:
        from torch.utils.cpp_extension import CUDA_HOME
        out["cuda_home"] = CUDA_HOME
    except Exception:
        out["cuda_home"] = None
print("RSNA_PROBE " + json.dumps(out))
"""


@dataclass(frozen=True)
class Toolchain:
    """What the target Python, its torch and this machine's compilers are (measured right before a build)."""

    python_exe: str
    python: str  # "3.11"
    python_tag: str  # "cp311"
    torch: str  # "2.13.0+cpu"
    torch_cuda: str | None  # torch.version.cuda, None for a CPU build of torch
    cuda_available: bool
    gpu_archs: tuple[str, ...]  # compute capabilities of the visible GPUs, e.g. ("7.5",)
    cuda_home: str | None
    nvcc: str | None  # "13.0", None when no nvcc was found
    cxx: str | None  # the C++ compiler's path
    gcc: str | None  # its version when it is GCC, e.g. "12.2.0"

    def as_dict(self) -> dict:
        return asdict(self)


def probe_python(python: str) -> dict:
    """Python version and torch facts of the target interpreter (a subprocess: it may not be this one)."""
    proc = run_command([python, "-c", _TORCH_PROBE], timeout=PROBE_TIMEOUT_S)
    if proc.returncode is None:
        raise BuildError(f"cannot run the target Python {python!r}: check the path (--python / sys.executable)")
    for line in proc.stdout.splitlines():
        if line.startswith("RSNA_PROBE "):
            facts = json.loads(line[len("RSNA_PROBE ") :])
            break
    else:
        raise BuildError(f"probing {python} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    if "torch_error" in facts:
        raise BuildError(
            f"torch is not importable in {python} ({facts['torch_error']}): MinkowskiEngine compiles against the "
            "installed torch, so install the reference torch first (see env/reference.toml [torch])"
        )
    return facts


def nvcc_version(cuda_home: str | None) -> str | None:
    """'13.0' from `nvcc --version` in CUDA_HOME (torch's, so the one its extension builder uses), else the one
    core.probes.find_nvcc finds; None when there is no nvcc."""
    if cuda_home and (release := nvcc_release(str(Path(cuda_home) / "bin" / "nvcc"))):
        return release
    return nvcc_release(find_nvcc())


def find_cxx() -> str | None:
    """The C++ compiler setuptools will use: $CXX, else c++ / g++ on PATH."""
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env.split()[0]) or None
    return shutil.which("c++") or shutil.which("g++")


def gcc_version(cxx: str | None) -> str | None:
    if not cxx:
        return None
    proc = run_command([cxx, "--version"], timeout=30)
    if not proc.ok or "clang" in proc.stdout.lower():
        return None
    version = run_command([cxx, "-dumpfullversion", "-dumpversion"], timeout=30)
    return version.stdout.strip() if version.ok else None


def probe(python: str) -> Toolchain:
    facts = probe_python(python)
    cxx = find_cxx()
    cuda_home = facts.get("cuda_home") or os.environ.get("CUDA_HOME")
    return Toolchain(
        python_exe=python,
        python=facts["python"],
        python_tag=facts["python_tag"],
        torch=facts["torch"],
        torch_cuda=facts.get("torch_cuda"),
        cuda_available=bool(facts.get("cuda_available")),
        gpu_archs=tuple(facts.get("gpu_archs") or ()),
        cuda_home=cuda_home,
        nvcc=nvcc_version(cuda_home),
        cxx=cxx,
        gcc=gcc_version(cxx),
    )


def blas_header_found(cxx: str, blas: str) -> bool:
    """Whether the compiler finds the BLAS C header on its default include path."""
    header = "mkl.h" if blas == "mkl" else "cblas.h"
    try:
        proc = subprocess.run(
            [cxx, "-E", "-x", "c++", "-"],
            input=f"#include <{header}>\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def blas_fix_hint(blas: str) -> str:
    if blas == "mkl":
        return "install MKL headers (conda: `conda install mkl-include mkl`; pip: `pip install mkl-devel`)"
    return (
        "install the OpenBLAS headers: Debian/Ubuntu `apt-get install libopenblas-dev`, "
        "Fedora/RHEL `dnf install openblas-devel`, conda `conda install -c conda-forge openblas`"
    )


def check_toolchain(tc: Toolchain, *, cpu_only: bool, blas: str) -> None:
    """Raise one BuildError naming the fix for the first thing that would make the compile fail."""
    if tc.cxx is None:
        raise BuildError(
            "no C++ compiler found ($CXX, c++, g++): install one (Debian/Ubuntu `apt-get install g++`, "
            "conda `conda install -c conda-forge gxx_linux-64`)"
        )
    if not blas_header_found(tc.cxx, blas):
        raise BuildError(
            f"the BLAS header for --blas={blas} is missing ({tc.cxx} cannot include it): {blas_fix_hint(blas)}"
        )
    if cpu_only:
        return
    if tc.torch_cuda is None:
        raise BuildError(
            f"torch {tc.torch} in {tc.python_exe} is a CPU-only build, so a CUDA MinkowskiEngine cannot be built: "
            "install the CUDA build of torch (env/reference.toml [torch] index_url) or pass --cpu-only"
        )
    if tc.nvcc is None:
        raise BuildError(
            f"no nvcc found (CUDA_HOME={tc.cuda_home}): install the CUDA {tc.torch_cuda} toolkit and set CUDA_HOME, "
            "or pass --cpu-only"
        )
    if version_tuple(tc.nvcc)[:1] != version_tuple(tc.torch_cuda)[:1]:
        raise BuildError(
            f"nvcc is CUDA {tc.nvcc} but torch {tc.torch} was built with CUDA {tc.torch_cuda}: their major versions "
            f"must match (torch's cpp_extension refuses otherwise). Install the CUDA {tc.torch_cuda.split('.')[0]}.x "
            "toolkit and point CUDA_HOME at it, or install the torch build for your nvcc"
        )


def mem_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def size_max_jobs(mem_available_bytes: int | None, cores: int | None) -> int:
    """Parallel compile jobs that fit: one per core, at most one per ~2.5 GB of free memory, at least one.

    Too many jobs get cc1plus killed for memory (ME #228); no limit at all can hang a notebook (ME #364).
    """
    cores = max(1, cores or 1)
    if mem_available_bytes is None:
        return max(1, min(cores, 2))
    return max(1, min(cores, mem_available_bytes // BYTES_PER_JOB))


def check_free_space(path: Path, needed: int = MIN_FREE_BYTES) -> None:
    path = Path(path)
    probe_path = path
    while not probe_path.exists() and probe_path != probe_path.parent:
        probe_path = probe_path.parent
    free = shutil.disk_usage(probe_path).free
    if free < needed:
        raise BuildError(
            f"only {free / 1024**3:.1f} GiB free at {probe_path}; building MinkowskiEngine needs about "
            f"{needed / 1024**3:.0f} GiB: free some space, or set TMPDIR / the wheel cache (build_minkowski.py --cache, kaggle_setup.py --me-cache) to a larger disk"
        )
