"""The Kaggle installer's parts, fast: lock parsing and checking, the pip hold, toolchain messages, the plan.

The end-to-end run in a fresh virtual environment is in test_kaggle_setup_e2e.py.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from installers.kaggle import pip as kaggle_pip
from installers.kaggle import toolchain as kaggle_toolchain
from rsna_phase0.atomic import sha256_file
from rsna_phase0.check_env.spec import load_spec
from rsna_phase0.core import probes as core_probes
from rsna_phase0.core import requirements_lock as kaggle_lock
from rsna_phase0.core.versions import canonical_name

REPO = Path(__file__).resolve().parents[1]
INSTALLERS = REPO / "installers"

HASH = "sha256:" + "ab" * 32


def cpu_spec(tmp_path: Path, torch: str = "2.13.0") -> Path:
    """The reference spec with this machine's CPU torch standing in for the pin (the project's convention)."""
    text = (REPO / "env" / "reference.toml").read_text()
    text = text.replace('version = "2.4.0"', f'version = "{torch}"', 1).replace('cuda = "12.1"', 'cuda = "cpu"', 1)
    path = tmp_path / "reference-cpu.toml"
    path.write_text(text)
    return path


def spec_lock(spec, torch_version: str = "2.13.0+cpu", **override) -> str:
    pins = {"torch": torch_version, **spec.packages, **override}
    lines = ["--index-url https://pypi.org/simple", "# a comment line"]
    for name, version in pins.items():
        lines += [
            f"{name}=={version} \\",
            f"    --hash={HASH} \\",
            f"    --hash={HASH.replace('ab', 'cd')}",
            "    # via x",
        ]
    lines += [f'nvidia-cublas-cu12==12.1.3.1 ; platform_system == "Linux" --hash={HASH}']
    return "\n".join(lines) + "\n"


def test_parse_lock_reads_continuations_markers_and_hashes(tmp_path):
    spec = load_spec(cpu_spec(tmp_path))
    lock = tmp_path / "lock.txt"
    lock.write_text(spec_lock(spec))
    pins = kaggle_lock.parse_lock(lock)
    assert pins["torch"].version == "2.13.0+cpu"
    assert pins["pywavelets"].version == spec.packages["PyWavelets"]  # names are canonical
    assert len(pins["numpy"].hashes) == 2
    assert pins["nvidia-cublas-cu12"].marker == 'platform_system == "Linux"'
    kaggle_lock.check_against_spec(pins, spec, lock)  # 2.13.0+cpu stands for the spec's 2.13.0


@pytest.mark.parametrize(
    ("line", "problem"),
    [("numpy>=1.26 --hash=" + HASH, "not pinned with `==`"), ("numpy==1.26.4", "has no --hash")],
)
def test_parse_lock_rejects_unpinned_or_unhashed_lines(tmp_path, line, problem):
    lock = tmp_path / "lock.txt"
    lock.write_text(f"torch==2.4.0 --hash={HASH}\n{line}\n")
    with pytest.raises(kaggle_lock.LockError, match=problem) as info:
        kaggle_lock.parse_lock(lock)
    assert str(lock) in str(info.value)


def test_lock_that_disagrees_with_the_spec_is_refused_naming_both_versions(tmp_path):
    spec = load_spec(cpu_spec(tmp_path))
    lock = tmp_path / "lock.txt"
    lock.write_text(spec_lock(spec, torch_version="2.8.0", numpy="2.1.0"))
    with pytest.raises(kaggle_lock.LockError) as info:
        kaggle_lock.check_against_spec(kaggle_lock.parse_lock(lock), spec, lock)
    message = str(info.value)
    assert "torch==2.8.0 but the spec says 2.13.0" in message
    assert "numpy==2.1.0 but the spec says 1.26.4" in message


def test_constraints_hold_torch_exactly_as_locked_and_every_spec_pin(tmp_path):
    spec = load_spec(cpu_spec(tmp_path))
    lock = tmp_path / "lock.txt"
    lock.write_text(spec_lock(spec))
    lines = kaggle_lock.constraint_lines(kaggle_lock.parse_lock(lock), spec)
    assert lines[0] == "torch==2.13.0+cpu"
    assert "numpy==1.26.4" in lines and "pywavelets==1.6.0" in lines
    assert lines[-1] == f"minkowskiengine=={spec.minkowski.version}"


def test_lock_for_wheelhouse_pins_every_wheel_with_its_sha256(tmp_path):
    (tmp_path / "demo_pkg-1.2.3-py3-none-any.whl").write_bytes(b"not really a zip")
    (tmp_path / "other-0.1-1-cp311-cp311-linux_x86_64.whl").write_bytes(b"x")
    text = kaggle_lock.lock_for_wheelhouse(tmp_path)
    lock = tmp_path / "lock.txt"
    lock.write_text(text)
    pins = kaggle_lock.parse_lock(lock)
    assert pins["demo-pkg"].version == "1.2.3" and pins["other"].version == "0.1"
    assert pins["demo-pkg"].hashes == ("sha256:" + hashlib.sha256(b"not really a zip").hexdigest(),)


def test_hold_config_keeps_other_settings_and_sets_install_and_global(tmp_path):
    existing = "[global]\ntimeout = 60\nconstraint = /old.txt\n\n[list]\nformat = columns\n"
    text = kaggle_pip.hold_config_text(existing, ["/old.txt", "/kaggle/working/c.txt"])
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser["global"]["timeout"] == "60"
    assert parser["list"]["format"] == "columns"
    for section in ("global", "install"):
        assert parser[section]["constraint"].split() == ["/old.txt", "/kaggle/working/c.txt"]


def test_hold_refuses_when_pip_constraint_env_would_override_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONSTRAINT", "/somewhere/else.txt")
    with pytest.raises(kaggle_pip.PipError, match="PIP_CONSTRAINT"):
        kaggle_pip.check_hold(sys.executable, tmp_path / "constraints.txt")


def fake_nvcc(tmp_path: Path, release: str) -> Path:
    """An executable that answers `--version` as nvcc does, to test the version check without a CUDA toolkit."""
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(
        "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
        f"echo 'Cuda compilation tools, release {release}, V{release}.66'\n"
    )
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return nvcc


def test_nvcc_of_another_cuda_major_blocks_a_build_with_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(fake_nvcc(tmp_path, "13.0").parents[1]))
    tool = kaggle_toolchain.probe(tmp_path)
    assert tool.nvcc_version == "13.0"
    problems = kaggle_toolchain.build_problems(tool, torch_cuda="12.1", cpu_only=False)
    message = " ".join(problems)
    assert "CUDA 13.0 but torch is built with CUDA 12.1" in message
    assert "CUDA_HOME=/usr/local/cuda" in message and "--wheelhouse" in message and "--cpu-only" in message
    assert "has no nvcc" in message and "pip install nvidia-cuda-nvcc" not in message  # that wheel holds no nvcc
    assert not any("nvcc" in p for p in kaggle_toolchain.build_problems(tool, torch_cuda="13.0", cpu_only=False))
    assert not any("nvcc" in p for p in kaggle_toolchain.build_problems(tool, torch_cuda="12.1", cpu_only=True))


def test_archs_follow_the_gpus_present():
    gpus = (kaggle_toolchain.Gpu("Tesla T4", "7.5"), kaggle_toolchain.Gpu("Tesla T4", "7.5"))
    assert kaggle_toolchain.archs_for(gpus) == "7.5"
    assert kaggle_toolchain.archs_for((kaggle_toolchain.Gpu("Tesla P100-PCIE-16GB", "6.0"), *gpus)) == "6.0;7.5"
    assert kaggle_toolchain.archs_for(()) is None


def run_setup(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(INSTALLERS / "kaggle_setup.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_outside_kaggle_without_kaggle_root_it_refuses_and_says_how(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KAGGLE_KERNEL_RUN_TYPE"}
    done = run_setup("--dry-run", env=env)
    assert done.returncode == 1
    assert "not a Kaggle notebook" in done.stderr and "--kaggle-root" in done.stderr


def test_dry_run_shows_the_plan_and_changes_nothing(tmp_path):
    """Against this machine's venv, with a lock that also pins a package nobody has installed."""
    spec_path = cpu_spec(tmp_path)
    spec = load_spec(spec_path)
    lock = tmp_path / "lock.txt"
    lock.write_text(spec_lock(spec, **{"rsna-absent-demo": "1.0"}))
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    env = {**os.environ, "RSNA_PHASE0_SPEC": str(spec_path)}
    done = run_setup("--dry-run", "--kaggle-root", str(root), "--requirements", str(lock), "--cpu-only", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    venv_line = next(x for x in out.splitlines() if x.strip().startswith("venv"))
    assert "change" in venv_line and str(root / "tmp" / "rsna_phase0_env") in venv_line
    assert f"{len(spec.packages) + 2} to install" in out and "torch - -> 2.13.0+cpu" in out  # a new, empty env
    assert "hold" in out and "estimated time" in out
    assert sorted(p.name for p in root.iterdir()) == ["working"]  # a dry run writes nothing
    assert list((root / "working").iterdir()) == []


def notebook_commands() -> list[str]:
    import json

    notebook = json.loads((INSTALLERS / "phase0_kaggle_example.ipynb").read_text())
    lines = [line.strip() for cell in notebook["cells"] if cell["cell_type"] == "code" for line in cell["source"]]
    return [line[1:] for line in lines if line.startswith("!")]


def test_example_notebook_uses_only_options_that_exist():
    """The notebook's shell lines parse with the installer's and the CLI's real option parsers."""
    import shlex

    from installers.kaggle import setup as kaggle_setup
    from rsna_phase0.cli import main as cli

    commands = notebook_commands()
    assert any("kaggle_setup.py" in c for c in commands) and any("check-env" in c for c in commands)
    assert any("train" in c and "--resume" in c for c in commands)
    for command in commands:
        words = shlex.split(command.replace("{", "").replace("}", ""))
        if words[0] == "python":
            assert words[1].endswith("installers/kaggle_setup.py")
            kaggle_setup.parse_args(words[2:])
        else:
            assert words[0] == "rsna-phase0"
            sub = cli.commands[words[1]]
            known = {opt for param in sub.params for opt in param.opts}
            flags = [w for w in words[2:] if w.startswith("--")]
            assert set(flags) <= known, f"{command}: unknown {set(flags) - known}"


def test_a_spec_package_missing_from_the_lock_is_accepted_only_when_installed_at_the_spec_version(tmp_path):
    spec = load_spec(cpu_spec(tmp_path))
    lock = tmp_path / "lock.txt"
    lock.write_text(f"tqdm=={spec.packages['tqdm']} --hash={HASH}\n")
    pins = kaggle_lock.parse_lock(lock)
    installed = {canonical_name(n): v for n, v in spec.packages.items()} | {"torch": "2.13.0+cpu"}
    kaggle_lock.check_against_spec(pins, spec, lock, installed)
    assert kaggle_lock.held_versions(pins, spec, installed)["torch"] == "2.13.0+cpu"
    with pytest.raises(kaggle_lock.LockError, match="numpy is missing .* not installed at that version"):
        kaggle_lock.check_against_spec(pins, spec, lock, {**installed, "numpy": "2.1.0"})


def test_rehearsal_describes_the_machine_it_runs_on(tmp_path):
    """Against this venv: the image's torch and packages as installed; a carried wheel's version wins."""
    import torch

    from tools import kaggle_rehearsal

    carried = tmp_path / "whl"
    carried.mkdir()
    (carried / "tqdm-4.66.2-py3-none-any.whl").write_bytes(b"x")
    spec_out, lock_out = kaggle_rehearsal.rehearse(sys.executable, [carried], tmp_path / "out")
    spec = load_spec(spec_out)
    assert spec.torch_version == torch.__version__.split("+")[0]
    assert spec.torch_cuda == (torch.version.cuda or "cpu")
    assert spec.python_minor == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert spec.packages["tqdm"] == "4.66.2"
    from importlib.metadata import version

    assert spec.packages["click"] == version("click")
    assert list(kaggle_lock.parse_lock(lock_out)) == ["tqdm"]
    assert "# P100, V100" in spec_out.read_text()  # comments and layout kept


def prebuilt_me_wheel(folder: Path, *, torch: str, cpu_only: bool = True) -> Path:
    """A minimal real wheel carrying a build record as the build module embeds it (no compiled code inside)."""
    import zipfile

    from installers.minkowski import build as build_minkowski
    from installers.minkowski.wheel import embed_build_record

    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"minkowskiengine-0.5.4-{kaggle_tag()}-linux_x86_64.whl"
    info = "minkowskiengine-0.5.4.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: MinkowskiEngine\nVersion: 0.5.4\n")
        zf.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/RECORD,,\n")
    record = {
        "schema": 1,
        "me_version": "0.5.4",
        "source": {"kind": "sdist", "id": "b1879c00", "url": "test"},
        "fixes": ["collections-abc"],
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "torch": torch,
        "torch_cuda": None,
        "cuda_archs": None,
        "cpu_only": cpu_only,
        "blas": "openblas",
        "fixer_revision": 1,
    }
    record["cache_key"] = build_minkowski.key_of_record(record)
    embed_build_record(wheel, record)
    return wheel


def kaggle_tag() -> str:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"{tag}-{tag}"


def test_plan_picks_a_fitting_wheel_kept_in_kaggle_input_and_skips_the_build(tmp_path):
    """Next session: the wheel saved last time, attached as a data set, is found under /kaggle/input/*."""
    spec_path = cpu_spec(tmp_path)
    lock = tmp_path / "lock.txt"
    lock.write_text(spec_lock(load_spec(spec_path)))
    root = tmp_path / "kaggle"
    stale = prebuilt_me_wheel(root / "input" / "old-wheels", torch="2.12.0+cpu")
    kept = prebuilt_me_wheel(root / "input" / "my-me-wheels" / "wheelhouse", torch="2.13.0+cpu")
    bare = tmp_path / "bare"  # a fresh session's Python: no MinkowskiEngine yet
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    env = {**os.environ, "RSNA_PHASE0_SPEC": str(spec_path)}
    args = ["--dry-run", "--kaggle-root", str(root), "--requirements", str(lock), "--me-cache", str(tmp_path / "c")]
    done = run_setup(*args, "--cpu-only", "--python", str(bare / "bin" / "python"), env=env)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("minkowski"))
    assert f"install the fitting wheel {kept}" in line and str(stale) not in line
    assert "build" not in line


def test_pip_wheel_folder_is_no_nvcc_candidate(tmp_path, monkeypatch):
    """PyPI's nvidia-cuda-nvcc-cu12 ships ptxas and headers, no nvcc: the old advice could not work."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = core_probes.find_nvcc()
    assert found in (None, "/usr/local/cuda/bin/nvcc")


def test_offline_without_a_wheelhouse_is_blocked_with_the_ways_out_not_a_resolver_error(tmp_path):
    """Issue 16: offline, pip said `ResolutionImpossible ... blosc2==2.7.1`; the plan now says no index is reachable."""
    spec_path = cpu_spec(tmp_path)
    lock = tmp_path / "lock.txt"
    lock.write_text(spec_lock(load_spec(spec_path)))
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    env = {**os.environ, "RSNA_PHASE0_SPEC": str(spec_path)}
    args = ["--kaggle-root", str(root), "--requirements", str(lock), "--cpu-only"]
    closed = "http://127.0.0.1:9/simple"  # the discard port: connection refused at once
    plan = run_setup("--dry-run", *args, "--index-url", closed, env=env)
    assert plan.returncode == 0 and "BLOCKED" in plan.stdout, plan.stdout
    done = run_setup(*args, "--index-url", closed, env=env)
    assert done.returncode == 1
    message = done.stderr
    assert f"no package index reachable ({closed}" in message and "ResolutionImpossible" not in message
    assert "--make-wheelhouse DIR" in message and "--wheelhouse DIR" in message and str(root / "input") in message
    assert not (root / "tmp").exists()  # refused before making anything


def test_a_wheelhouse_is_used_only_when_it_holds_every_locked_wheel(tmp_path):
    from installers.kaggle import wheelhouse as kaggle_wheelhouse

    folder = tmp_path / "house"
    folder.mkdir()
    (folder / "tqdm-4.66.2-py3-none-any.whl").write_bytes(b"tqdm")
    (folder / "numpy-1.26.4-cp312-cp312-linux_x86_64.whl").write_bytes(b"numpy")
    kaggle_wheelhouse.write_manifest(
        folder, python="3.12", lock_path=folder / "tqdm-4.66.2-py3-none-any.whl", archs=None, sdist=None
    )
    digest = sha256_file(folder / "tqdm-4.66.2-py3-none-any.whl")
    lock = tmp_path / "lock.txt"
    lock.write_text(f"tqdm==4.66.2 --hash=sha256:{digest}\nnumpy==1.26.4 --hash={HASH}\n")
    pins = kaggle_lock.parse_lock(lock)
    (house,) = kaggle_wheelhouse.find([tmp_path])  # found one level down, as under /kaggle/input/NAME
    assert house.missing(pins) == ["numpy"]  # a wheel whose hash the lock does not name does not count
    lock.write_text(f"tqdm==4.66.2 --hash=sha256:{digest}\n")
    assert house.missing(kaggle_lock.parse_lock(lock)) == []


def test_example_notebook_has_no_placeholders_and_stops_clearly_when_a_data_set_is_missing(tmp_path):
    """Issue 16: YOUR-ACCOUNT-style placeholders are gone; the first cell names what is missing and how to attach it."""
    import json

    notebook = json.loads((INSTALLERS / "phase0_kaggle_example.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in notebook["cells"])
    assert "YOUR-" not in text
    assert "/kaggle/input/openmind-brain-mri/OpenMind_processed" in text
    assert "/kaggle/input/deeplesion-brain-ct/NIH_deeplesion/CT" in text
    first = next("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    root = tmp_path / "kaggle"
    (root / "input" / "openmind-brain-mri" / "OpenMind_processed").mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        exec(first.replace("/kaggle/", f"{root}/").replace('Path("/kaggle/input")', f'Path("{root}/input")'), {})
    message = str(info.value)
    assert "CT: " in message and "MRI: " not in message and "openmind-brain-mri" in message and "Add Input" in message
    assert "CODE: " in message  # the code is not attached either


def test_an_index_that_answers_with_a_certificate_problem_is_not_called_offline(monkeypatch):
    """Behind a TLS-inspecting proxy urllib's certificates fail where pip's (its `cert` setting) work: not offline."""
    import ssl
    import urllib.error
    import urllib.request

    from installers.kaggle import steps as kaggle_steps

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ssl.SSLCertVerificationError(1, "self-signed certificate in certificate chain"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert kaggle_steps.index_unreachable("https://pypi.org/simple") == ""
    assert "does not exist" in kaggle_steps.index_unreachable("file:///nonexistent/simple")


def test_environment_sees_the_notebooks_packages_only_when_asked(tmp_path):
    """--system-site-packages (rehearsals against an image's own torch): the notebook's packages become visible."""
    import io

    from installers.kaggle import venv as kaggle_venv

    for system_site in (False, True):
        env = tmp_path / f"env-{system_site}"
        pip_from = kaggle_venv.create(
            sys.executable, env, wheel_folders=[], source_options=[], log=io.StringIO(), system_site=system_site
        )
        assert pip_from.startswith("pip-")
        cfg = (env / "pyvenv.cfg").read_text()
        assert f"include-system-site-packages = {'true' if system_site else 'false'}" in cfg
        assert kaggle_venv.usable(env, sys.executable) == ""
