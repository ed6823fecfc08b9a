"""This machine against the spec: one function per area, each returning rows of the check-env table.

MUST be identical (MISMATCH): torch release and CUDA build, cuDNN, every [packages] pin, MinkowskiEngine version,
source and the torch/CUDA/Python it was compiled against, and that it imports and convolves correctly. A severity
the user chooses (warning; --strict fails it): Python minor, NVIDIA driver, GPU model and arch coverage, nvcc,
[dev_packages], how MinkowskiEngine was built. With [torch] cuda = "cpu" the CUDA-only rows are info.
A CPU torch of the spec's [dev_torch] release is the declared development stand-in: its torch rows say so (exit 3)
and every other row is judged as for a CPU spec with that torch, so MinkowskiEngine must match the stand-in.
"""

from __future__ import annotations

import dataclasses

from rsna_phase0.check_env.facts import is_failed
from rsna_phase0.check_env.parity import (
    BUILD_MINKOWSKI,
    CPU,
    INFO,
    MISMATCH,
    OK,
    STAND_IN,
    WARNING,
    Row,
    gpu_text,
    minkowski_cuda_text,
    minkowski_fix,
    reference_elsewhere,
    show,
    source_text,
    torch_cuda_of,
    torch_fix,
)
from rsna_phase0.check_env.spec import Spec
from rsna_phase0.core.archs import arch_covers, parse_archs
from rsna_phase0.core.versions import public_version, version_tuple


def python_rows(probes: dict, spec: Spec) -> list[Row]:
    py = probes.get("python", {})
    found = {"python": py.get("minor") or show(py), "platform": py.get("platform") or show(py)}
    status = OK if found["python"] == spec.python_minor else WARNING
    fix = "" if status == OK else f"use Python {spec.python_minor} (the Docker image and Kaggle run it)"
    return [
        Row("python", spec.python_minor, found["python"], status, fix),
        Row("platform", "-", found["platform"], INFO),
    ]


def stand_in_spec(probes: dict, spec: Spec) -> Spec | None:
    """The spec as a machine running the declared CPU stand-in sees it ([dev_torch] for [torch]), else None."""
    dev, torch = spec.dev_torch, probes.get("torch", {})
    if dev is None or spec.torch_cuda == CPU or is_failed(torch) or torch.get("cuda") is not None:
        return None
    if public_version(torch.get("version", "")) != dev.version:
        return None
    return dataclasses.replace(spec, torch_version=dev.version, torch_cuda=CPU, torch_index_url=dev.index_url)


def stand_in_rows(torch: dict, spec: Spec) -> list[Row]:
    """No fix on purpose: replacing torch under a compiled MinkowskiEngine breaks it, and the reference needs a GPU."""
    return [
        Row("torch", spec.torch_version, torch.get("version", "?"), STAND_IN),
        Row("torch CUDA build", spec.torch_cuda, CPU, STAND_IN),
        Row("cuDNN", "n/a (CPU stand-in)", "none" if torch.get("cudnn") is None else str(torch["cudnn"]), INFO),
    ]


def torch_fix_here(probes: dict, spec: Spec, *, force: bool = False) -> str:
    """The torch fix for this machine: without an NVIDIA driver the CUDA reference cannot run here at all."""
    has_driver = bool((probes.get("nvidia_smi") or {}).get("driver"))
    if spec.torch_cuda == CPU or has_driver or spec.dev_torch is None:
        return torch_fix(spec, force=force)
    dev = spec.dev_torch
    return (
        f"this machine has no NVIDIA driver: {reference_elsewhere(spec)}; for CPU development install the "
        f"declared stand-in: pip install torch=={dev.version} --index-url {dev.index_url}  (then rebuild "
        f"MinkowskiEngine: {minkowski_fix(dataclasses.replace(spec, torch_cuda=CPU))})"
    )


def torch_rows(probes: dict, spec: Spec) -> list[Row]:
    torch = probes.get("torch", {})
    if is_failed(torch):
        return [Row("torch", spec.torch_version, show(torch), MISMATCH, torch_fix_here(probes, spec))]
    found_version, found_cuda = torch.get("version", "?"), torch_cuda_of(torch)
    same_release, same_cuda = public_version(found_version) == spec.torch_version, found_cuda == spec.torch_cuda
    # One command fixes all three rows; with the right release pip thinks torch is satisfied: --force-reinstall.
    fix = torch_fix_here(probes, spec, force=same_release)
    cudnn = torch.get("cudnn")
    cudnn_found = "none" if cudnn is None else str(cudnn)
    rows = [
        Row("torch", spec.torch_version, found_version, *((OK, "") if same_release else (MISMATCH, fix))),
        Row("torch CUDA build", spec.torch_cuda, found_cuda, *((OK, "") if same_cuda else (MISMATCH, fix))),
    ]
    if spec.torch_cuda == CPU:
        rows.append(Row("cuDNN", "n/a (CPU torch)", cudnn_found, INFO))
    else:
        same_cudnn = cudnn == spec.cudnn  # cuDNN ships with the torch wheel (nvidia-cudnn-cu12)
        rows.append(Row("cuDNN", str(spec.cudnn), cudnn_found, *((OK, "") if same_cudnn else (MISMATCH, fix))))
    return rows


def gpu_rows(probes: dict, spec: Spec) -> list[Row]:
    torch, smi = probes.get("torch", {}), probes.get("nvidia_smi", {})
    cpu_spec = spec.torch_cuda == CPU
    record = (probes.get("minkowski") or {}).get("build") or {}
    rows = []
    driver = smi.get("driver")
    if cpu_spec:
        rows.append(Row("NVIDIA driver", "n/a (CPU torch)", driver or show(smi), INFO))
    else:
        minimum = spec.min_driver  # [driver] in the spec: the image's NVIDIA_REQUIRE_CUDA uses it too
        if driver is None:
            rows.append(Row("NVIDIA driver", f">= {minimum}", show(smi), WARNING, "install the NVIDIA driver"))
        else:
            too_old = minimum is not None and version_tuple(driver) < version_tuple(minimum)
            fix = f"update the NVIDIA driver to >= {minimum} (CUDA {spec.cuda_major}.x needs it)" if too_old else ""
            rows.append(Row("NVIDIA driver", f">= {minimum}", driver, WARNING if too_old else OK, fix))
    if is_failed(torch):
        return rows
    gpus = torch.get("gpus", [])
    if not gpus:
        why = torch.get("cuda_error") or "no CUDA GPU visible to torch"
        rows.append(
            Row("CUDA GPU", "n/a (CPU torch)" if cpu_spec else "at least one", why, INFO if cpu_spec else WARNING)
        )
        return rows
    reference_archs = spec.minkowski.cuda_archs
    for gpu in gpus:
        name = f"GPU {gpu['index']}"
        if "error" in gpu:
            rows.append(Row(name, "a working GPU", gpu_text(gpu), INFO if cpu_spec else WARNING))
            continue
        cap = gpu["capability"]
        if cpu_spec:
            rows.append(Row(name, "n/a (CPU torch)", gpu_text(gpu), INFO))
            continue
        in_reference = cap in reference_archs.split(";")
        rows.append(Row(name, f"sm in {reference_archs}", gpu_text(gpu), OK if in_reference else WARNING))
        covered = arch_covers(torch.get("arch_list", []), cap)
        rows.append(
            Row(
                f"{name}: torch kernels",
                f"cover sm {cap}",
                show(torch.get("arch_list")),
                OK if covered else WARNING,
                "" if covered else f"torch {torch.get('version')} has no kernels for sm {cap}: use another GPU",
            )
        )
        if record.get("cuda_archs"):
            covered = arch_covers(record["cuda_archs"], cap)
            fix = "" if covered else f"TORCH_CUDA_ARCH_LIST={reference_archs} {BUILD_MINKOWSKI}"
            rows.append(
                Row(
                    f"{name}: MinkowskiEngine kernels",
                    f"cover sm {cap}",
                    record["cuda_archs"],
                    OK if covered else WARNING,
                    fix,
                )
            )
    return rows


def nvcc_rows(nvcc: dict, spec: Spec) -> list[Row]:
    found = nvcc.get("version") or show(nvcc)
    if spec.torch_cuda == CPU:
        return [Row("nvcc", "n/a (CPU torch)", found, INFO)]
    status = OK if found == spec.cuda_toolkit else WARNING
    fix = (
        ""
        if status == OK
        else f"only to rebuild MinkowskiEngine: use CUDA toolkit {spec.cuda_toolkit} ({spec.docker_base})"
    )
    return [Row("nvcc", spec.cuda_toolkit, found, status, fix)]


def package_rows(probes: dict, spec: Spec) -> list[Row]:
    rows = []
    for kind, pins, failing in (("package", spec.packages, MISMATCH), ("dev package", spec.dev_packages, WARNING)):
        found_versions = probes.get(kind.replace(" ", "_") + "s", {})
        for name, pinned in pins.items():
            found = found_versions.get(name)
            status = OK if found == pinned else failing
            fix = "" if status == OK else f"pip install {name}=={pinned}"
            rows.append(Row(f"{kind} {name}", pinned, found or "not installed", status, fix))
    return rows


def source_row(record: dict, spec: Spec) -> Row:
    """The pinned source is the fork commit. A build from the PyPI sdist of the same release (its sha256 equal to
    the spec's) is a warning, not a MISMATCH: same 0.5.4 release, but not the fork's tree (the fork adds upstream
    master's later commits and CUDA 12 build fixes), so --strict refuses it. Anything else is a MISMATCH."""
    me = spec.minkowski
    source = record.get("source") or {}
    kind, ident = source.get("kind"), source.get("id")
    expected = f"git {me.commit}"
    if kind == "git" and ident == me.commit:
        return Row("MinkowskiEngine source", expected, f"git {ident}", OK)
    if kind == "sdist" and ident == me.sdist_sha256:
        return Row(
            "MinkowskiEngine source",
            expected,
            f"sdist {ident} (PyPI {me.version}, not the fork commit)",
            WARNING,
            "to build the fork commit: " + BUILD_MINKOWSKI,
        )
    return Row("MinkowskiEngine source", expected, source_text(record), MISMATCH, BUILD_MINKOWSKI)


def minkowski_spec_rows(probes: dict, spec: Spec) -> list[Row]:
    """MinkowskiEngine as installed against the spec: version, source, how it was built."""
    me, fix = probes.get("minkowski", {}), minkowski_fix(spec)
    cpu_spec = spec.torch_cuda == CPU
    if is_failed(me):
        return [Row("MinkowskiEngine", spec.minkowski.version, show(me), MISMATCH, fix)]
    if not me.get("installed"):
        return [Row("MinkowskiEngine", spec.minkowski.version, "not installed", MISMATCH, fix)]
    version = me.get("version")
    rows = [
        Row(
            "MinkowskiEngine",
            spec.minkowski.version,
            version,
            OK if version == spec.minkowski.version else MISMATCH,
            fix,
        )
    ]
    cuda = minkowski_cuda_text(me)
    if cpu_spec:
        rows.append(Row("MinkowskiEngine CUDA support", "no (CPU torch)", cuda, OK if cuda == "no" else INFO))
    else:
        cpu_torch = torch_cuda_of(probes.get("torch") or {}) == CPU
        cuda_fix = f"{fix}, after installing a CUDA torch (the torch row)" if cpu_torch else fix
        rows.append(Row("MinkowskiEngine CUDA support", "yes", cuda, OK if cuda == "yes" else MISMATCH, cuda_fix))
    record = me.get("build")
    if not record:
        why = me.get("build_problem") or "absent (not built by installers/build_minkowski.py)"
        rows.append(Row("MinkowskiEngine build record", "rsna_build.json", why, MISMATCH, fix))
        return rows
    rows.append(source_row(record, spec))
    for name, expected, found in (
        ("MinkowskiEngine nvcc", spec.cuda_toolkit, record.get("nvcc")),
        ("MinkowskiEngine archs", spec.minkowski.cuda_archs, record.get("cuda_archs")),
    ):
        if cpu_spec:
            rows.append(Row(name, "n/a (CPU torch)", show(found), INFO))
        else:
            same = (
                found is not None and parse_archs(found) == parse_archs(expected)
                if "archs" in name
                else found == expected
            )
            rows.append(Row(name, expected, show(found), OK if same else WARNING, "" if same else fix))
    blas = record.get("blas")
    rows.append(
        Row(
            "MinkowskiEngine BLAS", spec.minkowski.blas, show(blas), OK if blas == spec.minkowski.blas else WARNING, fix
        )
    )
    rows.append(Row("MinkowskiEngine fixes", "-", show(record.get("fixes")), INFO))
    rows.append(Row("MinkowskiEngine built at", "-", show(record.get("built_at")), INFO))
    return rows


# ---------------------------------------------------------------- this machine against itself (any reference)


def minkowski_self_rows(probes: dict, spec: Spec | None = None) -> list[Row]:
    """Was MinkowskiEngine compiled against the torch/CUDA/Python running now, and does it actually run?

    This is the check that would have caught the torch 2.4.0 -> 2.8.0 upgrade: small sparse tests kept passing.
    """
    me, torch, fix = probes.get("minkowski", {}), probes.get("torch", {}), minkowski_fix(spec)
    if is_failed(me) or not me.get("installed"):
        return []
    rows = []
    record = me.get("build")
    if record and not is_failed(torch):
        running_torch, running_cuda = torch.get("version", "?"), torch_cuda_of(torch)
        running_python = (probes.get("python") or {}).get("minor", "?")
        for name, built, running in (
            ("MinkowskiEngine compiled against torch", record.get("torch") or "unknown", running_torch),
            ("MinkowskiEngine compiled against CUDA", record.get("torch_cuda") or CPU, running_cuda),
            ("MinkowskiEngine compiled for Python", record.get("python") or "unknown", running_python),
        ):
            if built == running:
                rows.append(Row(name, running, built, OK))
            else:
                what = name.removeprefix("MinkowskiEngine compiled ")
                drift = f"rebuild MinkowskiEngine: it was compiled {what} {built}, running {running}: {fix}"
                rows.append(Row(name, running, built, MISMATCH, drift))
    runtime = me.get("runtime")
    if runtime is None:
        return rows
    if is_failed(runtime):
        return rows + [Row("MinkowskiEngine import", "ok", show(runtime), MISMATCH, fix)]
    rows.append(
        Row("MinkowskiEngine import", "ok", runtime["import"], OK if runtime["import"] == "ok" else MISMATCH, fix)
    )
    for device, outcome in (runtime.get("conv") or {}).items():
        label = "MinkowskiEngine run" if device == "crash" else f"sparse conv on {device}"
        rows.append(Row(label, "ok", outcome, OK if outcome == "ok" else MISMATCH, "" if outcome == "ok" else fix))
    return rows


def compare_with_spec(probes: dict, spec: Spec) -> list[Row]:
    dev_spec = stand_in_spec(probes, spec)
    if dev_spec is None:
        torch = torch_rows(probes, spec)
    else:  # the rest is judged against the stand-in: MinkowskiEngine must be built for it, CPU-only
        torch, spec = stand_in_rows(probes["torch"], spec), dev_spec
    return (
        python_rows(probes, spec)
        + torch
        + gpu_rows(probes, spec)
        + nvcc_rows(probes.get("nvcc", {}), spec)
        + package_rows(probes, spec)
        + minkowski_spec_rows(probes, spec)
        + minkowski_self_rows(probes, spec)
    )
