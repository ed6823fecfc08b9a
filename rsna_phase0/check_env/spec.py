"""Load the reference environment spec (`env/reference.toml`) with the standard library alone.

Everything that names a version (check-env, the Kaggle installer, the MinkowskiEngine build module, the
Dockerfile, environment.yml) reads it through here, so there is exactly one place to change a pin.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

SPEC_ENV_VAR = "RSNA_PHASE0_SPEC"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC_PATH = REPO_ROOT / "env" / "reference.toml"


@dataclass(frozen=True)
class MinkowskiSpec:
    version: str
    git_url: str
    branch: str
    commit: str
    sdist_url: str
    sdist_sha256: str
    blas: str
    cuda_archs: str


@dataclass(frozen=True)
class DevTorch:
    """[dev_torch]: the torch a CPU development machine runs instead of the reference one (a CPU build)."""

    version: str
    index_url: str


@dataclass(frozen=True)
class DockerSpec:
    """[docker]: the image's base, compiler and the pinned CUDA compiler packages (Dockerfile ARG defaults)."""

    os_base: str
    gcc: str
    cuda_apt_repo: str
    cuda_apt_key_fingerprint: str
    cuda_apt_packages: tuple[str, ...]
    micromamba_image: str


@dataclass(frozen=True)
class Spec:
    path: Path
    python_minor: str
    torch_version: str
    torch_cuda: str
    torch_index_url: str
    cudnn: int
    cuda_toolkit: str
    docker_base: str
    packages: dict[str, str]
    dev_packages: dict[str, str]
    minkowski: MinkowskiSpec
    dev_torch: DevTorch | None = None  # None: the spec declares no stand-in
    docker: DockerSpec | None = None
    min_driver_by_cuda_major: dict[str, str] | None = None  # [driver] min_linux

    @property
    def cuda_major(self) -> str:
        return self.torch_cuda.split(".")[0]

    @property
    def min_driver(self) -> str | None:
        """The oldest NVIDIA driver for torch's CUDA major: check-env's rule and the image's NVIDIA_REQUIRE_CUDA."""
        return (self.min_driver_by_cuda_major or {}).get(self.cuda_major)


class SpecError(ValueError):
    """The spec file is missing or malformed."""


def spec_path() -> Path:
    """The spec in use: $RSNA_PHASE0_SPEC when set, else the repository's env/reference.toml."""
    override = os.environ.get(SPEC_ENV_VAR)
    return Path(override) if override else DEFAULT_SPEC_PATH


def load_spec(path: str | os.PathLike | None = None) -> Spec:
    path = Path(path) if path is not None else spec_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: version spec not found (set {SPEC_ENV_VAR} or run from a checkout)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        me = raw["minkowski"]
        return Spec(
            path=path,
            python_minor=str(raw["python"]["minor"]),
            torch_version=str(raw["torch"]["version"]),
            torch_cuda=str(raw["torch"]["cuda"]),
            torch_index_url=str(raw["torch"]["index_url"]),
            cudnn=int(raw["torch"]["cudnn"]),
            cuda_toolkit=str(raw["cuda_toolkit"]["version"]),
            docker_base=str(raw["cuda_toolkit"]["docker_base"]),
            packages={str(k): str(v) for k, v in raw["packages"].items()},
            dev_packages={str(k): str(v) for k, v in raw["dev_packages"].items()},
            minkowski=MinkowskiSpec(**{f: str(me[f]) for f in MinkowskiSpec.__dataclass_fields__}),
            dev_torch=_dev_torch(raw, path),
            docker=_docker(raw),
            min_driver_by_cuda_major={str(k): str(v) for k, v in raw["driver"]["min_linux"].items()},
        )
    except KeyError as exc:
        raise SpecError(f"{path}: missing key {exc}") from None


def _dev_torch(raw: dict, path: Path) -> DevTorch | None:
    section = raw.get("dev_torch")
    if section is None:
        return None
    if str(section["cuda"]) != "cpu":
        raise SpecError(
            f"{path}: [dev_torch] cuda must be \"cpu\" (the stand-in is a CPU build), not {section['cuda']!r}"
        )
    return DevTorch(version=str(section["version"]), index_url=str(section["index_url"]))


def _docker(raw: dict) -> DockerSpec:
    section = raw["docker"]
    fields = {f: section[f] for f in DockerSpec.__dataclass_fields__}
    fields["cuda_apt_packages"] = tuple(str(p) for p in fields["cuda_apt_packages"])
    return DockerSpec(**{k: v if k == "cuda_apt_packages" else str(v) for k, v in fields.items()})


def pip_requirements(spec: Spec, *, include_torch: bool = True, include_dev: bool = False) -> list[str]:
    """`name==version` lines for pip, in the spec's order."""
    lines = [f"torch=={spec.torch_version}"] if include_torch else []
    lines += [f"{name}=={version}" for name, version in spec.packages.items()]
    if include_dev:
        lines += [f"{name}=={version}" for name, version in spec.dev_packages.items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m rsna_phase0.check_env.spec requirements [--no-torch] [--dev]`: print pins for pip (used by make/CI)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rsna_phase0.check_env.spec")
    parser.add_argument("what", choices=["requirements", "path"])
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--dev", action="store_true")
    args = parser.parse_args(argv)
    spec = load_spec()
    if args.what == "path":
        print(spec.path)
    else:
        print("\n".join(pip_requirements(spec, include_torch=not args.no_torch, include_dev=args.dev)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
