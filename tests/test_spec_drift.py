"""Derived files must not drift from env/reference.toml, the one version spec.

The helpers (parse_pins, pin_differences, spec_pins) are meant for reuse by the tests of later derived files
(environment.yml, the Dockerfile, installers/kaggle_setup.py): `from test_spec_drift import parse_pins, ...`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rsna_phase0.check_env.spec import DEFAULT_SPEC_PATH, REPO_ROOT, load_spec, pip_requirements

SPEC = load_spec(DEFAULT_SPEC_PATH)
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
VERSION = r"[0-9][A-Za-z0-9.+!_-]*"


def normalize(name: str) -> str:
    """PEP 503: PyWavelets, pywavelets and py_wavelets are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str, operator: str = "==") -> dict[str, str]:
    """Every `name==version` in a text (requirements, a Dockerfile RUN line, a Makefile), comments skipped.

    operator="=" reads conda's `name=version` (environment.yml) and ignores `==`.
    """
    op = "==" if operator == "==" else r"=(?!=)"
    pattern = re.compile(rf"(?<![\w.=-])({NAME})\s*{op}\s*({VERSION})")
    pins = {}
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)
        for name, version in pattern.findall(line):
            pins[normalize(name)] = version.rstrip(".,;")
    return pins


def spec_pins(spec=SPEC, *, include_torch: bool = True, include_dev: bool = False) -> dict[str, str]:
    pins = {normalize(k): v for k, v in spec.packages.items()}
    if include_dev:
        pins |= {normalize(k): v for k, v in spec.dev_packages.items()}
    if include_torch:
        pins["torch"] = spec.torch_version
    return pins


def pin_differences(pins: dict[str, str], expected: dict[str, str], *, require_all: bool = True) -> list[str]:
    """What a file pins differently from the spec (and, with require_all, what it leaves out)."""
    pins = {normalize(k): v for k, v in pins.items()}
    problems = []
    for name, version in expected.items():
        found = pins.get(normalize(name))
        if found is None:
            if require_all:
                problems.append(f"{name}: not pinned (spec {version})")
        elif found.split("+")[0] != version:
            problems.append(f"{name}: pinned {found}, spec {version}")
    return problems


# ---------------------------------------------------------------- the helpers themselves


def test_helpers_catch_a_drifted_pin():
    text = "RUN pip install numpy==2.0.0 nibabel==5.2.1  # tqdm==0.0.1 in a comment is ignored\n"
    assert parse_pins(text) == {"numpy": "2.0.0", "nibabel": "5.2.1"}
    problems = pin_differences(parse_pins(text), spec_pins(include_torch=False), require_all=False)
    assert problems == [f"numpy: pinned 2.0.0, spec {SPEC.packages['numpy']}"]
    assert "tqdm: not pinned" in " ".join(pin_differences(parse_pins(text), spec_pins(include_torch=False)))


def test_conda_style_pins_are_read_apart_from_pip_pins():
    text = "dependencies:\n  - python=3.12\n  - numpy=1.26.4\n  - pip:\n    - nibabel==5.2.1\n"
    assert parse_pins(text, operator="=") == {"python": "3.12", "numpy": "1.26.4"}
    assert parse_pins(text) == {"nibabel": "5.2.1"}


def test_spec_requirements_command_round_trips_the_spec():
    """`make setup` installs from this command's output, so it must carry every pin exactly."""
    done = subprocess.run(
        [sys.executable, "-m", "rsna_phase0.check_env.spec", "requirements", "--dev"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no RSNA_PHASE0_SPEC: the repository's spec
    )
    assert pin_differences(parse_pins(done.stdout), spec_pins(include_dev=True)) == []
    assert done.stdout.splitlines() == pip_requirements(SPEC, include_dev=True)


# ---------------------------------------------------------------- files derived from the spec today


def test_pyproject_dependencies_cover_the_spec_and_pin_nothing():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = {normalize(re.match(NAME, dep).group(0)): dep for dep in project["dependencies"]}
    missing = set(spec_pins()) - set(names)
    assert not missing, f"pyproject.toml dependencies lack {sorted(missing)} (env/reference.toml [packages])"
    exact = [dep for dep in project["dependencies"] if "==" in dep]
    assert not exact, f"pyproject.toml pins {exact}: versions belong in env/reference.toml only"
    assert project["requires-python"] == f">=3.11,<3.{int(SPEC.python_minor.split('.')[1]) + 1}"


def test_makefile_installs_the_pins_from_the_spec():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(
        r"-m rsna_phase0\.check_env\.spec requirements\b.*> *(\S+)", makefile
    ), "make setup must read the spec"
    installed_from = re.search(r"-m rsna_phase0\.check_env\.spec requirements\b.*> *(\S+)", makefile).group(1)
    assert re.search(
        rf"pip install -q (-c \S+ )?-r {re.escape(installed_from)}", makefile
    ), "make setup must install them"
    # torch is held with a constraint so that no pinned package can silently replace it
    assert re.search(r'echo "torch==\$\(DEV_TORCH\)" > (\S+)', makefile), "make setup must hold torch"
    assert pin_differences(parse_pins(makefile), spec_pins(include_dev=True), require_all=False) == []


def test_makefile_dev_torch_is_the_declared_stand_in():
    """check-env calls only [dev_torch] a development stand-in, so `make setup` must install exactly that."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    found = re.search(r"^DEV_TORCH \?= (\S+)$", makefile, re.M)
    assert found, "Makefile: no DEV_TORCH ?= line"
    assert SPEC.dev_torch is not None and found.group(1) == SPEC.dev_torch.version


def repo_text_files() -> list[Path]:
    """Files of the checkout (tracked or new, not ignored), tests and design notes excluded."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"not a git checkout ({done.stderr.strip()}): cannot list the repository's files")
    wanted = re.compile(r"(^|/)(Dockerfile[^/]*|Makefile|\.ci/run|[^/]+\.(ya?ml|txt|toml|cfg|sh|md))$")
    paths = []
    for rel in done.stdout.splitlines():
        # conda-lock.yml pins in its own format, and its owner's test checks it against the spec.
        if rel.startswith(("tests/", "benchmarks/")) or rel.endswith("lock.yml") or not wanted.search(rel):
            continue
        path = REPO_ROOT / rel
        if path.is_file() and path.stat().st_size < 2_000_000:
            paths.append(path)
    return paths


def test_no_file_in_the_repository_pins_a_spec_package_differently():
    """Catches a hand-edited pin anywhere (a Dockerfile RUN line, a README command, CI) before it ships."""
    expected = spec_pins(include_dev=True)
    del expected["torch"]  # the Makefile's DEV_TORCH CPU stand-in is a variable, and torch pins are checked below
    problems = []
    for path in repo_text_files():
        text = path.read_text(errors="replace")
        for problem in pin_differences(parse_pins(text), expected, require_all=False):
            problems.append(f"{path.relative_to(REPO_ROOT)}: {problem}")
        if path.suffix in (".yml", ".yaml"):
            for problem in pin_differences(parse_pins(text, operator="="), expected, require_all=False):
                problems.append(f"{path.relative_to(REPO_ROOT)} (conda): {problem}")
    assert not problems, "pins that drifted from env/reference.toml:\n" + "\n".join(problems)
