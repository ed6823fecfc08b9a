"""The real `rsna-phase0 check-env` on this machine: exit codes, --json, --write-report, --against, --strict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_check_env import cpu_spec_file, reference_probes

from rsna_phase0.check_env import facts
from rsna_phase0.check_env.commands import check_env
from rsna_phase0.check_env.spec import load_spec


def check_env_cli(*args, env_extra=None):
    """Run the installed command line in a fresh interpreter, as a user would."""
    env = {**os.environ, **(env_extra or {})}
    code = "import sys; from rsna_phase0.cli import main; sys.argv[0] = 'rsna-phase0'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "check-env", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def written_report(tmp_path_factory):
    """One real run against the reference spec: --json and --write-report together."""
    path = tmp_path_factory.mktemp("report") / "sub" / "this_machine.json"
    done = check_env_cli("--json", "--write-report", str(path))
    return done, path


def test_reference_spec_on_this_cpu_machine_is_truthful(written_report):
    """Here torch is a CPU build: the declared stand-in (exit 3 unless something else is wrong) or a mismatch."""
    done, _ = written_report
    report = json.loads(done.stdout)
    rows = {r["field"]: r for r in report["parity"]["rows"]}
    import torch

    assert rows["torch"]["expected"] == "2.4.0" and rows["torch"]["found"] == torch.__version__
    assert rows["torch CUDA build"]["found"] == (torch.version.cuda or "cpu")
    assert rows["MinkowskiEngine"]["status"] in ("ok", "MISMATCH")
    dev = load_spec().dev_torch
    stand_in = torch.version.cuda is None and dev is not None and torch.__version__.split("+")[0] == dev.version
    mismatches = [r["field"] for r in report["parity"]["rows"] if r["status"] == "MISMATCH"]
    assert rows["torch"]["status"] == ("dev stand-in" if stand_in else "MISMATCH")
    assert done.returncode == report["parity"]["exit_code"] == (3 if stand_in and not mismatches else 1), mismatches


def test_write_report_is_a_complete_json_report(written_report):
    done, path = written_report
    report = json.loads(path.read_text())
    assert report["schema"] == 1 and report["hostname"] and report["time"]
    assert report["spec_path"].endswith("reference.toml")
    assert {"python", "torch", "packages", "dev_packages", "nvidia_smi", "nvcc", "minkowski"} <= set(report["probes"])
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp file left behind
    assert f"report written to {path}" in done.stderr


def test_against_an_edited_report_shows_the_edited_field(written_report, tmp_path):
    _, path = written_report
    report = json.loads(path.read_text())
    report["hostname"] = "kaggle-t4x2"
    report["probes"]["packages"]["numpy"] = "1.26.3"
    other = tmp_path / "kaggle.json"
    other.write_text(json.dumps(report))
    done = check_env_cli("--against", str(other))
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("package numpy"))
    assert line.split() == ["package", "numpy", "1.26.3", facts.installed_version("numpy"), "MISMATCH"]
    assert "pip install numpy==1.26.3" in done.stdout
    assert "kaggle-t4x2" in done.stdout


def test_unreadable_against_file_exits_2_and_names_it(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{")
    done = check_env_cli("--against", str(bad))
    assert done.returncode == 2
    assert str(bad) in done.stdout and "not valid JSON" in done.stdout


def test_torch_that_cannot_be_imported_exits_2(tmp_path):
    fake = tmp_path / "shadow" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated broken torch install')\n")
    done = check_env_cli(env_extra={"PYTHONPATH": str(tmp_path / "shadow")})
    assert done.returncode == 2, done.stdout
    assert "torch could not be probed" in done.stdout and "simulated broken torch install" in done.stdout


def test_cpu_stand_in_spec_gives_torch_parity_here(tmp_path):
    spec_file = cpu_spec_file(tmp_path, torch_version=facts.installed_version("torch").split("+")[0])
    done = check_env_cli("--json", env_extra={"RSNA_PHASE0_SPEC": str(spec_file)})
    report = json.loads(done.stdout)
    rows = {r["field"]: r for r in report["parity"]["rows"]}
    assert rows["torch"]["status"] == "ok" and rows["torch CUDA build"]["status"] == "ok"
    assert rows["cuDNN"]["status"] == "info"
    assert report["spec_path"] == str(spec_file)
    mismatches = [r for r in report["parity"]["rows"] if r["status"] == "MISMATCH"]
    assert done.returncode == (1 if mismatches else 0)


def test_strict_turns_warnings_into_failure(tmp_path, monkeypatch):
    spec = load_spec(cpu_spec_file(tmp_path))
    probed = reference_probes(spec)
    probed["dev_packages"]["ruff"] = "0.0.1"
    monkeypatch.setattr(facts, "collect", lambda *a, **k: probed)
    runner = CliRunner()
    lenient = runner.invoke(check_env, ["--spec", str(spec.path)])
    assert lenient.exit_code == 0, lenient.output
    assert "dev package ruff" in lenient.output and "warning" in lenient.output
    strict = runner.invoke(check_env, ["--spec", str(spec.path), "--strict"])
    assert strict.exit_code == 1
    assert "pip install ruff==" in strict.output


def test_missing_spec_exits_2_naming_it(tmp_path):
    missing = tmp_path / "nowhere.toml"
    done = CliRunner().invoke(check_env, ["--spec", str(missing)])
    assert done.exit_code == 2
    assert str(missing) in done.output and "version spec not found" in done.output
