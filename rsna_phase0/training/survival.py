"""Surviving a Kaggle session: signals, the time budget and the hang watchdog.

Exit codes of `rsna-phase0 train` (also in the README):
  0    the plan finished, or the time budget stopped it with last.pt saved (resume with --resume auto)
  1    refused to start (preflight, configuration, checkpoint) or failed with an error
  4    the hang watchdog fired: no step finished for `watchdog_s` seconds (stacks in RUN_DIR/hang_stacks.txt)
  5    a NaN/Inf loss stopped the run (`--set skip_nonfinite=true` skips such steps instead)
  130  SIGINT (Ctrl-C), 143  SIGTERM: last.pt saved first, then exit
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    HUNG = 4
    NONFINITE = 5
    SIGINT = 130
    SIGTERM = 143


class Interrupted(BaseException):
    """A signal that ends the run now (during preflight, or a second Ctrl-C): nothing is saved. A BaseException,
    so that no `except Exception` on the way up swallows it."""

    def __init__(self, signum: int, when: str) -> None:
        self.signum = signum
        self.when = when
        super().__init__(f"{signal.Signals(signum).name} {when}")

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.SIGINT if self.signum == signal.SIGINT else ExitCode.SIGTERM


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop checks it between steps, saves and leaves with 128 + signal. While
    `immediate` (preflight: nothing to save yet, and a scan can take 25 min) a signal raises Interrupted at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.immediate = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.immediate:
            print(
                f"\n[train] received {signal.Signals(signum).name} during preflight: stopping now (nothing to save)",
                file=sys.stderr,
                flush=True,
            )
            raise Interrupted(signum, "during preflight")
        if self.signum is not None and signum == signal.SIGINT:
            raise Interrupted(signum, "a second time: stopped without saving")  # a second Ctrl-C means "now"
        self.signum = signum
        print(
            f"\n[train] received {signal.Signals(signum).name}: saving last.pt after the current step",
            file=sys.stderr,
            flush=True,
        )

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.SIGINT if self.signum == signal.SIGINT else ExitCode.SIGTERM


class TimeBudget:
    """Stops before the deadline with room for one more step, a checkpoint and a margin, all measured."""

    def __init__(self, seconds: float | None, margin_s: float, started: float | None = None) -> None:
        self.seconds = seconds
        self.margin_s = margin_s
        self.started = time.monotonic() if started is None else started
        self.step_s = 0.0
        self._mean_step_s = 0.0
        self.checkpoint_s = 0.0

    @property
    def deadline(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float | None:
        return None if self.seconds is None else self.deadline - time.monotonic()

    def observe_step(self, seconds: float) -> None:
        # conservative: the slower of the running mean and the latest step
        self._mean_step_s = seconds if self._mean_step_s == 0 else 0.9 * self._mean_step_s + 0.1 * seconds
        self.step_s = max(self._mean_step_s, seconds)

    def observe_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = max(self.checkpoint_s, seconds)

    def reserve(self) -> float:
        return self.step_s + 1.5 * self.checkpoint_s + self.margin_s

    def exhausted(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= self.reserve()


class Watchdog:
    """A daemon thread: if no step finishes for `timeout_s`, dump every thread's stack, try to save, exit 4."""

    def __init__(
        self,
        timeout_s: float,
        stacks_path: Path,
        on_hang: Callable[[], None] | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.stacks_path = stacks_path
        self.on_hang = on_hang
        self.poll_s = poll_s or max(0.2, min(5.0, timeout_s / 10))
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rsna-phase0-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self.beat()  # the clock starts now, not when the run began its preflight
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            idle = time.monotonic() - self._last
            if idle < self.timeout_s:
                continue
            message = f"[train] watchdog: no training step finished for {idle:.0f} s (limit {self.timeout_s:g} s); stacks follow"
            print(message, file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            try:
                with open(self.stacks_path, "w") as handle:
                    handle.write(message + "\n")
                    handle.flush()
                    faulthandler.dump_traceback(file=handle, all_threads=True)
            except OSError as exc:
                print(f"[train] watchdog: cannot write {self.stacks_path}: {exc}", file=sys.stderr, flush=True)
            if self.on_hang is not None:
                try:
                    self.on_hang()
                except Exception as exc:  # saving is best effort: the process is already stuck
                    print(f"[train] watchdog: could not save ({exc})", file=sys.stderr, flush=True)
            sys.stderr.flush()
            os._exit(int(ExitCode.HUNG))  # the main thread is stuck: a normal exit would wait on it forever
