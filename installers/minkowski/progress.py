"""Compile progress of a MinkowskiEngine build: a line per finished ninja step, and a heartbeat in between.

Under pip ninja is not on a terminal, so it prints a step only when it finishes, and the first CPU objects take over
a minute on 2 cores: without the heartbeat the build looks hung. Standard library only.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

HEARTBEAT_S = 12.0
# ninja progress: "[ 5/13] c++ -MMD ... -c /tmp/.../src/convolution_cpu.cpp -o ..."
_NINJA_STEP = re.compile(r"^\s*\[\s*(\d+)/(\d+)\]\s+(.*)$")
_COMPILED_FILE = re.compile(r"(?:-c|--compile)\s+(\S+\.(?:cpp|cu|cc))\b|(\S+\.(?:cpp|cu|cc))\s+-o\s")


def elapsed_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(line: str, started: float) -> str | None:
    """'[ 5/13] compiling convolution_cpu.cpp (1m12s)' for a ninja step line, else None."""
    step = _NINJA_STEP.match(line)
    if not step:
        return None
    done, total, rest = step.groups()
    found = _COMPILED_FILE.search(rest)
    what = f"compiling {Path(found.group(1) or found.group(2)).name}" if found else rest.split()[0].rsplit("/", 1)[-1]
    return f"[{int(done):>2}/{total}] {what} ({elapsed_text(time.monotonic() - started)})"


def count_objects(tree: Path) -> int:
    """Object files the compiler has finished so far anywhere under the build tree."""
    return sum(1 for _ in tree.rglob("*.o")) if tree.is_dir() else 0


class Heartbeat:
    """While the build runs, says 'still compiling: 0m36s elapsed, 2 of 13 objects built' every `interval` seconds
    in which nothing else was said; `line()` passes the build's own progress lines through (one writer at a time)."""

    def __init__(self, say: Callable[[str], None], tree: Path, *, interval: float = HEARTBEAT_S) -> None:
        self.say, self.tree, self.interval = say, tree, interval
        self.started = time.monotonic()
        self.total: str | None = None
        self._last_said = self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="me-build-heartbeat", daemon=True)

    def line(self, text: str) -> None:
        step = _NINJA_STEP.match(text)
        if step:
            self.total = step.group(2)
        with self._lock:
            self.say(text)
            self._last_said = time.monotonic()

    def text(self) -> str:
        built = count_objects(self.tree)
        of = f" of {self.total}" if self.total else ""
        return f"  still compiling: {elapsed_text(time.monotonic() - self.started)} elapsed, {built}{of} objects built"

    def _run(self) -> None:
        while not self._stop.wait(self.interval / 4):
            if time.monotonic() - self._last_said >= self.interval:
                self.line(self.text())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
