"""The Dockerfile's build arguments from the spec (env/reference.toml): one place maps spec fields to ARGs.

The Dockerfile's ARG defaults hold the same values (tests/test_docker_files.py compares them), so a plain
`docker build .` and `rsna-phase0 docker build` make the same image.
"""

from __future__ import annotations

from rsna_phase0.check_env.spec import Spec, SpecError


def spec_build_args(spec: Spec) -> dict[str, str]:
    """Every ARG whose value the spec decides."""
    if spec.docker is None or spec.min_driver is None:
        raise SpecError(f"{spec.path}: [docker] and a [driver] min_linux entry for CUDA {spec.cuda_major} are needed")
    return {
        "BASE_IMAGE": spec.docker.os_base,
        "PYTHON_ENV_IMAGE": spec.docker.micromamba_image,
        "PYTHON_MINOR": spec.python_minor,
        "GCC_VERSION": spec.docker.gcc,
        "CUDA_VERSION": spec.cuda_toolkit,
        "CUDA_MAJOR": spec.cuda_major,
        "CUDA_APT_REPO": spec.docker.cuda_apt_repo,
        "CUDA_APT_KEY_FINGERPRINT": spec.docker.cuda_apt_key_fingerprint,
        "CUDA_APT_PACKAGES": " ".join(spec.docker.cuda_apt_packages),
        "MIN_DRIVER": spec.min_driver,
        "TORCH_CUDA_ARCH_LIST": spec.minkowski.cuda_archs,
    }


def parse_build_args(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (the --build-arg option) as a dict; a pair without `=` is an error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--build-arg {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out
