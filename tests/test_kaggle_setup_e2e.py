"""The Kaggle installer end to end, in a simulated Kaggle: a fresh virtual environment as the notebook's Python, the
reference environment the installer makes from it, a local wheelhouse locked with hashes, MinkowskiEngine CPU-only
through the build module, check-env's report.

The local torch 2.13.0+cpu wheel stands in for the pin (a copy of the spec with torch "2.13.0", cuda "cpu").
The wheelhouse is downloaded from PyPI once and kept in ~/.cache/rsna_phase0/kaggle_test/; the MinkowskiEngine
wheel comes from the build module's cache (~/.cache/rsna_phase0/wheels) when `make setup` or an earlier run built
the same key, else it is built (about 4 minutes on 2 cores, once). The tests run in file order and share one
installation; the last one replaces torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from rsna_phase0.check_env.spec import load_spec, pip_requirements
from rsna_phase0.core import requirements_lock as kaggle_lock

REPO = Path(__file__).resolve().parents[1]
INSTALLERS = REPO / "installers"

pytestmark = pytest.mark.slow

CACHE = Path.home() / ".cache" / "rsna_phase0" / "kaggle_test"
TORCH = "2.13.0+cpu"
OTHER_TORCH = "2.13.1+cpu"
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
TORCH_WHEEL = Path(f"/opt/wheels/torch-{TORCH}-{PY_TAG}-{PY_TAG}-manylinux_2_28_x86_64.whl")


def clean_env(**extra: str) -> dict:
    """This shell's environment without the pip settings of this machine's or of any notebook."""
    drop = ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_CONFIG_FILE", "PIP_INDEX_URL", "KAGGLE_KERNEL_RUN_TYPE")
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "VIRTUAL_ENV"}
    env.update(extra)
    return env


def run(command: list, *, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def torch_wheel() -> Path:
    if not TORCH_WHEEL.is_file():
        pytest.skip(f"needs the local torch wheel {TORCH_WHEEL} (the stand-in for the pinned torch on this machine)")
    return TORCH_WHEEL


@pytest.fixture(scope="module")
def cpu_spec(tmp_path_factory) -> Path:
    text = (REPO / "env" / "reference.toml").read_text()
    text = text.replace('version = "2.4.0"', 'version = "2.13.0"', 1).replace('cuda = "12.1"', 'cuda = "cpu"', 1)
    path = tmp_path_factory.mktemp("spec") / "reference-cpu.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def wheelhouse(torch_wheel, cpu_spec) -> Path:
    """Every wheel the spec needs for this Python, from PyPI (torch from the local file), cached across runs."""
    spec = load_spec(cpu_spec)
    wanted = [f"torch=={TORCH}", *pip_requirements(spec, include_torch=False), f"ninja=={spec.dev_packages['ninja']}"]
    wanted += [f"setuptools=={spec.dev_packages['setuptools']}", f"wheel=={spec.dev_packages['wheel']}", "pip==26.3"]
    key = hashlib.sha256("\n".join([PY_TAG, *wanted]).encode()).hexdigest()[:12]
    house = CACHE / f"wheelhouse-{PY_TAG}-{key}"
    if (house / ".complete").exists():
        return house
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=CACHE))
    os.link(torch_wheel, staging / torch_wheel.name) if _same_fs(torch_wheel, staging) else shutil.copy(
        torch_wheel, staging
    )
    command = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--dest", staging]
    command += ["--index-url", "https://pypi.org/simple", "--find-links", staging, *wanted]
    done = run(command, env=clean_env(PIP_CONFIG_FILE=os.devnull), timeout=900)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(
            f"pip download of the test wheelhouse from PyPI failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    (staging / ".complete").write_text("\n".join(wanted) + "\n")
    shutil.rmtree(house, ignore_errors=True)
    os.replace(staging, house)
    return house


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


@pytest.fixture(scope="module")
def other_torch_wheel(torch_wheel) -> Path:
    """The torch wheel repacked as another version (version.py, dist-info, RECORD): a real replacement."""
    target = CACHE / "other-torch" / torch_wheel.name.replace(TORCH, OTHER_TORCH)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    old_info, new_info = f"torch-{TORCH}.dist-info/", f"torch-{OTHER_TORCH}.dist-info/"
    staging = target.with_suffix(".partial")
    records = []
    with (
        zipfile.ZipFile(torch_wheel) as src,
        zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        for info in src.infolist():
            name = info.filename.replace(old_info, new_info)
            if name == f"{new_info}RECORD":
                continue
            data = src.read(info.filename)
            if name in ("torch/version.py", f"{new_info}METADATA"):
                data = data.replace(TORCH.encode(), OTHER_TORCH.encode())
            dst.writestr(zipfile.ZipInfo(name, info.date_time), data, compress_type=zipfile.ZIP_DEFLATED)
            dst.getinfo(name).external_attr = info.external_attr
            digest = hashlib.sha256(data).digest()
            import base64

            records.append(f"{name},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
        records.append(f"{new_info}RECORD,,")
        dst.writestr(f"{new_info}RECORD", "\n".join(records) + "\n")
    os.replace(staging, target)
    return target


def wheel_needing_new_torch(folder: Path) -> Path:
    """A tiny real wheel whose only requirement is torch>=2.13.1: the kind of install that broke the users' run."""
    name = "needs_new_torch"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: torch>=2.13.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


class Kaggle:
    """One simulated Kaggle session: /kaggle under a temp folder, a fresh venv as the notebook's Python (`base`);
    the installer makes the reference environment (`venv`, `python`) from it under <root>/tmp."""

    def __init__(self, base: Path, spec: Path, wheelhouse: Path, notebook_python: Path | None = None):
        self.root, self.spec, self.wheelhouse = base / "kaggle", spec, wheelhouse
        (self.root / "working").mkdir(parents=True)
        (self.root / "input").mkdir()
        self.venv = self.root / "tmp" / "rsna_phase0_env"
        self.python = self.venv / "bin" / "python"
        self.lock = base / "requirements.lock"
        self.lock.write_text(kaggle_lock.lock_for_wheelhouse(wheelhouse))
        self.env = clean_env(RSNA_PHASE0_SPEC=str(spec))
        self.base = notebook_python
        if self.base is None:
            done = run([sys.executable, "-m", "venv", base / "notebook"], env=self.env, timeout=300)
            assert done.returncode == 0, done.stderr
            self.base = base / "notebook" / "bin" / "python"

    def setup(self, *extra: str, sources: tuple[str, ...] | None = None, prefix: tuple[str, ...] = ()):
        command = [*prefix, sys.executable, INSTALLERS / "kaggle_setup.py", "--kaggle-root", self.root]
        command += ["--python", self.base, "--requirements", self.lock, "--cpu-only", *extra]
        command += ["--no-index", "--find-links", self.wheelhouse] if sources is None else list(sources)
        started = time.monotonic()
        done = run(command, env=self.env, timeout=1200)
        return done, time.monotonic() - started

    def pip(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run([self.python, "-m", "pip", *args], env=env or self.env, timeout=600)

    def torch_version(self) -> str:
        code = "from importlib.metadata import version; print(version('torch'))"
        return run([self.python, "-c", code], env=self.env).stdout.strip()

    def check_env(self) -> subprocess.CompletedProcess:
        code = "import sys; from rsna_phase0.cli import main; sys.exit(main())"
        return run([self.python, "-c", code, "check-env"], env=self.env, timeout=300)


@pytest.fixture(scope="module")
def session(tmp_path_factory, cpu_spec, wheelhouse):
    kaggle = Kaggle(tmp_path_factory.mktemp("kaggle_session"), cpu_spec, wheelhouse)
    kaggle.first, kaggle.first_seconds = kaggle.setup()
    return kaggle


def test_first_run_installs_holds_and_proves_the_environment(session):
    done = session.first
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    out = done.stdout
    for step in (
        "[venv] done",
        "[packages] done",
        "[hold] done",
        "[minkowski] done",
        "[project] done",
        "[check-env] done",
    ):
        assert step in out, out[-4000:]
    me_how = "cache hit" if "cache hit" in out else "built"
    print(f"first run: {session.first_seconds:.0f} s; MinkowskiEngine {me_how}")
    assert "PARITY" in out
    report = json.loads((session.root / "working" / "rsna_phase0_environment.json").read_text())
    assert report["parity"]["exit_code"] == 0
    assert session.torch_version() == TORCH
    pip_conf = (session.venv / "pip.conf").read_text()
    assert str(session.root / "working" / ".rsna_phase0_setup" / "constraints.txt") in pip_conf


def test_second_run_changes_nothing_and_takes_seconds(session):
    watched = [session.venv / "pip.conf", session.root / "working" / ".rsna_phase0_setup" / "constraints.txt"]
    before = session.pip("freeze", "--all").stdout
    mtimes = [p.stat().st_mtime_ns for p in watched]
    done, seconds = session.setup()
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    print(f"second run: {seconds:.1f} s")
    assert seconds < 30
    for step in ("venv", "packages", "hold", "minkowski", "project", "verify"):
        assert f"[{step}] ok:" in done.stdout, done.stdout
    assert "PARITY" in done.stdout
    assert session.pip("freeze", "--all").stdout == before
    assert [p.stat().st_mtime_ns for p in watched] == mtimes


def test_a_later_pip_install_cannot_replace_torch(session, other_torch_wheel, tmp_path):
    """Plain `pip install` in the notebook, no flags: the hold in the venv's pip.conf refuses another torch."""
    links = tmp_path / "links"
    links.mkdir()
    os.link(other_torch_wheel, links / other_torch_wheel.name) if _same_fs(other_torch_wheel, links) else shutil.copy(
        other_torch_wheel, links
    )
    wheel_needing_new_torch(links)
    for request in ("needs_new_torch", f"torch=={OTHER_TORCH}"):
        done = session.pip("install", "--no-index", "--find-links", links, request)
        assert done.returncode != 0, done.stdout
        assert "torch" in done.stderr and "constraint" in (done.stdout + done.stderr).lower(), done.stderr
    upgrade = session.pip("install", "--upgrade", "--no-index", "--find-links", links, "torch")
    assert upgrade.returncode == 0, upgrade.stderr
    assert session.torch_version() == TORCH


def test_torch_replaced_anyway_is_caught_by_check_env_and_repaired_by_a_rerun(session, other_torch_wheel):
    """Bypassing every pip config (PIP_CONFIG_FILE=/dev/null) is the only way past the hold: check-env catches it."""
    bypass = {**session.env, "PIP_CONFIG_FILE": os.devnull}
    done = session.pip("install", "--no-deps", "--no-index", other_torch_wheel, env=bypass)
    assert done.returncode == 0, done.stderr
    assert session.torch_version() == OTHER_TORCH
    check = session.check_env()
    assert check.returncode == 1, check.stdout
    assert OTHER_TORCH in check.stdout and TORCH in check.stdout  # MinkowskiEngine compiled against 2.13.0+cpu
    print(check.stdout)
    again, seconds = session.setup()
    assert again.returncode == 0, f"{again.stdout[-4000:]}\n{again.stderr[-3000:]}"
    assert f"torch {OTHER_TORCH} -> {TORCH}" in again.stdout
    assert session.torch_version() == TORCH
