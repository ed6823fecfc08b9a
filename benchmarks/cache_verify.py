"""What checking a cache entry costs: CRC-32 (what the loader checks once per worker per entry) and SHA-256 (what
`data cache` checks before skipping an entry), in MB/s over a file of this size, warm in the page cache.

    python benchmarks/cache_verify.py [--mb 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rsna_phase0.atomic import sha256_file
from rsna_phase0.data.cache import crc32_file


def rate(check, path: str, size: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        check(path)
        best = min(best, time.perf_counter() - start)
    return size / 2**20 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MB (a 1 mm head volume is ~30-60 MB)")
    args = parser.parse_args()
    size = args.mb << 20
    with tempfile.NamedTemporaryFile(suffix=".b2nd") as handle:
        handle.write(os.urandom(size))
        handle.flush()
        crc, sha = rate(crc32_file, handle.name, size), rate(sha256_file, handle.name, size)
    print(f"CRC-32  {crc:8.0f} MB/s  (a 50 MB entry: {50 / crc * 1000:.0f} ms, once per loader worker)")
    print(f"SHA-256 {sha:8.0f} MB/s  (a 50 MB entry: {50 / sha * 1000:.0f} ms, `data cache` before skipping it)")


if __name__ == "__main__":
    main()
