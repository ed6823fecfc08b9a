"""Package names and version strings, compared the same way by the installers, the locks and check-env."""

from __future__ import annotations

import re


def canonical_name(name: str) -> str:
    """PEP 503: `Pillow`, `pillow`, `PIL_low` compare by their runs of `-_.` collapsed and lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """`2.4.0+cu121` -> `2.4.0`: the spec pins public versions; a wheel may carry a local build label."""
    return version.split("+", 1)[0]


def version_tuple(text: str | None) -> tuple[int, ...]:
    """The leading numeric release: '12.4' -> (12, 4); '2.13.0+cpu' -> (2, 13, 0); '525.60.13' -> (525, 60, 13);
    None, '' or text without a leading number -> ()."""
    if not text:
        return ()
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()
