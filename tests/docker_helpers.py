"""A private Docker daemon for the Docker tests: started with its own socket and roots, stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def skip_reason(*tools: str) -> str | None:
    missing = [tool for tool in ("dockerd", "debootstrap", *tools) if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed: apt-get install docker.io containerd runc debootstrap (.ci/run does)"
        )
    if os.geteuid() != 0:
        return "starting a private dockerd needs root"
    return None


@contextmanager
def private_daemon(data_root: Path | None = None) -> Iterator[object]:
    """A client of a dockerd of our own, with DOCKER_HOST pointing at it meanwhile. `data_root` keeps images and
    the build cache across runs (a temporary one otherwise)."""
    import docker

    # Short paths: the socket path must stay under the 108-byte unix socket limit.
    top = Path(tempfile.mkdtemp(prefix="rsna-dockerd-", dir="/tmp"))
    sock = top / "docker.sock"
    log_path = top / "dockerd.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    daemon = subprocess.Popen(
        [
            "dockerd",
            f"--data-root={data_root or top / 'data'}",
            f"--exec-root={top / 'exec'}",
            f"--pidfile={top / 'dockerd.pid'}",
            f"--host=unix://{sock}",
            "--storage-driver=overlay2",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    old_host = os.environ.get("DOCKER_HOST")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                api = docker.DockerClient(base_url=f"unix://{sock}")  # asks the daemon for its API version
                api.ping()
                break
            except Exception:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dockerd did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
        os.environ["DOCKER_HOST"] = f"unix://{sock}"
        try:
            yield api
        finally:
            api.close()
    finally:
        if old_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old_host
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        shutil.rmtree(top, ignore_errors=True)
