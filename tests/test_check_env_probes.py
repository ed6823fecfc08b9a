"""Probes: real ones on this machine, and fake commands that hang, crash or print odd output."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from rsna_phase0.check_env import facts as machine_facts
from rsna_phase0.check_env.facts import COULD_NOT_COLLECT
from rsna_phase0.core import probes as core_probes


def fake_executable(folder, name, body):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_a_command_that_hangs_is_killed_and_reported(tmp_path):
    # A wrapper whose child hangs: the whole process group must go, and the partial output is kept.
    slow = fake_executable(tmp_path, "slow", "echo started; sleep 60 & sleep 60")
    result = core_probes.run_command([str(slow)], timeout=0.5)
    assert result.returncode is None
    assert "timed out after 0.5 s" in result.error
    assert result.stdout == "started\n"


def test_a_missing_command_is_reported_not_raised(tmp_path):
    result = core_probes.run_command([str(tmp_path / "absent")])
    assert result.returncode is None and "could not start" in result.error


def test_slow_nvcc_yields_could_not_collect(tmp_path, monkeypatch):
    fake_executable(tmp_path / "bin", "nvcc", "sleep 60")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    facts = machine_facts.probe_nvcc(timeout=0.5)
    assert facts["error"].startswith(COULD_NOT_COLLECT) and "timed out" in facts["error"]


def test_nvcc_version_is_parsed(tmp_path, monkeypatch):
    fake_executable(
        tmp_path / "bin",
        "nvcc",
        "echo 'nvcc: NVIDIA (R) Cuda compiler driver'; echo 'Cuda compilation tools, release 12.1, V12.1.105'",
    )
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert machine_facts.probe_nvcc() == {"version": "12.1", "full": "12.1.105", "path": str(tmp_path / "bin" / "nvcc")}


def test_nvidia_smi_absent_slow_and_present(tmp_path, monkeypatch):
    sleep = shutil.which("sleep")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert machine_facts.probe_nvidia_smi() == {"error": "nvidia-smi not on PATH"}
    monkeypatch.setenv("PATH", str(tmp_path / "slow"))
    fake_executable(tmp_path / "slow", "nvidia-smi", f"exec {sleep} 60")
    assert "timed out" in machine_facts.probe_nvidia_smi(timeout=0.5)["error"]
    monkeypatch.setenv("PATH", str(tmp_path / "ok"))
    fake_executable(
        tmp_path / "ok", "nvidia-smi", "echo '550.54.15, Tesla T4, 15360'; echo '550.54.15, Tesla T4, 15360'"
    )
    facts = machine_facts.probe_nvidia_smi()
    assert facts["driver"] == "550.54.15" and [g["name"] for g in facts["gpus"]] == ["Tesla T4", "Tesla T4"]
    monkeypatch.setenv("PATH", str(tmp_path / "dead"))
    fake_executable(
        tmp_path / "dead", "nvidia-smi", "echo 'Unable to determine the device handle for GPU0' >&2; exit 15"
    )
    assert "exit code 15" in machine_facts.probe_nvidia_smi()["error"]


def fake_worker(tmp_path, monkeypatch, body):
    (tmp_path / "probe_minkowski.py").write_text(textwrap.dedent(body))
    monkeypatch.setattr(machine_facts, "HERE", tmp_path)


def test_minkowski_worker_crash_on_the_gpu_keeps_the_cpu_result(tmp_path, monkeypatch):
    fake_worker(
        tmp_path,
        monkeypatch,
        """
        import os, signal
        print('RSNA_PROBE {"step": "import", "ok": true, "version": "0.5.4", "cuda": true}', flush=True)
        print('RSNA_PROBE {"step": "cpu", "ok": true}', flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        """,
    )
    facts = machine_facts.probe_minkowski_runtime()
    assert facts["import"] == "ok" and facts["conv"]["cpu"] == "ok"
    assert "SIGSEGV" in facts["conv"]["crash"]


def test_minkowski_worker_hang_is_cut_by_the_timeout(tmp_path, monkeypatch):
    fake_worker(
        tmp_path,
        monkeypatch,
        """
        import time
        print('RSNA_PROBE {"step": "import", "ok": true, "version": "0.5.4", "cuda": true}', flush=True)
        time.sleep(60)
        """,
    )
    facts = machine_facts.probe_minkowski_runtime(timeout=2)
    assert facts["import"] == "ok" and "timed out after 2 s" in facts["conv"]["crash"]


def test_minkowski_worker_that_prints_nothing_could_not_collect(tmp_path, monkeypatch):
    fake_worker(tmp_path, monkeypatch, "raise SystemExit(3)")
    facts = machine_facts.probe_minkowski_runtime()
    assert machine_facts.is_failed(facts) and "exit code 3" in facts["error"]


def test_real_torch_probe_matches_the_installed_torch():
    facts = machine_facts.probe_torch()
    assert facts["version"] == importlib.metadata.version("torch")
    assert isinstance(facts["cuda_available"], bool) and isinstance(facts["gpus"], list)


def test_real_minkowski_sparse_convolution_runs_on_the_cpu():
    if machine_facts.installed_version("MinkowskiEngine") is None:
        pytest.skip("MinkowskiEngine is not installed: `make setup` builds it (python installers/build_minkowski.py)")
    facts = machine_facts.probe_minkowski_runtime()
    assert facts["import"] == "ok", facts
    assert facts["conv"]["cpu"] == "ok", facts


@pytest.mark.gpu
def test_real_minkowski_sparse_convolution_runs_on_every_gpu():
    import torch

    facts = machine_facts.probe_minkowski_runtime()
    assert facts["cuda"] is True, "MinkowskiEngine was built without CUDA"
    assert {k: v for k, v in facts["conv"].items()} == {
        "cpu": "ok",
        **{f"cuda:{i}": "ok" for i in range(torch.cuda.device_count())},
    }


@pytest.mark.gpu
def test_real_torch_probe_sees_every_gpu_and_its_arch():
    import torch

    facts = machine_facts.probe_torch()
    assert len(facts["gpus"]) == torch.cuda.device_count()
    assert all("capability" in g and g["memory_gib"] > 0 for g in facts["gpus"])
    assert facts["arch_list"] == torch.cuda.get_arch_list()


@pytest.mark.parametrize(
    ("text", "problem"),
    [(None, None), ("{oops", "not valid JSON"), ('{"me_version": "0.5.4"}', "no schema field")],
)
def test_build_record_problems(text, problem):
    record, why = core_probes.parse_build_record(text)
    assert record is None
    assert (why is None) if problem is None else (problem in why)


def test_build_record_is_read_from_the_installed_dist_info(tmp_path, monkeypatch):
    dist_info = tmp_path / "MinkowskiEngine-0.5.4.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: MinkowskiEngine\nVersion: 0.5.4\n")
    record = {"schema": 1, "torch": "2.4.0+cu121", "source": {"kind": "git", "id": "829bf19"}}
    (dist_info / machine_facts.BUILD_RECORD).write_text(json.dumps(record))
    monkeypatch.syspath_prepend(str(tmp_path))
    facts = machine_facts.probe_minkowski_install()
    assert facts == {"installed": True, "version": "0.5.4", "build": record}


def test_probe_modules_import_without_torch():
    """The Kaggle installer imports rsna_phase0.check_env and the standard-library layer (rsna_phase0/core) before torch
    exists."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import rsna_phase0.check_env.facts, rsna_phase0.check_env.check, rsna_phase0.check_env.commands, rsna_phase0.cli\n"
        "import rsna_phase0.core.versions, rsna_phase0.core.requirements_lock, rsna_phase0.core.probes, rsna_phase0.atomic\n"
        "facts = rsna_phase0.check_env.facts.probe_packages(['numpy', 'no-such-package-xyz'])\n"
        "assert facts['no-such-package-xyz'] is None and facts['numpy']\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
