"""Where the MinkowskiEngine source comes from, proven by an id: the fork's pinned commit, the PyPI sdist's sha256,
or a hash of a local tree/tarball (offline: a Kaggle data set, a carried file).

`locate` is cheap (no clone, no extraction) so a cached wheel can be found in seconds; `materialize` produces a
private, writable copy of the tree to build in (setup.py runs `rm -rf build` and `pip uninstall` in its tree).
Standard library only (and rsna_phase0.atomic, which is too).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from installers.minkowski.errors import BuildError
from rsna_phase0.atomic import sha256_file, write_atomic

LS_REMOTE_TIMEOUT_S = 20
CLONE_TIMEOUT_S = 600
_TREE_IGNORE = {".git", "build", "dist", "__pycache__", ".eggs"}


@dataclass(frozen=True)
class Source:
    kind: str  # "git" | "sdist" | "local"
    id: str  # commit sha | sdist sha256 | local tree/archive sha256
    url: str  # where it came from (git url, sdist url, or the local path)
    location: str  # what materialize reads: the git url, an archive path or a directory


def tree_hash(root: Path) -> str:
    """sha256 over the sorted relative paths and contents of a source tree (build outputs and .git excluded)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _TREE_IGNORE or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        digest.update(rel.as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def git_reachable(url: str, branch: str, timeout: float = LS_REMOTE_TIMEOUT_S) -> tuple[bool, str]:
    """(reachable, why) from a quick `git ls-remote` that cannot prompt or hang."""
    if shutil.which("git") is None:
        return False, "git is not installed"
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(
            ["git", "ls-remote", "--heads", url, branch],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"git ls-remote timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return False, (proc.stderr.strip().splitlines() or ["git ls-remote failed"])[-1]
    return True, "reachable"


def fetch_sdist(url: str, sha256: str, cache_dir: Path, *, flag: str = "--source") -> Path:
    """The sdist in `cache_dir/sources/`, downloaded once with urllib and verified; refuse a mismatch."""
    target = Path(cache_dir) / "sources" / url.rsplit("/", 1)[-1]
    if target.is_file():
        actual = sha256_file(target)
        if actual == sha256:
            return target
        target.unlink()  # a corrupt or truncated earlier download: fetch it again, then verify

    def download_verified(out) -> None:
        # hashed while streaming; a mismatch raises before the rename, so only a verified sdist is ever `target`
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise BuildError(
                f"sha256 mismatch for {url}: got {digest.hexdigest()}, env/reference.toml pins {sha256}; refusing to "
                "build (the file changed or the download was tampered with)"
            )

    try:
        write_atomic(target, download_verified)
    except OSError as exc:
        raise BuildError(
            f"cannot download the MinkowskiEngine sdist {url}: {exc}. Offline? Pass {flag} PATH with a copy of "
            "the sdist (a Kaggle data set or a carried file)"
        ) from None
    return target


def offline_candidates(me, choice: str) -> list[Source]:
    """The sources `choice` may resolve to, known without any network (ids from the spec, a local path hashed),
    so a cached wheel is found before `locate` tries git or a download. `auto` prefers the fork, as locate does."""
    git = Source("git", me.commit, me.git_url, me.git_url)
    sdist = Source("sdist", me.sdist_sha256, me.sdist_url, "")
    if choice in ("auto", "git", "sdist"):
        return {"auto": [git, sdist], "git": [git], "sdist": [sdist]}[choice]
    try:
        return [locate(me, choice, Path("."))]  # a local path: hashing it needs no network
    except BuildError:
        return []


def locate(me, choice: str, cache_dir: Path, *, log=print, flag: str = "--source") -> Source:
    """Resolve --source (auto | git | sdist | PATH) against the spec's [minkowski] table `me`."""
    if choice == "auto":
        ok, why = git_reachable(me.git_url, me.branch)
        log(f"source auto: fork {me.git_url} {'reachable' if ok else 'not reachable (' + why + ')'}")
        choice = "git" if ok else "sdist"
    if choice == "git":
        return Source("git", me.commit, me.git_url, me.git_url)
    if choice == "sdist":
        path = fetch_sdist(me.sdist_url, me.sdist_sha256, cache_dir, flag=flag)
        return Source("sdist", me.sdist_sha256, me.sdist_url, str(path))
    path = Path(choice).expanduser().resolve()
    if path.is_dir():
        if not (path / "setup.py").is_file():
            raise BuildError(f"{path}: not a MinkowskiEngine source tree (no setup.py)")
        return Source("local", tree_hash(path), str(path), str(path))
    if path.is_file():
        digest = sha256_file(path)
        if digest == me.sdist_sha256:  # the pinned sdist, carried: same source, same cache key as a download
            return Source("sdist", digest, me.sdist_url, str(path))
        return Source("local", digest, str(path), str(path))
    raise BuildError(f"{flag} {choice}: no such file or directory (use auto, git, sdist or a path)")


def _extract(archive: Path, dest: Path) -> Path:
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest)
    except (tarfile.TarError, OSError) as exc:
        raise BuildError(f"{archive}: cannot extract ({exc}); is it the MinkowskiEngine sdist?") from None
    roots = [p.parent for p in dest.glob("*/setup.py")] or ([dest] if (dest / "setup.py").is_file() else [])
    if len(roots) != 1:
        raise BuildError(f"{archive}: expected one top-level folder with setup.py, found {len(roots)}")
    return roots[0]


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=CLONE_TIMEOUT_S, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"git {' '.join(args)} failed: {exc}") from None
    if proc.returncode != 0:
        raise BuildError(f"git {' '.join(args)} failed: {proc.stderr.strip()[-1500:]}")
    return proc.stdout.strip()


def checkout_commit(url: str, branch: str, commit: str, dest: Path) -> Path:
    """Clone the fork and check out the pinned commit; refuse when HEAD is anything else."""
    _git("clone", "--quiet", "--branch", branch, url, str(dest))
    try:
        _git("checkout", "--quiet", "--detach", commit, cwd=dest)
    except BuildError:  # the pin left the branch (force-push): fetch it by its sha
        _git("fetch", "--quiet", "origin", commit, cwd=dest)
        _git("checkout", "--quiet", "--detach", commit, cwd=dest)
    head = _git("rev-parse", "HEAD", cwd=dest)
    if head != commit:
        raise BuildError(f"commit mismatch: {url} checked out {head}, env/reference.toml pins {commit}; refusing")
    return dest


def materialize(source: Source, me, workdir: Path) -> Path:
    """A private copy of the tree under `workdir`, ready to patch and build."""
    workdir = Path(workdir)
    if source.kind == "git":
        return checkout_commit(source.location, me.branch, me.commit, workdir / "MinkowskiEngine")
    location = Path(source.location)
    if location.is_dir():
        dest = workdir / "MinkowskiEngine"
        shutil.copytree(location, dest, ignore=shutil.ignore_patterns(*_TREE_IGNORE, "*.egg-info"), symlinks=True)
        return dest
    return _extract(location, workdir / "src")
