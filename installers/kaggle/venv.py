"""The reference environment's own virtual environment, made from the notebook's Python without touching it.

Standard library only. `venv --without-pip` works on every CPython, including Debian-style ones whose `ensurepip`
is missing (no python3-venv, and a notebook cannot apt-get); pip is then put into the new environment from a pip
wheel run as a zip (`python pip.whl/pip install pip.whl`, as pip's own docs allow), found in this order: a
wheelhouse (offline sessions), the interpreter's own ensurepip wheel, a download by the notebook's pip.
The notebook's site-packages are never written: nothing is installed with the notebook's Python.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_PIP_WHEEL = re.compile(r"^pip-(\d+(?:\.\d+)*)-py3-none-any\.whl$")
_BASE_FACTS = (
    "import json, sys, sysconfig, importlib.util; print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3],"
    " 'base_executable': getattr(sys, '_base_executable', sys.executable), 'prefix': sys.prefix,"
    " 'base_prefix': sys.base_prefix, 'stdlib': sysconfig.get_paths()['stdlib'],"
    " 'ensurepip': importlib.util.find_spec('ensurepip') is not None,"
    " 'pip': importlib.util.find_spec('pip') is not None}))"
)


class VenvError(RuntimeError):
    """The environment cannot be made; the message names the fix."""


def env_python(env_dir: Path) -> Path:
    return Path(env_dir) / "bin" / "python"


def base_facts(python: str) -> dict:
    try:
        done = subprocess.run([python, "-I", "-c", _BASE_FACTS], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VenvError(f"{python}: cannot run the notebook's Python ({exc}); --python names it") from None
    if done.returncode != 0:
        raise VenvError(f"{python}: probing failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def usable(env_dir: Path, python: str) -> str:
    """Empty when `env_dir` is a working environment made from `python`'s interpreter, else why not."""
    cfg = Path(env_dir) / "pyvenv.cfg"
    exe = env_python(env_dir)
    if not cfg.is_file() or not exe.exists():
        return f"{env_dir} does not exist yet"
    facts = base_facts(python)
    try:
        done = subprocess.run([str(exe), "-I", "-c", _BASE_FACTS], capture_output=True, text=True, timeout=60)
        mine = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return f"{exe} does not run (a half-made or moved environment)"
    if mine["version"] != facts["version"] or Path(mine["base_prefix"]) != Path(facts["base_prefix"]):
        return f"{env_dir} was made from Python {mine['version']} at {mine['base_prefix']}, not this one"
    if not mine["pip"]:
        return f"{env_dir} has no pip (a run cut short while making it)"
    return ""


def pip_wheel_in(folders: list[Path]) -> Path | None:
    """The newest pip wheel in the folders (a wheelhouse made by --make-wheelhouse carries one)."""
    found = [w for f in folders for w in Path(f).glob("pip-*.whl") if _PIP_WHEEL.match(w.name)]
    key = lambda w: tuple(int(x) for x in _PIP_WHEEL.match(w.name).group(1).split("."))  # noqa: E731
    return max(found, key=key) if found else None


def ensurepip_wheel(facts: dict) -> Path | None:
    bundled = Path(facts["stdlib"]) / "ensurepip" / "_bundled"
    return pip_wheel_in([bundled]) if facts["ensurepip"] and bundled.is_dir() else None


def download_pip(python: str, dest: Path, source_options: list[str], log) -> Path | None:
    """pip's wheel fetched by the notebook's own pip (a download: nothing is installed there)."""
    command = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), "pip"]
    command += source_options
    log.write(f"\n$ {' '.join(command)}\n")
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.write(f"{exc}\n")
        return None
    log.write(done.stdout)
    return pip_wheel_in([dest]) if done.returncode == 0 else None


def create(
    python: str, env_dir: Path, *, wheel_folders: list[Path], source_options: list[str], log, system_site: bool = False
) -> str:
    """Make `env_dir` from the notebook's `python` and put pip in it; returns where pip came from. `system_site`
    lets it see the notebook's packages (a rehearsal against an image's own torch); installs still go to it only."""
    env_dir = Path(env_dir)
    if env_dir.exists():
        shutil.rmtree(env_dir)  # a stale or half-made one (usable() said why)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    command = [
        python,
        "-m",
        "venv",
        "--without-pip",
        *(["--system-site-packages"] if system_site else []),
        str(env_dir),
    ]
    log.write(f"\n$ {' '.join(command)}\n")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    log.write(done.stdout)
    if done.returncode != 0:
        raise VenvError(f"`{' '.join(command)}` failed: {done.stdout.strip()[-1500:]}")
    facts = base_facts(python)
    with tempfile.TemporaryDirectory(prefix="rsna-pip-") as tmp:
        wheel = pip_wheel_in(wheel_folders) or ensurepip_wheel(facts)
        if wheel is None and facts["pip"]:
            wheel = download_pip(python, Path(tmp), source_options, log)
        if wheel is None:
            raise VenvError(
                f"no pip wheel for the new environment: none in the wheelhouses ({', '.join(map(str, wheel_folders)) or 'none'}), "
                f"{python} has no ensurepip wheel and could not download one. Attach a wheelhouse made by "
                "`kaggle_setup.py --make-wheelhouse DIR` (it carries pip), or pass --wheelhouse DIR with a pip wheel"
            )
        command = [str(env_python(env_dir)), str(wheel / "pip"), "install", "--no-index", "--no-deps", "-q", str(wheel)]
        command[2:2] = ["--disable-pip-version-check", "--no-input"]
        log.write(f"\n$ {' '.join(command)}\n")
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        log.write(done.stdout)
        if done.returncode != 0:
            raise VenvError(f"installing pip from {wheel} into {env_dir} failed: {done.stdout.strip()[-1500:]}")
        return wheel.name
