"""Parity rules of check-env, with probe results injected so that every status and scenario is covered."""

from __future__ import annotations

import copy
import json

import pytest

from rsna_phase0.check_env import check, facts, parity
from rsna_phase0.check_env.check import EnvironmentMismatch, render_table, require_parity, run_check
from rsna_phase0.check_env.parity import INFO, MISMATCH, OK, WARNING
from rsna_phase0.check_env.report_rules import compare_with_report
from rsna_phase0.check_env.spec import load_spec
from rsna_phase0.core.archs import arch_covers

REFERENCE = load_spec(facts.HERE.parents[1] / "env" / "reference.toml")


def cpu_spec_file(tmp_path, torch_version="2.13.0"):
    """The CPU stand-in convention: a copy of env/reference.toml with [torch] cuda = "cpu"."""
    lines = []
    section = None
    for line in REFERENCE.path.read_text().splitlines():
        section = line.strip("[] ") if line.startswith("[") else section
        if section == "torch" and line.startswith("version ="):
            line = f'version = "{torch_version}"'
        elif section == "torch" and line.startswith("cuda ="):
            line = 'cuda = "cpu"'
        elif section == "torch" and line.startswith("index_url ="):
            line = 'index_url = "https://download.pytorch.org/whl/cpu"'
        lines.append(line)
    path = tmp_path / "cpu_reference.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def reference_probes(spec=REFERENCE, gpus=(("Tesla T4", "7.5"), ("Tesla T4", "7.5"))) -> dict:
    """What a machine exactly matching `spec` reports (a Kaggle T4x2 for the reference spec)."""
    cpu = spec.torch_cuda == "cpu"
    local = "cpu" if cpu else "cu" + spec.torch_cuda.replace(".", "")
    torch_version = f"{spec.torch_version}+{local}"
    gpu_list = (
        []
        if cpu
        else [dict(index=i, name=n, capability=c, memory_gib=14.7, sm_count=40) for i, (n, c) in enumerate(gpus)]
    )
    return {
        "python": {
            "version": f"{spec.python_minor}.7",
            "minor": spec.python_minor,
            "platform": "Linux-x86_64",
            "kaggle": True,
        },
        "packages": dict(spec.packages),
        "dev_packages": dict(spec.dev_packages),
        "torch": {
            "version": torch_version,
            "cuda": None if cpu else spec.torch_cuda,
            "cudnn": None if cpu else spec.cudnn,
            "cuda_available": bool(gpu_list),
            "arch_list": [] if cpu else ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
            "gpus": gpu_list,
        },
        "nvidia_smi": facts.failed("nvidia-smi not on PATH") if cpu else {"driver": "550.54.15", "gpus": []},
        "nvcc": facts.failed("nvcc not found") if cpu else {"version": spec.cuda_toolkit, "full": "12.1.105"},
        "minkowski": {
            "installed": True,
            "version": spec.minkowski.version,
            "build": {
                "schema": 1,
                "me_version": spec.minkowski.version,
                "source": {"kind": "git", "id": spec.minkowski.commit, "url": spec.minkowski.git_url},
                "fixes": ["collections_abc"],
                "python": spec.python_minor,
                "torch": torch_version,
                "torch_cuda": None if cpu else spec.torch_cuda,
                "nvcc": None if cpu else spec.cuda_toolkit,
                "cuda_archs": None if cpu else spec.minkowski.cuda_archs,
                "cpu_only": cpu,
                "blas": spec.minkowski.blas,
                "built_at": "2026-11-01T10:00:00+00:00",
            },
            "runtime": {
                "import": "ok",
                "cuda": not cpu,
                "conv": {"cpu": "ok", **{f"cuda:{g['index']}": "ok" for g in gpu_list}},
            },
        },
    }


def rows_by_field(result):
    return {r.field: r for r in result.rows}


def statuses(result):
    return {s for s in (r.status for r in result.rows)}


def test_reference_machine_is_at_parity():
    result = run_check(spec=REFERENCE, collected=reference_probes())
    assert result.exit_code == 0, render_table(result)
    assert statuses(result) == {OK, INFO}
    rows = rows_by_field(result)
    assert rows["torch"].found == "2.4.0+cu121" and rows["torch"].status == OK  # release compared, local tag apart
    assert rows["GPU 1: MinkowskiEngine kernels"].status == OK
    assert rows["sparse conv on cuda:1"].status == OK
    assert rows["platform"].status == INFO
    assert "PARITY" in render_table(result)


def test_pip_upgraded_torch_after_the_build_is_caught():
    """The failure the users hit: torch 2.4.0 -> 2.8.0+cu128 by pip after MinkowskiEngine was compiled."""
    probed = reference_probes()
    probed["torch"].update(version="2.8.0+cu128", cuda="12.8", cudnn=91002)
    result = run_check(spec=REFERENCE, collected=probed)
    rows = rows_by_field(result)
    assert result.exit_code == 1
    assert rows["torch"].status == MISMATCH
    assert "pip install torch==2.4.0 --index-url https://download.pytorch.org/whl/cu121" in rows["torch"].fix
    drift = rows["MinkowskiEngine compiled against torch"]
    assert (drift.status, drift.expected, drift.found) == (MISMATCH, "2.8.0+cu128", "2.4.0+cu121")
    assert "rebuild MinkowskiEngine: it was compiled against torch 2.4.0+cu121, running 2.8.0+cu128" in drift.fix
    assert drift.fix.endswith(parity.BUILD_MINKOWSKI)
    assert rows["MinkowskiEngine compiled against CUDA"].status == MISMATCH
    # The small sparse test still passes, as it did for the users: only the build record catches the drift.
    assert rows["sparse conv on cuda:0"].status == OK


def test_extension_built_against_another_torch_while_torch_matches_spec():
    probed = reference_probes()
    probed["minkowski"]["build"].update(torch="2.3.1+cu121")
    rows = rows_by_field(run_check(spec=REFERENCE, collected=probed))
    assert rows["torch"].status == OK
    assert rows["MinkowskiEngine compiled against torch"].status == MISMATCH
    assert (
        "compiled against torch 2.3.1+cu121, running 2.4.0+cu121" in rows["MinkowskiEngine compiled against torch"].fix
    )


@pytest.mark.parametrize(
    ("change", "field", "fix_part"),
    [
        (
            lambda p: p["torch"].update(version="2.4.0+cpu", cuda=None),
            "torch CUDA build",
            "--force-reinstall torch==2.4.0",
        ),
        (lambda p: p["torch"].update(cudnn=90101), "cuDNN", "--force-reinstall torch==2.4.0"),
        (lambda p: p["packages"].update(numpy="2.1.0"), "package numpy", "pip install numpy==1.26.4"),
        (lambda p: p["packages"].update(nibabel=None), "package nibabel", "pip install nibabel==5.2.1"),
        (lambda p: p["minkowski"].update(installed=False), "MinkowskiEngine", "build_minkowski.py"),
        (lambda p: p["minkowski"].update(version="0.5.3"), "MinkowskiEngine", "build_minkowski.py"),
        (lambda p: p["minkowski"].update(build=None), "MinkowskiEngine build record", "build_minkowski.py"),
        (
            lambda p: p["minkowski"]["build"]["source"].update(id="0" * 40),
            "MinkowskiEngine source",
            "build_minkowski.py",
        ),
        (
            lambda p: p["minkowski"]["build"]["source"].update(kind="local"),
            "MinkowskiEngine source",
            "build_minkowski.py",
        ),
        (lambda p: p["minkowski"]["build"].update(python="3.11"), "MinkowskiEngine compiled for Python", "rebuild"),
        (lambda p: p["minkowski"]["runtime"].update(cuda=False), "MinkowskiEngine CUDA support", "build_minkowski.py"),
        (
            lambda p: p["minkowski"].update(runtime={"import": "failed: ImportError: undefined symbol _ZN3c10"}),
            "MinkowskiEngine import",
            "build_minkowski.py",
        ),
        (
            lambda p: p["minkowski"]["runtime"]["conv"].update({"cuda:1": "failed: wrong"}),
            "sparse conv on cuda:1",
            "build",
        ),
        (
            lambda p: p["minkowski"]["runtime"]["conv"].update(crash="failed: probe_minkowski.py killed by SIGSEGV"),
            "MinkowskiEngine run",
            "build_minkowski.py",
        ),
        (
            lambda p: p["minkowski"].update(runtime=facts.failed("could not collect: timed out after 60 s")),
            "MinkowskiEngine import",
            "build_minkowski.py",
        ),
    ],
)
def test_every_must_be_identical_field_is_a_mismatch_with_a_fix(change, field, fix_part):
    probed = reference_probes()
    change(probed)
    result = run_check(spec=REFERENCE, collected=probed)
    row = rows_by_field(result)[field]
    assert row.status == MISMATCH, render_table(result)
    assert fix_part in row.fix
    assert result.exit_code == 1
    assert row.fix.split("  (")[0] in render_table(result)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: (p["python"].update(minor="3.11"), p["minkowski"]["build"].update(python="3.11")), "python"),
        (lambda p: p["nvidia_smi"].update(driver="470.82.01"), "NVIDIA driver"),
        (
            lambda p: p.update(nvidia_smi=facts.failed("could not collect: nvidia-smi timed out after 10 s")),
            "NVIDIA driver",
        ),
        (lambda p: p["torch"]["gpus"][0].update(name="RTX 5090", capability="12.0"), "GPU 0"),
        (lambda p: p["torch"].update(arch_list=["sm_80", "sm_90"]), "GPU 0: torch kernels"),
        (lambda p: p["minkowski"]["build"].update(cuda_archs="8.6"), "GPU 0: MinkowskiEngine kernels"),
        (lambda p: p["minkowski"]["build"].update(cuda_archs="7.5;8.6"), "MinkowskiEngine archs"),
        (lambda p: p["minkowski"]["build"].update(nvcc="12.4"), "MinkowskiEngine nvcc"),
        (lambda p: p["minkowski"]["build"].update(blas="mkl"), "MinkowskiEngine BLAS"),
        (lambda p: p.update(nvcc={"version": "13.0", "full": "13.0.88"}), "nvcc"),
        (lambda p: p.update(nvcc=facts.failed("nvcc not found")), "nvcc"),
        (lambda p: p["dev_packages"].update(ruff="0.17.6"), "dev package ruff"),
        (lambda p: p["torch"].update(gpus=[], cuda_available=False), "CUDA GPU"),
    ],
)
def test_user_chosen_severity_is_a_warning_and_strict_fails_it(change, field):
    probed = reference_probes()
    change(probed)
    lenient = run_check(spec=REFERENCE, collected=probed)
    assert rows_by_field(lenient)[field].status == WARNING, render_table(lenient)
    assert MISMATCH not in statuses(lenient)
    assert lenient.exit_code == 0
    strict = run_check(spec=REFERENCE, collected=probed, strict=True)
    assert strict.exit_code == 1
    assert "--strict" in render_table(strict)


def test_pypi_sdist_of_the_same_release_is_a_warning_other_sdists_a_mismatch():
    probed = reference_probes()
    probed["minkowski"]["build"]["source"] = {"kind": "sdist", "id": REFERENCE.minkowski.sdist_sha256, "url": "x"}
    assert rows_by_field(run_check(spec=REFERENCE, collected=probed))["MinkowskiEngine source"].status == WARNING
    probed["minkowski"]["build"]["source"]["id"] = "f" * 64
    assert rows_by_field(run_check(spec=REFERENCE, collected=probed))["MinkowskiEngine source"].status == MISMATCH


def test_driver_new_enough_for_the_cuda_major_is_ok():
    probed = reference_probes()
    probed["nvidia_smi"]["driver"] = "525.60.13"
    assert rows_by_field(run_check(spec=REFERENCE, collected=probed))["NVIDIA driver"].status == OK
    probed["nvidia_smi"]["driver"] = "525.60.12"
    assert rows_by_field(run_check(spec=REFERENCE, collected=probed))["NVIDIA driver"].status == WARNING


def test_cpu_stand_in_spec_reports_torch_parity_and_gpu_rows_as_info(tmp_path):
    spec = load_spec(cpu_spec_file(tmp_path))
    probed = reference_probes(spec)
    result = run_check(spec=spec, collected=probed)
    rows = rows_by_field(result)
    assert result.exit_code == 0, render_table(result)
    assert rows["torch"].status == OK and rows["torch CUDA build"].status == OK
    for field in ("cuDNN", "NVIDIA driver", "CUDA GPU", "nvcc", "MinkowskiEngine archs", "MinkowskiEngine nvcc"):
        assert rows[field].status == INFO, field
    assert rows["MinkowskiEngine CUDA support"].status == OK
    # A CUDA torch where the stand-in expects a CPU one is still a mismatch, fixed from the CPU index.
    probed["torch"].update(version="2.13.0+cu130", cuda="13.0")
    row = rows_by_field(run_check(spec=spec, collected=probed))["torch CUDA build"]
    assert row.status == MISMATCH
    assert "--force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in row.fix
    assert "build_minkowski.py --cpu-only" in row.fix


def dev_machine_probes() -> dict:
    """A CPU development machine set up by `make setup`: the reference spec's [dev_torch], MinkowskiEngine CPU-only
    compiled against it from the PyPI sdist, no NVIDIA driver."""
    dev = REFERENCE.dev_torch
    probed = reference_probes(load_spec_like_cpu(dev.version))
    probed["minkowski"]["build"]["source"] = {"kind": "sdist", "id": REFERENCE.minkowski.sdist_sha256}
    return probed


def load_spec_like_cpu(version):
    import dataclasses

    return dataclasses.replace(REFERENCE, torch_version=version, torch_cuda="cpu")


def test_declared_dev_stand_in_is_said_plainly_with_exit_3():
    assert REFERENCE.dev_torch is not None, "env/reference.toml declares no [dev_torch]"
    result = run_check(spec=REFERENCE, collected=dev_machine_probes())
    rows, table = rows_by_field(result), render_table(result)
    assert result.exit_code == parity.EXIT_STAND_IN == 3, table
    assert rows["torch"].status == rows["torch CUDA build"].status == parity.STAND_IN
    assert (rows["torch"].expected, rows["torch"].found) == ("2.4.0", f"{REFERENCE.dev_torch.version}+cpu")
    # judged as a CPU machine: no CUDA rows fail, MinkowskiEngine must be CPU-only and built against the stand-in
    assert rows["MinkowskiEngine CUDA support"].status == OK and rows["nvcc"].status == INFO
    assert rows["MinkowskiEngine compiled against torch"].status == OK
    assert "development stand-in (expected on a CPU dev machine)" in table
    assert "MISMATCH" not in table and "NOT THE REFERENCE" not in table
    assert "pip install" not in table and "to fix:" not in table  # never replace torch under a compiled extension
    assert "rebuild it: python installers/build_minkowski.py --cpu-only" in table
    assert "make docker-build" in table and "installers/kaggle_setup.py" in table
    assert run_check(spec=REFERENCE, collected=dev_machine_probes(), strict=True).exit_code == 1  # a warning: sdist


def test_dev_stand_in_with_a_broken_extension_is_a_mismatch():
    probed = dev_machine_probes()
    probed["minkowski"]["build"]["torch"] = "2.12.0+cpu"
    result = run_check(spec=REFERENCE, collected=probed)
    rows = rows_by_field(result)
    assert result.exit_code == 1 and rows["torch"].status == parity.STAND_IN
    assert rows["MinkowskiEngine compiled against torch"].status == MISMATCH
    assert result.fixes == [
        "rebuild MinkowskiEngine: it was compiled against torch 2.12.0+cpu, running "
        f"{REFERENCE.dev_torch.version}+cpu: python installers/build_minkowski.py --cpu-only"
    ]


def test_other_cpu_torch_without_a_gpu_is_told_where_the_reference_runs():
    probed = dev_machine_probes()
    probed["torch"]["version"] = probed["minkowski"]["build"]["torch"] = "2.12.0+cpu"
    result = run_check(spec=REFERENCE, collected=probed)
    assert result.exit_code == 1
    fix = rows_by_field(result)["torch"].fix
    assert fix.startswith("this machine has no NVIDIA driver: the reference torch 2.4.0 (CUDA 12.1) comes with the")
    dev = REFERENCE.dev_torch
    assert f"pip install torch=={dev.version} --index-url {dev.index_url}" in fix
    assert "--index-url https://download.pytorch.org/whl/cu121" not in fix
    assert fix.endswith("(then rebuild MinkowskiEngine: python installers/build_minkowski.py --cpu-only)")


def test_torch_not_importable_is_exit_code_2():
    probed = reference_probes()
    probed["torch"] = facts.failed("import torch failed: ModuleNotFoundError: No module named 'torch'")
    result = run_check(spec=REFERENCE, collected=probed)
    assert result.exit_code == 2
    assert "No module named 'torch'" in result.problem
    assert "COULD NOT PROBE" in render_table(result)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ('{"schema": 1}', "no 'probes'"),
        ('{"schema": 9, "probes": {}}', "schema 9"),
    ],
)
def test_unusable_against_file_is_exit_code_2_naming_the_file(tmp_path, content, message):
    path = tmp_path / "other.json"
    if content is not None:
        path.write_text(content)
    result = run_check(spec=REFERENCE, against=path, collected=reference_probes())
    assert result.exit_code == 2
    assert str(path) in result.problem and message in result.problem


def test_against_another_machine_compares_field_by_field():
    docker, kaggle = reference_probes(gpus=(("RTX 4090", "8.9"),)), reference_probes()
    rows = {r.field: r for r in compare_with_report(docker, kaggle)}
    assert rows["package numpy"].status == OK
    assert rows["GPU 0"].status == WARNING  # different cards: the user's severity
    assert "GPU 1" in rows and rows["GPU 1"].found == "absent"
    kaggle["packages"]["numpy"] = "1.26.3"
    kaggle["minkowski"]["build"]["source"]["id"] = "a" * 40
    rows = {r.field: r for r in compare_with_report(docker, kaggle)}
    assert (rows["package numpy"].status, rows["package numpy"].fix) == (MISMATCH, "pip install numpy==1.26.3")
    assert rows["MinkowskiEngine source"].status == MISMATCH
    # This machine's own drift is checked in --against mode too.
    docker["minkowski"]["build"]["torch"] = "2.3.1+cu121"
    rows = {r.field: r for r in compare_with_report(docker, kaggle)}
    assert rows["MinkowskiEngine compiled against torch"].status == MISMATCH


def test_against_a_field_neither_side_could_collect_is_not_parity():
    mine, other = reference_probes(), reference_probes()
    for side in (mine, other):
        side["packages"]["numpy"] = "could not collect: broken dist-info"
    rows = {r.field: r for r in compare_with_report(mine, other)}
    assert rows["package numpy"].status == MISMATCH


def test_against_report_dict_and_exit_codes():
    other = {"schema": 1, "hostname": "kaggle", "probes": reference_probes()}
    mine = reference_probes()
    assert run_check(spec=REFERENCE, against=other, collected=mine).exit_code == 0
    mine["dev_packages"]["pytest"] = "8.3.4"
    assert run_check(spec=REFERENCE, against=other, collected=mine).exit_code == 0
    assert run_check(spec=REFERENCE, against=other, collected=mine, strict=True).exit_code == 1


def test_fixes_merge_plain_pins_into_one_command():
    probed = reference_probes()
    probed["packages"].update(numpy="2.0.0", tqdm="4.67.0")
    result = run_check(spec=REFERENCE, collected=probed)
    assert result.fixes == ["pip install numpy==1.26.4 tqdm==4.66.2"]


def test_report_carries_rows_and_is_json():
    result = run_check(spec=REFERENCE, collected=reference_probes())
    report = json.loads(json.dumps(result.report))
    assert report["schema"] == 1 and report["spec_path"] == str(REFERENCE.path)
    assert report["parity"]["exit_code"] == 0 and report["hostname"] and report["time"]


def test_require_parity_refuses_unless_allowed(monkeypatch):
    probed = reference_probes()
    probed["packages"]["numpy"] = "2.0.0"
    monkeypatch.setattr(facts, "collect", lambda *a, **k: copy.deepcopy(probed))
    monkeypatch.setattr(check, "load_spec", lambda path=None: REFERENCE)
    with pytest.raises(EnvironmentMismatch, match="pip install numpy==1.26.4"):
        require_parity()
    logged = []
    assert require_parity(allow_mismatch=True, log=logged.append).exit_code == 1
    assert "numpy" in logged[0]
    monkeypatch.setattr(facts, "collect", lambda *a, **k: dev_machine_probes())
    with pytest.raises(EnvironmentMismatch, match="development stand-in"):
        require_parity()
    assert require_parity(allow_mismatch=True, log=logged.append).exit_code == 3


@pytest.mark.parametrize(
    ("archs", "capability", "covered"),
    [
        (["sm_60", "sm_75"], "7.5", True),
        (["sm_80"], "8.6", True),  # a cubin runs on later minors of its major
        (["sm_86"], "8.0", False),
        (["sm_80", "compute_80"], "9.0", True),  # PTX JIT-compiles forward
        (["sm_80"], "9.0", False),
        ("6.0;7.0;7.5;8.0;8.6;8.9;9.0", "6.0", True),
        ("7.5;8.6+PTX", "12.0", True),
        ("7.5;8.6", "12.0", False),
        ("", "7.5", False),
    ],
)
def test_arch_coverage(archs, capability, covered):
    assert arch_covers(archs, capability) is covered
