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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from installers.kaggle import pip as kaggle_pip
from installers.kaggle import steps as kaggle_steps
from installers.kaggle import toolchain as kaggle_toolchain
from installers.kaggle import venv as kaggle_venv
from installers.kaggle import wheelhouse as kaggle_wheelhouse
from installers.kaggle.state import State, setup_key
from installers.kaggle.steps import SetupError, Step
from installers.minkowski import build as build_minkowski
from installers.minkowski.wheel import read_build_record
from rsna_phase0.atomic import write_text_atomic
from rsna_phase0.check_env.spec import SPEC_ENV_VAR, SpecError, load_spec
from rsna_phase0.core import requirements_lock as kaggle_lock

REPO = Path(__file__).resolve().parents[2]  # the checkout: the lock, the project to install

INSTALLER_REVISION = 2  # part of the stamp key: bump when what a step does changes
DEFAULT_LOCK = REPO / "env" / "requirements.lock"
DEFAULT_ME_CACHE = Path.home() / ".cache" / "rsna_phase0" / "wheels"
REPORT_NAME = "rsna_phase0_environment.json"
WHEELHOUSE_ARCHS = "6.0;7.5"  # P100 and T4: the GPUs a Kaggle notebook gets


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
class Plan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps if s.todo)


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
    """The facts every step shares (what was asked, where things go, the spec and the pins, what is installed, the
    stamp, the wheelhouses), found once; plan() asks each step what it would do, run() runs those with work."""

    def __init__(self, options: Options, layout: Layout):
        self.options, self.layout = options, layout
        self.repo = REPO  # the project to install
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
        self.installed = empty_environment(self.env_dir, self.base["version"]) if self.venv_problem else self.probe()
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
        self.steps = kaggle_steps.in_order(self)
        self.planned: list[Step] = []  # while plan() runs: the steps planned so far

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

    def probe(self) -> kaggle_pip.Installed:
        try:
            return kaggle_pip.probe_installed(self.python)
        except kaggle_pip.PipError as exc:
            raise SetupError(f"{exc} (--python names the interpreter to install into)") from None

    # --- the plan -------------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """What each step would do here, in order; nothing changes. self.planned holds the steps planned so far:
        verify's plan asks whether one before it changes something."""
        self.planned = []
        for step in self.steps:
            self.planned.append(step.plan())
        plan = Plan(self.planned)
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

    # --- what the steps share -------------------------------------------------------------------------------

    def source_options(self) -> list[str]:
        a = self.options
        if self.offline:
            return ["--no-index", "--find-links", str(self.offline.folder)]
        return kaggle_pip.source_options(index_url=a.index_url, find_links=a.find_links, no_index=a.no_index)

    def constraints_text(self) -> str:
        lines = kaggle_lock.constraint_lines(self.pins, self.spec, self.held)
        return kaggle_pip.constraints_text(lines, str(self.spec.path))

    def write_constraints(self) -> None:
        path = self.layout.constraints
        if not path.exists() or path.read_text(encoding="utf-8") != self.constraints_text():
            write_text_atomic(path, self.constraints_text())

    def me_misfit(self, record: dict | None) -> str:
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
                if not self.me_misfit(read_build_record(wheel)):
                    return wheel
        return None

    # --- running it -------------------------------------------------------------------------------------------

    def run(self, plan: Plan, say: kaggle_steps.Say) -> int:
        """Each step of the plan that has something to do, in order (a plan of this Setup's steps); nothing when
        one is blocked."""
        blocked = [s for s in plan.steps if s.todo and s.blocked]
        if blocked:
            raise SetupError("; ".join(f"{s.name}: {s.blocked}" for s in blocked))
        self.layout.working.mkdir(parents=True, exist_ok=True)
        with open(self.layout.log, "a", encoding="utf-8") as log:
            log.write(f"\n=== kaggle_setup {time.strftime('%Y-%m-%d %H:%M:%S')} key {self.key} python {self.python}\n")
            for action, step in zip(self.steps, plan.steps, strict=True):
                started = time.monotonic()
                if not step.todo:
                    say(f"[{step.name}] ok: {step.detail}")
                    continue
                say(f"[{step.name}] ...")
                action.run(log, say)
                say(f"[{step.name}] done in {time.monotonic() - started:.1f} s")
        return 0


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
