"""The lock files (environment.yml, conda-lock.yml, env/requirements.lock) agree with the spec and with conda-lock.

conda-lock runs in subprocesses only: conda-lock 2.5 replaces `subprocess.run` process-wide when imported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsna_phase0.check_env.spec import load_spec
from rsna_phase0.core.requirements_lock import parse_lock

REPO = Path(__file__).resolve().parents[1]
LOCK_SCRIPT = REPO / "env" / "lock.py"
PIP_MAP = "pip:\n  conda_name: pip\n  conda_forge: pip\n  import_name: pip\n  pypi_name: pip\n"


def _requirements() -> dict[str, tuple[str, list[str]]]:
    pins = parse_lock(REPO / "env" / "requirements.lock")
    return {name: (pin.version, [h.removeprefix("sha256:") for h in pin.hashes]) for name, pin in pins.items()}


@pytest.fixture(scope="module")
def conda_lock_available():
    probe = subprocess.run([sys.executable, "-c", "import conda_lock"], capture_output=True)
    if probe.returncode != 0:
        pytest.fail("conda-lock is missing from this environment: `make setup` installs the spec's dev packages")


def test_requirements_lock_pins_equal_the_spec_and_all_carry_hashes():
    spec = load_spec()
    pins = _requirements()
    wanted = {"torch": spec.torch_version, **spec.packages}
    wanted.update({n: spec.dev_packages[n] for n in ("setuptools", "wheel", "ninja")})
    for name, version in wanted.items():
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert pins.get(key, ("missing",))[0] == version, f"{name}: spec {version}, lock {pins.get(key)}"
    assert all(hashes for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if not h]
    # torch 2.4.0 from PyPI is the cu121 build: its CUDA 12.1 / cuDNN 9.1 wheels are locked with it
    assert pins["nvidia-cudnn-cu12"][0].startswith("9.1.")
    assert pins["nvidia-cuda-runtime-cu12"][0].startswith(spec.torch_cuda + ".")


def test_lock_files_agree_with_the_spec_and_conda_lock(conda_lock_available):
    # env/lock.py verify: conda-lock parses the lock, the content hash is environment.yml's, pins equal the spec,
    # every entry has hashes, the pip part equals requirements.lock, the explicit file is conda-lock's render.
    result = subprocess.run([sys.executable, str(LOCK_SCRIPT), "verify"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_changed_pin_is_caught(conda_lock_available, tmp_path):
    for name in ("environment.yml", "conda-lock.yml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "env").mkdir()
    for name in ("requirements.lock", "conda-linux-64.lock"):
        shutil.copy(REPO / "env" / name, tmp_path / "env" / name)
    lock = tmp_path / "conda-lock.yml"
    lock.write_text(lock.read_text().replace("version: 2.4.0\n", "version: 2.8.0\n", 1))
    env = tmp_path / "environment.yml"
    env.write_text(env.read_text().replace("torch==2.4.0", "torch==2.8.0"))
    result = subprocess.run(
        [sys.executable, str(LOCK_SCRIPT), "verify", "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "environment.yml differs from the spec" in result.stderr
    assert "content hash is not that of environment.yml" in result.stderr
    assert "torch: spec 2.4.0, lock 2.8.0" in result.stderr


def test_the_conda_lock_cli_accepts_the_lock_without_solving(conda_lock_available, tmp_path):
    # `conda-lock lock --check-input-hash` re-solves when environment.yml's hash differs from the lock's; the fake
    # conda fails if a solve is attempted, so success proves the real tool computes the same hash.
    for name in ("environment.yml", "conda-lock.yml"):
        shutil.copy(REPO / name, tmp_path / name)
    fake = tmp_path / "fake-conda"
    fake.write_text('#!/bin/sh\necho "solve attempted: $*" >&2\nexit 3\n')
    fake.chmod(0o755)
    (tmp_path / "map.yml").write_text(PIP_MAP)
    cmd = [sys.executable, "-m", "conda_lock", "lock", "--check-input-hash", "-f", "environment.yml"]
    cmd += ["--lockfile", "conda-lock.yml", "--conda", str(fake), "--pypi_to_conda_lookup_file", "map.yml"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Spec hash already locked for ['linux-64']" in result.stderr
