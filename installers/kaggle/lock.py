"""`python -m installers.kaggle.lock WHEEL_DIR > lock.txt` (from the checkout): a hashed lock of a folder of wheels,
for `kaggle_setup.py --requirements`. The format and its checks live in rsna_phase0/core/requirements_lock.py."""

from __future__ import annotations

import argparse

from rsna_phase0.core.requirements_lock import lock_for_wheelhouse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installers.kaggle.lock", description=__doc__.split("\n")[0])
    parser.add_argument("wheel_dir")
    args = parser.parse_args(argv)
    print(lock_for_wheelhouse(args.wheel_dir), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
