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

REPO=$(cd "$(dirname "$0")/.." && pwd)
ARCHS=${1:-7.5}
WORK=${WORK:-/work/cache/cuda12}
JOBS=${JOBS:-2}
GCC=${CXX_VERSION:-12}
ROOT=$WORK/root
VENV=$WORK/venv312
WHEELS=$WORK/wheels-cp312
CACHE=$WORK/me-cache
LOGS=$WORK/logs
PYTHON312=${PYTHON312:-$(ls /root/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | tail -1 || true)}
PYTHON312=${PYTHON312:-$(command -v python3.12 || true)}
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
[ -x "$PYTHON312" ] || { echo "no Python 3.12 found: set PYTHON312=/path/to/python3.12" >&2; exit 1; }
mkdir -p "$LOGS" "$CACHE"
say() { echo "[$(date +%H:%M:%S)] $*"; }

# 1. the throw-away trixie root with the CUDA 12.4 toolkit, g++-$GCC and OpenBLAS
if [ ! -e "$ROOT/.rsna-base" ]; then
  say "debootstrap trixie into $ROOT"
  debootstrap --variant=minbase --components=main,contrib,non-free trixie "$ROOT" http://deb.debian.org/debian
  touch "$ROOT/.rsna-base"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mounted=()
cleanup() { for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" || true; done; }
trap cleanup EXIT
bind() { mkdir -p "$ROOT$2"; mount --bind "$1" "$ROOT$2"; mounted+=("$ROOT$2"); }
mountpoint -q "$ROOT/proc" || { mount -t proc proc "$ROOT/proc"; mounted+=("$ROOT/proc"); }
mountpoint -q "$ROOT/dev" || bind /dev /dev
if [ ! -e "$ROOT/.rsna-cuda" ]; then
  say "apt: nvidia-cuda-toolkit (trixie non-free), g++-$GCC, libopenblas-dev"
  chroot "$ROOT" apt-get update -q
  # the runtime libraries a host-built Python needs (ssl, ffi, sqlite, ...), since the host's Python runs inside
  chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    nvidia-cuda-toolkit nvidia-cuda-dev "g++-$GCC" "gcc-$GCC" libopenblas-dev ca-certificates git \
    libssl3t64 libffi8 zlib1g libbz2-1.0 liblzma5 libsqlite3-0 libreadline8t64 libncursesw6 libuuid1
  touch "$ROOT/.rsna-cuda"
fi

# 2. the reference torch and pins, hash-checked, in a Python 3.12 venv (wheels downloaded once)
if [ ! -e "$VENV/.rsna-ready" ]; then
  say "venv $VENV: env/requirements.lock with --require-hashes (torch 2.4.0+cu121 and its nvidia wheels, ~2.9 GB)"
  PIP_CONFIG_FILE=/dev/null "$PYTHON312" -m pip download --isolated --no-deps --require-hashes \
    -r "$REPO/env/requirements.lock" -d "$WHEELS" -q
  "$PYTHON312" -m venv "$VENV"
  PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --isolated -q --no-index --find-links "$WHEELS" \
    --require-hashes -r "$REPO/env/requirements.lock"
  touch "$VENV/.rsna-ready"
fi

# 3. the build, inside the root: the host's Python prefix, $WORK and the repo appear at the same paths there
PYPREFIX=$("$PYTHON312" -c 'import sys; print(sys.base_prefix)')
bind "$PYPREFIX" "$PYPREFIX"
bind "$WORK" "$WORK"
bind "$REPO" /repo
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
   python /repo/installers/minkowski_selftest.py --expect-cuda --no-gpu-ok --version 0.5.4"
