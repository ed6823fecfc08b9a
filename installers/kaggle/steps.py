"""The Kaggle installer's steps, one small class each, in the order they run: venv, packages, hold, minkowski,
project, verify, check-env, wheelhouse (setup.py's docstring says what each does).

Standard library only. Every step gets the one Setup (setup.py) at construction: the facts the steps share (the
options, the layout, the spec, the pins, what is installed, the stamp, the wheelhouses). `plan()` says what the
step would do here (a Step: to do or not, blocked and why, about how long) and changes nothing; `run(log, say)`
does it, writing pip's and the tools' output to the log and one line at a time to `say`, or raises SetupError.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from installers.kaggle import pip as kaggle_pip
from installers.kaggle import toolchain as kaggle_toolchain
from installers.kaggle import venv as kaggle_venv
from installers.kaggle import wheelhouse as kaggle_wheelhouse
from installers.minkowski import build as build_minkowski
from installers.minkowski.source import fetch_sdist

if TYPE_CHECKING:
    from installers.kaggle.setup import Layout, Setup

Say = Callable[[str], None]

DEFAULT_INDEX = "https://pypi.org/simple"
# `rsna-phase0 check-env ...` through the target interpreter, whatever folder its console scripts went to.
CHECK_ENV = "import sys; from rsna_phase0.cli import main; sys.exit(main())"
# Build cost in core-seconds, calibrated on measured builds: CPU-only 7 min 10 s on 2 busy cores (issue 16); CUDA
# 12.4 for sm_75 against torch 2.4.0, MAX_JOBS=2 on 2 shared cores: 1229 s (benchmarks/cuda12_minkowski_build.sh).
# Each further arch compiles the device code again: 6.0;7.5 took 2112 s there (x1.72, the cores busier).
BUILD_CORE_SECONDS_CPU, BUILD_CORE_SECONDS_CUDA, EXTRA_ARCH_FACTOR = 860, 2460, 0.7


class SetupError(RuntimeError):
    """The setup cannot go on; the message says what and how to fix it."""


@dataclass
class Step:
    """What one step would do: its plan."""

    name: str
    todo: bool  # False: already as wanted
    detail: str
    seconds: float = 0.0
    blocked: str = ""  # why it cannot run here, with the fix


class SetupStep:
    """One step of the setup over the shared facts of `setup`: plan() changes nothing, run() does the step."""

    name = ""

    def __init__(self, setup: Setup):
        self.setup = setup

    def plan(self) -> Step:
        raise NotImplementedError

    def run(self, log: TextIO, say: Say) -> None:
        raise NotImplementedError


def in_order(setup: Setup) -> list[SetupStep]:
    """The steps of this setup in the order they are planned and run (wheelhouse only with --make-wheelhouse)."""
    steps = [Venv, Packages, Hold, Minkowski, Project, Verify, CheckEnv]
    return [step(setup) for step in (*steps, *([Wheelhouse] if setup.options.make_wheelhouse else []))]


class Venv(SetupStep):
    """The reference environment: `venv --without-pip` from the notebook's Python, pip from a wheel."""

    name = "venv"

    def plan(self) -> Step:
        s = self.setup
        if not s.venv_problem:
            return Step(self.name, False, f"{s.env_dir} (Python {s.base['version']}, from {s.base_python})")
        detail = (
            f"{s.venv_problem}: make it from {s.base_python} (Python {s.base['version']}; the notebook's own "
            "packages stay as they are)"
        )
        return Step(self.name, True, detail, 10.0)

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        s.state.forget("verified")
        folders = [*([s.offline.folder] if s.offline else []), *s.wheelhouses, *map(Path, s.options.find_links)]
        try:
            pip_from = kaggle_venv.create(
                s.base_python,
                s.env_dir,
                wheel_folders=folders,
                source_options=s.source_options(),
                log=log,
                system_site=s.options.system_site_packages,
            )
        except (kaggle_venv.VenvError, OSError) as exc:
            raise SetupError(f"{exc} (--env-dir names another place)") from None
        say(f"  {s.env_dir} made from {s.base_python}; pip from {pip_from}")
        s.installed = s.probe()
        s.state.mark("venv", env=str(s.env_dir))


class Packages(SetupStep):
    """The hashed lock with `pip --require-hashes`, from the offline wheelhouse when there is one."""

    name = "packages"

    def plan(self) -> Step:
        s = self.setup
        changes = []
        for pin in s.pins.values():
            have = s.installed.versions.get(pin.name)
            if have is None and pin.marker:
                continue  # a conditional pin (environment marker) pip may rightly skip
            if have != pin.version:
                changes.append((pin.name, have, pin.version))
        if not changes:
            return Step(self.name, False, f"all {len(s.pins)} locked packages installed at their versions")
        torch_change = next((c for c in changes if c[0] == "torch"), None)
        seconds = 3.0 * len(changes) + (0 if torch_change is None else 30 if s.cpu_only else 120)
        shown = ", ".join(f"{n} {h or '-'} -> {v}" for n, h, v in changes[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        detail = f"{len(changes)} to install from {s.lock_path.name}: {shown}{more}"
        return Step(self.name, True, detail, seconds, blocked=self.offline_problem())

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        s.state.forget("verified")  # whatever changes now must be verified again
        s.write_constraints()
        args = ["install", "--require-hashes", "-r", str(s.lock_path), "-c", str(s.layout.constraints)]
        try:
            kaggle_pip.run_pip(s.python, [*args, *s.source_options(), "--progress-bar", "off"], log)
        except kaggle_pip.PipError as exc:
            offline = self.offline_problem()
            raise SetupError(offline or str(exc)) from None
        s.installed = s.probe()
        wrong = [(p.name, s.installed.versions.get(p.name), p.version) for p in s.pins.values() if not p.marker]
        wrong = [w for w in wrong if w[1] != w[2]]
        if wrong:
            raise SetupError(f"after pip install, still not as locked: {wrong}")
        s.state.mark("packages", lock=str(s.lock_path))

    def offline_problem(self) -> str:
        """Why the packages cannot be fetched ("" when a wheelhouse or a reachable index can give them)."""
        s = self.setup
        if s.offline or s.options.no_index:
            return ""
        index_url = s.options.index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
        why = index_unreachable(index_url)
        if not why:
            return ""
        return (
            f"no package index reachable ({index_url}: {why}): this session is offline. Attach a wheelhouse "
            f"made by `python installers/kaggle_setup.py --make-wheelhouse DIR` in a session with internet (found "
            f"under {s.layout.root / 'input'}/* by itself, or pass --wheelhouse DIR), pass --no-index --find-links "
            "DIR with the locked wheels, or switch the notebook's internet on"
        )


def index_unreachable(url: str, timeout: float = 10) -> str:
    """Why the package index cannot be reached ("" when it answers at all: any HTTP status counts)."""
    if url.startswith("file:"):
        path = Path(urllib.parse.urlparse(url).path)
        return "" if path.exists() else f"{path} does not exist"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except urllib.error.HTTPError:
        return ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):  # it answered; pip checks certificates its own way (cert, certifi)
            return ""
        return str(reason)


class Hold(SetupStep):
    """The constraints file (torch and every pin) named in the interpreter's pip.conf, so a later `pip install`
    that wants another torch is refused."""

    name = "hold"

    def plan(self) -> Step:
        s = self.setup
        path = s.layout.constraints
        problem = kaggle_pip.env_overrides_hold(path)
        if problem:
            return Step(self.name, True, "the pins cannot be held for later pip runs", blocked=problem)
        if not path.exists() or path.read_text(encoding="utf-8") != s.constraints_text():
            return Step(self.name, True, f"write {path} and name it in the {s.options.pip_config} pip.conf", 2.0)
        try:
            kaggle_pip.check_hold(s.python, path)
        except kaggle_pip.PipError as exc:
            return Step(self.name, True, f"pip does not apply the hold yet ({exc})", 2.0)
        return Step(self.name, False, f"pip applies {path} (torch=={s.torch_version} and every pin)")

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        s.write_constraints()
        try:
            config, changed = kaggle_pip.hold_pins(s.python, s.installed, s.layout.constraints, s.options.pip_config)
        except kaggle_pip.PipError as exc:
            raise SetupError(str(exc)) from None
        log.write(f"hold: {config} names {s.layout.constraints} (changed: {changed})\n")
        say(f"  torch=={s.torch_version} and every pin held for later pip runs: {config} -> {s.layout.constraints}")
        s.state.mark("hold", config=str(config))


class Minkowski(SetupStep):
    """MinkowskiEngine: a fitting wheel from the wheelhouses or the cache, else a build for the GPUs present."""

    name = "minkowski"

    def plan(self) -> Step:
        s = self.setup
        why = s.me_misfit(s.installed.me_build)
        if not why:
            return Step(
                self.name, False, f"MinkowskiEngine {s.spec.minkowski.version} installed, its build record fits"
            )
        why = f"installed MinkowskiEngine: {why}" if s.installed.me_build else "MinkowskiEngine is not installed"
        if not s.cpu_only and not s.archs:
            blocked = "no GPU is visible to pick the CUDA archs: pass --archs '7.5' (T4) or '6.0' (P100), or --cpu-only"
            return Step(self.name, True, why, blocked=blocked)
        wheel = s.fitting_wheel()
        if wheel is not None:
            return Step(self.name, True, f"{why}; install the fitting wheel {wheel}", 20.0)
        build = estimate_build_seconds(s.cpu_only, s.archs, s.jobs)
        kind = "CPU-only" if s.cpu_only else f"CUDA (archs {s.archs})"
        where = ", ".join(str(w) for w in s.wheelhouses) or "none given"
        detail = (
            f"{why}; no fitting wheel in the wheelhouses ({where}) or {s.options.me_cache}: {kind} build with MAX_JOBS={s.jobs}, "
            f"about {build / 60:.0f} min on {s.tool.cores} cores"
        )
        problems = kaggle_toolchain.build_problems(
            s.tool, torch_cuda=s.spec.torch_cuda, cpu_only=s.cpu_only, blas=s.spec.minkowski.blas
        )
        return Step(self.name, True, detail, build, blocked=" | ".join(problems))

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        log.flush()
        cache = Path(s.options.me_cache)
        sdist = s.offline.sdist if s.offline else None
        if sdist and not (cache / "sources" / sdist.name).is_file():  # where the build module looks, offline too
            (cache / "sources").mkdir(parents=True, exist_ok=True)
            shutil.copy2(sdist, cache / "sources" / sdist.name)
        try:
            result = build_minkowski.ensure_installed(
                s.spec,
                source=s.options.me_source,
                cpu_only=s.cpu_only,
                archs=s.archs,
                jobs=s.jobs,
                cache_dir=Path(s.options.me_cache),
                wheelhouses=tuple(s.wheelhouses),
                wheel_out=s.layout.wheelhouse_out,
                log_path=s.layout.build_log,
                python=s.python,
                say=lambda line: say(f"  {line}"),
                source_flag="--me-source",
            )
        except build_minkowski.BuildError as exc:
            raise SetupError(f"MinkowskiEngine: {exc} (build log: {s.layout.build_log})") from None
        s.me_wheel = result.wheel
        how = "matching wheel found" if result.from_cache else f"built in {result.seconds:.0f} s"
        say(f"  MinkowskiEngine: {how}: {result.wheel}")
        if not result.from_cache:
            say(wheelhouse_note(s.layout, result.wheel))
        s.installed = s.probe()
        s.state.mark("minkowski", wheel=str(result.wheel), from_cache=bool(result.from_cache))
        s.state.mark("verified", by="build_minkowski.ensure_installed")  # it verifies what it installs


def estimate_build_seconds(cpu_only: bool, archs: str | None, jobs: int) -> float:
    n_archs = len([a for a in (archs or "").split(";") if a]) or 1
    core_seconds = (
        BUILD_CORE_SECONDS_CPU if cpu_only else BUILD_CORE_SECONDS_CUDA * (1 + EXTRA_ARCH_FACTOR * (n_archs - 1))
    )
    return core_seconds / max(1, jobs)


def wheelhouse_note(layout: Layout, wheel: Path) -> str:
    return (
        f"  The wheel is saved in {layout.wheelhouse_out}. To skip this build next session, keep it as a Kaggle\n"
        f"  data set: save a version of this notebook and attach its output as input to the next session, or make\n"
        f"  a data set of that folder (`kaggle datasets create -p {layout.wheelhouse_out}` after `kaggle datasets\n"
        f"  init`). The installer looks in {layout.root / 'input'}/* by itself; the wheel fits only this torch,\n"
        f"  CUDA, Python and these archs ({wheel.name})."
    )


class Project(SetupStep):
    """rsna_phase0 itself, editable, without dependencies."""

    name = "project"

    def plan(self) -> Step:
        s = self.setup
        origin = s.installed.project_origin
        if origin and Path(origin).resolve().is_relative_to(s.repo) and "rsna-phase0" in s.installed.versions:
            return Step(self.name, False, f"rsna_phase0 imports from {s.repo}")
        return Step(self.name, True, f"pip install --no-deps -e {s.repo} (now: {origin or 'not installed'})", 10.0)

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        if not os.access(s.repo, os.W_OK):
            raise SetupError(
                f"{s.repo} is read-only (an attached data set?); an editable install writes into it: copy it first, "
                f"e.g. `cp -r {s.repo} /kaggle/working/`, and run the copy's installers/kaggle_setup.py"
            )
        args = ["install", "--no-deps", "--no-build-isolation", "-e", str(s.repo), "-c", str(s.layout.constraints)]
        kaggle_pip.run_pip(s.python, args, log)
        s.installed = s.probe()
        s.state.mark("project")


class Verify(SetupStep):
    """The build module's checks (GPU results against CPU): skipped when the stamp says they passed for this key
    and no step planned before this one changes anything (setup.planned)."""

    name = "verify"

    def plan(self) -> Step:
        s = self.setup
        if s.state.done("verified") and not any(step.todo for step in s.planned):
            return Step(
                self.name, False, "stamp and machine agree: the sparse-convolution checks passed for this key", 20.0
            )
        return Step(self.name, True, "the build module's checks (GPU results against CPU)", 20.0)

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        if s.state.done("verified"):
            say("  verified by the minkowski step of this run")
            return
        result = build_minkowski.verify(python=s.python, expect_cuda=not s.cpu_only, version=s.spec.minkowski.version)
        log.write("\n".join(["verify:", *result.lines]) + "\n")
        for line in result.lines:
            say(f"  {line}")
        if not result.ok:
            raise SetupError("MinkowskiEngine verification failed (lines above)")
        s.state.mark("verified")


class CheckEnv(SetupStep):
    """`rsna-phase0 check-env` through the environment's Python, its report to <working>; always runs."""

    name = "check-env"

    def plan(self) -> Step:
        return Step(self.name, True, f"rsna-phase0 check-env, report to {self.setup.layout.report}", 15.0)

    def run(self, log: TextIO, say: Say) -> None:
        s = self.setup
        command = [s.python, "-c", CHECK_ENV, "check-env", "--write-report", str(s.layout.report)]
        log.write(f"\n$ {' '.join(command)}\n")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise SetupError("check-env did not finish in 600 s") from None
        log.write(done.stdout + done.stderr)
        say(done.stdout.rstrip())
        if done.stderr.strip():
            say(done.stderr.rstrip())
        if done.returncode != 0:
            verdict = (
                "could not probe the environment" if done.returncode == 2 else "this is not the reference environment"
            )
            raise SetupError(f"check-env exit {done.returncode}: {verdict} (table above; report {s.layout.report})")


class Wheelhouse(SetupStep):
    """With --make-wheelhouse DIR: every locked wheel, pip, the MinkowskiEngine wheel and sdist, and a manifest."""

    name = "wheelhouse"

    @property
    def out(self) -> Path:
        return Path(self.setup.options.make_wheelhouse).resolve()

    def plan(self) -> Step:
        return Step(self.name, True, f"every locked wheel, pip, MinkowskiEngine wheel + sdist into {self.out}", 150.0)

    def run(self, log: TextIO, say: Say) -> None:
        s, out = self.setup, self.out
        out.mkdir(parents=True, exist_ok=True)
        options = [*s.source_options(), "--progress-bar", "off"]
        args = ["download", "--no-deps", "--require-hashes", "-r", str(s.lock_path), "-d", str(out), *options]
        kaggle_pip.run_pip(s.python, args, log)
        pip_version = s.installed.versions.get("pip")
        pip = f"pip=={pip_version}" if pip_version else "pip"
        kaggle_pip.run_pip(
            s.python, ["download", "--no-deps", "--only-binary", ":all:", "-d", str(out), pip, *options], log
        )
        wheel = s.me_wheel or s.fitting_wheel()
        if wheel is None:
            raise SetupError("no MinkowskiEngine wheel to put in the wheelhouse (the minkowski step made none)")
        kaggle_wheelhouse.add_file(out, wheel)
        me = s.spec.minkowski
        try:
            sdist = fetch_sdist(me.sdist_url, me.sdist_sha256, Path(s.options.me_cache), flag="--me-source")
        except build_minkowski.BuildError as exc:
            raise SetupError(str(exc)) from None
        kaggle_wheelhouse.add_file(out, sdist)
        python = s.installed.python_version.rsplit(".", 1)[0]
        kaggle_wheelhouse.write_manifest(out, python=python, lock_path=s.lock_path, archs=s.archs, sdist=sdist.name)
        say(
            f"  wheelhouse {out}: {len(list(out.glob('*.whl')))} wheels and the sdist, {kaggle_wheelhouse.size_text(out)}."
            f"\n  Keep it as a data set (or save this notebook and attach its output); the installer finds it under"
            f"\n  {s.layout.root / 'input'}/* and then installs with no network."
        )
