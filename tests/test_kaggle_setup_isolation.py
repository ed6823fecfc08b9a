"""The Kaggle installer leaves the notebook's Python alone, and installs offline from an attached wheelhouse.

Both in the style of test_kaggle_setup_e2e.py (the local torch 2.13.0+cpu stand-in, its cached wheelhouse):
- isolation: a notebook Python seeded like Kaggle's (numpy 2.x, pandas); after the setup it still imports pandas at
  the same version with the same `pip freeze`, and the reference environment the installer made is PARITY;
- offline: a wheelhouse made with --make-wheelhouse, attached under a fake /kaggle/input, is found and installed
  from inside a network namespace (`unshare -n`: no network at all) with no source flag, by a notebook Python
  whose `ensurepip` is missing (as on Debian without python3-venv), with an empty MinkowskiEngine cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from test_kaggle_setup_e2e import CACHE, PY_TAG, Kaggle, clean_env, cpu_spec, run, torch_wheel, wheelhouse

pytestmark = pytest.mark.slow
__all__ = ["cpu_spec", "torch_wheel", "wheelhouse"]  # fixtures used here by name

SEED = ("numpy==2.2.6", "pandas==2.3.3")  # Kaggle's notebook ships numpy 2.x and pandas built against it
FREEZE = "import json; from importlib import metadata as m; print(json.dumps(sorted((d.metadata['Name'], d.version) for d in m.distributions())))"


@pytest.fixture(scope="module")
def seed_wheels() -> Path:
    key = hashlib.sha256("\n".join([PY_TAG, *SEED]).encode()).hexdigest()[:12]
    house = CACHE / f"seed-{PY_TAG}-{key}"
    if not (house / ".complete").exists():
        house.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--dest", house]
        done = run(
            [*command, "--index-url", "https://pypi.org/simple", *SEED], env=clean_env(PIP_CONFIG_FILE=os.devnull)
        )
        assert (
            done.returncode == 0
        ), f"pip download of the seed wheels failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        (house / ".complete").write_text("\n".join(SEED) + "\n")
    return house


def python_without_ensurepip(dest: Path) -> Path:
    """A real copy of this interpreter whose standard library lacks ensurepip: `-m venv` fails on it the way it
    does on a Debian-style Python without python3-venv."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sys.base_prefix) / "lib" / version
    (dest / "bin").mkdir(parents=True)
    (dest / "lib" / version / "site-packages").mkdir(parents=True)
    shutil.copy2(Path(sys.base_prefix) / "bin" / version, dest / "bin" / version)
    for entry in stdlib.iterdir():
        if entry.name not in ("ensurepip", "site-packages"):
            (dest / "lib" / version / entry.name).symlink_to(entry)
    return dest / "bin" / version


def test_the_notebooks_packages_stay_as_they_were_and_the_new_environment_is_parity(
    tmp_path_factory, cpu_spec, wheelhouse, seed_wheels
):
    kaggle = Kaggle(tmp_path_factory.mktemp("isolation"), cpu_spec, wheelhouse)
    seeded = run(
        [kaggle.base, "-m", "pip", "install", "--no-index", "--find-links", seed_wheels, *SEED], env=kaggle.env
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    pandas = "import pandas, numpy; print(pandas.__version__, numpy.__version__)"
    before = run([kaggle.base, "-c", FREEZE], env=kaggle.env).stdout
    assert run([kaggle.base, "-c", pandas], env=kaggle.env).stdout.split() == ["2.3.3", "2.2.6"]

    done, seconds = kaggle.setup()
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    print(f"setup into its own environment: {seconds:.0f} s")
    assert "[venv] done" in done.stdout and "PARITY" in done.stdout
    assert run([kaggle.base, "-c", FREEZE], env=kaggle.env).stdout == before  # the notebook's packages: unchanged
    after = run([kaggle.base, "-c", pandas], env=kaggle.env)
    assert after.returncode == 0 and after.stdout.split() == ["2.3.3", "2.2.6"], after.stderr
    assert not (kaggle.base.parents[1] / "pip.conf").exists()  # no hold put on the notebook's pip
    check = kaggle.check_env()
    assert check.returncode == 0 and "PARITY" in check.stdout, check.stdout + check.stderr
    numpy_there = run([kaggle.python, "-c", "import numpy; print(numpy.__version__)"], env=kaggle.env).stdout.strip()
    assert numpy_there == "1.26.4"  # the pin, in the reference environment only
    assert kaggle.venv.is_relative_to(kaggle.root / "tmp")  # not in /kaggle/working, the saved output


@pytest.fixture(scope="module")
def made_wheelhouse(tmp_path_factory, cpu_spec, wheelhouse) -> Path:
    """A wheelhouse made the way a first notebook with internet makes it (here its index is the local wheelhouse)."""
    kaggle = Kaggle(tmp_path_factory.mktemp("make"), cpu_spec, wheelhouse)
    out = kaggle.root / "working" / "rsna_phase0_wheelhouse"
    done, seconds = kaggle.setup("--make-wheelhouse", str(out))
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    print(f"setup + --make-wheelhouse: {seconds:.0f} s")
    return out


def test_make_wheelhouse_writes_every_locked_wheel_pip_minkowski_and_the_sdist_with_a_manifest(made_wheelhouse):
    manifest = json.loads((made_wheelhouse / "rsna_phase0_wheelhouse.json").read_text())
    names = set(manifest["files"])
    assert {n.split("-")[0].lower() for n in names if n.endswith(".whl")} >= {
        "torch",
        "numpy",
        "pip",
        "minkowskiengine",
    }
    assert manifest["sdist"] == "MinkowskiEngine-0.5.4.tar.gz" and manifest["sdist"] in names
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((made_wheelhouse / name).read_bytes()).hexdigest() == digest


def test_offline_without_ensurepip_installs_from_the_attached_wheelhouse_with_no_network(
    tmp_path_factory, cpu_spec, wheelhouse, made_wheelhouse
):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a network namespace (CI has both)")
    base = tmp_path_factory.mktemp("offline")
    notebook = python_without_ensurepip(base / "python")
    refused = run([notebook, "-m", "venv", base / "plain"], env=clean_env())
    assert refused.returncode != 0 and "ensurepip" in refused.stdout + refused.stderr  # the Debian-style failure
    kaggle = Kaggle(base, cpu_spec, wheelhouse, notebook_python=notebook)
    attached = kaggle.root / "input" / "my-notebook-output" / "rsna_phase0_wheelhouse"
    shutil.copytree(made_wheelhouse, attached)
    no_net = run(
        ["unshare", "-n", "python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), 3)"],
        env=clean_env(),
    )
    assert no_net.returncode != 0  # the namespace really has no network

    empty_cache = base / "me-cache"
    done, seconds = kaggle.setup("--me-cache", str(empty_cache), sources=(), prefix=("unshare", "-n"))
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    print(f"offline setup from the attached wheelhouse: {seconds:.0f} s")
    out = done.stdout
    assert f"offline: wheelhouse {attached}" in out and "PARITY" in out
    assert "cache hit" in out and "source auto" not in out  # the wheel was found before any source lookup
    assert "pip from pip-" in out
