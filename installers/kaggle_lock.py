"""`python installers/kaggle_lock.py WHEEL_DIR > lock.txt`: a hashed lock of a folder of wheels, for
`kaggle_setup.py --requirements`. The format and its checks live in rsna_phase0/core/requirements_lock.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)  # run from a checkout on a bare Python: the format is the package's

from rsna_phase0.core.requirements_lock import (  # noqa: E402,F401  (the installers' names, until they import core)
    LockError,
    Pin,
    check_against_spec,
    constraint_lines,
    held_versions,
    lock_for_wheelhouse,
    parse_lock,
    wheel_name_version,
)
from rsna_phase0.core.versions import canonical_name, public_version  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python installers/kaggle_lock.py", description=__doc__.split("\n")[0])
    parser.add_argument("wheel_dir")
    args = parser.parse_args(argv)
    print(lock_for_wheelhouse(args.wheel_dir), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
