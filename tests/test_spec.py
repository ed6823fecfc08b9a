"""The version spec: its loader (stdlib only) and the facts inside env/reference.toml that must agree."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rsna_phase0.check_env.spec import DEFAULT_SPEC_PATH, SPEC_ENV_VAR, SpecError, load_spec, spec_path

SPEC = load_spec(DEFAULT_SPEC_PATH)


def test_environment_variable_selects_another_spec(tmp_path, monkeypatch):
    other = tmp_path / "other.toml"
    other.write_text(DEFAULT_SPEC_PATH.read_text().replace('version = "2.4.0"', 'version = "2.13.0"'))
    monkeypatch.setenv(SPEC_ENV_VAR, str(other))
    assert spec_path() == other
    assert load_spec().torch_version == "2.13.0"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "version spec not found"),
        ("[python\n", "not valid TOML"),
        ("schema = 1\n[python]\nminor = '3.12'\n", "missing key"),
    ],
)
def test_a_bad_spec_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "spec.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_loader_needs_only_the_standard_library():
    """The installers import it before anything is installed."""
    code = (
        "import sys\n"
        "for name in ('torch', 'numpy', 'click'): sys.modules[name] = None\n"
        "from rsna_phase0.check_env.spec import load_spec; s = load_spec(); assert s.packages['numpy']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cuda_toolkit_major_equals_torch_cuda_major():
    # torch's extension builder refuses an nvcc of another CUDA major (shared/minkowski-engine.md).
    assert SPEC.cuda_toolkit.split(".")[0] == SPEC.cuda_major


def test_docker_base_and_index_url_agree_with_the_cuda_pins():
    assert re.search(rf"nvidia/cuda:{re.escape(SPEC.cuda_toolkit)}(\.\d+)?-", SPEC.docker_base), SPEC.docker_base
    assert SPEC.torch_index_url.endswith("/cu" + SPEC.torch_cuda.replace(".", ""))


def test_minkowski_pins_are_well_formed():
    me = SPEC.minkowski
    assert re.fullmatch(r"[0-9a-f]{40}", me.commit), "pin a full commit, not a branch"
    assert re.fullmatch(r"[0-9a-f]{64}", me.sdist_sha256)
    assert me.sdist_url.endswith(f"MinkowskiEngine-{me.version}.tar.gz")
    archs = me.cuda_archs.split(";")
    assert all(re.fullmatch(r"\d+\.\d(\+PTX)?", a) for a in archs), archs
    # Kaggle's cards: P100 (6.0) and T4 (7.5) must be built for.
    assert {"6.0", "7.5"} <= set(archs)


def test_pins_are_exact_versions():
    for name, version in {**SPEC.packages, **SPEC.dev_packages, "torch": SPEC.torch_version}.items():
        assert re.fullmatch(r"\d+(\.\d+)+", version), f"{name} = {version!r} is not an exact version"
