"""The Docker SDK code path against a real Docker daemon that these tests start (and stop) themselves.

The base image is made locally (debootstrap minbase bookworm + docker import; no registry is reachable) and its
tarball cached in ~/.cache/rsna_phase0/docker, so a second run skips debootstrap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from docker_helpers import private_daemon, skip_reason

from rsna_phase0.container import engine
from rsna_phase0.container.engine import ContainerError, RunConfig

pytestmark = pytest.mark.docker

BASE_IMAGE = "rsna-phase0-test-base:bookworm"
BASE_TARBALL = Path.home() / ".cache" / "rsna_phase0" / "docker" / "bookworm-minbase.tar"
TEST_IMAGE = "rsna-phase0-test:latest"
OTHER_UID = 4321


def _base_tarball() -> Path:
    if BASE_TARBALL.is_file():
        return BASE_TARBALL
    BASE_TARBALL.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rsna-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
            check=True,
            capture_output=True,
        )
        partial = BASE_TARBALL.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        os.replace(partial, BASE_TARBALL)
    return BASE_TARBALL


@pytest.fixture(scope="module")
def client():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tarball = _base_tarball()
    with private_daemon() as api:
        repository, tag = BASE_IMAGE.split(":")
        api.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
        api.images.get(BASE_IMAGE)
        yield api


@pytest.fixture(scope="module")
def image(client, tmp_path_factory):
    context = tmp_path_factory.mktemp("context")
    (context / "hello.txt").write_text("hello from the image\n")
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nCOPY hello.txt /opt/hello.txt\nRUN echo build-step-ran > /opt/built.txt\n"
        'CMD ["cat", "/opt/hello.txt"]\n'
    )
    lines: list[str] = []
    image_id = engine.build_image(client, context, TEST_IMAGE, network_mode="none", write=lines.append)
    return image_id, "".join(lines)


def _config(**kwargs) -> RunConfig:
    defaults = {"image": TEST_IMAGE, "command": ["true"], "gpu": False, "network_mode": "none", "shm_size": "64m"}
    return RunConfig(**{**defaults, **kwargs})


def test_build_streams_the_builder_output_and_tags_the_image(client, image):
    image_id, log = image
    assert client.images.get(TEST_IMAGE).id == image_id
    assert "RUN echo build-step-ran" in log
    assert "Successfully tagged" in log or "naming to" in log


def test_a_failing_build_raises_with_the_builder_message(client, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo about-to-fail && exit 3\n")
    lines: list[str] = []
    with pytest.raises(ContainerError, match="failed.*(code|returned).*3"):
        engine.build_image(client, tmp_path, "rsna-phase0-test:broken", network_mode="none", write=lines.append)
    assert "about-to-fail" in "".join(lines)


def test_run_mounts_streams_and_passes_on_the_exit_code(client, image, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "input.txt").write_text("volume-bytes\n")
    out.mkdir()
    os.chown(out, OTHER_UID, OTHER_UID)
    script = (
        f"cat {data}/input.txt; cat /opt/built.txt; id -u; "
        f"touch {data}/x 2>/dev/null && echo DATA-WRITABLE || echo DATA-READ-ONLY; "
        f"echo result > {out}/result.txt; echo to-stderr >&2; exit 7"
    )
    config = _config(command=["sh", "-c", script], read_only=[data], read_write=[out], user=f"{OTHER_UID}:{OTHER_UID}")
    lines: list[str] = []
    code = engine.run(client, config, lines.append)
    text = "".join(lines)
    assert code == 7
    for expected in ("volume-bytes", "build-step-ran", str(OTHER_UID), "DATA-READ-ONLY", "to-stderr"):
        assert expected in text
    assert not (data / "x").exists()
    result = out / "result.txt"
    assert result.read_text() == "result\n"
    assert result.stat().st_uid == OTHER_UID  # written as the calling user, not root
    assert client.containers.list(all=True) == []  # removed afterwards


def test_ctrl_c_sends_sigterm_and_the_container_exits_cleanly(client, image, tmp_path):
    out = tmp_path / "out"
    # Like training: on SIGTERM write something (the marker stands for last.pt) and exit on its own.
    script = (
        f"trap 'echo got-sigterm; echo saved > {out}/last.marker; exit 143' TERM; "
        "echo ready; while :; do sleep 0.1; done"
    )
    config = _config(command=["sh", "-c", script], read_write=[out], stop_timeout_s=20)
    lines: list[str] = []

    def write(text: str) -> None:
        lines.append(text)
        if "ready" in text:  # the container runs: press Ctrl-C while the log stream is blocked reading
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()

    # a test runner started in the background (nohup, `cmd &` in a script) inherits SIGINT ignored, and Python then
    # never turns it into KeyboardInterrupt: give the test a terminal's Ctrl-C, whatever started it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        code = engine.run(client, config, write)
    finally:
        signal.signal(signal.SIGINT, previous)
    text = "".join(lines)
    assert code == 143, text
    assert "interrupted: sending SIGTERM" in text
    assert "got-sigterm" in text
    assert (out / "last.marker").read_text() == "saved\n"
    assert time.monotonic() - started < 15  # exited on SIGTERM, not killed after the grace period


def test_the_gpu_request_is_passed_and_a_missing_nvidia_runtime_is_explained(client, image):
    config = _config(command=["true"], gpu=True)
    container = engine.create_container(client, config)
    try:
        requests = container.attrs["HostConfig"]["DeviceRequests"]
        assert len(requests) == 1
        assert requests[0]["Count"] == -1
        assert requests[0]["Capabilities"] == [["gpu"]]
        if "nvidia" in (client.info().get("Runtimes") or {}):
            pytest.skip("this daemon has an NVIDIA runtime: the missing-runtime error cannot be provoked")
        with pytest.raises(ContainerError, match="NVIDIA Container Toolkit.*--no-gpu"):
            engine.start_container(container, config)
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass


def test_a_missing_image_says_make_docker_build(client):
    with pytest.raises(ContainerError, match="make docker-build"):
        engine.run(client, _config(image="rsna-phase0:does-not-exist"))


def test_a_missing_data_folder_is_named(client, image, tmp_path):
    missing = tmp_path / "OpenMind_processed"
    with pytest.raises(ContainerError, match=f"data folder {missing} does not exist"):
        engine.run(client, _config(read_only=[missing]))


def test_no_daemon_gives_the_fix(monkeypatch, tmp_path):
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    with pytest.raises(ContainerError, match="(?s)cannot reach the Docker daemon.*systemctl start docker"):
        engine.connect()


def test_folders_that_would_hide_the_image_are_refused(tmp_path):
    with pytest.raises(ContainerError, match="hide the image"):
        engine.check_mounts([], [Path("/opt/rsna_phase0/runs")])


def test_shell_wires_stdin_and_stdout_through_a_tty(client, image, tmp_path):
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, b"echo shell-$((6*7))\nexit 5\n")
    os.close(stdin_w)
    out_path = tmp_path / "terminal.out"
    with open(out_path, "wb") as out:
        code = engine.interactive(client, _config(command=["sh"]), stdin_fd=stdin_r, stdout_fd=out.fileno())
    os.close(stdin_r)
    assert code == 5
    assert "shell-42" in out_path.read_text(errors="replace")


def test_cli_train_mounts_the_folders_and_passes_on_the_exit_code(client, image, tmp_path):
    from click.testing import CliRunner

    from rsna_phase0.cli import main
    from rsna_phase0.container.commands import train_command

    mri, out = tmp_path / "OpenMind_processed", tmp_path / "run"
    mri.mkdir()
    expected = train_command(mri, None, out, "smoke", ("--time-budget", "1m"))
    assert expected == ["rsna-phase0", "train", "--mri-dir", str(mri), "--out", str(out), "--preset", "smoke"] + [
        "--time-budget",
        "1m",
    ]
    args = ["docker", "train", "--image", TEST_IMAGE, "--no-gpu", "--network", "none", "--mri-dir", str(mri)]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--preset", "smoke", "--time-budget", "1m"])
    # The test image has no rsna-phase0: the container's "not found" exit code (127) must come back unchanged.
    assert result.exit_code == 127, result.output
    assert out.is_dir()

    missing = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 1
    assert "data folder" in missing.output and "does not exist" in missing.output
