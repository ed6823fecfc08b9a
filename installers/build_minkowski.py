#!/usr/bin/env python3
"""Build, cache, install and verify MinkowskiEngine from env/reference.toml: `python installers/build_minkowski.py
--help`. Standard library only; the work is in installers/minkowski/ (build.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: installers.minkowski, rsna_phase0

from installers.minkowski.build import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
