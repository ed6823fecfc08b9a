"""Rehearse the Kaggle setup on a machine whose torch came with its image (the GPU machine, or a Kaggle image
kept as it is): write a spec override and a hashed lock that describe that machine, for kaggle_setup.py.

    python -m tools.kaggle_rehearsal --python python3 --find-links .carry/whl --out /tmp/rehearsal
    RSNA_PHASE0_SPEC=/tmp/rehearsal/spec.toml python installers/kaggle_setup.py --requirements \
        /tmp/rehearsal/requirements.lock --no-index --find-links .carry/whl --system-site-packages ...

The override keeps the reference spec and changes only what the image decides: Python minor, torch version, its
CUDA and cuDNN, and each runtime package's version (a wheel in --find-links wins over what is installed). A
package found in neither place is an error. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from installers.kaggle import pip as kaggle_pip
from rsna_phase0.atomic import write_text_atomic
from rsna_phase0.check_env.spec import load_spec
from rsna_phase0.core import requirements_lock as kaggle_lock
from rsna_phase0.core.versions import canonical_name, public_version

_TORCH_FACTS = (
    "import json, sys, torch; print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'torch': torch.__version__,"
    " 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() if torch.version.cuda else None}))"
)


class RehearsalError(RuntimeError):
    pass


def torch_facts(python: str) -> dict:
    done = subprocess.run([python, "-c", _TORCH_FACTS], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RehearsalError(f"{python}: torch is not importable, nothing to rehearse against: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def override_toml(text: str, values: dict[tuple[str, str], str | int]) -> str:
    """Replace `key = value` lines inside their [section], keeping comments and layout; every key must exist."""
    section, seen, out = "", set(), []
    for line in text.splitlines():
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1).strip()
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+)(\s*=\s*)(\"[^\"]*\"|[^\s#]+)(.*)$", line)
        if match and (section, match.group(2)) in values:
            value = values[(section, match.group(2))]
            rendered = str(value) if isinstance(value, int) else f'"{value}"'
            line = f"{match.group(1)}{match.group(2)}{match.group(3)}{rendered}{match.group(5)}"
            seen.add((section, match.group(2)))
        out.append(line)
    missing = set(values) - seen
    if missing:
        raise RehearsalError(f"keys not found in the spec: {sorted(missing)}")
    return "\n".join(out) + "\n"


def wheel_versions(folders: list[Path]) -> dict[str, str]:
    versions = {}
    for folder in folders:
        for wheel in sorted(Path(folder).glob("*.whl")):
            name, version = kaggle_lock.wheel_name_version(wheel.name)
            versions[name] = version
    return versions


def rehearse(python: str, find_links: list[Path], out: Path) -> tuple[Path, Path]:
    spec = load_spec()
    facts = torch_facts(python)
    installed = kaggle_pip.probe_installed(python).versions
    carried = wheel_versions(find_links)
    values: dict[tuple[str, str], str | int] = {
        ("python", "minor"): facts["python"],
        ("torch", "version"): public_version(facts["torch"]),
        ("torch", "cuda"): facts["cuda"] or "cpu",
    }
    if facts["cuda"]:
        values[("torch", "cudnn")] = int(facts["cudnn"] or 0)
        values[("cuda_toolkit", "version")] = facts["cuda"]
    for name in spec.packages:
        key = canonical_name(name)
        version = carried.get(key) or installed.get(key)
        if version is None:
            raise RehearsalError(f"{name} is neither installed in {python} nor a wheel in {find_links}")
        values[("packages", name)] = version
    out.mkdir(parents=True, exist_ok=True)
    spec_out, lock_out = out / "spec.toml", out / "requirements.lock"
    write_text_atomic(spec_out, override_toml(spec.path.read_text(encoding="utf-8"), values))
    lock_text = "".join(kaggle_lock.lock_for_wheelhouse(f) for f in find_links if list(Path(f).glob("*.whl")))
    write_text_atomic(lock_out, lock_text or "# no wheels carried: everything is installed already\n")
    return spec_out, lock_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kaggle_rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter with the image's torch")
    parser.add_argument("--find-links", action="append", default=[], type=Path, help="folder of carried wheels")
    parser.add_argument("--out", required=True, type=Path, help="where spec.toml and requirements.lock go")
    args = parser.parse_args(argv)
    try:
        spec_out, lock_out = rehearse(args.python, args.find_links, args.out)
    except (RehearsalError, kaggle_lock.LockError, kaggle_pip.PipError) as exc:
        print(f"kaggle_rehearsal: {exc}", file=sys.stderr)
        return 1
    print(f"spec override: {spec_out}\nlock: {lock_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
