"""Shared pieces of the MinkowskiEngine build module: its error type and version parsing.

Standard library only: this runs before anything else is installed (Dockerfile, Kaggle notebook, CI).
"""

from __future__ import annotations

import re


class BuildError(RuntimeError):
    """Building, installing or verifying MinkowskiEngine failed; the message says why and how to fix it."""


class FixError(BuildError):
    """A source fix could not find the text it edits: the source changed and must not be half-patched."""


def version_tuple(text: str | None) -> tuple[int, ...]:
    """'12.4' -> (12, 4); '2.13.0+cpu' -> (2, 13, 0); None or '' -> ()."""
    if not text:
        return ()
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()
