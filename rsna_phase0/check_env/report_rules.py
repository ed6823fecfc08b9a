"""This machine against another machine's report (`check-env --against`): field by field, same statuses.

Both reports are flattened to {field: text} with the field names of the spec table; a difference is a MISMATCH,
a warning or info by the same rules as against the spec. This machine's own consistency (MinkowskiEngine compiled
against the running torch, and running) is checked too.
"""

from __future__ import annotations

from rsna_phase0.check_env.facts import COULD_NOT_COLLECT, is_failed
from rsna_phase0.check_env.parity import (
    BUILD_MINKOWSKI,
    CPU,
    INFO,
    MISMATCH,
    OK,
    WARNING,
    Row,
    gpu_text,
    minkowski_cuda_text,
    show,
    source_text,
    torch_cuda_of,
)
from rsna_phase0.check_env.spec_rules import minkowski_self_rows
from rsna_phase0.core.versions import public_version

# Severity of a difference between two machines, by field (prefixes for the per-item fields).
MUST_FIELDS = (
    "torch",
    "torch CUDA build",
    "cuDNN",
    "package ",
    "MinkowskiEngine",
    "MinkowskiEngine source",
    "MinkowskiEngine compiled against torch",
    "MinkowskiEngine compiled against CUDA",
    "MinkowskiEngine compiled for Python",
    "MinkowskiEngine CUDA support",
)
INFO_FIELDS = ("platform", "MinkowskiEngine fixes", "MinkowskiEngine built at")


def severity(name: str) -> str:
    if name in MUST_FIELDS or name.startswith("package "):
        return MISMATCH
    return INFO if name in INFO_FIELDS else WARNING


def facts(probes: dict) -> dict[str, str]:
    """Flatten a report's probes to {field: text}: the values compared between two machines."""
    out: dict[str, str] = {}
    py = probes.get("python", {})
    out["python"] = py.get("minor") or show(py)
    out["platform"] = py.get("platform") or show(py)
    torch = probes.get("torch", {})
    if is_failed(torch):
        out["torch"] = show(torch)
    else:
        out["torch"] = public_version(torch.get("version", "?"))
        out["torch CUDA build"] = torch_cuda_of(torch)
        out["cuDNN"] = show(torch.get("cudnn"))
        for gpu in torch.get("gpus", []):
            out[f"GPU {gpu['index']}"] = gpu_text(gpu)
    smi = probes.get("nvidia_smi", {})
    out["NVIDIA driver"] = smi.get("driver") or show(smi)
    nvcc = probes.get("nvcc", {})
    out["nvcc"] = nvcc.get("version") or show(nvcc)
    for name, version in probes.get("packages", {}).items():
        out[f"package {name}"] = version or "not installed"
    for name, version in probes.get("dev_packages", {}).items():
        out[f"dev package {name}"] = version or "not installed"
    me = probes.get("minkowski", {})
    if is_failed(me):
        out["MinkowskiEngine"] = show(me)
    elif not me.get("installed"):
        out["MinkowskiEngine"] = "not installed"
    else:
        record = me.get("build") or {}
        out["MinkowskiEngine"] = me.get("version", "?")
        out["MinkowskiEngine source"] = source_text(record)
        out["MinkowskiEngine compiled against torch"] = record.get("torch") or "unknown"
        out["MinkowskiEngine compiled against CUDA"] = (record.get("torch_cuda") or CPU) if record else "unknown"
        out["MinkowskiEngine compiled for Python"] = record.get("python") or "unknown"
        out["MinkowskiEngine CUDA support"] = minkowski_cuda_text(me)
        out["MinkowskiEngine archs"] = show(record.get("cuda_archs")) if record else "unknown"
        out["MinkowskiEngine nvcc"] = show(record.get("nvcc")) if record else "unknown"
        out["MinkowskiEngine BLAS"] = show(record.get("blas")) if record else "unknown"
        out["MinkowskiEngine fixes"] = show(record.get("fixes")) if record else "unknown"
    return out


SELF_FIELDS = (
    "MinkowskiEngine compiled against torch",
    "MinkowskiEngine compiled against CUDA",
    "MinkowskiEngine compiled for Python",
)


def index_url_for(cuda: str) -> str:
    return f"https://download.pytorch.org/whl/{'cpu' if cuda == CPU else 'cu' + cuda.replace('.', '')}"


def against_fix(name: str, theirs: dict[str, str]) -> str:
    if name in ("torch", "torch CUDA build", "cuDNN") and "torch CUDA build" in theirs:
        cuda = theirs["torch CUDA build"]
        return f"pip install --force-reinstall torch=={theirs.get('torch')} --index-url {index_url_for(cuda)}"
    if name.startswith("package ") or name.startswith("dev package "):
        package, version = name.split(" ")[-1], theirs[name]
        return f"pip install {package}=={version}" if version != "not installed" else f"pip uninstall {package}"
    if name.startswith("MinkowskiEngine"):
        return BUILD_MINKOWSKI
    return ""


def compare_with_report(probes: dict, other: dict) -> list[Row]:
    """Field by field against another machine's probes; a field either side could not collect cannot be equal."""
    mine, theirs = facts(probes), facts(other)
    rows = []
    for name in list(dict.fromkeys([*theirs, *mine])):
        if name in SELF_FIELDS:
            continue  # compared against this machine's running torch below, which is what matters
        expected, found = theirs.get(name, "absent"), mine.get(name, "absent")
        unknown = COULD_NOT_COLLECT in expected or COULD_NOT_COLLECT in found
        status = OK if expected == found and not unknown else severity(name)
        rows.append(Row(name, expected, found, status, "" if status in (OK, INFO) else against_fix(name, theirs)))
    return rows + minkowski_self_rows(probes)
