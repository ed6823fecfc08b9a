"""pip in the target interpreter: what is installed, installing, and holding the pins for the rest of the session.

Standard library only. The hold is what the users' last run lacked: pip upgraded torch after MinkowskiEngine was
compiled against it. A constraints file (torch==X and every pin) is written and named in a pip config file that
the target interpreter's pip reads on every later run (`%pip install ...` and `!pip install ...` in the notebook
alike), so a later install that needs another torch is refused instead of silently replacing it.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rsna_phase0.atomic import write_text_atomic
from rsna_phase0.core.probes import parse_build_record
from rsna_phase0.core.versions import canonical_name

HOLD_MARKER = "# Written by rsna_phase0 installers/kaggle_setup.py"

# Runs inside the target interpreter: its prefix, version and installed distributions, without importing them.
_PROBE = r"""
import importlib.util, json, os, re, sys, sysconfig
from importlib import metadata
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]  # only what is installed, not the current folder
project = importlib.util.find_spec("rsna_phase0")
dists, torch_users = {}, {}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if name:
        dists[name] = d.version
        for req in d.requires or []:
            if re.match(r"torch\s*[=<>!~(]", req) and "extra ==" not in req:
                torch_users[name] = req
me = None
for name in ("MinkowskiEngine", "minkowskiengine"):
    try:
        me = metadata.distribution(name).read_text("rsna_build.json")
        break
    except metadata.PackageNotFoundError:
        continue
print(json.dumps({
    "executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
    "version": "%d.%d.%d" % sys.version_info[:3], "purelib": sysconfig.get_paths()["purelib"],
    "dists": dists, "me_build": me, "project_origin": project.origin if project else None,
    "torch_users": torch_users,
}))
"""


class PipError(RuntimeError):
    """A pip run failed or the pin hold is not in effect."""


@dataclass(frozen=True)
class Installed:
    executable: str
    prefix: str
    is_venv: bool
    python_version: str
    purelib: str
    versions: dict[str, str]  # canonical name -> version
    me_build: dict | None  # MinkowskiEngine's rsna_build.json, when the build module made it
    project_origin: str | None  # where `import rsna_phase0` resolves to
    torch_users: dict[str, str]  # installed distribution -> its requirement on torch ("torch==2.11.0")

    def version_of(self, name: str) -> str | None:
        return self.versions.get(canonical_name(name))


def probe_installed(python: str, timeout: float = 60) -> Installed:
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipError(f"{python}: cannot run the target interpreter: {exc}") from None
    if done.returncode != 0:
        raise PipError(f"{python}: probing installed packages failed: {done.stderr.strip()[-2000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    me_build, _ = parse_build_record(raw["me_build"])  # a broken record counts as none: the wheel is rebuilt
    return Installed(
        executable=raw["executable"],
        prefix=raw["prefix"],
        is_venv=raw["prefix"] != raw["base_prefix"],
        python_version=raw["version"],
        purelib=raw["purelib"],
        versions={canonical_name(k): v for k, v in raw["dists"].items()},
        me_build=me_build,
        project_origin=raw["project_origin"],
        torch_users=raw["torch_users"],
    )


def pip_command(python: str, *args: str) -> list[str]:
    return [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


def source_options(*, index_url: str | None, find_links: Iterable[str], no_index: bool) -> list[str]:
    options = ["--no-index"] if no_index else []
    if index_url and not no_index:
        options += ["--index-url", index_url]
    for link in find_links:
        options += ["--find-links", str(link)]
    return options


def run_pip(python: str, args: list[str], log, *, timeout: float = 3600) -> None:
    """Run pip in the target interpreter; output goes to the log; failure raises with pip's last lines."""
    command = pip_command(python, *args)
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PipError(f"pip did not finish in {timeout:.0f} s: {' '.join(command)}") from None
    log.write(done.stdout)
    log.flush()
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-15:])
        raise PipError(f"pip failed (exit {done.returncode}): {' '.join(command)}\n{tail}")


def constraints_text(lines: list[str], spec_path: str) -> str:
    return (
        f"{HOLD_MARKER} from {spec_path}.\n"
        "# pip reads this on every install in this environment (see the pip.conf that names it): a package that\n"
        "# needs another torch is refused instead of replacing the torch MinkowskiEngine was compiled against.\n"
        + "\n".join(lines)
        + "\n"
    )


def pip_config_path(installed: Installed, scope: str) -> Path:
    """`site`: <prefix>/pip.conf, read by this interpreter's pip only; `user`: the user's pip.conf, read by all."""
    if scope == "site":
        return Path(installed.prefix) / "pip.conf"
    if scope == "user":
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return Path(base) / "pip" / "pip.conf"
    raise ValueError(f"unknown pip config scope {scope!r} (site or user)")


def effective_config(python: str) -> dict[str, str]:
    """`pip config list` of the target interpreter: key -> value, as pip resolves them now."""
    try:
        done = subprocess.run(pip_command(python, "config", "list"), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipError(f"{python} -m pip config list failed: {exc}") from None
    if done.returncode != 0:
        raise PipError(f"{python} -m pip config list failed: {done.stderr.strip()[-1000:]}")
    values = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    return values


def hold_config_text(existing: str, constraints: list[str]) -> str:
    """The pip config file with `constraint` set in [global] and [install] (pip reads [install] last)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # pip keys are case-sensitive
    parser.read_string(existing)
    for section in ("global", "install"):
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, "constraint", " ".join(constraints))
    lines = [f"{HOLD_MARKER}: holds torch and the pins (remove this file to lift the hold)."]
    for section in parser.sections():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in parser.items(section, raw=True)]
        lines.append("")
    return "\n".join(lines)


def hold_pins(python: str, installed: Installed, constraints_file: Path, scope: str) -> tuple[Path, bool]:
    """Name the constraints file in the target's pip config, keeping constraints other config files set.

    Returns the config path and whether it was changed. Raises when pip would still not apply it.
    """
    config_path = pip_config_path(installed, scope)
    before = effective_config(python)
    ours = str(constraints_file)
    keep = []
    for key in ("global.constraint", "install.constraint"):
        for item in before.get(key, "").split():
            if item != ours and item not in keep:
                keep.append(item)
    existing = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    wanted = hold_config_text(existing, [*keep, ours])
    changed = existing != wanted
    if changed:
        try:
            write_text_atomic(config_path, wanted)
        except OSError as exc:
            other = "user" if scope == "site" else "site"
            raise PipError(f"{config_path}: cannot write the pip config ({exc}); try --pip-config {other}") from None
    check_hold(python, constraints_file)
    return config_path, changed


def env_overrides_hold(constraints_file: Path, environ=os.environ) -> str:
    """Why this process's environment (inherited by the notebook's later pip runs) would defeat the hold, or ""."""
    ours = str(constraints_file)
    env_value = environ.get("PIP_CONSTRAINT")
    if env_value is not None and ours not in env_value.split():
        return (
            f"PIP_CONSTRAINT={env_value!r} is set and overrides every pip config file, so the hold on torch would "
            f"not apply: unset it (os.environ.pop('PIP_CONSTRAINT') in the notebook), or add {ours} to it"
        )
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        return "PIP_CONFIG_FILE is os.devnull: pip reads no config file, so the hold would not apply: unset it"
    return ""


def check_hold(python: str, constraints_file: Path) -> None:
    """Fail unless pip in the target interpreter applies our constraints on `pip install` (env vars included)."""
    ours = str(constraints_file)
    problem = env_overrides_hold(constraints_file)
    if problem:
        raise PipError(problem)
    values = effective_config(python)
    for key in ("global.constraint", "install.constraint"):
        if key in values and ours not in values[key].split():
            raise PipError(f"pip's effective {key} is {values[key]!r} and lacks {ours}: another config overrides it")
    if not any(ours in values.get(key, "").split() for key in ("global.constraint", "install.constraint")):
        raise PipError(f"pip in {python} does not read the constraint {ours}")


if __name__ == "__main__":  # a quick look at what the target interpreter has: python -m installers.kaggle.pip [PYTHON]
    print(probe_installed(sys.argv[1] if len(sys.argv) > 1 else sys.executable))
