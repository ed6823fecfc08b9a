"""Turn a fresh Kaggle notebook into the reference environment and prove it: `python installers/kaggle_setup.py`.

Standard library only (it runs before anything is installed). The reference environment gets its own virtual
environment (--env-dir, default /kaggle/tmp/rsna_phase0_env: outside /kaggle/working, so the saved output stays
small), made from the notebook's Python; the notebook's own packages are never changed. In order:
  plan      what is installed, what will change, how long it should take (`--dry-run` stops here);
  venv      `venv --without-pip` from the notebook's Python (works without ensurepip), pip from a wheel;
  packages  the hashed lock (env/requirements.lock, or --requirements) with `pip --require-hashes`, from an
            attached wheelhouse with no network when one under /kaggle/input/* covers the lock;
  hold      a constraints file (torch==X and every pin) named in the interpreter's pip.conf, so a later
            `pip install` in the session that wants another torch is refused instead of replacing it;
  minkowski a matching wheel from --wheelhouse / /kaggle/input/*, else a build for the GPUs present, saved to
            /kaggle/working/wheelhouse for the next session;
  project   rsna_phase0 itself (editable, no deps);
  verify    the build module's checks (GPU against CPU), then `rsna-phase0 check-env`, whose report goes to
            /kaggle/working/rsna_phase0_environment.json;
  wheelhouse  with --make-wheelhouse DIR (a session with internet): every locked wheel, pip, the MinkowskiEngine
            wheel (archs default 6.0;7.5) and sdist, and a manifest, for offline sessions to attach.
A second run in the same session re-checks the machine against its stamp and the report, and changes nothing.
Exit 0 on parity, 1 on any failure (the message names the log).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from installers.kaggle import pip as kaggle_pip
from installers.kaggle import toolchain as kaggle_toolchain
from installers.kaggle import venv as kaggle_venv
from installers.kaggle import wheelhouse as kaggle_wheelhouse
from installers.kaggle.state import State, setup_key
from installers.minkowski import build as build_minkowski
from installers.minkowski.source import fetch_sdist
from installers.minkowski.wheel import read_build_record
from rsna_phase0.atomic import write_text_atomic
from rsna_phase0.check_env.spec import SPEC_ENV_VAR, SpecError, load_spec
from rsna_phase0.core import requirements_lock as kaggle_lock

REPO = Path(__file__).resolve().parents[2]  # the checkout: the lock, the project to install

INSTALLER_REVISION = 2  # part of the stamp key: bump when what a step does changes
DEFAULT_LOCK = REPO / "env" / "requirements.lock"
DEFAULT_ME_CACHE = Path.home() / ".cache" / "rsna_phase0" / "wheels"
REPORT_NAME = "rsna_phase0_environment.json"
# `rsna-phase0 check-env ...` through the target interpreter, whatever folder its console scripts went to.
CHECK_ENV = "import sys; from rsna_phase0.cli import main; sys.exit(main())"
DEFAULT_INDEX = "https://pypi.org/simple"
WHEELHOUSE_ARCHS = "6.0;7.5"  # P100 and T4: the GPUs a Kaggle notebook gets
# Build cost in core-seconds, calibrated on measured builds: CPU-only 7 min 10 s on 2 busy cores (issue 16); CUDA
# 12.4 for sm_75 against torch 2.4.0, MAX_JOBS=2 on 2 shared cores: 1229 s (benchmarks/cuda12_minkowski_build.sh).
# Each further arch compiles the device code again: 6.0;7.5 took 2112 s there (x1.72, the cores busier).
BUILD_CORE_SECONDS_CPU, BUILD_CORE_SECONDS_CUDA, EXTRA_ARCH_FACTOR = 860, 2460, 0.7


class SetupError(RuntimeError):
    """The setup cannot go on; the message says what and how to fix it."""


@dataclass(frozen=True)
class Layout:
    """Where things go, under /kaggle or under --kaggle-root for tests and other machines."""

    root: Path
    why: str

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def wheelhouse_out(self) -> Path:
        return self.working / "wheelhouse"

    @property
    def state_dir(self) -> Path:
        return self.working / ".rsna_phase0_setup"

    @property
    def constraints(self) -> Path:
        return self.state_dir / "constraints.txt"

    @property
    def log(self) -> Path:
        return self.working / "rsna_phase0_setup.log"

    @property
    def build_log(self) -> Path:
        return self.working / "rsna_phase0_minkowski_build.log"

    @property
    def report(self) -> Path:
        return self.working / REPORT_NAME

    @property
    def env_dir(self) -> Path:
        return self.root / "tmp" / "rsna_phase0_env"

    def input_wheelhouses(self) -> list[Path]:
        """Folders under <root>/input (attached data sets and notebook outputs) that hold wheels."""
        inputs = self.root / "input"
        if not inputs.is_dir():
            return []
        found = {w.parent for pattern in ("*/*.whl", "*/*/*.whl", "*/*/*/*.whl") for w in inputs.glob(pattern)}
        return sorted(found)


def detect_layout(kaggle_root: str | None, environ=os.environ) -> Layout:
    if kaggle_root:
        return Layout(Path(kaggle_root).resolve(), "--kaggle-root")
    run_type = environ.get("KAGGLE_KERNEL_RUN_TYPE")
    if run_type and Path("/kaggle/working").is_dir():
        return Layout(Path("/kaggle"), f"Kaggle notebook (KAGGLE_KERNEL_RUN_TYPE={run_type})")
    raise SetupError(
        "this is not a Kaggle notebook (KAGGLE_KERNEL_RUN_TYPE is unset or /kaggle/working is missing): pass "
        "--kaggle-root DIR to use DIR as /kaggle (DIR/working gets the wheelhouse, the log and the report)"
    )


@dataclass
class Step:
    name: str
    todo: bool  # False: already as wanted
    detail: str
    seconds: float = 0.0
    blocked: str = ""  # why it cannot run here, with the fix


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps if s.todo)


def estimate_build_seconds(cpu_only: bool, archs: str | None, jobs: int) -> float:
    n_archs = len([a for a in (archs or "").split(";") if a]) or 1
    core_seconds = (
        BUILD_CORE_SECONDS_CPU if cpu_only else BUILD_CORE_SECONDS_CUDA * (1 + EXTRA_ARCH_FACTOR * (n_archs - 1))
    )
    return core_seconds / max(1, jobs)


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


def empty_environment(env_dir: Path, python_version: str) -> kaggle_pip.Installed:
    """What a not yet made environment holds: nothing."""
    exe = str(kaggle_venv.env_python(env_dir))
    return kaggle_pip.Installed(exe, str(env_dir), True, python_version, "", {}, None, None, {})


@dataclass(frozen=True)
class Options:
    """What the command line asked for (main builds it; nothing below main sees argparse)."""

    python: str  # the notebook's interpreter: read, never written
    env_dir: str | None
    requirements: str
    index_url: str | None
    find_links: tuple[str, ...]
    no_index: bool
    wheelhouse: tuple[str, ...]
    make_wheelhouse: str | None
    cpu_only: bool
    archs: str | None
    jobs: int | None
    me_source: str
    me_cache: str
    pip_config: str
    system_site_packages: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class Setup:
    def __init__(self, options: Options, layout: Layout):
        self.options, self.layout = options, layout
        self.base_python = options.python  # the notebook's: read, never written
        self.env_dir = Path(options.env_dir).resolve() if options.env_dir else layout.env_dir
        self.python = str(kaggle_venv.env_python(self.env_dir))
        try:
            self.spec = load_spec()
        except SpecError as exc:
            raise SetupError(str(exc)) from None
        self.lock_path = Path(options.requirements).resolve()
        if not self.lock_path.is_file():
            raise SetupError(
                f"{self.lock_path}: the hashed requirements lock is missing; it comes with the repository "
                "(env/requirements.lock), or pass --requirements FILE (python -m installers.kaggle.lock WHEEL_DIR "
                "writes one for a wheelhouse)"
            )
        try:
            self.base = kaggle_venv.base_facts(self.base_python)
            self.venv_problem = kaggle_venv.usable(self.env_dir, self.base_python)
        except kaggle_venv.VenvError as exc:
            raise SetupError(str(exc)) from None
        self.installed = empty_environment(self.env_dir, self.base["version"]) if self.venv_problem else self._probe()
        try:
            self.pins = kaggle_lock.parse_lock(self.lock_path)
            kaggle_lock.check_against_spec(self.pins, self.spec, self.lock_path, self.installed.versions)
        except kaggle_lock.LockError as exc:
            raise SetupError(str(exc)) from None
        self.held = kaggle_lock.held_versions(self.pins, self.spec, self.installed.versions)
        self.torch_version = self.held["torch"]
        self.cpu_only = options.cpu_only or self.spec.torch_cuda == "cpu"
        self.tool = kaggle_toolchain.probe(layout.working)
        default_archs = WHEELHOUSE_ARCHS if options.make_wheelhouse else kaggle_toolchain.archs_for(self.tool.gpus)
        self.archs = None if self.cpu_only else (options.archs or default_archs)
        self.jobs = options.jobs or self.tool.max_jobs
        self.wheelhouses = [Path(w).resolve() for w in options.wheelhouse] + layout.input_wheelhouses()
        if layout.wheelhouse_out.is_dir():
            self.wheelhouses.append(layout.wheelhouse_out)
        self.offline, self.house_notes = self._find_offline_wheelhouse()
        if self.offline and self.offline.folder not in self.wheelhouses:
            self.wheelhouses.insert(0, self.offline.folder)
        self.me_wheel: Path | None = None
        options = {
            "revision": INSTALLER_REVISION,
            "cpu_only": self.cpu_only,
            "archs": self.archs,
            "me_source": options.me_source,
            "repo": str(REPO),
            "pip_config": options.pip_config,
            "env_dir": str(self.env_dir),
            "system_site": options.system_site_packages,
            "base": self.base["base_prefix"],
        }
        self.key = setup_key(spec_path=self.spec.path, lock_path=self.lock_path, python=self.python, options=options)
        self.state = State(layout.state_dir / "state.json", self.key)

    def _find_offline_wheelhouse(self) -> tuple[kaggle_wheelhouse.Wheelhouse | None, list[str]]:
        """A wheelhouse (--wheelhouse, or under <root>/input/*) holding every locked wheel: then nothing is
        downloaded. Not used when the command line names its own package source."""
        a = self.options
        if a.make_wheelhouse or a.index_url or a.find_links or a.no_index:
            return None, []
        notes = []
        for house in kaggle_wheelhouse.find([*(Path(w) for w in a.wheelhouse), self.layout.root / "input"]):
            missing = house.missing(self.pins)
            if not missing:
                return house, notes
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            notes.append(f"wheelhouse {house.folder} lacks {len(missing)} locked wheels ({shown}): not used")
        return None, notes

    def _probe(self) -> kaggle_pip.Installed:
        try:
            return kaggle_pip.probe_installed(self.python)
        except kaggle_pip.PipError as exc:
            raise SetupError(f"{exc} (--python names the interpreter to install into)") from None

    # --- the plan -------------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        plan = Plan()
        plan.steps += [self._plan_venv(), self._plan_packages(), self._plan_hold(), self._plan_minkowski()]
        plan.steps.append(self._plan_project())
        changed = any(s.todo for s in plan.steps)
        verified = self.state.done("verified") and not changed
        plan.steps.append(
            Step(
                "verify",
                not verified,
                "stamp and machine agree: the sparse-convolution checks passed for this key"
                if verified
                else "the build module's checks (GPU results against CPU)",
                20.0,
            )
        )
        plan.steps.append(Step("check-env", True, f"rsna-phase0 check-env, report to {self.layout.report}", 15.0))
        if self.options.make_wheelhouse:
            out = Path(self.options.make_wheelhouse).resolve()
            plan.steps.append(
                Step("wheelhouse", True, f"every locked wheel, pip, MinkowskiEngine wheel + sdist into {out}", 150.0)
            )
        plan.notes += self.house_notes
        if self.offline:
            plan.notes.append(
                f"offline: wheelhouse {self.offline.folder} (made {self.offline.manifest.get('made_at')}) holds every "
                "locked wheel: no index is used"
            )
        if self.installed.python_version.rsplit(".", 1)[0] != self.spec.python_minor:
            plan.notes.append(
                f"Python is {self.installed.python_version}, the spec says {self.spec.python_minor}: the lock's "
                "wheels may not fit and check-env will report it"
            )
        return plan

    def _plan_venv(self) -> Step:
        if not self.venv_problem:
            return Step("venv", False, f"{self.env_dir} (Python {self.base['version']}, from {self.base_python})")
        detail = (
            f"{self.venv_problem}: make it from {self.base_python} (Python {self.base['version']}; the notebook's own "
            "packages stay as they are)"
        )
        return Step("venv", True, detail, 10.0)

    def _plan_packages(self) -> Step:
        changes = []
        for pin in self.pins.values():
            have = self.installed.versions.get(pin.name)
            if have is None and pin.marker:
                continue  # a conditional pin (environment marker) pip may rightly skip
            if have != pin.version:
                changes.append((pin.name, have, pin.version))
        if not changes:
            return Step("packages", False, f"all {len(self.pins)} locked packages installed at their versions")
        torch_change = next((c for c in changes if c[0] == "torch"), None)
        seconds = 3.0 * len(changes) + (0 if torch_change is None else 30 if self.cpu_only else 120)
        shown = ", ".join(f"{n} {h or '-'} -> {v}" for n, h, v in changes[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        detail = f"{len(changes)} to install from {self.lock_path.name}: {shown}{more}"
        return Step("packages", True, detail, seconds, blocked=self._offline_problem())

    def _index_url(self) -> str:
        return self.options.index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX

    def _offline_problem(self) -> str:
        """Why the packages cannot be fetched ("" when a wheelhouse or a reachable index can give them)."""
        if self.offline or self.options.no_index:
            return ""
        why = index_unreachable(self._index_url())
        if not why:
            return ""
        return (
            f"no package index reachable ({self._index_url()}: {why}): this session is offline. Attach a wheelhouse "
            f"made by `python installers/kaggle_setup.py --make-wheelhouse DIR` in a session with internet (found "
            f"under {self.layout.root / 'input'}/* by itself, or pass --wheelhouse DIR), pass --no-index --find-links "
            "DIR with the locked wheels, or switch the notebook's internet on"
        )

    def _constraint_lines(self) -> list[str]:
        return kaggle_lock.constraint_lines(self.pins, self.spec, self.held)

    def _constraints_text(self) -> str:
        return kaggle_pip.constraints_text(self._constraint_lines(), str(self.spec.path))

    def _plan_hold(self) -> Step:
        path = self.layout.constraints
        problem = kaggle_pip.env_overrides_hold(path)
        if problem:
            return Step("hold", True, "the pins cannot be held for later pip runs", blocked=problem)
        if not path.exists() or path.read_text(encoding="utf-8") != self._constraints_text():
            return Step("hold", True, f"write {path} and name it in the {self.options.pip_config} pip.conf", 2.0)
        try:
            kaggle_pip.check_hold(self.python, path)
        except kaggle_pip.PipError as exc:
            return Step("hold", True, f"pip does not apply the hold yet ({exc})", 2.0)
        return Step("hold", False, f"pip applies {path} (torch=={self.torch_version} and every pin)")

    def _me_misfit(self, record: dict | None) -> str:
        """Empty when a MinkowskiEngine build record fits this setup, else why not (without importing it): the build
        module's own rule, so what the plan calls fitting is what it installs."""
        wanted = {
            "me_version": self.spec.minkowski.version,
            "python": self.installed.python_version.rsplit(".", 1)[0],
            "torch": self.torch_version,
            "torch_cuda": self.spec.torch_cuda,
            "cpu_only": self.cpu_only,
            "cuda_archs": self.archs,
        }
        return build_minkowski.record_misfit(record, wanted)

    def fitting_wheel(self) -> Path | None:
        """A MinkowskiEngine wheel in the wheelhouses or the cache whose build record fits (the build module
        then picks by its exact cache key, which also covers the source and the fixes)."""
        cache = Path(self.options.me_cache)
        for folder in [*self.wheelhouses, *sorted(p for p in cache.glob("*") if p.is_dir())]:
            for wheel in sorted(folder.glob("[Mm]inkowski[Ee]ngine-*.whl")):
                if not self._me_misfit(read_build_record(wheel)):
                    return wheel
        return None

    def _plan_minkowski(self) -> Step:
        why = self._me_misfit(self.installed.me_build)
        if not why:
            return Step(
                "minkowski", False, f"MinkowskiEngine {self.spec.minkowski.version} installed, its build record fits"
            )
        why = f"installed MinkowskiEngine: {why}" if self.installed.me_build else "MinkowskiEngine is not installed"
        if not self.cpu_only and not self.archs:
            blocked = "no GPU is visible to pick the CUDA archs: pass --archs '7.5' (T4) or '6.0' (P100), or --cpu-only"
            return Step("minkowski", True, why, blocked=blocked)
        wheel = self.fitting_wheel()
        if wheel is not None:
            return Step("minkowski", True, f"{why}; install the fitting wheel {wheel}", 20.0)
        build = estimate_build_seconds(self.cpu_only, self.archs, self.jobs)
        kind = "CPU-only" if self.cpu_only else f"CUDA (archs {self.archs})"
        where = ", ".join(str(w) for w in self.wheelhouses) or "none given"
        detail = (
            f"{why}; no fitting wheel in the wheelhouses ({where}) or {self.options.me_cache}: {kind} build with MAX_JOBS={self.jobs}, "
            f"about {build / 60:.0f} min on {self.tool.cores} cores"
        )
        problems = kaggle_toolchain.build_problems(
            self.tool, torch_cuda=self.spec.torch_cuda, cpu_only=self.cpu_only, blas=self.spec.minkowski.blas
        )
        return Step("minkowski", True, detail, build, blocked=" | ".join(problems))

    def _plan_project(self) -> Step:
        origin = self.installed.project_origin
        if origin and Path(origin).resolve().is_relative_to(REPO) and "rsna-phase0" in self.installed.versions:
            return Step("project", False, f"rsna_phase0 imports from {REPO}")
        return Step("project", True, f"pip install --no-deps -e {REPO} (now: {origin or 'not installed'})", 10.0)

    # --- running it -------------------------------------------------------------------------------------------

    def run(self, plan: Plan, say) -> int:
        blocked = [s for s in plan.steps if s.todo and s.blocked]
        if blocked:
            raise SetupError("; ".join(f"{s.name}: {s.blocked}" for s in blocked))
        self.layout.working.mkdir(parents=True, exist_ok=True)
        with open(self.layout.log, "a", encoding="utf-8") as log:
            log.write(f"\n=== kaggle_setup {time.strftime('%Y-%m-%d %H:%M:%S')} key {self.key} python {self.python}\n")
            for step in plan.steps:
                started = time.monotonic()
                if not step.todo:
                    say(f"[{step.name}] ok: {step.detail}")
                    continue
                say(f"[{step.name}] ...")
                self._actions()[step.name](log, say)
                say(f"[{step.name}] done in {time.monotonic() - started:.1f} s")
        return 0

    def _actions(self) -> dict[str, Callable]:
        """What each step of a plan runs, by its name."""
        return {
            "venv": self._do_venv,
            "packages": self._do_packages,
            "hold": self._do_hold,
            "minkowski": self._do_minkowski,
            "project": self._do_project,
            "verify": self._do_verify,
            "check-env": self._do_check_env,
            "wheelhouse": self._do_wheelhouse,
        }

    def _source_options(self) -> list[str]:
        a = self.options
        if self.offline:
            return ["--no-index", "--find-links", str(self.offline.folder)]
        return kaggle_pip.source_options(index_url=a.index_url, find_links=a.find_links, no_index=a.no_index)

    def _do_venv(self, log, say) -> None:
        self.state.forget("verified")
        folders = [
            *([self.offline.folder] if self.offline else []),
            *self.wheelhouses,
            *map(Path, self.options.find_links),
        ]
        try:
            pip_from = kaggle_venv.create(
                self.base_python,
                self.env_dir,
                wheel_folders=folders,
                source_options=self._source_options(),
                log=log,
                system_site=self.options.system_site_packages,
            )
        except (kaggle_venv.VenvError, OSError) as exc:
            raise SetupError(f"{exc} (--env-dir names another place)") from None
        say(f"  {self.env_dir} made from {self.base_python}; pip from {pip_from}")
        self.installed = self._probe()
        self.state.mark("venv", env=str(self.env_dir))

    def _do_packages(self, log, say) -> None:
        self.state.forget("verified")  # whatever changes now must be verified again
        self._write_constraints()
        args = ["install", "--require-hashes", "-r", str(self.lock_path), "-c", str(self.layout.constraints)]
        try:
            kaggle_pip.run_pip(self.python, [*args, *self._source_options(), "--progress-bar", "off"], log)
        except kaggle_pip.PipError as exc:
            offline = self._offline_problem()
            raise SetupError(offline or str(exc)) from None
        self.installed = self._probe()
        wrong = [(p.name, self.installed.versions.get(p.name), p.version) for p in self.pins.values() if not p.marker]
        wrong = [w for w in wrong if w[1] != w[2]]
        if wrong:
            raise SetupError(f"after pip install, still not as locked: {wrong}")
        self.state.mark("packages", lock=str(self.lock_path))

    def _write_constraints(self) -> None:
        path = self.layout.constraints
        if not path.exists() or path.read_text(encoding="utf-8") != self._constraints_text():
            write_text_atomic(path, self._constraints_text())

    def _do_hold(self, log, say) -> None:
        self._write_constraints()
        try:
            config, changed = kaggle_pip.hold_pins(
                self.python, self.installed, self.layout.constraints, self.options.pip_config
            )
        except kaggle_pip.PipError as exc:
            raise SetupError(str(exc)) from None
        log.write(f"hold: {config} names {self.layout.constraints} (changed: {changed})\n")
        say(
            f"  torch=={self.torch_version} and every pin held for later pip runs: {config} -> {self.layout.constraints}"
        )
        self.state.mark("hold", config=str(config))

    def _do_minkowski(self, log, say) -> None:
        log.flush()
        cache = Path(self.options.me_cache)
        sdist = self.offline.sdist if self.offline else None
        if sdist and not (cache / "sources" / sdist.name).is_file():  # where the build module looks, offline too
            (cache / "sources").mkdir(parents=True, exist_ok=True)
            shutil.copy2(sdist, cache / "sources" / sdist.name)
        try:
            result = build_minkowski.ensure_installed(
                self.spec,
                source=self.options.me_source,
                cpu_only=self.cpu_only,
                archs=self.archs,
                jobs=self.jobs,
                cache_dir=Path(self.options.me_cache),
                wheelhouses=tuple(self.wheelhouses),
                wheel_out=self.layout.wheelhouse_out,
                log_path=self.layout.build_log,
                python=self.python,
                say=lambda line: say(f"  {line}"),
                source_flag="--me-source",
            )
        except build_minkowski.BuildError as exc:
            raise SetupError(f"MinkowskiEngine: {exc} (build log: {self.layout.build_log})") from None
        self.me_wheel = result.wheel
        how = "matching wheel found" if result.from_cache else f"built in {result.seconds:.0f} s"
        say(f"  MinkowskiEngine: {how}: {result.wheel}")
        if not result.from_cache:
            say(wheelhouse_note(self.layout, result.wheel))
        self.installed = self._probe()
        self.state.mark("minkowski", wheel=str(result.wheel), from_cache=bool(result.from_cache))
        self.state.mark("verified", by="build_minkowski.ensure_installed")  # it verifies what it installs

    def _do_project(self, log, say) -> None:
        if not os.access(REPO, os.W_OK):
            raise SetupError(
                f"{REPO} is read-only (an attached data set?); an editable install writes into it: copy it first, "
                f"e.g. `cp -r {REPO} /kaggle/working/`, and run the copy's installers/kaggle_setup.py"
            )
        args = ["install", "--no-deps", "--no-build-isolation", "-e", str(REPO), "-c", str(self.layout.constraints)]
        kaggle_pip.run_pip(self.python, args, log)
        self.installed = self._probe()
        self.state.mark("project")

    def _do_verify(self, log, say) -> None:
        if self.state.done("verified"):
            say("  verified by the minkowski step of this run")
            return
        result = build_minkowski.verify(
            python=self.python, expect_cuda=not self.cpu_only, version=self.spec.minkowski.version
        )
        log.write("\n".join(["verify:", *result.lines]) + "\n")
        for line in result.lines:
            say(f"  {line}")
        if not result.ok:
            raise SetupError("MinkowskiEngine verification failed (lines above)")
        self.state.mark("verified")

    def _do_check_env(self, log, say) -> None:
        command = [self.python, "-c", CHECK_ENV, "check-env", "--write-report", str(self.layout.report)]
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
            raise SetupError(f"check-env exit {done.returncode}: {verdict} (table above; report {self.layout.report})")

    def _do_wheelhouse(self, log, say) -> None:
        out = Path(self.options.make_wheelhouse).resolve()
        out.mkdir(parents=True, exist_ok=True)
        options = [*self._source_options(), "--progress-bar", "off"]
        args = ["download", "--no-deps", "--require-hashes", "-r", str(self.lock_path), "-d", str(out), *options]
        kaggle_pip.run_pip(self.python, args, log)
        pip_version = self.installed.versions.get("pip")
        kaggle_pip.run_pip(
            self.python,
            [
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(out),
                f"pip=={pip_version}" if pip_version else "pip",
                *options,
            ],
            log,
        )
        wheel = self.me_wheel or self.fitting_wheel()
        if wheel is None:
            raise SetupError("no MinkowskiEngine wheel to put in the wheelhouse (the minkowski step made none)")
        kaggle_wheelhouse.add_file(out, wheel)
        me = self.spec.minkowski
        try:
            sdist = fetch_sdist(me.sdist_url, me.sdist_sha256, Path(self.options.me_cache), flag="--me-source")
        except build_minkowski.BuildError as exc:
            raise SetupError(str(exc)) from None
        kaggle_wheelhouse.add_file(out, sdist)
        python = self.installed.python_version.rsplit(".", 1)[0]
        kaggle_wheelhouse.write_manifest(
            out, python=python, lock_path=self.lock_path, archs=self.archs, sdist=sdist.name
        )
        say(
            f"  wheelhouse {out}: {len(list(out.glob('*.whl')))} wheels and the sdist, {kaggle_wheelhouse.size_text(out)}."
            f"\n  Keep it as a data set (or save this notebook and attach its output); the installer finds it under"
            f"\n  {self.layout.root / 'input'}/* and then installs with no network."
        )


def wheelhouse_note(layout: Layout, wheel: Path) -> str:
    return (
        f"  The wheel is saved in {layout.wheelhouse_out}. To skip this build next session, keep it as a Kaggle\n"
        f"  data set: save a version of this notebook and attach its output as input to the next session, or make\n"
        f"  a data set of that folder (`kaggle datasets create -p {layout.wheelhouse_out}` after `kaggle datasets\n"
        f"  init`). The installer looks in {layout.root / 'input'}/* by itself; the wheel fits only this torch,\n"
        f"  CUDA, Python and these archs ({wheel.name})."
    )


def render_plan(setup: Setup, plan: Plan) -> str:
    lines = [
        f"rsna_phase0 Kaggle setup ({setup.layout.why}: {setup.layout.root})",
        f"  spec {setup.spec.path}  lock {setup.lock_path}",
        f"  notebook's python {setup.base_python} ({setup.base['version']}, left as it is); environment "
        f"{setup.env_dir}; torch there now "
        f"{setup.installed.versions.get('torch', 'not installed')}, wanted {setup.torch_version}",
        f"  machine: {setup.tool.cores} cores, "
        + (f"{setup.tool.mem_available_bytes / 2**30:.1f} GiB free memory, " if setup.tool.mem_available_bytes else "")
        + f"{setup.tool.free_disk_bytes / 2**30:.0f} GiB free disk; GPUs: "
        + (", ".join(f"{g.name} ({g.capability})" for g in setup.tool.gpus) or "none")
        + f"; nvcc {setup.tool.nvcc_version or '-'}; C++ {setup.tool.gcc or setup.tool.cxx or '-'}",
        "plan:",
    ]
    for step in plan.steps:
        mark = (
            "BLOCKED"
            if step.todo and step.blocked
            else "ok"
            if not step.todo
            else "run"
            if step.name == "check-env"
            else "change"
        )
        lines.append(f"  {step.name:<10} {mark:<7} {step.detail}")
        if step.todo and step.blocked:
            lines.append(f"  {'':<10} {'':<7} {step.blocked}")
    lines += [f"  note: {n}" for n in plan.notes]
    lines.append(f"estimated time: about {max(plan.seconds, 1) / 60:.1f} min")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python installers/kaggle_setup.py", description=__doc__.split("\n")[0])
    p.add_argument("--kaggle-root", help="use DIR as /kaggle (tests, other machines); default: detect Kaggle")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the notebook's Python, from which the environment is made; never changed (default: this one)",
    )
    p.add_argument("--env-dir", help="the reference environment's folder (default: <kaggle>/tmp/rsna_phase0_env)")
    p.add_argument(
        "--system-site-packages",
        action="store_true",
        help="let the environment see the notebook's packages (a rehearsal against an image's own torch); "
        "installs still go only to the environment",
    )
    p.add_argument(
        "--make-wheelhouse",
        metavar="DIR",
        help=f"after the setup, write every locked wheel, pip, the MinkowskiEngine wheel (archs default "
        f"{WHEELHOUSE_ARCHS}) and sdist and a manifest to DIR, for offline sessions (needs internet)",
    )
    p.add_argument("--spec", help=f"version spec to use (sets ${SPEC_ENV_VAR}; default env/reference.toml)")
    p.add_argument("--requirements", default=str(DEFAULT_LOCK), help="hashed requirements lock (default: %(default)s)")
    p.add_argument("--index-url", help="package index for the lock's packages")
    p.add_argument("--find-links", action="append", default=[], metavar="DIR", help="extra wheel folder (repeat)")
    p.add_argument("--no-index", action="store_true", help="use no package index (offline: --find-links only)")
    p.add_argument("--wheelhouse", action="append", default=[], metavar="DIR", help="MinkowskiEngine wheels (repeat)")
    p.add_argument(
        "--me-source", default="auto", help="MinkowskiEngine source: auto, git, sdist, or a path to a tarball/tree"
    )
    p.add_argument("--cpu-only", action="store_true", help="build MinkowskiEngine without CUDA")
    p.add_argument("--archs", help="CUDA archs to build for, e.g. '6.0;7.5' (default: the GPUs present)")
    p.add_argument("--jobs", type=int, help="compile jobs (default: sized from free memory and cores)")
    p.add_argument(
        "--me-cache", default=str(DEFAULT_ME_CACHE), help="MinkowskiEngine wheel cache (default: %(default)s)"
    )
    p.add_argument(
        "--pip-config",
        choices=["site", "user"],
        default="site",
        help="pip.conf that holds the pins: site = <prefix>/pip.conf of --python (default), user = ~/.config/pip",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.spec:
        os.environ[SPEC_ENV_VAR] = str(Path(args.spec).resolve())  # check-env and the build module read it too
    started = time.monotonic()
    log_hint = ""
    try:
        layout = detect_layout(args.kaggle_root)
        log_hint = f" (log: {layout.log})"
        setup = Setup(Options.from_args(args), layout)
        plan = setup.plan()
        print(render_plan(setup, plan), flush=True)
        if args.dry_run:
            return 0
        setup.run(plan, say=lambda text: print(text, flush=True))
    except (SetupError, kaggle_pip.PipError) as exc:
        print(f"kaggle_setup FAILED: {exc}{log_hint}", file=sys.stderr, flush=True)
        return 1
    print(f"kaggle_setup: the reference environment is in place and proven ({time.monotonic() - started:.1f} s)")
    print(usage_note(setup.env_dir))
    return 0


def usage_note(env_dir: Path) -> str:
    return (
        f"Run rsna-phase0 from it: `!{env_dir}/bin/rsna-phase0 ...`, or put it first on PATH in the notebook\n"
        f"(os.environ['PATH'] = '{env_dir}/bin:' + os.environ['PATH']), then `!rsna-phase0 ...` and `!pip ...` use\n"
        "it. pip there is held to the pins (its pip.conf); `uv pip install` does not read pip.conf and is not held:\n"
        "check-env (and training, which runs it) catches a torch it replaced."
    )


if __name__ == "__main__":
    raise SystemExit(main())
