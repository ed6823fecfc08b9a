"""Build, cache, install and verify MinkowskiEngine one way everywhere (Dockerfile, Kaggle installer, CI).

Driven by env/reference.toml [minkowski]: the source (the users' fork at the pinned commit, the PyPI sdist by
sha256, or a local tree/tarball), the toolchain's source fixes (installers/minkowski/fixes.py), the CUDA archs.
Every wheel carries `rsna_build.json` in its dist-info saying exactly what it was built from and against, and is
cached under a key of everything that changes the binary, so the next setup installs it in seconds.

    python installers/build_minkowski.py [--source auto|git|sdist|PATH] [--cpu-only] [--archs "7.5;8.6"]
        [--jobs N] [--cache DIR] [--wheelhouse DIR]... [--wheel-out DIR] [--log FILE] [--no-install]
        [--verify-only] [--dry-run] [--python PYTHON]

Standard library only: it runs before anything but torch is installed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from installers.minkowski.errors import BuildError
from installers.minkowski.fixes import APPLIED, FIXER_REVISION, PRESENT, BuildTarget, apply_fixes, needed_fixes
from installers.minkowski.progress import HEARTBEAT_S, Heartbeat, progress_line
from installers.minkowski.source import Source, locate, materialize, offline_candidates
from installers.minkowski.toolchain import (
    Toolchain,
    check_free_space,
    check_toolchain,
    mem_available_bytes,
    probe,
    size_max_jobs,
)
from installers.minkowski.wheel import SCHEMA, embed_build_record, read_build_record
from rsna_phase0.atomic import copy_atomic
from rsna_phase0.core.archs import arch_covers, parse_archs
from rsna_phase0.core.probes import usable_cores
from rsna_phase0.core.versions import public_version, version_tuple

__all__ = [
    "BuildError",
    "BuildResult",
    "VerifyResult",
    "cache_key",
    "ensure_installed",
    "size_max_jobs",
    "verify",
]

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsna_phase0" / "wheels"
SELFTEST = Path(__file__).resolve().parent / "selftest.py"  # run as a script in the target Python
# What a compiler killed for memory looks like in the build output (cc1plus, cicc or ptxas).
_OOM_PATTERNS = re.compile(
    r"Killed signal terminated program|signal 9|\bKilled\b|virtual memory exhausted|out of memory"
)
_ENOSPC_PATTERN = re.compile(r"No space left on device")
_ARCH = re.compile(r"^\d+\.\d+(\+PTX)?$")
# CUDA 13 dropped sm_50..sm_72 (Maxwell, Pascal, Volta): nvcc 13 refuses those archs.
_MIN_ARCH_FOR_CUDA = {13: (7, 5)}


@dataclass
class BuildResult:
    wheel: Path
    from_cache: bool
    metadata: dict
    seconds: float
    log_path: Path | None


@dataclass
class VerifyResult:
    ok: bool
    lines: list[str] = field(default_factory=list)


# ---- cache ---------------------------------------------------------------------------------------------------


def cache_key(
    *,
    source_id: str,
    fixes: Iterable[str],
    python_tag: str,
    torch: str,
    torch_cuda: str | None,
    cuda_archs: str | None,
    cpu_only: bool,
    blas: str,
    me_version: str,  # the spec's [minkowski] version
    fixer_revision: int = FIXER_REVISION,
) -> str:
    """A short hash of everything that changes the built binary: equal keys mean interchangeable wheels."""
    payload = {
        "source_id": source_id,
        "fixes": sorted(fixes),
        "python_tag": python_tag,
        "torch": torch,
        "torch_cuda": torch_cuda,
        "cuda_archs": cuda_archs,
        "cpu_only": bool(cpu_only),
        "blas": blas,
        "me_version": me_version,
        "fixer_revision": fixer_revision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def key_of_record(record: dict) -> str | None:
    """The cache key a wheel's embedded record stands for (None for a record this module cannot read)."""
    try:
        return cache_key(
            source_id=record["source"]["id"],
            fixes=record["fixes"],
            python_tag="cp" + record["python"].replace(".", ""),
            torch=record["torch"],
            torch_cuda=record["torch_cuda"],
            cuda_archs=record["cuda_archs"],
            cpu_only=record["cpu_only"],
            blas=record["blas"],
            me_version=record["me_version"],
            fixer_revision=record.get("fixer_revision", 0),
        )
    except (KeyError, TypeError, AttributeError):
        return None


def find_cached_wheel(
    key: str, cache_dir: Path, wheelhouses: Iterable[Path] = (), fits: dict | None = None
) -> Path | None:
    """A wheel whose embedded record matches `key` (the cache's own folder, then the extra wheelhouses); failing
    that, with `fits` (the record of the build this machine would make), a wheel that `record_misfit` accepts."""
    machine = platform.machine()
    candidates = sorted((Path(cache_dir) / key).glob("*.whl"))
    for house in wheelhouses:
        candidates += sorted(p for p in Path(house).glob("*.whl") if p.name.lower().startswith("minkowskiengine-"))
    candidates = [w for w in candidates if not machine or machine in w.name]
    records = [(wheel, read_build_record(wheel)) for wheel in candidates]
    for wheel, record in records:
        if record is not None and key_of_record(record) == key:
            return wheel
    for wheel, record in records if fits else ():
        if not record_misfit(record, fits):
            return wheel
    return None


def record_misfit(record: dict | None, wanted: dict) -> str:
    """Empty when a wheel with build record `record` can serve the build `wanted` (the record this machine would
    write; `source` and `blas` may be left out), else why not. The one rule for "this wheel fits": the cache and
    wheelhouse lookup here and the Kaggle installer's plan both use it. The fixes may differ (they follow the
    toolchain that compiled it, not the binary's interface) and a CUDA wheel may cover more archs than asked."""
    if not record:
        return "not built by installers/build_minkowski.py (no build record)"
    if record.get("cache_key") != key_of_record(record):
        return "its build record is inconsistent (cache key does not match its fields)"
    if record.get("me_version") != wanted["me_version"]:
        return f"it is version {record.get('me_version')}, the spec says {wanted['me_version']}"
    source, want_source = record.get("source") or {}, wanted.get("source")
    if want_source and source.get("id") != want_source["id"]:
        return (
            f"it was built from {source.get('kind')} {source.get('id')}, not {want_source['kind']} {want_source['id']}"
        )
    if record.get("python") != wanted["python"]:
        return f"it was built for Python {record.get('python')}, this is {wanted['python']}"
    built_torch, want_torch = str(record.get("torch", "")), wanted["torch"]
    if (built_torch if "+" in want_torch else public_version(built_torch)) != want_torch:
        return f"it was compiled against torch {built_torch}, not {want_torch}"
    if bool(record.get("cpu_only")) != bool(wanted["cpu_only"]):
        return f"it is a {'CPU-only' if record.get('cpu_only') else 'CUDA'} build"
    if wanted.get("blas") and record.get("blas") != wanted["blas"]:
        return f"it uses BLAS {record.get('blas')}, not {wanted['blas']}"
    if not wanted["cpu_only"]:
        if str(record.get("torch_cuda")) != str(wanted["torch_cuda"]):
            return f"it was built with torch CUDA {record.get('torch_cuda')}, not {wanted['torch_cuda']}"
        wanted_caps = sorted({f"{major}.{minor}" for major, minor, _ in parse_archs(wanted.get("cuda_archs"))})
        missing = [cap for cap in wanted_caps if not arch_covers(record.get("cuda_archs"), cap)]
        if missing:
            return f"it was built for archs {record.get('cuda_archs')}, which do not run on {';'.join(missing)}"
    return ""


@contextlib.contextmanager
def key_lock(cache_dir: Path, key: str, say: Callable[[str], None] = print):
    """One build per cache key at a time: a second setup waits, then finds the wheel the first one built."""
    path = Path(cache_dir) / f".{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another build of {key} is running; waiting for it ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_in_cache(wheel: Path, key: str, cache_dir: Path) -> Path:
    target = Path(cache_dir) / key / wheel.name
    copy_atomic(wheel, target)
    return target


# ---- options -------------------------------------------------------------------------------------------------


def resolve_archs(option: str | None, spec_default: str, tc: Toolchain, *, cpu_only: bool) -> str | None:
    """TORCH_CUDA_ARCH_LIST: --archs, or "visible" for this machine's GPUs, else the spec's default list."""
    if cpu_only:
        return None
    if option == "visible":
        if not tc.gpu_archs:
            raise BuildError("--archs visible: no GPU is visible; name the archs, e.g. --archs 7.5 (T4) or 9.0 (H100)")
        archs = list(tc.gpu_archs)
    else:
        archs = [a.strip() for a in re.split(r"[;, ]+", option or spec_default) if a.strip()]
    if not archs or not all(_ARCH.match(a) for a in archs):
        raise BuildError(
            f"--archs {option or spec_default!r}: expected compute capabilities like '7.5;8.6' or 'visible'"
        )
    minimum = _MIN_ARCH_FOR_CUDA.get((version_tuple(tc.nvcc) or (0,))[0])
    if minimum:
        too_old = [a for a in archs if version_tuple(a) < minimum]
        if too_old:
            raise BuildError(
                f"nvcc {tc.nvcc} cannot compile for {';'.join(too_old)} (CUDA 13 dropped sm < 7.5): pass --archs with "
                f"only {'.'.join(map(str, minimum))} or newer, e.g. --archs 9.0"
            )
    return ";".join(sorted(set(archs), key=version_tuple))


def default_jobs() -> int:
    return size_max_jobs(mem_available_bytes(), usable_cores())


# ---- building ------------------------------------------------------------------------------------------------


def _pip(python: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, check=False)


def uninstall(python: str) -> None:
    """Remove any installed MinkowskiEngine so a stale binary can never be imported instead of the new one."""
    proc = _pip(python, "uninstall", "-y", "MinkowskiEngine")
    if proc.returncode != 0:
        raise BuildError(f"pip uninstall MinkowskiEngine failed in {python}:\n{proc.stderr[-2000:]}")


def install_wheel(python: str, wheel: Path) -> None:
    # --no-index --no-deps: torch and numpy are already pinned; pip must never pull or upgrade anything here
    # (an upgraded torch under a compiled ME is exactly how the previous attempt broke).
    proc = _pip(python, "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel))
    if proc.returncode != 0:
        raise BuildError(f"installing {wheel} into {python} failed:\n{proc.stdout[-1500:]}{proc.stderr[-2000:]}")


def pip_needs_pep517_flag(python: str) -> bool:
    """Whether this pip still has a legacy `setup.py egg_info` path (pip < 25.3, e.g. Python 3.12.1's bundled
    23.2.1): there, without --use-pep517, config settings never reach setup.py, which then silently builds
    CPU-only and dies on `numpy.distutils` (gone on Python 3.12). Newer pips always use PEP 517 and dropped the flag."""
    try:
        proc = _pip(python, "wheel", "--help", timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and "--use-pep517" in proc.stdout


def wheel_command(
    python: str, tree: Path, out_dir: Path, *, cpu_only: bool, blas: str, use_pep517: bool = False
) -> list[str]:
    """pip wheel with setup.py's options passed as separate --global-option config settings, which reach every
    PEP 517 hook (--build-option does not reach the metadata hook; one quoted string arrives as one argv item)."""
    flags = ["--cpu_only" if cpu_only else "--force_cuda", f"--blas={blas}"]
    return [
        python,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        *(["--use-pep517"] if use_pep517 else []),
        "-v",
        "--wheel-dir",
        str(out_dir),
        *[f"-C--global-option={flag}" for flag in flags],
        str(tree),
    ]


def build_env(python: str, *, jobs: int, archs: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # setup.py shells out to `pip uninstall`: make that the target interpreter's pip, and its ninja.
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    env["MAX_JOBS"] = str(jobs)
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # pip's output is a pipe here: stream ninja's steps, do not buffer them
    if archs:
        env["TORCH_CUDA_ARCH_LIST"] = archs
    else:
        env.pop("TORCH_CUDA_ARCH_LIST", None)
    return env


def run_logged(
    cmd: list[str], *, env: dict, cwd: Path, log_file, say: Callable[[str], None], heartbeat_s: float = HEARTBEAT_S
) -> tuple[int, list[str]]:
    """Run `cmd`, writing everything to `log_file`, a short progress line per ninja step and a heartbeat to `say`."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    started = time.monotonic()
    log_file.write(
        f"$ {' '.join(cmd)}\n# MAX_JOBS={env.get('MAX_JOBS')} TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST')}\n"
    )
    log_file.flush()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    try:
        assert proc.stdout is not None
        with Heartbeat(say, cwd, interval=heartbeat_s) as heartbeat:
            for line in proc.stdout:
                log_file.write(line)
                tail.append(line.rstrip("\n"))
                progress = progress_line(line, started)
                if progress:
                    heartbeat.line(progress)
            return proc.wait(), list(tail)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        log_file.flush()


def compile_wheel(
    python: str,
    tree: Path,
    out_dir: Path,
    *,
    cpu_only: bool,
    blas: str,
    archs: str | None,
    jobs: int,
    log_path: Path,
    say: Callable[[str], None],
    use_pep517: bool = False,
) -> Path:
    """pip wheel the patched tree; retry once with half the jobs when a compiler was killed for memory."""
    cmd = wheel_command(python, tree, out_dir, cpu_only=cpu_only, blas=blas, use_pep517=use_pep517)
    attempts = [jobs] + ([max(1, jobs // 2)] if jobs > 1 else [])
    with open(log_path, "a", encoding="utf-8") as log_file:
        for attempt, n_jobs in enumerate(attempts):
            say(
                f"compiling with MAX_JOBS={n_jobs}"
                + (f", TORCH_CUDA_ARCH_LIST={archs}" if archs else "")
                + f"; log {log_path}; a line every {HEARTBEAT_S:.0f} s (the first objects take 1-2 min on 2 cores)"
            )
            rc, tail = run_logged(
                cmd, env=build_env(python, jobs=n_jobs, archs=archs), cwd=tree, log_file=log_file, say=say
            )
            wheels = sorted(out_dir.glob("*.whl"))
            if rc == 0 and wheels:
                return wheels[0]
            text = "\n".join(tail)
            if _ENOSPC_PATTERN.search(text):
                raise BuildError(
                    f"disk full while compiling (see {log_path}): free space in {tree.parent} or set TMPDIR"
                )
            if _OOM_PATTERNS.search(text) and attempt + 1 < len(attempts):
                say(
                    f"a compiler was killed for memory with MAX_JOBS={n_jobs}; retrying once with {attempts[attempt + 1]}"
                )
                continue
            hint = " (compiler killed for memory: pass --jobs 1 or free memory)" if _OOM_PATTERNS.search(text) else ""
            raise BuildError(
                f"MinkowskiEngine build failed{hint} (exit {rc}); full log {log_path}; last lines:\n{text}"
            )
    raise AssertionError("unreachable")


# ---- verify --------------------------------------------------------------------------------------------------


def verify(
    python: str = sys.executable, expect_cuda: bool = False, version: str | None = None, *, require_gpu: bool = True
) -> VerifyResult:
    """Import, version, CUDA support as expected, and numbers (installers/minkowski/selftest.py), in `python`.

    With expect_cuda, the GPU-vs-CPU comparison needs a visible GPU; `require_gpu=False` (a docker build, where no
    GPU is visible) reports it as skipped instead of failing."""
    cmd = (
        [python, str(SELFTEST)]
        + (["--expect-cuda"] if expect_cuda else [])
        + (["--version", version] if version else [])
        + ([] if require_gpu else ["--no-gpu-ok"])
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        return VerifyResult(False, ["FAIL selftest timed out after 900 s"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0:
        lines += [f"FAIL exit {proc.returncode}"] + proc.stderr.strip().splitlines()[-25:]
    return VerifyResult(proc.returncode == 0, lines)


# ---- the whole thing -----------------------------------------------------------------------------------------


def build_record(
    *, me_version: str, source: Source, fixes: list[str], tc: Toolchain, archs: str | None, cpu_only: bool, blas: str
) -> dict:
    record = {
        "schema": SCHEMA,
        "me_version": me_version,
        "source": {"kind": source.kind, "id": source.id, "url": source.url},
        "fixes": list(fixes),
        "python": tc.python,
        "torch": tc.torch,
        "torch_cuda": tc.torch_cuda,
        "nvcc": None if cpu_only else tc.nvcc,
        "cuda_archs": archs,
        "cpu_only": bool(cpu_only),
        "blas": blas,
        "built_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "fixer_revision": FIXER_REVISION,
    }
    record["cache_key"] = key_of_record(record)
    return record


def ensure_installed(
    spec,
    *,
    source: str = "auto",
    cpu_only: bool = False,
    archs: str | None = None,
    jobs: int | None = None,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    wheelhouses: Iterable[Path | str] = (),
    wheel_out: Path | str | None = None,
    log_path: Path | str | None = None,
    python: str = sys.executable,
    install: bool = True,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
    source_flag: str = "--source",
) -> BuildResult:
    """A verified MinkowskiEngine in `python`: from the cache or a wheelhouse when one matches, else built.

    The cache and the wheelhouses are searched first, under the keys of every source `source` may mean (known
    without network), so an offline machine with a fitting wheel never tries git or a download."""
    started = time.monotonic()
    me = spec.minkowski
    cache_dir = Path(cache_dir).expanduser()
    tc = probe(python)
    say(f"target: Python {tc.python}, torch {tc.torch} (CUDA {tc.torch_cuda}), nvcc {tc.nvcc}, {tc.cxx} {tc.gcc or ''}")
    resolved_archs = resolve_archs(archs, me.cuda_archs, tc, cpu_only=cpu_only)
    target = BuildTarget(python=tc.python, cpu_only=cpu_only, torch=tc.torch, nvcc=tc.nvcc, gcc=tc.gcc)
    fixes = needed_fixes(target)
    houses = [Path(w) for w in wheelhouses]

    def record_for(src: Source) -> dict:
        return build_record(
            me_version=me.version, source=src, fixes=fixes, tc=tc, archs=resolved_archs, cpu_only=cpu_only, blas=me.blas
        )

    cached = None
    for candidate in offline_candidates(me, source):
        record = record_for(candidate)
        cached = find_cached_wheel(record["cache_key"], cache_dir, houses, fits=record)
        if cached:
            src = candidate
            break
    if cached is None:
        src = locate(me, source, cache_dir, log=say, flag=source_flag)
        record = record_for(src)
        cached = find_cached_wheel(record["cache_key"], cache_dir, houses, fits=record)
    key = record["cache_key"]
    say(f"source: {src.kind} {src.id} ({src.url}); fixes: {', '.join(fixes) or 'none'}; cache key {key}")
    if dry_run:
        if not cached:
            check_toolchain(tc, cpu_only=cpu_only, blas=me.blas)  # say now what would make the build fail
        plan = f"would install cached {cached}" if cached else f"would build (MAX_JOBS={jobs or default_jobs()})"
        say(f"dry run: {plan}")
        return BuildResult(cached or Path(), cached is not None, record, time.monotonic() - started, None)

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    log = Path(log_path) if log_path else cache_dir / "logs" / f"build-{key}-{stamp}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with key_lock(cache_dir, key, say):
        # Another process may have built this key while we waited for the lock.
        cached = cached or find_cached_wheel(key, cache_dir, houses)
        if cached:
            say(f"cache hit: {cached}")
            wheel, from_cache, record = cached, True, read_build_record(cached) or record
        else:
            wheel = _build(python, me, src, target, tc, record, resolved_archs, jobs, cache_dir, log, say)
            from_cache = False
    if wheel_out:
        out = Path(wheel_out) / wheel.name
        if out.resolve() != wheel.resolve():
            copy_atomic(wheel, out)
        wheel = out
    if install:
        uninstall(python)
        install_wheel(python, wheel)
        # A GPU torch could see at probe time must pass the GPU comparison; none visible (docker build): skipped.
        result = verify(python, expect_cuda=not cpu_only, version=me.version, require_gpu=tc.cuda_available)
        for line in result.lines:
            say(f"  {line}")
        if not result.ok:
            raise BuildError(
                f"MinkowskiEngine installed from {wheel} but failed verification:\n" + "\n".join(result.lines)
            )
    seconds = time.monotonic() - started
    say(f"MinkowskiEngine {me.version} {'from cache' if from_cache else 'built'}: {wheel} ({seconds:.0f} s)")
    return BuildResult(wheel, from_cache, record, seconds, None if from_cache else log)


def _build(python, me, src, target, tc, record, archs, jobs, cache_dir: Path, log: Path, say) -> Path:
    check_toolchain(tc, cpu_only=target.cpu_only, blas=me.blas)
    if shutil.which("ninja", path=build_env(python, jobs=1, archs=None)["PATH"]) is None:
        raise BuildError(
            f"ninja not found next to {python} or on PATH: `{python} -m pip install ninja` (without it torch "
            "compiles one file at a time)"
        )
    jobs = jobs or default_jobs()
    workdir = Path(tempfile.mkdtemp(prefix="me-build-"))
    try:
        check_free_space(workdir)
        check_free_space(cache_dir, needed=200 * 1024**2)
        log.write_text(
            f"# MinkowskiEngine build {dt.datetime.now(dt.UTC).isoformat()}\n{json.dumps(record, indent=2)}\n"
        )
        tree = materialize(src, me, workdir)
        outcomes = apply_fixes(tree, target)
        for outcome in outcomes:
            say(f"fix {outcome.name}: {outcome.status}")
        done = [o.name for o in outcomes if o.status in (APPLIED, PRESENT)]
        if done != record["fixes"]:
            raise BuildError(f"fixes done {done} differ from those planned {record['fixes']}")
        uninstall(python)
        out_dir = workdir / "wheel"
        out_dir.mkdir()
        built = compile_wheel(
            python,
            tree,
            out_dir,
            cpu_only=target.cpu_only,
            blas=me.blas,
            archs=archs,
            jobs=jobs,
            log_path=log,
            say=say,
            use_pep517=pip_needs_pep517_flag(python),
        )
        embed_build_record(built, record)
        return store_in_cache(built, record["cache_key"], cache_dir)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BuildError(f"disk full while building MinkowskiEngine ({exc}): free space or set TMPDIR") from None
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- command line --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_minkowski.py",
        description="Build, cache, install and verify MinkowskiEngine from env/reference.toml.",
    )
    parser.add_argument("--source", default="auto", help="auto (fork if reachable, else sdist) | git | sdist | PATH")
    parser.add_argument("--cpu-only", action="store_true", help="build without CUDA")
    parser.add_argument(
        "--archs", default=None, help='TORCH_CUDA_ARCH_LIST, e.g. "7.5;8.6", or "visible" (default: spec)'
    )
    parser.add_argument("--jobs", type=int, default=None, help="MAX_JOBS (default: sized from free memory and cores)")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE_DIR, help=f"wheel cache (default {DEFAULT_CACHE_DIR})"
    )
    parser.add_argument("--wheelhouse", type=Path, action="append", default=[], help="extra folder of prebuilt wheels")
    parser.add_argument("--wheel-out", type=Path, default=None, help="also copy the wheel here")
    parser.add_argument("--log", type=Path, default=None, help="full build log (default: CACHE/logs/build-KEY.log)")
    parser.add_argument("--no-install", action="store_true", help="build or fetch the wheel only")
    parser.add_argument("--verify-only", action="store_true", help="only verify the installed MinkowskiEngine")
    parser.add_argument("--dry-run", action="store_true", help="say what would happen; build and install nothing")
    parser.add_argument("--python", default=sys.executable, help="the target interpreter (default: this one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rsna_phase0.check_env.spec import SpecError, load_spec

    try:
        spec = load_spec()
        if args.verify_only:
            result = verify(args.python, expect_cuda=not args.cpu_only, version=spec.minkowski.version)
            print("\n".join(result.lines))
            return 0 if result.ok else 1
        ensure_installed(
            spec,
            source=args.source,
            cpu_only=args.cpu_only,
            archs=args.archs,
            jobs=args.jobs,
            cache_dir=args.cache,
            wheelhouses=args.wheelhouse,
            wheel_out=args.wheel_out,
            log_path=args.log,
            python=args.python,
            install=not args.no_install,
            dry_run=args.dry_run,
            say=lambda line: print(line, flush=True),
        )
    except (BuildError, SpecError) as exc:
        print(f"build_minkowski: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
