#!/usr/bin/env bash
# MinkowskiEngine built the way Kaggle builds it (issue 16, part 3): a real CUDA 12 toolkit that is not 12.1
# (Debian trixie non-free: nvidia-cuda-toolkit 12.4), against the reference torch 2.4.0+cu121 from PyPI
# (env/requirements.lock, --require-hashes) on Python 3.12, through installers/build_minkowski.py, then the
# self-test's CPU part under that torch (no GPU here). Long (tens of minutes on 2 cores): not in CI.
#
#   sudo benchmarks/cuda12_minkowski_build.sh [ARCHS]      # ARCHS default "7.5" (T4); "6.0;7.5" for T4 + P100
#
# Environment: WORK (default /work/cache/cuda12: the trixie root, the venv, wheels, logs; never in the repo),
# JOBS (MAX_JOBS, default 2), PYTHON312 (a Python 3.12 on this host, default: pyenv's or python3.12 on PATH),
# CXX_VERSION (the GCC major used for host code and by nvcc, default 12).
# The toolkit lives in a throw-away debootstrap root; this host's system is not changed. Needs root, debootstrap,
# network for the first run (apt, PyPI); later runs reuse everything under $WORK.
set -euo pipefail

ARCHS=${1:-7.5}
# shellcheck source=benchmarks/cuda12_root.sh
. "$(dirname "$0")/cuda12_root.sh"

# 3. the build, inside the root
tag=$(echo "$ARCHS" | tr ';' '-')
LOG=$LOGS/build-cuda12.4-sm$tag-$(date +%Y%m%dT%H%M%S).log
say "nvcc: $(chroot "$ROOT" nvcc --version | grep release); g++-$GCC: $(chroot "$ROOT" "g++-$GCC" -dumpfullversion)"
say "building for $ARCHS with MAX_JOBS=$JOBS; build log $LOG"
started=$(date +%s)
chroot "$ROOT" env -i HOME=/root PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 \
  CC="gcc-$GCC" CXX="g++-$GCC" PIP_CONFIG_FILE=/dev/null TMPDIR="$WORK/tmp" \
  sh -c "mkdir -p $WORK/tmp && cd /repo && python installers/build_minkowski.py --source sdist --archs '$ARCHS' \
    --jobs $JOBS --cache $CACHE --log $LOG --python $VENV/bin/python"
say "build + install + self-test: $(($(date +%s) - started)) s"

# 4. the record the wheel carries, and the self-test again on its own (CPU part; no GPU in this machine)
chroot "$ROOT" env -i HOME=/root PATH="$VENV/bin:/usr/bin:/bin" sh -c \
  "python -c 'import json; from importlib.metadata import distribution as d; \
print(json.dumps(json.loads(d(\"MinkowskiEngine\").read_text(\"rsna_build.json\")), indent=1))'; \
   python /repo/installers/minkowski/selftest.py --expect-cuda --no-gpu-ok --version 0.5.4"
