"""`rsna-phase0 docker build|train|shell|check-env`: argument parsing over container/engine.py."""

from __future__ import annotations

from pathlib import Path

import click

from rsna_phase0.container.engine import DEFAULT_IMAGE, DEFAULT_STOP_TIMEOUT_S, ContainerError, RunConfig

_image = click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="Image to run.")
_no_gpu = click.option("--no-gpu", is_flag=True, help="Run without asking for GPUs (CPU runs, machines without one).")
_network = click.option("--network", help="Docker network for the container, e.g. `none` for an offline run.")


def _fail(exc: ContainerError) -> click.ClickException:
    return click.ClickException(str(exc))


def train_command(
    mri_dir: Path | None, ct_dir: Path | None, out: Path, preset: str | None, extra: tuple[str, ...]
) -> list[str]:
    """The `rsna-phase0 train` command line to run in the container (host paths; they are mounted as is)."""
    command = ["rsna-phase0", "train"]
    if mri_dir is not None:
        command += ["--mri-dir", str(Path(mri_dir).resolve())]
    if ct_dir is not None:
        command += ["--ct-dir", str(Path(ct_dir).resolve())]
    command += ["--out", str(Path(out).resolve())]
    if preset:
        command += ["--preset", preset]
    return command + list(extra)


def _run(config: RunConfig) -> None:
    from rsna_phase0.container import engine

    try:
        code = engine.run(engine.connect(), config, lambda text: click.echo(text, nl=False))
    except ContainerError as exc:
        raise _fail(exc) from None
    raise SystemExit(code)


@click.group("docker")
def docker() -> None:
    """Build and run the reference Docker image (needs a Docker daemon; GPUs need the NVIDIA Container Toolkit)."""


@docker.command("build")
@click.option("--tag", default=DEFAULT_IMAGE, show_default=True)
@click.option("--context", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True)
@click.option("--archs", help="TORCH_CUDA_ARCH_LIST for MinkowskiEngine [default: the spec's cuda_archs].")
@click.option(
    "--cuda-base",
    help="A base image that already has the CUDA toolkit (e.g. the spec's docker_base), used instead of the plain OS "
    "base plus NVIDIA's apt packages.",
)
@click.option("--max-jobs", type=int, help="Parallel compile jobs for MinkowskiEngine [default: the build module's].")
@click.option("--me-source", type=click.Choice(["git", "sdist"]), default="git", show_default=True)
@click.option("--network", help="Network for the RUN steps (e.g. `host` where the default bridge has no internet).")
@click.option("--build-arg", "extra_args", multiple=True, metavar="KEY=VALUE", help="Any other Dockerfile ARG.")
def build(tag, context, archs, cuda_base, max_jobs, me_source, network, extra_args):
    """Build the image from the Dockerfile, with the versions of env/reference.toml; logs are streamed."""
    from rsna_phase0.check_env.spec import load_spec
    from rsna_phase0.container import engine
    from rsna_phase0.container.build_args import parse_build_args, spec_build_args

    build_args = {**spec_build_args(load_spec()), "ME_SOURCE": me_source}
    if archs:
        build_args["TORCH_CUDA_ARCH_LIST"] = archs
    if cuda_base:
        build_args.update(BASE_IMAGE=cuda_base, CUDA_SOURCE="base")
    if max_jobs:
        build_args["MAX_JOBS"] = str(max_jobs)
    try:
        build_args.update(parse_build_args(extra_args))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        image_id = engine.build_image(
            engine.connect(),
            context,
            tag,
            build_args=build_args,
            network_mode=network,
            write=lambda text: click.echo(text, nl=False),
        )
    except ContainerError as exc:
        raise _fail(exc) from None
    click.echo(f"built {tag} ({image_id})")


@docker.command("train", context_settings={"ignore_unknown_options": True})
@_image
@click.option("--mri-dir", type=click.Path(path_type=Path), help="OpenMind_processed folder (mounted read-only).")
@click.option("--ct-dir", type=click.Path(path_type=Path), help="NIH_deeplesion/CT folder (mounted read-only).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (read-write, yours).")
@click.option("--preset", help="Training preset (smoke, dev, kaggle, production).")
@_no_gpu
@_network
@click.option("--shm-size", default="8g", show_default=True, help="/dev/shm for DataLoader workers.")
@click.option(
    "--stop-timeout",
    type=int,
    default=DEFAULT_STOP_TIMEOUT_S,
    show_default=True,
    help="Seconds training gets after Ctrl-C (SIGTERM) to save last.pt before it is killed.",
)
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def train(image, mri_dir, ct_dir, out, preset, no_gpu, network, shm_size, stop_timeout, train_args):
    """Run `rsna-phase0 train` in the image; extra arguments go to train as they are.

    Data folders are mounted read-only and the run folder read-write at the same paths, and the container runs
    as you, so checkpoints belong to you. The exit code is train's; Ctrl-C stops training cleanly.
    """
    if mri_dir is None and ct_dir is None:
        raise click.UsageError("give --mri-dir, --ct-dir or both")
    config = RunConfig(
        image=image,
        command=train_command(mri_dir, ct_dir, out, preset, train_args),
        read_only=[p for p in (mri_dir, ct_dir) if p is not None],
        read_write=[out],
        gpu=not no_gpu,
        shm_size=shm_size,
        stop_timeout_s=stop_timeout,
        network_mode=network,
    )
    _run(config)


@docker.command("check-env", context_settings={"ignore_unknown_options": True})
@_image
@_no_gpu
@_network
@click.argument("check_args", nargs=-1, type=click.UNPROCESSED)
def check_env(image, no_gpu, network, check_args):
    """Run `rsna-phase0 check-env` in the image (with its GPUs); the exit code is check-env's."""
    _run(
        RunConfig(image=image, command=["rsna-phase0", "check-env", *check_args], gpu=not no_gpu, network_mode=network)
    )


@docker.command("shell")
@_image
@_no_gpu
@_network
@click.option("--mount", "mounts", multiple=True, type=click.Path(path_type=Path), help="Folder to mount read-only.")
@click.option("--mount-rw", "mounts_rw", multiple=True, type=click.Path(path_type=Path), help="Folder, read-write.")
def shell(image, no_gpu, network, mounts, mounts_rw):
    """An interactive bash in the image, with the same mounts, user and GPUs as `docker train`."""
    from rsna_phase0.container import engine

    config = RunConfig(
        image=image,
        command=["bash"],
        read_only=list(mounts),
        read_write=list(mounts_rw),
        gpu=not no_gpu,
        network_mode=network,
    )
    try:
        code = engine.interactive(engine.connect(), config)
    except ContainerError as exc:
        raise _fail(exc) from None
    raise SystemExit(code)
