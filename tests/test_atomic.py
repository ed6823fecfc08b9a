"""rsna_phase0.atomic: the one atomic-write recipe behind checkpoints, reports, lock files and wheels."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rsna_phase0.atomic import (
    TEMP_GLOB,
    copy_atomic,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path, error):
    target = tmp_path / "report.json"
    write_text_atomic(target, "old")

    def broken(handle):
        handle.write(b"half of the new")
        handle.flush()
        assert len(list(tmp_path.glob(TEMP_GLOB))) == 1  # written beside the target, where a sweep finds it
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, broken)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failing_first_write_creates_nothing(tmp_path):
    target = tmp_path / "new" / "folder" / "model.pt"

    def broken(handle):
        raise ValueError("cannot pickle")

    with pytest.raises(ValueError, match="cannot pickle"):
        write_atomic(target, broken)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_content_return_value_and_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "data.bin"
    assert write_bytes_atomic(target, b"\x00\x01payload") == target
    assert target.read_bytes() == b"\x00\x01payload"
    assert write_text_atomic(str(target), "caf\u00e9\n") == target  # str paths too; text is UTF-8
    assert target.read_bytes() == "caf\u00e9\n".encode()
    assert list(target.parent.iterdir()) == [target]


def test_mode_follows_the_umask_unless_given(tmp_path):
    old = os.umask(0o022)
    try:
        assert _mode(write_text_atomic(tmp_path / "shared.txt", "x")) == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        assert _mode(write_text_atomic(tmp_path / "private.txt", "x")) == 0o600
        assert _mode(write_text_atomic(tmp_path / "given.txt", "x", mode=0o640)) == 0o640
        # replacing a file takes the new file's mode, as a rename does
        assert _mode(write_text_atomic(tmp_path / "given.txt", "y", mode=0o604)) == 0o604
    finally:
        os.umask(old)


def test_json_is_indented_newline_terminated_and_round_trips(tmp_path):
    payload = {"b": [1, 2.5, None], "a": {"nested": "text"}}
    path = write_json_atomic(tmp_path / "r.json", payload)
    text = path.read_text()
    assert text.endswith("}\n") and '\n  "b": [' in text
    assert json.loads(text) == payload
    assert list(json.loads(text)) == ["b", "a"]  # insertion order by default
    write_json_atomic(path, payload, indent=None, sort_keys=True)
    assert path.read_text() == '{"a": {"nested": "text"}, "b": [1, 2.5, null]}\n'


def test_json_that_cannot_be_encoded_keeps_the_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "state.json", {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1} and list(tmp_path.iterdir()) == [path]


def test_copy_streams_a_file_larger_than_one_chunk(tmp_path):
    src = tmp_path / "wheel.whl"
    data = os.urandom(3 * (1 << 20) + 17)
    src.write_bytes(data)
    dst = tmp_path / "cache" / "key" / "wheel.whl"
    assert copy_atomic(src, dst) == dst
    assert dst.read_bytes() == data and src.read_bytes() == data


def test_copy_of_a_missing_source_keeps_the_target(tmp_path):
    dst = write_bytes_atomic(tmp_path / "out.whl", b"previous")
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "missing.whl", dst)
    assert dst.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [dst]


def test_concurrent_writers_never_share_a_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    barrier = threading.Barrier(4)
    errors = []

    def writer(n: int) -> None:
        def write(handle):
            handle.write(bytes([n]) * 100_000)
            barrier.wait(timeout=10)  # all four temp files exist at once
            handle.write(bytes([n]) * 100_000)

        try:
            write_atomic(target, write)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    content = target.read_bytes()
    assert len(content) == 200_000 and len(set(content)) == 1  # one writer's whole file, never a mix
    assert list(tmp_path.iterdir()) == [target]


def test_the_image_build_step_has_every_module_the_installers_import(tmp_path):
    """The Dockerfile copies only a few project files before building MinkowskiEngine (so code changes do not
    rebuild it); build_minkowski.py must run from exactly those, with no site-packages (no torch, no click)."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    build = next(i for i, line in enumerate(lines) if "installers/build_minkowski.py" in line and "RUN" in line)
    root = tmp_path / "opt" / "rsna_phase0"
    for line in lines[:build]:
        if not line.startswith("COPY ") or "--from" in line:
            continue
        *sources, dest = line.split()[1:]
        if not dest.startswith("/opt/rsna_phase0"):
            continue
        target = root / dest.removeprefix("/opt/rsna_phase0").lstrip("/")
        for source in sources:
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into = target / src.name if dest.endswith("/") or len(sources) > 1 else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, into)
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(root / "installers" / "build_minkowski.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    missing = re.findall(r"No module named '([^']+)'", done.stderr)
    assert done.returncode == 0, (
        f"build_minkowski.py fails in the image's build step (missing {missing}): add the file to the Dockerfile's "
        f"COPY lines before it\n{done.stderr[-2000:]}"
    )
