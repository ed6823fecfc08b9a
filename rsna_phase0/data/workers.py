"""Worker processes that die with their parent, and a process pool that stops at once when its caller is stopped.

A SIGKILLed trainer (or one taken by the OOM killer) used to leave its scan's spawn workers alive, holding the
trainer's output pipe: a test or notebook cell reading that pipe waited forever. Every worker therefore asks the
kernel for SIGKILL when its parent dies (Linux prctl PR_SET_PDEATHSIG) and also watches its parent's pid (other
systems, and a parent that died before the prctl). SIGINT is ignored in workers: Ctrl-C reaches the whole process
group, and the parent decides what it means.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when `parent_pid` (the process that started it) dies, however it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed in a worker process")
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="rsna-phase0-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os._exit(1)


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: kill its processes (work in flight is lost) instead of waiting for them to finish."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def spawn_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context pool whose workers die with this process; an exception in the body (a signal, Ctrl-C)
    kills the workers at once rather than waiting for their current volumes (a full scan is ~25 min)."""
    # spawn, not fork: a forked child that enters an OpenMP region (torch's resampling) after the parent used
    # one deadlocks, and blosc2's and CUDA's state do not survive fork either
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),)
    )
    try:
        yield pool
    except BaseException:
        kill_pool(pool)
        raise
    pool.shutdown(wait=True)
