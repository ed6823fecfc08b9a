"""Build and run the reference image through the Docker SDK: plain functions, testable against a real daemon.

`rsna-phase0 docker ...` (commands.py) only parses arguments and calls these. Every failure a user can hit (no
daemon, no NVIDIA runtime, no image, a missing data folder) becomes a `ContainerError` whose message says the fix.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_IMAGE = "rsna-phase0:latest"
# Long enough for training to write last.pt after SIGTERM; docker sends SIGKILL when it runs out.
DEFAULT_STOP_TIMEOUT_S = 120
# Folders of the image that a same-path mount must never hide.
_PROTECTED_CONTAINER_PATHS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/opt",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
)

Write = Callable[[str], object]


class ContainerError(RuntimeError):
    """A Docker problem the user can fix; the message says how."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one container run needs. Host folders are mounted at the same path inside the container, so a
    command line that works on the host (`rsna-phase0 train --mri-dir /data/...`) works unchanged inside."""

    image: str
    command: Sequence[str]
    read_only: Sequence[Path] = ()
    read_write: Sequence[Path] = ()
    gpu: bool = True
    user: str | None = field(default_factory=lambda: f"{os.getuid()}:{os.getgid()}")
    environment: dict[str, str] = field(default_factory=dict)
    shm_size: str = "8g"  # DataLoader workers share batches through /dev/shm (docker's 64 MB default is too small)
    workdir: str | None = None
    network_mode: str | None = None  # None: docker's default network; "none" for an offline run
    stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S
    interactive: bool = False  # a TTY with stdin attached (`docker shell`)


def connect():
    """A client for the daemon named by $DOCKER_HOST (or the default socket), proven reachable."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise ContainerError(
            f"cannot reach the Docker daemon at {where}: {exc}\n"
            "Fix: start it (`sudo systemctl start docker`), or point DOCKER_HOST at a running daemon; your user "
            "must be allowed to use it (`sudo usermod -aG docker $USER`, then log in again)."
        ) from None
    return client


def require_image(client, image: str):
    from docker.errors import ImageNotFound

    try:
        return client.images.get(image)
    except ImageNotFound:
        raise ContainerError(
            f"image {image} not found on this Docker daemon.\nFix: build it with `make docker-build` "
            f"(or `rsna-phase0 docker build --tag {image}`)."
        ) from None


def build_image(
    client,
    context: Path,
    tag: str,
    *,
    dockerfile: str = "Dockerfile",
    build_args: dict[str, str] | None = None,
    network_mode: str | None = None,
    write: Write = sys.stdout.write,
) -> str:
    """Build `context/dockerfile` as `tag`, streaming the builder's output to `write`; return the image id."""
    from docker.errors import APIError

    context = Path(context)
    if not (context / dockerfile).is_file():
        raise ContainerError(f"{context / dockerfile}: no Dockerfile there; run from the repository root")
    image_id = None
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=build_args or {},
            decode=True,
            rm=True,
            forcerm=True,
            network_mode=network_mode,
        )
        for entry in stream:
            if "stream" in entry:
                write(entry["stream"])
            elif "status" in entry:
                write(f"{entry['status']} {entry.get('progress', '')}".rstrip() + "\n")
            if "aux" in entry and "ID" in entry["aux"]:
                image_id = entry["aux"]["ID"]
            if "error" in entry:
                raise ContainerError(f"docker build of {tag} failed: {entry['error'].strip()}")
    except APIError as exc:
        raise ContainerError(f"docker build of {tag} failed: {exc.explanation or exc}") from None
    return image_id or client.images.get(tag).id


def check_mounts(read_only: Iterable[Path], read_write: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Absolute, existing data folders and a writable output folder (created if missing), or a clear error."""
    ro = []
    for path in read_only:
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise ContainerError(f"data folder {path} does not exist (or is not a folder); check the path you gave")
        ro.append(_not_protected(path))
    rw = []
    for path in read_write:
        path = _not_protected(Path(path).expanduser().resolve())
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise ContainerError(f"output folder {path} is not writable by you (uid {os.getuid()})")
        rw.append(path)
    return ro, rw


def _not_protected(path: Path) -> Path:
    text = path.as_posix()
    if text == "/" or any(text == p or text.startswith(p + "/") for p in _PROTECTED_CONTAINER_PATHS):
        raise ContainerError(
            f"{path}: folders under {', '.join(_PROTECTED_CONTAINER_PATHS)} are mounted at the same path in the "
            "container and would hide the image's own files; move or symlink the data elsewhere (e.g. /data, /home)"
        )
    return path


def gpu_request():
    """All GPUs, as `docker run --gpus all` asks for them."""
    from docker.types import DeviceRequest

    return DeviceRequest(count=-1, capabilities=[["gpu"]])


def create_container(client, config: RunConfig):
    """Create (not start) the container for `config`, after checking the image and the folders."""
    from docker.errors import APIError
    from docker.types import Mount

    require_image(client, config.image)
    ro, rw = check_mounts(config.read_only, config.read_write)
    mounts = [Mount(str(p), str(p), type="bind", read_only=True) for p in ro]
    mounts += [Mount(str(p), str(p), type="bind", read_only=False) for p in rw]
    try:
        return client.containers.create(
            config.image,
            command=list(config.command),
            mounts=mounts,
            device_requests=[gpu_request()] if config.gpu else None,
            user=config.user,
            environment=dict(config.environment),
            shm_size=config.shm_size,
            working_dir=config.workdir,
            network_mode=config.network_mode,
            init=True,  # tini as PID 1: forwards SIGTERM to the command and reaps DataLoader workers
            stop_signal="SIGTERM",
            tty=config.interactive,
            stdin_open=config.interactive,
        )
    except APIError as exc:
        raise _explain(exc, config) from None


def _explain(exc, config: RunConfig) -> ContainerError:
    message = str(exc.explanation or exc)
    if config.gpu and ("device driver" in message or "nvidia" in message.lower()):
        return ContainerError(
            f"the Docker daemon cannot give this container a GPU ({message}).\nFix: install the NVIDIA Container "
            "Toolkit (https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
            "run `sudo nvidia-ctk runtime configure --runtime=docker` and restart docker; check with "
            "`docker run --rm --gpus all ubuntu nvidia-smi`. For a CPU run pass --no-gpu."
        )
    return ContainerError(f"docker could not run {config.image}: {message}")


def start_container(container, config: RunConfig) -> None:
    from docker.errors import APIError

    try:
        container.start()
    except APIError as exc:
        container.remove(force=True)
        raise _explain(exc, config) from None


def stream_logs(container, write: Write, *, since: float | None = None) -> None:
    """Copy the container's stdout and stderr to `write` until it exits (utf-8 split across chunks is kept whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in container.logs(stream=True, follow=True, since=since):
        text = decoder.decode(chunk)
        if text:
            write(text)
    tail = decoder.decode(b"", final=True)
    if tail:
        write(tail)


def follow(container, config: RunConfig, write: Write = sys.stdout.write) -> int:
    """Stream logs until the container exits and return its exit code.

    Ctrl-C (KeyboardInterrupt) stops the container the way `docker stop` does: SIGTERM, up to `stop_timeout_s`
    for training to save its last checkpoint, then SIGKILL; the rest of its output is still shown.
    """
    import threading
    import time

    try:
        stream_logs(container, write)
    except KeyboardInterrupt:
        write(
            f"\n[rsna-phase0] interrupted: sending SIGTERM to container {container.short_id} and waiting up to "
            f"{config.stop_timeout_s} s for it to save and exit (Ctrl-C again to kill it now)\n"
        )
        since = time.time()
        # stop() blocks for the whole grace period: stop in the background and keep showing what training prints
        stopper = threading.Thread(target=container.stop, kwargs={"timeout": config.stop_timeout_s}, daemon=True)
        stopper.start()
        try:
            stream_logs(container, write, since=since)
        except KeyboardInterrupt:
            container.kill()
        stopper.join()
    return int(container.wait()["StatusCode"])


def run(client, config: RunConfig, write: Write = sys.stdout.write, *, remove: bool = True) -> int:
    """Create, start and follow a container; return its exit code. The container is removed afterwards."""
    container = create_container(client, config)
    try:
        start_container(container, config)
        return follow(container, config, write)
    finally:
        if remove:
            try:
                container.remove(force=True)
            except Exception:  # already gone (start failed and removed it): nothing left to clean
                pass


def interactive(client, config: RunConfig, stdin_fd: int | None = None, stdout_fd: int | None = None) -> int:
    """Run `config` with a TTY wired to this terminal (`docker run -it` on the SDK); return its exit code."""
    import select
    import termios
    import tty

    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    config = RunConfig(**{**config.__dict__, "interactive": True})
    container = create_container(client, config)
    try:
        # With a TTY the attach stream is raw bytes (not docker's multiplexed frames).
        attached = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        sock = attached._sock
        start_container(container, config)
        saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None
        try:
            if saved is not None:
                tty.setraw(stdin_fd)
                size = os.get_terminal_size(stdout_fd)
                container.resize(height=size.lines, width=size.columns)
            _pump(sock, stdin_fd, stdout_fd, select.select)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        return int(container.wait()["StatusCode"])
    finally:
        try:
            container.remove(force=True)
        except Exception:  # start failed and already removed it
            pass


def _pump(sock, stdin_fd: int, stdout_fd: int, select) -> None:
    """Copy keystrokes to the container and its output back until the container closes the stream."""
    readers = [sock, stdin_fd]
    while True:
        ready, _, _ = select(readers, [], [])
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(stdout_fd, data)
        if stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            if data:
                sock.sendall(data)
            else:  # our stdin ended: type Ctrl-D as a terminal would (closing the socket would cut the output)
                readers.remove(stdin_fd)
                sock.sendall(b"\x04")
