"""Shared pieces of the MinkowskiEngine build module: its error types (versions: rsna_phase0/core/versions.py).

Standard library only: this runs before anything else is installed (Dockerfile, Kaggle notebook, CI).
"""

from __future__ import annotations


class BuildError(RuntimeError):
    """Building, installing or verifying MinkowskiEngine failed; the message says why and how to fix it."""


class FixError(BuildError):
    """A source fix could not find the text it edits: the source changed and must not be half-patched."""
