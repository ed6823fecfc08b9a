"""Survival of `rsna-phase0 train` as a real process: SIGKILL at random moments, SIGTERM, the hang watchdog."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TRAIN_MODULE, smoke_train_args

from rsna_phase0.training.checkpoint import load_checkpoint
from rsna_phase0.training.metrics import read_metrics


def command(train_data, out: Path, *args: str) -> list[str]:
    return [*TRAIN_MODULE, *smoke_train_args(train_data, out, *args)]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """Whatever a test started dies with its whole process group, pass or fail (a stray worker holding the output
    pipe once hung CI)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


def start(argv: list[str], **env: str) -> subprocess.Popen:
    # its own session: the group (trainer, scan and loader workers, resource tracker) can be found and killed
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )
    STARTED.append(proc)
    return proc


def output_of(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The process's output once it and every process holding its pipe ended; fails (never hangs) otherwise."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        survivors = session_processes(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"output pipe still open {timeout} s later; processes left in the session: {survivors}")


def session_processes(sid: int) -> list[str]:
    """'PID command' of every live process in session `sid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
                found.append(f"{stat.parent.name} {text[text.index('(') + 1 : text.rindex(')')]}")
    return found


def spawn_workers_of(pid: int) -> list[int]:
    """Children of `pid` started by multiprocessing's spawn (the scan's pool workers)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                if b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                    kids.append(int(stat.parent.name))
    return kids


def no_survivors(sid: int, timeout: float = 10) -> bool:
    """Every process of session `sid` has ended within `timeout` seconds."""
    return eventually(lambda: not session_processes(sid), timeout)


def eventually(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def last_changed(run: Path, before: int):
    def changed() -> bool:
        last = run / "last.pt"
        return last.exists() and last.stat().st_mtime_ns != before

    return changed


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_corrupt_checkpoint(train_data, tmp_path):
    run, rng = tmp_path / "run", random.Random(1234)
    # a checkpoint after every step, each write paused for 0.2 s before its rename, so kills often land inside a write
    argv = command(train_data, run, "--resume", "auto", "--max-steps", "24", "--set", "checkpoint_every_min=0")
    slow = {"RSNA_PHASE0_FAULT_SLOW_SAVE": "0.2"}
    killed_in_write, resumed = 0, 0
    for trial in range(10):
        had_checkpoint = (run / "last.pt").exists()
        before = (run / "last.pt").stat().st_mtime_ns if had_checkpoint else 0
        proc = start(argv, **slow)
        if trial % 4 == 0:  # anywhere, start-up included
            time.sleep(rng.uniform(0.5, 6.0))
        elif trial % 2 == 1:  # the moment a checkpoint write is in flight
            assert wait_for(last_changed(run, before), 60, proc), output_of(proc)
            wait_for(lambda: any(run.glob(".*.tmp-*")), 30, proc)
            time.sleep(rng.uniform(0.0, 0.1))
        else:  # at a random moment of training
            assert wait_for(last_changed(run, before), 60, proc), output_of(proc)
            time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()  # the trainer alone, as the OOM killer would: its workers must follow by themselves
        output = output_of(proc)
        assert proc.returncode == -signal.SIGKILL, output
        assert no_survivors(proc.pid), session_processes(proc.pid)
        killed_in_write += any(run.glob(".*.tmp-*"))
        if had_checkpoint and "preflight" in output:
            assert "resuming from" in output, output
            resumed += 1
        for path in run.glob("*.pt"):  # every visible checkpoint is complete and loads
            load_checkpoint(path)
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **slow}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reached max_steps=24" in done.stderr
    assert load_checkpoint(run / "last.pt")["step"] == 24
    assert train_steps(run) == list(range(1, 25))  # each step recorded once, none lost
    assert not list(run.glob(".*.tmp-*"))
    assert killed_in_write >= 3, f"only {killed_in_write} kills landed inside a checkpoint write"
    assert resumed >= 5


def test_sigterm_saves_and_exits_143(train_data, tmp_path):
    run = tmp_path / "run"
    proc = start(command(train_data, run, "--max-steps", "1000"))
    assert wait_for(lambda: len(train_steps(run)) >= 3, 120, proc), output_of(proc)
    proc.send_signal(signal.SIGTERM)
    output = output_of(proc)
    assert proc.returncode == 143, output
    assert "received SIGTERM" in output and "stopped by a signal" in output
    assert load_checkpoint(run / "last.pt")["step"] == train_steps(run)[-1] >= 3


def test_watchdog_dumps_stacks_saves_and_exits_4(train_data, tmp_path):
    run = tmp_path / "run"
    argv = command(train_data, run, "--max-steps", "10", "--set", "watchdog_s=3")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "RSNA_PHASE0_FAULT_HANG_AT_STEP": "3"}
    )
    assert done.returncode == 4, done.stderr
    assert "watchdog: no training step finished" in done.stderr
    stacks = (run / "hang_stacks.txt").read_text()
    assert "maybe_hang" in stacks and "Thread" in stacks
    assert "watchdog: saved last.pt at step 2" in done.stderr
    assert load_checkpoint(run / "last.pt")["step"] == 2


def _wait_for_scan_workers(proc: subprocess.Popen) -> None:
    # the preflight scan's spawn workers are running (each volume takes 30 s with the fault below)
    assert wait_for(lambda: len(spawn_workers_of(proc.pid)) >= 2, 120, proc), output_of(proc)
    time.sleep(0.5)


SLOW_SCAN = {"RSNA_PHASE0_FAULT_SLOW_SCAN": "30"}


def test_sigkill_during_the_preflight_scan_leaves_no_process_behind(train_data, tmp_path):
    proc = start(command(train_data, tmp_path / "run"), **SLOW_SCAN)
    _wait_for_scan_workers(proc)
    os.kill(proc.pid, signal.SIGKILL)  # the trainer only, as the OOM killer would
    output_of(proc, timeout=15)  # returns only once no worker holds the pipe any more
    assert no_survivors(proc.pid), session_processes(proc.pid)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_preflight_ends_it_within_a_second(train_data, tmp_path, signum, code):
    run = tmp_path / "run"
    proc = start(command(train_data, run), **SLOW_SCAN)
    _wait_for_scan_workers(proc)
    sent = time.monotonic()
    os.kill(proc.pid, signum)
    output = output_of(proc, timeout=15)
    assert time.monotonic() - sent < 3.0, output  # a second, plus slack for 2 busy cores
    assert proc.returncode == code, output
    assert f"received {signum.name} during preflight: stopping now" in output, output
    assert f"stopped by {signum.name} during preflight (nothing saved)" in output, output
    assert "Traceback" not in output and "Aborted!" not in output, output
    assert no_survivors(proc.pid), session_processes(proc.pid)


CLI = [sys.executable, "-c", "from rsna_phase0.cli import main; main()"]


@pytest.mark.slow
def test_sigkill_data_cache_at_random_moments_never_leaves_a_wrong_entry_or_a_process(tmp_path):
    from rsna_phase0.data.cache import CachedVolume, build_cache, load_meta
    from rsna_phase0.data.layout import files_in
    from rsna_phase0.data.synth import synth_dataset

    root, cache, reference = tmp_path / "data", tmp_path / "cache", tmp_path / "reference"
    synth_dataset(root, mri=4, ct=2, seed=3)
    files = files_in(root, "mri") + files_in(root, "ct")
    build_cache(files, reference, workers=1, progress=False)

    def content(folder, f):
        meta = load_meta(folder, f.modality, f.relpath, f.path, verify="full")
        if meta is None:
            return None
        volume = CachedVolume.from_meta(folder, meta)
        return volume.read((0, 0, 0), volume.shape)

    expected = {f.relpath: content(reference, f) for f in files}
    argv = [*CLI, "data", "cache", str(root), "--out", str(cache), "--workers", "2"]
    rng = random.Random(99)
    for _ in range(10):
        proc = start(argv, RSNA_PHASE0_FAULT_SLOW_CACHE="0.4")
        time.sleep(rng.uniform(0.5, 5.0))
        os.kill(proc.pid, signal.SIGKILL)
        output_of(proc, timeout=15)
        assert no_survivors(proc.pid), session_processes(proc.pid)
        for f in files:  # an entry is complete and exactly right, or absent: never silently different
            got = content(cache, f)
            assert got is None or np.array_equal(got, expected[f.relpath]), f.relpath
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for f in files:
        assert np.array_equal(content(cache, f), expected[f.relpath]), f.relpath
    assert not [p for p in cache.glob("*/.*") if p.name != ".lock"]  # temp files swept
