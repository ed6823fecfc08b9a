"""Hashed pip requirements ("locks"): read them, check them against the spec, write them (env/requirements.lock,
a wheelhouse's lock).

Standard library only: the Kaggle installer uses this before anything is installed. A lock is pip's
requirements format, one `name==version` per requirement followed by `--hash=sha256:...` options, with
backslash continuations, comments and option lines (`--index-url ...`), as pip-compile and `uv pip compile`
write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rsna_phase0.atomic import sha256_file
from rsna_phase0.core.versions import canonical_name, public_version

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*(;.*)?$")
_HASH = re.compile(r"--hash[= ](sha256:[0-9a-fA-F]{64})")
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


class LockError(ValueError):
    """A lock is unreadable, malformed or disagrees with the spec, or one cannot be made; the message says why and
    what to do."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503) name
    version: str
    hashes: tuple[str, ...]
    marker: str = ""


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_lock(path: str | Path) -> dict[str, Pin]:
    """Pins of a hashed requirements file by canonical name; every requirement must be `==` and hashed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LockError(f"{path}: cannot read the requirements lock: {exc.strerror or exc}") from None
    return parse_lock_text(text, str(path))


def parse_lock_text(text: str, source: str = "requirements lock") -> dict[str, Pin]:
    """`parse_lock` on the file's text; `source` names it in errors."""
    pins: dict[str, Pin] = {}
    for line in _logical_lines(text):
        if line.startswith("-"):  # option line: --index-url, --extra-index-url, --find-links ...
            continue
        hashes = tuple(h.lower() for h in _HASH.findall(line))
        requirement = _HASH.sub("", line).strip()
        match = _PIN.match(requirement)
        if not match:
            raise LockError(f"{source}: `{requirement}` is not pinned with `==`; a lock pins every package exactly")
        if not hashes:
            raise LockError(f"{source}: `{requirement}` has no --hash; regenerate the lock with hashes")
        name = canonical_name(match.group(1))
        if name in pins and pins[name].version != match.group(3):
            raise LockError(f"{source}: {name} is pinned twice ({pins[name].version}, {match.group(3)})")
        pins[name] = Pin(name, match.group(3), hashes, (match.group(4) or "").lstrip(";").strip())
    return pins  # may be empty: everything the spec needs is installed already (checked against the spec)


def format_lock(header: list[str], entries: list[tuple[str, str, list[str], str]]) -> str:
    """The writer: `# header` lines, then per (name, version, sha256s, comment) `name==version` with one
    `--hash=sha256:` continuation line per hash and an optional `# comment` line; `parse_lock_text` reads it back."""
    lines = [f"# {line}" for line in header]
    for name, version, hashes, comment in entries:
        if not hashes:
            raise LockError(f"{name}=={version}: no sha256 to lock it with")
        hash_lines = [f"    --hash=sha256:{sha.removeprefix('sha256:')}" for sha in hashes]  # hex, or as Pin holds it
        lines += [f"{name}=={version} \\", *(h + " \\" for h in hash_lines[:-1]), hash_lines[-1]]
        if comment:
            lines.append(f"    # {comment}")
    return "\n".join(lines) + "\n"


def _matches(version: str, wanted: str) -> bool:
    return version == wanted or public_version(version) == wanted


def check_against_spec(
    pins: dict[str, Pin], spec, lock_path: str | Path, installed: dict[str, str] | None = None
) -> None:
    """Fail unless torch and every runtime package of the spec is locked at the spec's version, or (offline
    machines whose torch came with the image) already installed at it and not locked at another."""
    installed = installed or {}
    wanted = {"torch": spec.torch_version, **spec.packages}
    problems = []
    for name, version in wanted.items():
        pin = pins.get(canonical_name(name))
        if pin is not None and not _matches(pin.version, version):
            problems.append(f"{name}=={pin.version} but the spec says {version}")
        elif pin is None and not _matches(installed.get(canonical_name(name), ""), version):
            problems.append(f"{name} is missing (spec: {version}) and not installed at that version")
    if problems:
        raise LockError(
            f"{lock_path}: the lock disagrees with the spec {spec.path}: "
            + "; ".join(problems)
            + ". Regenerate the lock from the spec, or pass --requirements FILE with a lock that matches it."
        )


def held_versions(pins: dict[str, Pin], spec, installed: dict[str, str] | None = None) -> dict[str, str]:
    """Exact versions to hold: torch and every spec package as locked, else as installed (checked above)."""
    installed = installed or {}
    names = [canonical_name(n) for n in ("torch", *spec.packages)]
    return {n: pins[n].version if n in pins else installed[n] for n in names}


def constraint_lines(pins: dict[str, Pin], spec, installed: dict[str, str] | None = None) -> list[str]:
    """What later pip runs must keep: torch (exactly as locked), every spec package, MinkowskiEngine."""
    lines = [f"{name}=={version}" for name, version in held_versions(pins, spec, installed).items()]
    lines.append(f"minkowskiengine=={spec.minkowski.version}")
    return lines


def wheel_name_version(filename: str) -> tuple[str, str]:
    match = _WHEEL.match(filename)
    if not match:
        raise LockError(f"{filename}: not a wheel file name (name-version-[build-]python-abi-platform.whl)")
    return canonical_name(match.group("name")), match.group("version")


def lock_for_wheelhouse(wheel_dir: str | Path) -> str:
    """A hashed requirements file pinning every wheel in `wheel_dir` (one version per package), for offline use."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for wheel in sorted(Path(wheel_dir).glob("*.whl")):
        name, version = wheel_name_version(wheel.name)
        if name in pins and pins[name][0] != version:
            raise LockError(f"{wheel_dir}: two versions of {name} ({pins[name][0]}, {version}); keep one")
        pins.setdefault(name, (version, []))[1].append(sha256_file(wheel))
    if not pins:
        raise LockError(f"{wheel_dir}: no wheels to lock")
    entries = [(name, version, hashes, "") for name, (version, hashes) in sorted(pins.items())]
    return format_lock([f"hashed lock of the wheels in {wheel_dir} (rsna_phase0/core/requirements_lock.py)"], entries)
