#!/usr/bin/env python3
"""Turn a fresh Kaggle notebook into the reference environment and prove it: `python installers/kaggle_setup.py
--help`. Standard library only; the work is in installers/kaggle/ (setup.py, steps.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: installers.*, rsna_phase0

from installers.kaggle.setup import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
